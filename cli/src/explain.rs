//! `septum explain`: the verdict of a flow over manifests, with the deciding rules on the egress
//! and ingress sides, tier by tier; a Service destination is explained per backend after DNAT.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use septum_policy::explain::{ExplainQuery, FlowEnd, FlowExplanation, SideReport, explain};
use septum_policy::model::{ObjectKey, PortRef, Protocol};
use septum_policy::{Engine, InMemoryAllocations};

use septum_crd::lint;

use septum_crd::files as manifest_files;

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Text,
    /// JSON.
    Json,
}

/// Arguments of `septum explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Manifest files or directories.
    #[arg(long, required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// Source: NS/POD or an IP.
    #[arg(long)]
    from: String,
    /// Destination: NS/POD, service/NS/NAME or an IP.
    #[arg(long)]
    to: String,
    /// Destination port: a number or a port name (of the pod, or of the Service).
    #[arg(long, allow_hyphen_values = true)]
    port: String,
    /// TCP, UDP or SCTP. Default: TCP, or the protocol of the Service port named by `--port`.
    #[arg(long)]
    protocol: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn check_name(arg: &str, full: &str, what: &str, v: Result<(), String>) -> Result<()> {
    v.map_err(|m| anyhow::anyhow!("{arg} {full:?}: {what}: {m}"))
}

fn parse_end(s: &str, destination: bool) -> Result<FlowEnd> {
    let arg = if destination { "--to" } else { "--from" };
    if let Ok(ip) = s.parse::<IpAddr>() {
        // An IPv4-mapped IPv6 address is the IPv4 address on the wire.
        return Ok(FlowEnd::Ip(ip.to_canonical()));
    }
    if let Some((addr, _)) = s.split_once('/')
        && addr.parse::<IpAddr>().is_ok()
    {
        bail!("{arg} {s:?}: a prefix is not a flow end; give one address");
    }
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        ["service" | "svc", ns, name] if destination => {
            check_name(arg, s, "namespace", lint::dns_label(ns))?;
            check_name(arg, s, "Service name", lint::dns1035_label(name))?;
            Ok(FlowEnd::Service(ObjectKey::new(*ns, *name)))
        }
        ["service" | "svc", _, _] => {
            bail!("{arg} {s:?}: a Service can only be a destination (--to)")
        }
        ["service" | "svc", ..] if parts.len() > 2 => {
            bail!("{arg} {s:?}: a Service is service/NAMESPACE/NAME")
        }
        [ns, name] => {
            check_name(arg, s, "namespace", lint::dns_label(ns))?;
            check_name(arg, s, "pod name", lint::dns_subdomain(name))?;
            Ok(FlowEnd::Pod(ObjectKey::new(*ns, *name)))
        }
        _ => bail!(
            "{arg} {s:?} is not NAMESPACE/POD{} or an IP address",
            if destination {
                ", service/NAMESPACE/NAME"
            } else {
                ""
            }
        ),
    }
}

/// Parses `--port`: a number, or a name. Toward a Service the name is a Service port name (a
/// DNS-1123 label of up to 63 characters, e.g. `service-port-tcp-80`); toward a pod it is a
/// container port name (an IANA service name of up to 15).
fn parse_port(s: &str, toward_service: bool) -> Result<PortRef> {
    let s = s.trim();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'+')
    {
        if let Ok(n) = s.parse::<i64>() {
            return match u16::try_from(n) {
                Ok(p) if p != 0 => Ok(PortRef::Number(p)),
                _ => bail!("--port {s}: a port number must be 1-65535"),
            };
        }
        if s.contains('-') && s.split('-').all(|x| x.parse::<u16>().is_ok()) {
            bail!("--port {s:?}: a port range cannot be explained; give one port");
        }
    }
    if toward_service {
        lint::dns_label(s).map_err(|m| {
            anyhow::anyhow!("--port: not a number, and not a Service port name: {m}")
        })?;
    } else {
        lint::port_name(s).map_err(|m| anyhow::anyhow!("--port: not a number, and {m}"))?;
    }
    Ok(PortRef::Name(s.to_string()))
}

/// The protocol of the flow: `--protocol` when given; otherwise the protocol of the Service
/// port named by `--port` (its name says which one it is), else TCP as in Kubernetes.
fn flow_protocol(
    given: Option<Protocol>,
    to: &FlowEnd,
    port: &PortRef,
    cluster: &septum_policy::model::Cluster,
) -> Protocol {
    if let Some(p) = given {
        return p;
    }
    if let (FlowEnd::Service(k), PortRef::Name(_)) = (to, port)
        && let Some(sp) = cluster
            .services
            .get(k)
            .and_then(|svc| svc.ports_matching(port, None).next())
    {
        return sp.protocol;
    }
    Protocol::Tcp
}

