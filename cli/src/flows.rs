//! `septum flows`: the flow log for incident response, from the agent's `FlowService`.
//!
//! ```text
//! septum flows --to-pod shop/db --verdict dropped --since 1h
//! septum flows --from-namespace shop --follow --output jsonl
//! septum flows top --namespace shop
//! septum flows denied --since 14:02
//! septum flows graph --format svg -o map.svg
//! septum flows status
//! ```
//!
//! The agent is found on its unix socket (`--socket`, `SEPTUM_AGENT_SOCKET`, the node default
//! `/run/septum/agent.sock`), or over TCP with TLS (`--server https://HOST:PORT` with
//! `--tls-ca`, and `--tls-cert`/`--tls-key` when the server asks for a client certificate).
//! `--server` may also be the controller's flow relay, which answers for every node of the
//! cluster: a node that could not answer is named on stderr (its flows are missing from the
//! answer), and `status` shows each node. Without flags, and no node agent, a lab is used: a
//! two-node lab's relay (from inside the lab, with the lab's operator certificate), so its
//! flows are both nodes' merged, else the single-node lab's agent.
//! Filters are checked here with the server's own rules, so a bad value is refused before any
//! request, with the flag that carried it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use septum_flowlog::FlowRecord;
use septum_flowlog::map::human_bytes;
use septum_flowlog::store::{Denied, Edge, Talker};
use septum_flowlog::{time, wire};
use septum_proto::flow::v1 as pb;
use septum_proto::flow::v1::flow_service_client::FlowServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The node agent's default socket.
const NODE_SOCKET: &str = "/run/septum/agent.sock";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `septum flows`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FlowsArgs {
    #[command(subcommand)]
    command: Option<FlowsCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, Subcommand)]
enum FlowsCommand {
    /// The pairs that exchanged the most flows.
    Top(TopArgs),
    /// Refused flows, by the policy that refused them.
    Denied(CommonArgs),
    /// The service map (workload -> workload, with ports and verdicts) as a picture.
    Graph(GraphArgs),
    /// The agent's flow pipeline: store size, retention, events, losses (through a relay:
    /// per node, and the nodes that did not answer).
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// table or json.
        #[arg(long, short = 'o', default_value = "table")]
        output: Output,
    },
}

/// How to reach the agent.
#[derive(Debug, Args, Clone)]
struct ServerArgs {
    /// The agent's unix socket (default: /run/septum/agent.sock, else a two-node lab's flow
    /// relay, else the single-node lab's agent).
    #[arg(long, env = "SEPTUM_AGENT_SOCKET", value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// A flow API over TCP with TLS instead: https://HOST:PORT (an agent's, or the
    /// controller's relay for the whole cluster).
    #[arg(long, value_name = "URL", global = true, conflicts_with = "socket")]
    server: Option<String>,
    /// PEM CA certificate that signed the server's certificate.
    #[arg(long, value_name = "PATH", global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that asks for one.
    #[arg(long, value_name = "PATH", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, value_name = "PATH", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name to check the server's certificate against (default: the URL's host).
    #[arg(long, value_name = "NAME", global = true)]
    tls_server_name: Option<String>,
}

