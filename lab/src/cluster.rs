//! The multi-node lab (`lab up --nodes 2`): two node namespaces joined by a veth link, an agent
//! in cluster mode on each, and the local controller feeding both over the real node-state
//! stream.
//!
//! Layout (node `i` is `node-a`, `node-b`):
//! - node namespace `<prefix>node-a` / `<prefix>node-b`, each with its own bridge
//!   ([`crate::control::BRIDGE`]), Service DNAT table and agent;
//! - pod subnet `10.231.i.0/24` per node (gateway `.1` on the node's bridge);
//! - the link: veth `to-node-b` in node-a (`10.230.0.1/24`) and `to-node-a` in node-b
//!   (`10.230.0.2/24`); each node routes the other's pod subnet over it, so pod addresses are
//!   kept end to end (no encapsulation, no masquerade) and every packet meets the destination
//!   pod's `to_pod` with its real source;
//! - the controller (`septum lab controller`, a [`LocalController`] over the lab's objects) in
//!   node-a's namespace on `10.230.0.1:4240`, mutual TLS from the lab's throwaway PKI
//!   ([`crate::pki`]); the agents name it `septum-lab-controller`. `lab apply` and `delete`
//!   hand it the objects over a unix socket in the lab directory and return once it has
//!   taken them in and both agents acked the resulting revisions.
//! - the flow relay, served by the same controller process on `10.230.0.1:4245`
//!   ([`RELAY_PORT`]) with the controller's certificate, its clients checked against the lab's
//!   relay client CA; each agent serves its flow API on its own link address, port
//!   [`AGENT_FLOWS_PORT`] (4245 is the relay's on node-a, where both run), with its node's
//!   certificate, clients checked against the nodes' CA, and advertises it in its stream Hello.
//!   The relay dials each agent with the controller's certificate and checks the agent's
//!   against the node name, as in a cluster. `septum flows` finds the relay through
//!   [`relay_access`] and reaches it from node-a's namespace with the lab's operator
//!   certificate, so a user sees every node's flows in one answer and every node that cannot
//!   answer named.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use septum_controller::local::LocalController;
use septum_controller::relay::{self, Relay, RelaySettings};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::control::{
    ENFORCE_TIMEOUT, Lab, Programs, apply_rank, detach_session, model_pod, pid_alive, port_records,
    set_pod_status, tail,
};
use crate::ns::NetNs;
use crate::objects::{self, Datastore, Object};
use crate::pki::{CONTROLLER_NAME, OPERATOR_NAME, PkiFiles};
use crate::state::{LabDir, LabState, NodeRecord, PortRecord};

/// Most nodes a lab builds (two nodes, one link).
pub const MAX_NODES: usize = 2;
/// The link network between the nodes.
pub const LINK_PREFIX: u8 = 24;
/// The stream's port on the controller's address.
pub const CONTROLLER_PORT: u16 = 4240;
/// The flow relay's port on the controller's address.
pub const RELAY_PORT: u16 = 4245;
/// Each agent's TCP flow API port on its node's link address.
pub const AGENT_FLOWS_PORT: u16 = 4244;
/// How long a request to the controller may take (taken in, and acked by every agent).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The node records of an `n`-node lab.
pub fn plan(dir: &LabDir, n: usize) -> Result<Vec<NodeRecord>> {
    if !(2..=MAX_NODES).contains(&n) {
        bail!("--nodes {n}: the lab builds 1 or {MAX_NODES} nodes");
    }
    Ok((0..n)
        .map(|i| {
            let idx = u8::try_from(i).unwrap_or(u8::MAX);
            let name = format!("node-{}", char::from(b'a' + idx));
            NodeRecord {
                netns: format!("{}{name}", dir.netns_prefix()),
                pod_subnet: format!("10.231.{idx}.0/24"),
                link_ip: Ipv4Addr::new(10, 230, 0, idx + 1),
                name,
                agent_pid: None,
            }
        })
        .collect())
}

/// Where the agents reach the controller: the first node's link address.
pub fn controller_addr(nodes: &[NodeRecord]) -> Option<SocketAddr> {
    nodes
        .first()
        .map(|n| SocketAddr::new(IpAddr::V4(n.link_ip), CONTROLLER_PORT))
}

/// Where the controller serves the flow relay: the first node's link address.
pub fn relay_addr(nodes: &[NodeRecord]) -> Option<SocketAddr> {
    nodes
        .first()
        .map(|n| SocketAddr::new(IpAddr::V4(n.link_ip), RELAY_PORT))
}