/// Runs `septum explain`.
pub fn run(a: ExplainArgs) -> Result<ExitCode> {
    // Parsed before the manifests are read, so a typo fails fast.
    let given = a
        .protocol
        .as_deref()
        .map(|p| {
            Protocol::parse(p).with_context(|| format!("unknown protocol {p:?} (TCP, UDP, SCTP)"))
        })
        .transpose()?;
    let from = parse_end(&a.from, false)?;
    let to = parse_end(&a.to, true)?;
    let port = parse_port(&a.port, matches!(to, FlowEnd::Service(_)))?;
    let m = manifest_files::load(&a.manifests);
    let protocol = flow_protocol(given, &to, &port, &m.cluster);
    let query = ExplainQuery {
        from,
        to,
        port,
        protocol,
    };
    let semantic = m.semantic_problems();
    let errors: Vec<_> = m
        .diagnostics
        .iter()
        .chain(&semantic)
        .filter(|e| e.is_error())
        .collect();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        bail!(
            "{} error(s) in the manifests; fix them first (see `septum policy check`)",
            errors.len()
        );
    }
    match (&query.from, &query.to) {
        (FlowEnd::Ip(a), FlowEnd::Ip(b)) if a.is_ipv4() != b.is_ipv4() => {
            bail!("cannot explain this flow: {a} and {b} are of different IP families")
        }
        (FlowEnd::Ip(a), FlowEnd::Pod(k)) | (FlowEnd::Pod(k), FlowEnd::Ip(a)) => {
            if let Some(p) = m.cluster.pods.get(k)
                && !p.ips.is_empty()
                && !p.ips.iter().any(|i| i.is_ipv4() == a.is_ipv4())
            {
                bail!(
                    "cannot explain this flow: pod {k} has no address of the same IP family as {a}"
                );
            }
        }
        _ => {}
    }
    for (end, arg) in [(&query.from, "--from"), (&query.to, "--to")] {
        if let FlowEnd::Pod(k) = end
            && !m.cluster.pods.contains_key(k)
        {
            let hint = if matches!(k.namespace.as_str(), "service" | "svc") {
                " (a Service is service/NAMESPACE/NAME)"
            } else {
                ""
            };
            bail!("cannot explain this flow: {arg}: pod {k} is not in the manifests{hint}");
        }
    }
    let engine = Engine::new(m.cluster, InMemoryAllocations::new());
    let flows = explain(&engine, &query).context("cannot explain this flow")?;
    let Some(first) = flows.first() else {
        bail!("cannot explain this flow: nothing to explain");
    };
    match a.output {
        Output::Json => {
            let text = if flows.len() == 1 {
                serde_json::to_string_pretty(first)?
            } else {
                serde_json::to_string_pretty(&ServiceExplanation::new(&flows))?
            };
            println!("{text}");
        }
        Output::Text => {
            for f in &flows {
                print_text(f);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON of a flow to a Service with several backends: the overall verdict (deny when any
/// backend's flow is denied), the first backend's sides for a quick look, and every backend.
#[derive(Serialize)]
struct ServiceExplanation<'a> {
    verdict: &'static str,
    service: Option<&'a str>,
    egress: &'a SideReport,
    ingress: &'a SideReport,
    backends: &'a [FlowExplanation],
}

impl<'a> ServiceExplanation<'a> {
    fn new(flows: &'a [FlowExplanation]) -> Self {
        let first = &flows[0];
        Self {
            verdict: if flows.iter().all(|f| f.verdict == "allow") {
                "allow"
            } else {
                "deny"
            },
            service: first.service.as_deref(),
            egress: &first.egress,
            ingress: &first.ingress,
            backends: flows,
        }
    }
}

fn print_side(s: &SideReport) {
    let who = s.subject.as_deref().unwrap_or("(not a pod endpoint)");
    println!("  {} ({who}): {}", s.direction, s.action.to_uppercase());
    if !s.policed {
        println!("    not policed");
        return;
    }
    for t in &s.tiers {
        println!("    {:<10} {}", t.tier, t.outcome);
        for r in &t.rules {
            let mark = if r.decisive { "*" } else { " " };
            println!(
                "      {mark} [{}] {} ({})",
                r.cookie, r.description, r.action
            );
        }
    }
    if let Some(d) = &s.decisive_rule {
        println!("    decided by: {d}");
    }
}

fn print_text(f: &FlowExplanation) {
    let via = f
        .service
        .as_deref()
        .map(|s| format!(" via {s}"))
        .unwrap_or_default();
    let audit = if f.audit {
        " (audit: an Audit-mode FlowPolicy would deny it)"
    } else {
        ""
    };
    println!(
        "{} ({}) -> {} ({}){via} {}/{}: {}{audit}",
        f.from,
        f.src_ip,
        f.to,
        f.dst_ip,
        f.protocol,
        f.port,
        f.verdict.to_uppercase()
    );
    print_side(&f.egress);
    print_side(&f.ingress);
}