/// Which flows: the filter flags, `--exclude` and the time window.
#[derive(Debug, Args, Clone, Default)]
struct FilterArgs {
    /// Source pod, NS/NAME or NAME (repeatable: any of them).
    #[arg(long, value_name = "POD")]
    from_pod: Vec<String>,
    /// Destination pod.
    #[arg(long, value_name = "POD")]
    to_pod: Vec<String>,
    /// Source or destination pod.
    #[arg(long, value_name = "POD")]
    pod: Vec<String>,
    /// Source namespace.
    #[arg(long, value_name = "NS")]
    from_namespace: Vec<String>,
    /// Destination namespace.
    #[arg(long, value_name = "NS")]
    to_namespace: Vec<String>,
    /// Source or destination namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Vec<String>,
    /// Source address or CIDR.
    #[arg(long, value_name = "CIDR")]
    from_ip: Vec<String>,
    /// Destination address or CIDR.
    #[arg(long, value_name = "CIDR")]
    to_ip: Vec<String>,
    /// Source or destination address or CIDR.
    #[arg(long, value_name = "CIDR")]
    ip: Vec<String>,
    /// Source pod labels, key=value[,key=value] or key (all must match).
    #[arg(long, value_name = "SELECTOR")]
    from_label: Vec<String>,
    /// Destination pod labels.
    #[arg(long, value_name = "SELECTOR")]
    to_label: Vec<String>,
    /// Destination Service, NS/NAME or NAME.
    #[arg(long, value_name = "SERVICE")]
    to_service: Vec<String>,
    /// Source or destination port.
    #[arg(long, value_name = "PORT")]
    port: Vec<u32>,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    to_port: Vec<u32>,
    /// tcp, udp, sctp, icmp, icmpv6 or a number.
    #[arg(long, value_name = "PROTO")]
    protocol: Vec<String>,
    /// forwarded, dropped or audit.
    #[arg(long, value_name = "VERDICT")]
    verdict: Vec<String>,
    /// A drop reason (policy-deny, policy-default-deny, ...) or its code.
    #[arg(long, value_name = "REASON")]
    drop_reason: Vec<String>,
    /// The deciding policy on either side: NS/NAME, or NAME of a cluster-scoped one.
    #[arg(long, value_name = "POLICY")]
    policy: Vec<String>,
    /// The observing node.
    #[arg(long, value_name = "NODE")]
    node: Vec<String>,
    /// Leave out flows matching FIELD=VALUE, FIELD a filter flag without dashes
    /// (`--exclude to-namespace=kube-system`). Repeatable: a flow matching any is left out.
    #[arg(long, value_name = "FIELD=VALUE")]
    exclude: Vec<String>,
    /// Flows last seen at or after: a duration ago (`1h`, `15m`), an RFC 3339 time, or HH:MM
    /// (today, UTC).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Flows last seen before (as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

/// Filters, window and server, shared by the aggregate subcommands.
#[derive(Debug, Args, Clone)]
struct CommonArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// table or json.
    #[arg(long, short = 'o', default_value = "table")]
    output: Output,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// The newest N records (default 1000 without --follow, 20 with it).
    #[arg(long, value_name = "N", conflicts_with = "first")]
    last: Option<u32>,
    /// The oldest N records instead.
    #[arg(long, value_name = "N")]
    first: Option<u32>,
    /// After the stored records, print new and updated ones until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// table, json (an array; one object per line with --follow) or jsonl.
    #[arg(long, short = 'o', default_value = "table")]
    output: Output,
}

#[derive(Debug, Args)]
struct TopArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// How many pairs.
    #[arg(long, default_value_t = 10)]
    number: u32,
}

#[derive(Debug, Args)]
struct GraphArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// dot (Graphviz), mermaid or svg.
    #[arg(long, default_value = "svg")]
    format: septum_flowlog::map::Format,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "PATH")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Jsonl,
}

/// Sets the filter field a flag (without dashes) names; `false` when there is no such flag.
fn set_field(f: &mut pb::FlowFilter, field: &str, value: &str) -> Result<bool> {
    let v = value.to_string();
    let port = || -> Result<u32> {
        value
            .parse()
            .with_context(|| format!("{field}: {value:?} is not a port"))
    };
    match field {
        "from-pod" => f.source_pod.push(v),
        "to-pod" => f.destination_pod.push(v),
        "pod" => f.pod.push(v),
        "from-namespace" => f.source_namespace.push(v),
        "to-namespace" => f.destination_namespace.push(v),
        "namespace" => f.namespace.push(v),
        "from-ip" => f.source_ip.push(v),
        "to-ip" => f.destination_ip.push(v),
        "ip" => f.ip.push(v),
        "from-label" => f.source_label.push(v),
        "to-label" => f.destination_label.push(v),
        "to-service" => f.destination_service.push(v),
        "port" => f.port.push(port()?),
        "to-port" => f.destination_port.push(port()?),
        "protocol" => f.protocol.push(v),
        "verdict" => f.verdict.push(verdict(field, value)? as i32),
        "drop-reason" => f.drop_reason.push(v),
        "policy" => f.policy.push(v),
        "node" => f.node.push(v),
        _ => return Ok(false),
    }
    Ok(true)
}