/// Where a node's agent serves its flow API (and what it advertises to the relay).
pub fn flows_addr(node: &NodeRecord) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(node.link_ip), AGENT_FLOWS_PORT)
}

/// How a client reaches the flow relay of a multi-node lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayAccess {
    /// The network namespace the relay's address is reachable from (the first node's; the
    /// host's own namespace has no route to the lab's link).
    pub netns: String,
    /// `https://ADDR:PORT`.
    pub url: String,
    /// The CA of the controller's certificate.
    pub ca: PathBuf,
    /// The client certificate and key the relay accepts (the lab's operator).
    pub cert: PathBuf,
    /// The key of [`RelayAccess::cert`].
    pub key: PathBuf,
    /// The name the controller's certificate carries.
    pub server_name: String,
    /// The controller's log, for error messages.
    pub log: PathBuf,
}

/// The relay of the multi-node lab recorded in `dir`; `None` when no lab, or a single-node one,
/// is recorded there.
pub fn relay_access(dir: &LabDir) -> Result<Option<RelayAccess>> {
    let Some(state) = dir.load()? else {
        return Ok(None);
    };
    let (Some(first), Some(addr)) = (state.nodes.first(), relay_addr(&state.nodes)) else {
        return Ok(None);
    };
    let pki = PkiFiles::at(&dir.pki());
    let (cert, key) = pki.pair(OPERATOR_NAME);
    Ok(Some(RelayAccess {
        netns: first.netns.clone(),
        url: format!("https://{addr}"),
        ca: pki.ca(),
        cert,
        key,
        server_name: CONTROLLER_NAME.to_string(),
        log: dir.controller_log(),
    }))
}

fn link_name(peer: &NodeRecord) -> String {
    format!("to-{}", peer.name)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Joins the two nodes: the veth link, its addresses, and each node's route to the other's
/// pod subnet.
pub fn link(a: &NodeRecord, b: &NodeRecord) -> Result<()> {
    let (la, lb) = (link_name(b), link_name(a));
    ip(&[
        "-n", &a.netns, "link", "add", &la, "type", "veth", "peer", "name", &lb, "netns", &b.netns,
    ])?;
    for (n, dev, peer) in [(a, &la, b), (b, &lb, a)] {
        let addr = format!("{}/{LINK_PREFIX}", n.link_ip);
        ip(&["-n", &n.netns, "addr", "add", &addr, "dev", dev])?;
        ip(&["-n", &n.netns, "link", "set", dev, "up"])?;
        let via = peer.link_ip.to_string();
        ip(&[
            "-n",
            &n.netns,
            "route",
            "add",
            &peer.pod_subnet,
            "via",
            &via,
            "dev",
            dev,
        ])?;
    }
    Ok(())
}

/// The Node object of a lab node (its link address as InternalIP).
pub fn node_object(n: &NodeRecord) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
        "status": {"addresses": [{"type": "InternalIP", "address": n.link_ip.to_string()}]}})
}

/// One request to the controller.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Request {
    /// Objects to create or replace.
    #[serde(default)]
    pub apply: Vec<Value>,
    /// Objects to delete (kind, namespace and name are read).
    #[serde(default)]
    pub delete: Vec<Value>,
}

/// The controller's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Per node, the revision its agent acked.
    #[serde(default)]
    pub revisions: BTreeMap<String, u64>,
    /// Why the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sends `req` to the lab's controller; returns once every node's agent acked the change.
pub fn request(dir: &LabDir, req: &Request) -> Result<BTreeMap<String, u64>> {
    let path = dir.controller_socket();
    let mut s = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to the lab's controller at {} (its log: {})",
            path.display(),
            dir.controller_log().display()
        )
    })?;
    s.set_read_timeout(Some(SETTLE_TIMEOUT * 2))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut reply)
        .context("reading the controller's reply")?;
    let reply: Reply = serde_json::from_str(&reply).with_context(|| {
        format!(
            "the controller gave no answer (its log: {})",
            dir.controller_log().display()
        )
    })?;
    match reply.error {
        Some(e) => bail!("the lab's controller: {e}"),
        None => Ok(reply.revisions),
    }
}

/// Waits until the controller's socket exists (it is bound once the controller serves).
pub fn wait_for_controller(dir: &LabDir, pid: u32, alive: impl Fn(u32) -> bool) -> Result<()> {
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    while !dir.controller_socket().exists() {
        if std::time::Instant::now() > deadline || !alive(pid) {
            bail!(
                "the lab's controller did not start; its log ({}):\n{}",
                dir.controller_log().display(),
                std::fs::read_to_string(dir.controller_log()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A pod to create: its object, labels, ports and node.
type NewPod = (Object, BTreeMap<String, String>, Vec<PortRecord>, String);

impl Lab {
    /// `lab up --nodes N` (N > 1): the node namespaces and their link, the PKI, the local
    /// controller, an agent in cluster mode per node, then the objects.
    pub fn up_nodes(dir: LabDir, programs: Programs, paths: &[PathBuf], n: usize) -> Result<Self> {
        if n <= 1 {
            return Self::up(dir, programs, paths);
        }
        let nodes = plan(&dir, n)?;
        let node_prefix = format!("{}node", dir.netns_prefix());
        if dir.load()?.is_some() || !NetNs::list_with_prefix(&node_prefix).is_empty() {
            bail!(
                "a lab is already up (its files are in {}); `septum lab down` removes it",
                dir.root().display()
            );
        }
        objects::validate(paths)?;
        let objs = objects::read(paths)?;
        std::fs::create_dir_all(dir.root())?;
        let mut lab = Self {
            dir,
            programs,
            state: LabState {
                node_netns: nodes[0].netns.clone(),
                nodes: nodes.clone(),
                ..LabState::default()
            },
        };
        // Recorded before anything exists, so `down` can clean up a killed `up`.
        lab.dir.save(&lab.state)?;
        for n in &nodes {
            let ns = NetNs::create(&n.netns)?;
            ns.set_loopback_up()?;
            ns.write_sysctl("net/ipv4/ip_forward", "1")?;
            // As on the single node: replies from a Service backend pass conntrack's un-DNAT.
            ns.write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
        }
        link(&nodes[0], &nodes[1])?;
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let addr = controller_addr(&nodes).context("the lab has no nodes")?;
        crate::pki::generate(&lab.dir.pki(), &names, &[addr.ip()])?;
        Datastore::open(&lab.dir.datastore())?;
        lab.start_controller()?;
        for (i, n) in nodes.iter().enumerate() {
            let site = lab.site(Some(&n.name))?;
            let pid = lab.start_agent_at(&site)?;
            lab.state.nodes[i].agent_pid = Some(pid);
            lab.dir.save(&lab.state)?;
        }
        lab.apply_objects_cluster(objs)?;
        lab.state.up = true;
        lab.dir.save(&lab.state)?;
        Ok(lab)
    }

    fn start_controller(&mut self) -> Result<()> {
        let node = NetNs::open(&self.state.nodes[0].netns)?;
        let log = std::fs::File::create(self.dir.controller_log())?;
        let mut cmd = node.command(&self.programs.septum);
        cmd.arg("lab")
            .arg("controller")
            .arg("--lab-dir")
            .arg(self.dir.root())
            .env(
                "RUST_LOG",
                std::env::var("SEPTUM_LAB_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        detach_session(&mut cmd);
        let child = cmd.spawn().context("starting the lab's controller")?;
        self.state.controller_pid = Some(child.id());
        self.dir.save(&self.state)?;
        wait_for_controller(&self.dir, child.id(), pid_alive)
    }

    /// The node a new pod runs on: the one its `spec.nodeName` names when that is a lab node,
    /// else the node with the fewest pods (the first of those), so placement is deterministic.
    fn assign_node(&self, o: &Object) -> String {
        let names: Vec<&str> = self.state.nodes.iter().map(|n| n.name.as_str()).collect();
        if let Some(n) = o.value["spec"]["nodeName"].as_str()
            && names.contains(&n)
        {
            return n.to_string();
        }
        let load = |n: &str| {
            self.state
                .pods
                .values()
                .filter(|p| p.node.as_deref() == Some(n))
                .count()
        };
        names
            .iter()
            .min_by_key(|n| load(n))
            .map(|n| (*n).to_string())
            .unwrap_or_default()
    }

    /// `apply` of a multi-node lab: the objects go to the datastore (the lab's record) and to
    /// the controller; new pods are attached once both agents know them, then their addresses
    /// are published; returns once both agents acked and every pod is ready on its node.
    pub(crate) fn apply_objects_cluster(&mut self, mut objs: Vec<Object>) -> Result<()> {
        let store = Datastore::open(&self.dir.datastore())?;
        objs.sort_by_key(apply_rank);
        let mut sent = Vec::new();
        let mut created: Vec<NewPod> = Vec::new();
        for mut o in objs {
            match o.kind.as_str() {
                "Service" => self.prepare_service(&mut o)?,
                "Pod" => {
                    let pod = model_pod(&o)?;
                    let ports = port_records(&pod);
                    let key = o.key();
                    if let Some(rec) = self.state.pods.get(&key).cloned() {
                        let node = rec.node.clone().unwrap_or_default();
                        set_pod_status(&mut o, &node, &rec.ips);
                        self.ensure_pod(&o, pod.labels.clone(), ports, rec.node)?;
                    } else {
                        let node = self.assign_node(&o);
                        set_pod_status(&mut o, &node, &[]);
                        created.push((o.clone(), pod.labels.clone(), ports, node));
                    }
                }
                _ => {}
            }
            store.write(&o)?;
            sent.push(o.value.clone());
        }
        request(
            &self.dir,
            &Request {
                apply: sent,
                delete: Vec::new(),
            },
        )?;
        // Both agents know the new pods (without addresses yet): attach them on their nodes.
        let mut addressed = Vec::new();
        for (mut o, labels, ports, node) in created {
            self.ensure_pod(&o, labels, ports, Some(node.clone()))?;
            let ips = self
                .state
                .pods
                .get(&o.key())
                .map(|r| r.ips.clone())
                .unwrap_or_default();
            set_pod_status(&mut o, &node, &ips);
            store.write(&o)?;
            addressed.push(o.value.clone());
        }
        if !addressed.is_empty() {
            request(
                &self.dir,
                &Request {
                    apply: addressed,
                    delete: Vec::new(),
                },
            )?;
        }
        self.sync_services()?;
        self.dir.save(&self.state)?;
        self.wait_ready()
    }

    /// `delete` of a multi-node lab.
    pub(crate) fn delete_cluster(&mut self, objs: Vec<Object>) -> Result<()> {
        let store = Datastore::open(&self.dir.datastore())?;
        let mut gone = Vec::new();
        for o in &objs {
            if o.kind == "Pod"
                && let Some(rec) = self.state.pods.get(&o.key()).cloned()
            {
                self.remove_pod(&rec)?;
                self.state.pods.remove(&o.key());
            }
            if o.kind == "Service" {
                self.state.services.remove(&o.key());
            }
            if store.remove(o)? {
                gone.push(o.value.clone());
            }
        }
        self.sync_services()?;
        self.dir.save(&self.state)?;
        request(
            &self.dir,
            &Request {
                apply: Vec::new(),
                delete: gone,
            },
        )?;
        self.wait_ready()
    }

    /// Waits until every attached pod is ready on its node's agent (its status file).
    fn wait_ready(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + ENFORCE_TIMEOUT;
        for site in self.sites()? {
            let want: Vec<String> = self
                .state
                .pods
                .iter()
                .filter(|(_, p)| p.attached && p.node.as_deref() == Some(site.node.as_str()))
                .map(|(k, _)| k.clone())
                .collect();
            let status = site.state.join(septum_agent::state_dir::STATUS_FILE);
            loop {
                let ready: Vec<String> = std::fs::read(&status)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .map(|st| {
                        st["endpoints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|e| e["state"] == "ready")
                            .filter_map(|e| e["pod"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let missing: Vec<&String> = want.iter().filter(|k| !ready.contains(k)).collect();
                if missing.is_empty() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "on {}, pods {missing:?} are not ready within {ENFORCE_TIMEOUT:?}; the agent's log ({}):\n{}",
                        site.node,
                        site.log.display(),
                        tail(&site.log)
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

/// `septum lab controller`: the local controller of a multi-node lab, run in the first node's
/// namespace until killed. Takes in the Node objects of the lab's nodes and the objects already
/// in the lab's datastore (so a restarted controller serves what the lab holds), serves the
/// node-state stream and the flow relay, and answers [`Request`]s on the lab's controller
/// socket.
pub fn run_controller(dir: &LabDir) -> Result<()> {
    septum_agent::init_tracing();
    let state = dir
        .load()?
        .context("no lab is up (the controller runs for `septum lab up --nodes 2`)")?;
    let addr = controller_addr(&state.nodes).context("the lab has no nodes")?;
    let relay_at = relay_addr(&state.nodes).context("the lab has no nodes")?;
    let nodes: Vec<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    let pki = PkiFiles::at(&dir.pki());
    let (cert, key) = pki.pair(CONTROLLER_NAME);
    let identity = tonic::transport::Identity::from_pem(read(&cert)?, read(&key)?);
    let nodes_ca = tonic::transport::Certificate::from_pem(read(&pki.ca())?);
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(nodes_ca.clone());
    // The relay: served with the controller's certificate to clients of the relay client CA
    // (not the nodes': a node's certificate must not read every node's flows); it dials the
    // agents with the same certificate, trusting the nodes' CA.
    let relay_tls = tonic::transport::ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(tonic::transport::Certificate::from_pem(read(
            &pki.relay_client_ca(),
        )?));
    let dialing = RelaySettings {
        tls: tonic::transport::ClientTlsConfig::new()
            .ca_certificate(nodes_ca)
            .identity(identity),
        timeout: relay::DEFAULT_TIMEOUT,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the node-state stream on {addr}"))?;
        let relay_listener = tokio::net::TcpListener::bind(relay_at)
            .await
            .with_context(|| format!("binding the flow relay on {relay_at}"))?;
        let mut local = LocalController::start();
        local.serve_stream(listener, tls);
        let relay = Relay::new(local.context(), dialing);
        tokio::spawn(async move {
            if let Err(e) = relay::serve(relay, relay_listener, relay_tls).await {
                tracing::error!(error = %e, "the flow relay stopped");
            }
        });
        for n in &state.nodes {
            local.apply(node_object(n))?;
        }
        if let Ok(entries) = std::fs::read_dir(dir.datastore()) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let object: Value = serde_json::from_slice(&read(&p)?)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
                local
                    .apply(object)
                    .with_context(|| format!("loading {}", p.display()))?;
            }
        }
        let sock = dir.controller_socket();
        if let Some(parent) = sock.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&sock);
        let requests = tokio::net::UnixListener::bind(&sock)
            .with_context(|| format!("binding {}", sock.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        }
        tracing::info!(stream = %addr, relay = %relay_at, socket = %sock.display(), "the lab's controller serves");
        let local = Arc::new(local);
        let nodes = Arc::new(nodes);
        loop {
            let (conn, _) = requests.accept().await?;
            let (local, nodes) = (local.clone(), nodes.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(conn, &local, &nodes).await {
                    tracing::warn!(error = %e, "a lab request failed");
                }
            });
        }
    })
}

async fn answer(
    conn: tokio::net::UnixStream,
    local: &LocalController,
    nodes: &[String],
) -> Result<()> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(r).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => match handle(req, local, nodes).await {
            Ok(revisions) => Reply {
                revisions,
                error: None,
            },
            Err(e) => Reply {
                revisions: BTreeMap::new(),
                error: Some(format!("{e:#}")),
            },
        },
        Err(e) => Reply {
            revisions: BTreeMap::new(),
            error: Some(format!("unreadable request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

async fn handle(
    req: Request,
    local: &LocalController,
    nodes: &[String],
) -> Result<BTreeMap<String, u64>> {
    let mut rv = 0;
    for o in req.apply {
        rv = rv.max(local.apply(o)?.resource_version);
    }
    for o in &req.delete {
        rv = rv.max(local.delete(o)?.resource_version);
    }
    Ok(local.settled(rv, nodes, SETTLE_TIMEOUT).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_get_their_own_subnets_and_link_addresses() {
        let dir = LabDir::at(Path::new("/tmp/septum-lab-plan-test"));
        let nodes = plan(&dir, 2).expect("two nodes");
        assert_eq!(
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["node-a", "node-b"]
        );
        assert_eq!(nodes[0].pod_subnet, "10.231.0.0/24");
        assert_eq!(nodes[1].pod_subnet, "10.231.1.0/24");
        assert_eq!(nodes[1].link_ip, Ipv4Addr::new(10, 230, 0, 2));
        assert_eq!(
            controller_addr(&nodes),
            Some("10.230.0.1:4240".parse().expect("addr"))
        );
        assert!(plan(&dir, 3).is_err());
        assert!(plan(&dir, 0).is_err());
        assert_eq!(
            node_object(&nodes[1])["status"]["addresses"][0]["address"],
            "10.230.0.2"
        );
    }
}