fn verdict(field: &str, s: &str) -> Result<pb::Verdict> {
    Ok(match s.parse::<septum_flowlog::Verdict>() {
        Ok(septum_flowlog::Verdict::Forwarded) => pb::Verdict::Forwarded,
        Ok(septum_flowlog::Verdict::Dropped) => pb::Verdict::Dropped,
        Ok(septum_flowlog::Verdict::Audit) => pb::Verdict::Audit,
        Err(e) => bail!("{field}: {e}"),
    })
}

impl FilterArgs {
    /// The wire query, checked with the server's rules.
    fn query(&self) -> Result<pb::Query> {
        let mut include = pb::FlowFilter::default();
        let flags: [(&str, &[String]); 17] = [
            ("from-pod", &self.from_pod),
            ("to-pod", &self.to_pod),
            ("pod", &self.pod),
            ("from-namespace", &self.from_namespace),
            ("to-namespace", &self.to_namespace),
            ("namespace", &self.namespace),
            ("from-ip", &self.from_ip),
            ("to-ip", &self.to_ip),
            ("ip", &self.ip),
            ("from-label", &self.from_label),
            ("to-label", &self.to_label),
            ("to-service", &self.to_service),
            ("protocol", &self.protocol),
            ("verdict", &self.verdict),
            ("drop-reason", &self.drop_reason),
            ("policy", &self.policy),
            ("node", &self.node),
        ];
        for (field, values) in flags {
            for v in values {
                set_field(&mut include, field, v)?;
            }
        }
        include.port = self.port.clone();
        include.destination_port = self.to_port.clone();
        let mut exclude = Vec::new();
        for e in &self.exclude {
            let Some((field, value)) = e.split_once('=') else {
                bail!("exclude: {e:?} is not FIELD=VALUE (for example to-namespace=kube-system)");
            };
            let mut f = pb::FlowFilter::default();
            if !set_field(&mut f, field, value)? {
                bail!(
                    "exclude: {field:?} is not a filter (from-pod, to-pod, pod, from-namespace, \
                     to-namespace, namespace, from-ip, to-ip, ip, from-label, to-label, \
                     to-service, port, to-port, protocol, verdict, drop-reason, policy, node)"
                );
            }
            exclude.push(f);
        }
        let now = time::now_ms();
        let at = |field: &'static str, s: &Option<String>| -> Result<i64> {
            match s {
                None => Ok(0),
                Some(s) => Ok(time::parse_time(field, s, now)?.max(1)),
            }
        };
        let q = pb::Query {
            include: if include == pb::FlowFilter::default() {
                Vec::new()
            } else {
                vec![include]
            },
            exclude,
            since_unix_ms: at("since", &self.since)?,
            until_unix_ms: at("until", &self.until)?,
        };
        wire::query(Some(&q), None, false)?;
        Ok(q)
    }
}

/// Where the flow API is, resolved once per command.
#[derive(Debug)]
enum Target {
    /// An agent's unix socket.
    Unix(PathBuf),
    /// A flow API over TCP with TLS: an agent's, or a relay's.
    Tls(Box<TlsTarget>),
}

#[derive(Debug)]
struct TlsTarget {
    url: String,
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
    /// A multi-node lab's relay: dialed from the lab namespace it is reachable from.
    lab: Option<septum_lab::cluster::RelayAccess>,
}

impl Target {
    /// The network namespace to dial from (a multi-node lab's relay), if not this one.
    fn netns(&self) -> Option<&str> {
        match self {
            Target::Tls(t) => t.lab.as_ref().map(|l| l.netns.as_str()),
            Target::Unix(_) => None,
        }
    }

    async fn connect(&self) -> Result<FlowServiceClient<Channel>> {
        let channel = match self {
            Target::Tls(t) => connect_tls(t).await?,
            Target::Unix(s) => connect_unix(s).await?,
        };
        Ok(FlowServiceClient::new(channel).max_decoding_message_size(64 << 20))
    }
}

impl ServerArgs {
    /// The flow API to ask: the flags', else the node's agent, else a multi-node lab's relay
    /// (every node's flows), else the single-node lab's agent.
    fn target(&self) -> Result<Target> {
        if let Some(url) = &self.server {
            if !url.starts_with("https://") {
                bail!(
                    "--server {url:?}: the flow API over TCP is TLS only; give https://HOST:PORT"
                );
            }
            let Some(ca) = &self.tls_ca else {
                bail!("--server needs --tls-ca (the CA that signed the server's certificate)");
            };
            return Ok(Target::Tls(Box::new(TlsTarget {
                url: url.clone(),
                ca: ca.clone(),
                identity: self.tls_cert.clone().zip(self.tls_key.clone()),
                server_name: self.tls_server_name.clone(),
                lab: None,
            })));
        }
        if let Some(s) = &self.socket {
            return Ok(Target::Unix(s.clone()));
        }
        let node = PathBuf::from(NODE_SOCKET);
        if node.exists() {
            return Ok(Target::Unix(node));
        }
        let dir = septum_lab::state::LabDir::from_env();
        if let Some(relay) = septum_lab::cluster::relay_access(&dir)? {
            return Ok(Target::Tls(Box::new(TlsTarget {
                url: relay.url.clone(),
                ca: relay.ca.clone(),
                identity: Some((relay.cert.clone(), relay.key.clone())),
                server_name: Some(relay.server_name.clone()),
                lab: Some(relay),
            })));
        }
        let lab = dir.agent_socket();
        if lab.exists() {
            return Ok(Target::Unix(lab));
        }
        bail!(
            "no septum agent found: neither {NODE_SOCKET} nor the lab's {} exists, and no \
             two-node lab is up (is the agent or `septum lab up` running? --socket or --server \
             name another)",
            lab.display()
        )
    }
}

async fn connect_tls(t: &TlsTarget) -> Result<Channel> {
    let url = &t.url;
    let read =
        |p: &Path, what: &str| std::fs::read(p).with_context(|| format!("{what} {}", p.display()));
    let what = if t.lab.is_some() {
        "the lab's CA"
    } else {
        "--tls-ca"
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&t.ca, what)?));
    if let Some((c, k)) = &t.identity {
        tls = tls.identity(Identity::from_pem(
            read(c, "--tls-cert")?,
            read(k, "--tls-key")?,
        ));
    }
    if let Some(name) = &t.server_name {
        tls = tls.domain_name(name.clone());
    }
    let connected = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("--server {url:?}"))?
        .tls_config(tls)
        .with_context(|| format!("--server {url:?}: TLS"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await;
    connected.map_err(|e| match &t.lab {
        Some(l) => anyhow::anyhow!(
            "cannot reach the two-node lab's flow relay at {url} (from network namespace {}; \
             is the lab's controller running? its log: {}): {}",
            l.netns,
            l.log.display(),
            error_chain(&e)
        ),
        None => anyhow::anyhow!("cannot connect to {url}: {}", error_chain(&e)),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// One HTTP/2 connection over the agent's unix socket.
async fn connect_unix(socket: &Path) -> Result<Channel> {
    use septum_proto::unix::ConnectError;
    septum_proto::unix::connect(socket, CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e {
            ConnectError::Unreachable(e) => anyhow::anyhow!(
                "cannot connect to the septum agent at {} (is it running?): {e}",
                socket.display()
            ),
            ConnectError::Handshake(e) => anyhow::anyhow!(
                "talking to the septum agent at {}: {}",
                socket.display(),
                error_chain(&e)
            ),
        })
}

/// Names, on stderr, the nodes whose answer is missing (from the controller's relay).
fn warn_nodes(errors: &[pb::NodeError]) {
    for e in errors {
        eprintln!(
            "septum: node {} did not answer ({}): {}; its flows are missing from this answer",
            e.node, e.code, e.message
        );
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    // A connection that failed under the call (a refused client certificate, a server gone)
    // says why only in its source.
    let mut why = String::new();
    let mut source = std::error::Error::source(&s);
    while let Some(e) = source {
        why.push_str(&format!(": {e}"));
        source = e.source();
    }
    match s.code() {
        tonic::Code::InvalidArgument => anyhow::anyhow!("{}", s.message()),
        code => anyhow::anyhow!("the server answered {code:?}: {}{why}", s.message()),
    }
}

impl FlowsArgs {
    fn server(&self) -> &ServerArgs {
        match &self.command {
            None => &self.list.server,
            Some(FlowsCommand::Top(a)) => &a.common.server,
            Some(FlowsCommand::Denied(a)) => &a.server,
            Some(FlowsCommand::Graph(a)) => &a.server,
            Some(FlowsCommand::Status { server, .. }) => server,
        }
    }
}

/// Runs `septum flows`. A multi-node lab's relay is reachable only from inside the lab (its
/// first node's namespace): then the whole command runs on a thread there, so every socket it
/// opens is.
pub fn run(args: FlowsArgs) -> Result<ExitCode> {
    match run_flows(args) {
        // Standard output closed (`septum flows | head`): done, quietly, like a Unix filter.
        // SIGPIPE stays ignored for this command (see main), so this is how it ends.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

fn run_flows(args: FlowsArgs) -> Result<ExitCode> {
    let target = args.server().target()?;
    let netns = target.netns().map(str::to_string);
    let work = move || -> Result<ExitCode> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                let t = &target;
                match args.command {
                    None => list(args.list, t).await,
                    Some(FlowsCommand::Top(a)) => top(a, t).await,
                    Some(FlowsCommand::Denied(a)) => denied(a, t).await,
                    Some(FlowsCommand::Graph(a)) => graph(a, t).await,
                    Some(FlowsCommand::Status { output, .. }) => status(output, t).await,
                }
            })
    };
    match netns {
        None => work(),
        Some(ns) => septum_lab::ns::NetNs::open(&ns)
            .with_context(|| "the two-node lab's first node (where its flow relay listens)")?
            .run(work)
            .context("entering the two-node lab's first node")?,
    }
}

async fn list(a: ListArgs, target: &Target) -> Result<ExitCode> {
    let query = a.filter.query()?;
    let (number, first) = match (a.first, a.last) {
        (Some(n), _) => (n, true),
        (None, Some(n)) => (n, false),
        (None, None) if a.follow => (20, false),
        (None, None) => (0, false),
    };
    wire::flows_number(number)?;
    let mut client = target.connect().await?;
    let mut stream = client
        .get_flows(pb::GetFlowsRequest {
            query: Some(query),
            number,
            first,
            follow: a.follow,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut json_array = Vec::new();
    let mut header = a.output == Output::Table;
    loop {
        let next = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) => {
                out.flush()?;
                return Err(status_error(s));
            }
        };
        match next.response {
            Some(pb::get_flows_response::Response::Flow(f)) => {
                let r = FlowRecord::try_from(&f)
                    .map_err(|e| anyhow::anyhow!("the agent sent a malformed flow: {e}"))?;
                match a.output {
                    Output::Table => {
                        if std::mem::take(&mut header) {
                            writeln!(out, "{}", table_header())?;
                        }
                        writeln!(out, "{}", table_row(&r))?;
                    }
                    Output::Jsonl => writeln!(out, "{}", serde_json::to_string(&r)?)?,
                    Output::Json if a.follow => writeln!(out, "{}", serde_json::to_string(&r)?)?,
                    Output::Json => json_array.push(r),
                }
            }
            Some(pb::get_flows_response::Response::Lost(l)) => {
                out.flush()?;
                let from = if next.node.is_empty() {
                    String::new()
                } else {
                    format!(" from node {}", next.node)
                };
                eprintln!(
                    "septum: {} flows{from} were not delivered (this client fell behind)",
                    l.count
                );
            }
            Some(pb::get_flows_response::Response::NodeError(e)) => {
                out.flush()?;
                warn_nodes(&[e]);
            }
            Some(pb::get_flows_response::Response::CaughtUp(_)) | None => {}
        }
        if a.follow {
            out.flush()?;
        }
    }
    if a.output == Output::Json && !a.follow {
        writeln!(out, "{}", serde_json::to_string_pretty(&json_array)?)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn rule_text(r: &FlowRecord) -> String {
    let one = |side: &str, rule: &Option<std::sync::Arc<septum_flowlog::RuleRef>>| {
        rule.as_ref().map(|r| {
            let name = if r.namespace.is_empty() {
                r.name.clone()
            } else {
                format!("{}/{}", r.namespace, r.name)
            };
            let index = if r.rule_index < 0 {
                "default-deny".to_string()
            } else {
                format!("rule {}", r.rule_index)
            };
            format!("{side} {} {name} {index}", r.kind)
        })
    };
    let parts: Vec<String> = [
        one("egress", &r.egress_rule),
        one("ingress", &r.ingress_rule),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

fn table_header() -> String {
    format!(
        "{:<24} {:<10} {:<32} {:<40} {:<6} {:<10} {:<20} {:>8} {:>10}  POLICY",
        "LAST SEEN",
        "NODE",
        "SOURCE",
        "DESTINATION",
        "PROTO",
        "VERDICT",
        "REASON",
        "PACKETS",
        "BYTES"
    )
}

/// One end as the table shows it: `namespace/pod:port` for a pod the node knows by name; an
/// end known only by identity (in cluster mode, an address the node-state stream names no pod
/// for, e.g. a pod just gone) as its address with the namespace and labels that identity
/// stands for.
fn end_text(e: &septum_flowlog::FlowEnd) -> String {
    if !e.pod.is_empty() || e.namespace.is_empty() {
        return e.to_string();
    }
    let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if labels.is_empty() {
        format!("{e} ({})", e.namespace)
    } else {
        format!("{e} ({} {})", e.namespace, labels.join(","))
    }
}

fn table_row(r: &FlowRecord) -> String {
    let mut dst = end_text(&r.dst);
    if !r.dst.service.is_empty() {
        dst.push_str(&format!(" ({})", r.dst.service));
    }
    let reason = if r.drop_reason == 0 {
        "-".to_string()
    } else {
        wire::drop_reason_name(r.drop_reason)
    };
    let mut verdict = r.verdict.to_string();
    if r.count > 1 {
        verdict.push_str(&format!(" x{}", r.count));
    }
    format!(
        "{:<24} {:<10} {:<32} {:<40} {:<6} {:<10} {:<20} {:>8} {:>10}  {}",
        time::format_ms(r.last_seen_ms),
        r.node.as_str(),
        end_text(&r.src),
        dst,
        wire::protocol_name(r.protocol),
        verdict,
        reason,
        r.packets_forward + r.packets_reverse,
        r.bytes_forward + r.bytes_reverse,
        rule_text(r)
    )
}

async fn top(a: TopArgs, target: &Target) -> Result<ExitCode> {
    let query = a.common.filter.query()?;
    wire::top_number(a.number)?;
    let mut client = target.connect().await?;
    let answer = client
        .top_talkers(pb::TopTalkersRequest {
            query: Some(query),
            number: a.number,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    warn_nodes(&answer.node_errors);
    let talkers: Vec<Talker> = answer.talkers.iter().map(Talker::from).collect();
    if a.common.output == Output::Table {
        writeln!(
            std::io::stdout(),
            "{:<40} {:<40} {:>8} {:>12}",
            "SOURCE",
            "DESTINATION",
            "FLOWS",
            "BYTES"
        )?;
        for t in &talkers {
            writeln!(
                std::io::stdout(),
                "{:<40} {:<40} {:>8} {:>12}",
                t.from,
                t.to,
                t.flows,
                t.bytes
            )?;
        }
    } else {
        print_json(&talkers, a.common.output)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn denied(a: CommonArgs, target: &Target) -> Result<ExitCode> {
    let query = a.filter.query()?;
    let mut client = target.connect().await?;
    let answer = client
        .denied_by_policy(pb::DeniedByPolicyRequest { query: Some(query) })
        .await
        .map_err(status_error)?
        .into_inner();
    warn_nodes(&answer.node_errors);
    let rows: Vec<Denied> = answer.policies.iter().map(Denied::from).collect();
    if a.output == Output::Table {
        writeln!(
            std::io::stdout(),
            "{:<60} {:>8} {:>10}",
            "POLICY",
            "FLOWS",
            "EVENTS"
        )?;
        for d in &rows {
            writeln!(
                std::io::stdout(),
                "{:<60} {:>8} {:>10}",
                d.policy,
                d.flows,
                d.events
            )?;
        }
    } else {
        print_json(&rows, a.output)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json<T: serde::Serialize>(rows: &[T], output: Output) -> Result<()> {
    if output == Output::Jsonl {
        for r in rows {
            writeln!(std::io::stdout(), "{}", serde_json::to_string(r)?)?;
        }
    } else {
        writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(rows)?)?;
    }
    Ok(())
}

async fn graph(a: GraphArgs, target: &Target) -> Result<ExitCode> {
    let query = a.filter.query()?;
    let mut client = target.connect().await?;
    let answer = client
        .service_map(pb::ServiceMapRequest { query: Some(query) })
        .await
        .map_err(status_error)?
        .into_inner();
    warn_nodes(&answer.node_errors);
    let edges = answer
        .edges
        .iter()
        .map(Edge::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the agent sent a malformed edge: {e}"))?;
    let text = septum_flowlog::map::render(&edges, a.format);
    match &a.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => write!(std::io::stdout(), "{text}")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(s: &pb::ServerStatusResponse) -> serde_json::Value {
    let losses: serde_json::Map<String, serde_json::Value> = s
        .losses
        .iter()
        .map(|l| (l.source.clone(), l.count.into()))
        .collect();
    let mut v = serde_json::json!({
        "node": s.node,
        "stored_flows": s.stored_flows,
        "store_bytes": s.store_bytes,
        "retention_max_age_ms": s.retention_max_age_ms,
        "retention_max_bytes": s.retention_max_bytes,
        "events": s.events,
        "records_written": s.records_written,
        "open_records": s.open_records,
        "losses": losses,
    });
    if !s.nodes.is_empty() || !s.node_errors.is_empty() {
        v["nodes"] = s.nodes.iter().map(status_json).collect();
        v["node_errors"] = s
            .node_errors
            .iter()
            .map(|e| serde_json::json!({"node": e.node, "code": e.code, "message": e.message}))
            .collect();
    }
    v
}

async fn status(output: Output, target: &Target) -> Result<ExitCode> {
    let mut client = target.connect().await?;
    let s = client
        .server_status(pb::ServerStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if output != Output::Table {
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&status_json(&s))?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let lost = |s: &pb::ServerStatusResponse| s.losses.iter().map(|l| l.count).sum::<u64>();
    if !s.nodes.is_empty() || !s.node_errors.is_empty() {
        // The relay: one row per node, then the totals and the nodes that did not answer.
        writeln!(
            std::io::stdout(),
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
            "NODE",
            "FLOWS",
            "STORE",
            "EVENTS",
            "WRITTEN",
            "OPEN",
            "LOST"
        )?;
        for n in s.nodes.iter().chain(std::iter::once(&s)) {
            let name = if std::ptr::eq(n, &s) {
                "(all)"
            } else {
                &n.node
            };
            writeln!(
                std::io::stdout(),
                "{:<24} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
                name,
                n.stored_flows,
                human_bytes(n.store_bytes),
                n.events,
                n.records_written,
                n.open_records,
                lost(n)
            )?;
        }
        for e in &s.node_errors {
            writeln!(
                std::io::stdout(),
                "{:<24} did not answer ({}): {}",
                e.node,
                e.code,
                e.message
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(std::io::stdout(), "node:            {}", s.node)?;
    writeln!(
        std::io::stdout(),
        "store:           {} flows, {}",
        s.stored_flows,
        human_bytes(s.store_bytes)
    )?;
    let age = if s.retention_max_age_ms == 0 {
        "no age bound".to_string()
    } else {
        format!("{} s", s.retention_max_age_ms / 1000)
    };
    let size = if s.retention_max_bytes == 0 {
        "no size bound".to_string()
    } else {
        human_bytes(s.retention_max_bytes)
    };
    writeln!(std::io::stdout(), "retention:       {age}, {size}")?;
    writeln!(std::io::stdout(), "events read:     {}", s.events)?;
    writeln!(std::io::stdout(), "records written: {}", s.records_written)?;
    writeln!(std::io::stdout(), "open records:    {}", s.open_records)?;
    writeln!(std::io::stdout(), "lost:            {}", lost(&s))?;
    for l in &s.losses {
        writeln!(std::io::stdout(), "  {:<22} {}", l.source, l.count)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> FilterArgs {
        #[derive(Debug, clap::Parser)]
        struct P {
            #[command(flatten)]
            f: FilterArgs,
        }
        let mut v = vec!["septum-flows"];
        v.extend_from_slice(args);
        <P as clap::Parser>::try_parse_from(v).unwrap().f
    }

    #[test]
    fn flags_become_one_include_filter_and_excludes_each_their_own() {
        let q = parse(&[
            "--from-pod",
            "shop/web",
            "--to-port",
            "5432",
            "--verdict",
            "dropped",
            "--exclude",
            "to-namespace=kube-system",
            "--exclude",
            "port=53",
        ])
        .query()
        .unwrap();
        assert_eq!(q.include.len(), 1);
        assert_eq!(q.include[0].source_pod, vec!["shop/web".to_string()]);
        assert_eq!(q.include[0].destination_port, vec![5432]);
        assert_eq!(q.include[0].verdict, vec![pb::Verdict::Dropped as i32]);
        assert_eq!(q.exclude.len(), 2);
        assert_eq!(q.exclude[1].port, vec![53]);
        assert!(parse(&[]).query().unwrap().include.is_empty());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = |args: &[&str]| parse(args).query().unwrap_err().to_string();
        assert!(err(&["--from-pod", "Shop/web"]).starts_with("from-pod:"));
        assert!(err(&["--to-ip", "10.0.0.0/40"]).starts_with("to-ip:"));
        assert!(err(&["--verdict", "maybe"]).starts_with("verdict:"));
        assert!(err(&["--exclude", "colour=red"]).contains("not a filter"));
        assert!(err(&["--exclude", "nonsense"]).contains("FIELD=VALUE"));
        assert!(err(&["--since", "yesterday-ish"]).starts_with("since:"));
        assert!(err(&["--to-port", "70000"]).starts_with("to-port:"));
        assert!(err(&["--policy", "x' OR 1=1 --"]).starts_with("policy:"));
    }

    #[test]
    fn ends_known_only_by_identity_show_their_namespace_and_labels() {
        let ip = Some("10.231.1.2".parse().unwrap());
        let remote = septum_flowlog::FlowEnd {
            ip,
            port: 80,
            namespace: "shop".into(),
            labels: [("app", "backend"), ("tier", "api")].into(),
            ..Default::default()
        };
        assert_eq!(
            end_text(&remote),
            "10.231.1.2:80 (shop app=backend,tier=api)"
        );
        let own = septum_flowlog::FlowEnd {
            pod: "backend".into(),
            ..remote.clone()
        };
        assert_eq!(end_text(&own), "shop/backend:80");
        let outside = septum_flowlog::FlowEnd {
            ip,
            port: 80,
            ..Default::default()
        };
        assert_eq!(end_text(&outside), "10.231.1.2:80");
    }

    #[test]
    fn since_takes_a_duration_ago() {
        let q = parse(&["--since", "1h"]).query().unwrap();
        let hour_ago = time::now_ms() - 3_600_000;
        assert!((q.since_unix_ms - hour_ago).abs() < 5_000);
        assert_eq!(q.until_unix_ms, 0);
    }
}
