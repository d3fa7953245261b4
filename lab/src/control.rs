//! `lab up`, `apply`, `delete`, `status` and `down`: the lab's life cycle.
//!
//! Layout on this host, all of it removed by `down`:
//! - a node network namespace (`<prefix>node`) holding the bridge, the pods' host-side veths,
//!   the Service DNAT rules and the agent; the host's own network is never touched;
//! - one network namespace per Pod (`<prefix>p-<n>`), wired by Debian's `bridge` + `host-local`
//!   with `septum-cni` chained after them, a server process on every containerPort;
//! - the agent in standalone mode (`septum agent`), its datastore a directory with one file per
//!   object, its pins under the lab's own bpffs root;
//! - the lab directory (`/run/septum-lab`): `lab.json`, datastore, agent state, CNI cache.
//!
//! `lab up --nodes 2` builds two node namespaces instead, with agents in cluster mode and the
//! local controller (see [`crate::cluster`]); the pod, Service and CNI code here serves both,
//! each pod on its node's [`Site`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use septum_policy::model::{
    ContainerPort, Pod, PortRef, Protocol as ModelProtocol, ServiceBackend,
};

use crate::cni;
use crate::connect::Protocol;
use crate::ns::NetNs;
use crate::objects::{self, Datastore, Object};
use crate::proxy;
use crate::state::{LabDir, LabState, PodRecord, PortRecord, ServicePortRecord, ServiceRecord};

/// The CNI network name of the lab.
pub const NETWORK: &str = "septum-lab";
/// The lab's bridge in the node namespace.
pub const BRIDGE: &str = "septum-lab0";
/// The pods' subnet.
pub const POD_SUBNET: &str = "10.231.0.0/16";
/// Where ClusterIPs are allocated when a Service names none (10.96.0.0/16).
pub const SERVICE_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// See [`SERVICE_BASE`].
pub const SERVICE_PREFIX: u8 = 16;
/// The node name the lab's agent uses.
pub const NODE_NAME: &str = "lab-node";
/// How long `up`/`apply`/`delete` wait for the agent to enforce a change.
pub(crate) const ENFORCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the lab finds its programs.
#[derive(Clone, Debug)]
pub struct Programs {
    /// The `septum` binary (runs `septum agent` and `septum lab serve`).
    pub septum: PathBuf,
    /// Directories searched for CNI plugins (septum-cni's and Debian's).
    pub cni_path: Vec<PathBuf>,
}

impl Programs {
    /// This executable, and `septum-cni` beside it or on `SEPTUM_CNI_PATH`, then
    /// `/usr/lib/cni`.
    pub fn discover() -> Result<Self> {
        let septum = std::env::current_exe().context("finding the septum binary")?;
        let mut cni_path: Vec<PathBuf> = std::env::var_os("SEPTUM_CNI_PATH")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        if let Some(dir) = septum.parent() {
            cni_path.push(dir.to_path_buf());
        }
        cni_path.push(PathBuf::from("/usr/lib/cni"));
        Ok(Self { septum, cni_path })
    }
}

/// The running (or half-built) lab.
#[derive(Debug)]
pub struct Lab {
    pub(crate) dir: LabDir,
    pub(crate) programs: Programs,
    pub(crate) state: LabState,
}

/// Where one node keeps its agent and CNI files: the single node of the standalone lab, or
/// one node of a multi-node lab.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    /// The Kubernetes node name.
    pub(crate) node: String,
    /// Its network namespace.
    pub(crate) netns: String,
    /// Its agent's socket, state directory, log and pin root.
    pub(crate) socket: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) pins: PathBuf,
    /// CNI cache, IPAM data and DEL queue.
    pub(crate) cni: PathBuf,
    /// Its pods' subnet.
    pub(crate) subnet: String,
}

fn node_netns_name(dir: &LabDir) -> String {
    format!("{}node", dir.netns_prefix())
}

pub(crate) fn protocol_of(p: ModelProtocol) -> Protocol {
    match p {
        ModelProtocol::Tcp => Protocol::Tcp,
        ModelProtocol::Udp => Protocol::Udp,
        ModelProtocol::Sctp => Protocol::Sctp,
    }
}

/// The model of one object (a Pod or Service), through septum's own loader.
fn model_of(o: &Object) -> Result<septum_policy::Cluster> {
    let mut m = septum_crd::manifest::Manifests::new();
    m.load_bytes(&o.label(), &o.to_bytes());
    if m.has_errors() {
        bail!(
            "{}: {}",
            o.label(),
            m.diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(m.cluster)
}

/// The order objects are applied in: Namespaces and policies first, then Services, then Pods,
/// so a new pod meets its policy.
pub(crate) fn apply_rank(o: &Object) -> u8 {
    match o.kind.as_str() {
        "Namespace" => 0,
        "Pod" => 3,
        "Service" => 2,
        _ => 1,
    }
}

/// The lab's record of a pod's container ports.
pub(crate) fn port_records(pod: &Pod) -> Vec<PortRecord> {
    pod.ports
        .iter()
        .map(|p| PortRecord {
            name: p.name.clone(),
            port: p.port,
            protocol: protocol_of(p.protocol),
        })
        .collect()
}

pub(crate) fn model_pod(o: &Object) -> Result<Pod> {
    model_of(o)?
        .pods
        .into_values()
        .next()
        .with_context(|| format!("{} is not a pod septum reads", o.label()))
}

impl Lab {
    /// The lab recorded in `dir`, if any.
    pub fn open(dir: LabDir, programs: Programs) -> Result<Self> {
        let state = dir
            .load()?
            .context("no lab is up (start one with `septum lab up MANIFEST...`)")?;
        Ok(Self {
            dir,
            programs,
            state,
        })
    }

    /// The recorded state.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The lab directory.
    pub fn dir(&self) -> &LabDir {
        &self.dir
    }

    fn save(&self) -> Result<()> {
        self.dir.save(&self.state)
    }

    /// Whether this is a multi-node lab (agents in cluster mode, the local controller).
    pub fn is_cluster(&self) -> bool {
        !self.state.nodes.is_empty()
    }

    /// The single node of the standalone lab.
    fn single_site(&self) -> Site {
        Site {
            node: NODE_NAME.to_string(),
            netns: self.state.node_netns.clone(),
            socket: self.dir.agent_socket(),
            state: self.dir.agent_state(),
            log: self.dir.agent_log(),
            pins: self.dir.pin_root(),
            cni: self.dir.cni(),
            subnet: POD_SUBNET.to_string(),
        }
    }

    /// The site of `node` (`None`: the standalone lab's node).
    pub(crate) fn site(&self, node: Option<&str>) -> Result<Site> {
        let Some(name) = node else {
            return Ok(self.single_site());
        };
        let n = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("the lab has no node {name:?}"))?;
        let d = self.dir.node_dir(&n.name);
        Ok(Site {
            node: n.name.clone(),
            netns: n.netns.clone(),
            socket: d.join("run").join("agent.sock"),
            state: d.join("agent"),
            log: d.join("agent.log"),
            pins: self.dir.node_pin_root(&n.name),
            cni: d.join("cni"),
            subnet: n.pod_subnet.clone(),
        })
    }

    /// Every node's site.
    pub(crate) fn sites(&self) -> Result<Vec<Site>> {
        if self.state.nodes.is_empty() {
            return Ok(vec![self.single_site()]);
        }
        self.state
            .nodes
            .iter()
            .map(|n| self.site(Some(&n.name)))
            .collect()
    }

    /// `lab up`.
    pub fn up(dir: LabDir, programs: Programs, paths: &[PathBuf]) -> Result<Self> {
        let node_name = node_netns_name(&dir);
        if dir.load()?.is_some() || !NetNs::list_with_prefix(&node_name).is_empty() {
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
                node_netns: node_name.clone(),
                ..LabState::default()
            },
        };
        // Recorded before anything exists, so `down` can clean up a killed `up`.
        lab.save()?;
        let node = NetNs::create(&node_name)?;
        node.set_loopback_up()?;
        node.write_sysctl("net/ipv4/ip_forward", "1")?;
        // Pods share a bridge: without this, replies from a Service backend would reach the
        // client without passing conntrack's un-DNAT (kube-proxy relies on the same setting).
        node.write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
        Datastore::open(&lab.dir.datastore())?;
        lab.start_agent()?;
        lab.apply_objects(objs)?;
        lab.state.up = true;
        lab.save()?;
        Ok(lab)
    }

    fn start_agent(&mut self) -> Result<()> {
        let site = self.single_site();
        let pid = self.start_agent_at(&site)?;
        self.state.agent_pid = Some(pid);
        self.save()
    }

    /// Starts the agent of `site` (standalone on the lab's datastore, or in cluster mode on
    /// the local controller) and waits for its socket.
    pub(crate) fn start_agent_at(&mut self, site: &Site) -> Result<u32> {
        let node = NetNs::open(&site.netns)?;
        if let Some(parent) = site.log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::File::create(&site.log)?;
        let mut cmd = node.command(&self.programs.septum);
        cmd.arg("agent");
        if self.is_cluster() {
            let addr = crate::cluster::controller_addr(&self.state.nodes)
                .context("the lab has no nodes")?;
            let pki = crate::pki::PkiFiles::at(&self.dir.pki());
            let (cert, key) = pki.pair(&site.node);
            cmd.arg("--controller")
                .arg(format!("https://{addr}"))
                .arg("--controller-ca")
                .arg(pki.ca())
                .arg("--controller-tls-cert")
                .arg(cert)
                .arg("--controller-tls-key")
                .arg(key)
                .arg("--controller-server-name")
                .arg(crate::pki::CONTROLLER_NAME);
            // The flow API the relay asks: the node's own certificate on its link address,
            // clients (the controller) checked against the nodes' CA.
            let n = self
                .state
                .nodes
                .iter()
                .find(|n| n.name == site.node)
                .with_context(|| format!("the lab has no node {:?}", site.node))?;
            let flows = crate::cluster::flows_addr(n);
            let (cert, key) = pki.pair(&site.node);
            cmd.arg("--flows-addr")
                .arg(flows.to_string())
                .arg("--flows-tls-cert")
                .arg(cert)
                .arg("--flows-tls-key")
                .arg(key)
                .arg("--flows-tls-client-ca")
                .arg(pki.ca())
                .arg("--flows-advertise")
                .arg(format!("https://{flows}"));
        } else {
            cmd.arg("--manifests").arg(self.dir.datastore());
        }
        cmd.arg("--state-dir")
            .arg(&site.state)
            .arg("--socket")
            .arg(&site.socket)
            .arg("--pin-root")
            .arg(&site.pins)
            .arg("--node-name")
            .arg(&site.node)
            .arg("--health-addr")
            .arg("127.0.0.1:9878")
            .arg("--migrate")
            .env(
                "RUST_LOG",
                std::env::var("SEPTUM_LAB_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        detach_session(&mut cmd);
        let child = cmd.spawn().context("starting the agent")?;
        let deadline = Instant::now() + ENFORCE_TIMEOUT;
        while !site.socket.exists() {
            if Instant::now() > deadline || !pid_alive(child.id()) {
                bail!(
                    "the agent of {} did not start; its log ({}):\n{}",
                    site.node,
                    site.log.display(),
                    tail(&site.log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(child.id())
    }

    /// Restarts the agent (kill -9 included when `kill` is true), for restart tests.
    pub fn restart_agent(&mut self, kill: bool) -> Result<()> {
        if self.is_cluster() {
            bail!("restart-agent restarts the single-node lab's agent; this lab has several nodes");
        }
        if let Some(pid) = self.state.agent_pid.take() {
            stop_process(pid, kill);
        }
        let _ = std::fs::remove_file(self.dir.agent_socket());
        // The old agent's report must not pass for the new one's.
        let _ = std::fs::remove_file(
            self.dir
                .agent_state()
                .join(septum_agent::state_dir::STATUS_FILE),
        );
        self.start_agent()?;
        self.save()?;
        self.wait_enforced(&[], &[])
    }

    /// `lab apply`.
    pub fn apply(&mut self, paths: &[PathBuf]) -> Result<()> {
        objects::validate(paths)?;
        let objs = objects::read(paths)?;
        self.apply_objects(objs)
    }

    fn apply_objects(&mut self, objs: Vec<Object>) -> Result<()> {
        if self.is_cluster() {
            return self.apply_objects_cluster(objs);
        }
        let store = Datastore::open(&self.dir.datastore())?;
        let mut written = Vec::new();
        let mut objs = objs;
        objs.sort_by_key(apply_rank);
        for mut o in objs {
            match o.kind.as_str() {
                "Service" => self.prepare_service(&mut o)?,
                "Pod" => {
                    let pod = model_pod(&o)?;
                    let ports = port_records(&pod);
                    // Like the kubelet: the Pod object carries its node and, once the CNI
                    // result is in, its addresses (so `septum explain` over the datastore
                    // knows them too).
                    if let Some(rec) = self.state.pods.get(&o.key()) {
                        set_pod_status(&mut o, NODE_NAME, &rec.ips);
                    } else {
                        set_pod_status(&mut o, NODE_NAME, &[]);
                    }
                    written.push(store.write(&o)?);
                    let created = !self.state.pods.contains_key(&o.key());
                    self.ensure_pod(&o, pod.labels.clone(), ports, None)?;
                    if created && let Some(rec) = self.state.pods.get(&o.key()) {
                        set_pod_status(&mut o, NODE_NAME, &rec.ips.clone());
                        written.pop();
                        written.push(store.write(&o)?);
                    }
                    continue;
                }
                _ => {}
            }
            written.push(store.write(&o)?);
        }
        self.sync_services()?;
        self.save()?;
        self.wait_enforced(&written, &[])
    }

    pub(crate) fn prepare_service(&mut self, o: &mut Object) -> Result<()> {
        let key = o.key();
        let given = o.value["spec"]["clusterIP"].as_str().map(str::to_string);
        let ip: IpAddr = match given.as_deref() {
            Some(ip) if ip != "None" && !ip.is_empty() => ip
                .parse()
                .with_context(|| format!("{}: spec.clusterIP {ip:?}", o.label()))?,
            Some("None") => bail!(
                "{}: headless Services are not supported by the lab",
                o.label()
            ),
            _ => match self
                .state
                .services
                .get(&key)
                .and_then(|s| s.cluster_ips.first())
            {
                Some(ip) => *ip,
                None => {
                    let used: BTreeSet<Ipv4Addr> = self
                        .state
                        .services
                        .values()
                        .flat_map(|s| s.cluster_ips.iter())
                        .filter_map(|ip| match ip {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                        .collect();
                    IpAddr::V4(
                        proxy::allocate_cluster_ip(SERVICE_BASE, SERVICE_PREFIX, &used)
                            .context("the lab's Service range is full")?,
                    )
                }
            },
        };
        o.value["spec"]["clusterIP"] = json!(ip.to_string());
        o.value["spec"]["clusterIPs"] = json!([ip.to_string()]);
        let svc = model_of(o)?
            .services
            .into_values()
            .next()
            .with_context(|| format!("{} is not a Service septum reads", o.label()))?;
        self.state.services.insert(
            key,
            ServiceRecord {
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                cluster_ips: vec![ip],
                ports: svc
                    .ports
                    .iter()
                    .map(|p| ServicePortRecord {
                        name: p.name.clone(),
                        port: p.port,
                        target_port: match p.target() {
                            PortRef::Number(n) => n.to_string(),
                            PortRef::Name(n) => n,
                        },
                        protocol: protocol_of(p.protocol),
                    })
                    .collect(),
            },
        );
        Ok(())
    }

    /// Creates a pod (namespace, CNI ADD, server), or updates the record of an existing one
    /// (a relabelled pod keeps its namespace and address; changed ports restart its server).
    pub(crate) fn ensure_pod(
        &mut self,
        o: &Object,
        labels: BTreeMap<String, String>,
        ports: Vec<PortRecord>,
        node: Option<String>,
    ) -> Result<()> {
        let key = o.key();
        if let Some(rec) = self.state.pods.get_mut(&key) {
            rec.labels = labels;
            if rec.ports != ports {
                rec.ports = ports;
                if let Some(pid) = rec.server_pid.take() {
                    stop_process(pid, true);
                }
                let rec = rec.clone();
                let pid = self.start_server(&rec)?;
                if let Some(r) = self.state.pods.get_mut(&key) {
                    r.server_pid = Some(pid);
                }
            }
            return Ok(());
        }
        let n = self.state.pods.len();
        let mut netns = format!("{}p-{n}", self.dir.netns_prefix());
        let mut i = n;
        while self.state.pods.values().any(|p| p.netns == netns) {
            i += 1;
            netns = format!("{}p-{i}", self.dir.netns_prefix());
        }
        let mut rec = PodRecord {
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            netns: netns.clone(),
            container_id: format!("septum-lab-{}", netns.rsplit('-').next().unwrap_or("0")),
            ips: Vec::new(),
            labels,
            ports,
            server_pid: None,
            attached: false,
            node,
        };
        self.state.pods.insert(key.clone(), rec.clone());
        self.save()?;
        let ns = NetNs::create(&netns)?;
        ns.set_loopback_up()?;
        let result = self.cni_add(&rec)?;
        rec.ips = result;
        rec.attached = true;
        rec.server_pid = Some(self.start_server(&rec)?);
        self.state.pods.insert(key, rec);
        self.save()
    }

    /// The CNI configuration of the standalone lab's node.
    pub fn conflist(&self) -> Value {
        Self::conflist_at(&self.single_site())
    }

    /// The CNI configuration of a node: bridge + host-local on its subnet, septum-cni talking
    /// to its agent.
    pub(crate) fn conflist_at(site: &Site) -> Value {
        cni::lab_conflist(
            NETWORK,
            BRIDGE,
            &site.subnet,
            &site.cni.join("ipam"),
            vec![json!({
                "type": "septum-cni",
                "agentSocket": site.socket,
                "delQueueDir": site.cni.join("del-queue"),
                "addTimeout": "10s",
            })],
        )
    }

    pub(crate) fn runtime_conf(&self, rec: &PodRecord) -> cni::RuntimeConf {
        cni::RuntimeConf {
            container_id: rec.container_id.clone(),
            netns: PathBuf::from(format!("/run/netns/{}", rec.netns)),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), rec.namespace.clone()),
                ("K8S_POD_NAME".into(), rec.name.clone()),
            ],
        }
    }

    /// The CNI runner of the standalone lab's node.
    pub fn cni(&self) -> Result<cni::CniRunner> {
        self.cni_at(&self.single_site())
    }

    fn cni_at(&self, site: &Site) -> Result<cni::CniRunner> {
        Ok(cni::CniRunner::new(
            self.programs.cni_path.clone(),
            site.cni.join("cache"),
            Some(NetNs::open(&site.netns)?),
        ))
    }

    fn cni_add(&self, rec: &PodRecord) -> Result<Vec<IpAddr>> {
        let site = self.site(rec.node.as_deref())?;
        let result = self
            .cni_at(&site)?
            .add(&Self::conflist_at(&site), &self.runtime_conf(rec))
            .with_context(|| format!("CNI ADD of pod {}/{}", rec.namespace, rec.name))?;
        let ips = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect::<Vec<IpAddr>>();
        if ips.is_empty() {
            bail!(
                "CNI ADD of pod {}/{} gave no address: {result}",
                rec.namespace,
                rec.name
            );
        }
        Ok(ips)
    }

    pub(crate) fn cni_del(&self, rec: &PodRecord) -> Result<()> {
        let site = self.site(rec.node.as_deref())?;
        self.cni_at(&site)?
            .del(&Self::conflist_at(&site), &self.runtime_conf(rec))
            .with_context(|| format!("CNI DEL of pod {}/{}", rec.namespace, rec.name))
    }

    fn start_server(&self, rec: &PodRecord) -> Result<u32> {
        if rec.ports.is_empty() {
            return Ok(0);
        }
        let ns = NetNs::open(&rec.netns)?;
        std::fs::create_dir_all(self.dir.logs())?;
        let log = std::fs::File::create(self.dir.logs().join(format!("{}.log", rec.netns)))?;
        let mut cmd = ns.command(&self.programs.septum);
        cmd.arg("lab")
            .arg("serve")
            .arg("--lab-dir")
            .arg(self.dir.root());
        for p in &rec.ports {
            cmd.arg("--port")
                .arg(format!("{}/{}", p.port, p.protocol.as_str()));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        detach_session(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the server of {}/{}", rec.namespace, rec.name))?;
        Ok(child.id())
    }

    /// Rewrites the Service DNAT rules from the recorded Services and pods.
    pub(crate) fn sync_services(&self) -> Result<()> {
        let cluster = self.model();
        let mut rules = Vec::new();
        for svc in cluster.services.values() {
            for ip in &svc.cluster_ips {
                let IpAddr::V4(vip) = ip else { continue };
                for sp in &svc.ports {
                    // The selector's pods, then what the Service's manual EndpointSlices name
                    // (all a Service without a selector has), as kube-proxy merges them.
                    let mut endpoints: Vec<(Ipv4Addr, u16)> = cluster
                        .service_backends(svc, sp)
                        .filter_map(|b| match b {
                            ServiceBackend::Pod { pod, port } => {
                                pod.ips.iter().find_map(|ip| match ip {
                                    IpAddr::V4(v4) => Some((*v4, port)),
                                    IpAddr::V6(_) => None,
                                })
                            }
                            ServiceBackend::Address {
                                ip: IpAddr::V4(v4),
                                port,
                            } => Some((v4, port)),
                            ServiceBackend::Address { .. } => None,
                        })
                        .collect();
                    endpoints.dedup();
                    rules.push(proxy::ServicePortRule {
                        namespace: svc.namespace.clone(),
                        name: svc.name.clone(),
                        port_name: sp.name.clone(),
                        cluster_ip: *vip,
                        port: sp.port,
                        protocol: match sp.protocol {
                            ModelProtocol::Tcp => proxy::L4::Tcp,
                            ModelProtocol::Udp => proxy::L4::Udp,
                            ModelProtocol::Sctp => proxy::L4::Sctp,
                        },
                        endpoints,
                    });
                }
            }
        }
        // Every node DNATs its own pods' Service traffic (kube-proxy runs on every node), so
        // each node holds the rules of every Service.
        let script = proxy::render(&rules);
        for site in self.sites()? {
            proxy::apply(&NetNs::open(&site.netns)?, &script)
                .with_context(|| format!("programming Service rules on {}", site.node))?;
        }
        Ok(())
    }

    /// Waits until the agent enforces exactly `written` (path, digest) and none of `removed`,
    /// with every attached pod ready.
    fn wait_enforced(&self, written: &[(PathBuf, String)], removed: &[PathBuf]) -> Result<()> {
        let deadline = Instant::now() + ENFORCE_TIMEOUT;
        let status_file = self
            .dir
            .agent_state()
            .join(septum_agent::state_dir::STATUS_FILE);
        let mut last = String::from("no status yet");
        loop {
            if let Ok(bytes) = std::fs::read(&status_file)
                && let Ok(st) = serde_json::from_slice::<Value>(&bytes)
            {
                match enforced(&st, written, removed, &self.state) {
                    Ok(()) => return Ok(()),
                    Err(why) => last = why,
                }
                // A broken file will not heal by waiting.
                for (p, _) in written {
                    let f = &st["files"][p.display().to_string()];
                    if let Some(d) = f["diagnostics"].as_array()
                        && d.iter()
                            .any(|d| d.as_str().is_some_and(|s| s.starts_with("error")))
                    {
                        bail!("the agent refused {}: {f}", p.display());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not enforce the change within {ENFORCE_TIMEOUT:?} ({last}); its log: {}",
                    self.dir.agent_log().display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `lab delete`.
    pub fn delete(&mut self, paths: &[PathBuf]) -> Result<()> {
        let objs = objects::read(paths)?;
        if self.is_cluster() {
            return self.delete_cluster(objs);
        }
        let store = Datastore::open(&self.dir.datastore())?;
        let mut removed = Vec::new();
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
                removed.push(store.path_of(o));
            }
        }
        self.sync_services()?;
        self.save()?;
        self.wait_enforced(&[], &removed)
    }

    pub(crate) fn remove_pod(&self, rec: &PodRecord) -> Result<()> {
        if let Some(pid) = rec.server_pid {
            stop_process(pid, true);
        }
        self.cni_del(rec)?;
        NetNs::delete(&rec.netns)?;
        Ok(())
    }

    /// `lab status --output json`.
    pub fn status_json(&self) -> Value {
        let pods: Vec<Value> = self
            .state
            .pods
            .values()
            .map(|p| {
                let mut v = json!({
                    "namespace": p.namespace,
                    "name": p.name,
                    "labels": p.labels,
                    "ips": p.ips,
                    "ports": p.ports.iter().map(|pp| json!({
                        "name": pp.name, "port": pp.port, "protocol": pp.protocol.as_str(),
                    })).collect::<Vec<_>>(),
                    "netns": p.netns,
                });
                if let Some(node) = &p.node {
                    v["node"] = json!(node);
                }
                v
            })
            .collect();
        let services: Vec<Value> = self
            .state
            .services
            .values()
            .map(|s| {
                json!({
                    "namespace": s.namespace,
                    "name": s.name,
                    "clusterIPs": s.cluster_ips,
                    "ports": s.ports.iter().map(|sp| json!({
                        "name": sp.name,
                        "port": sp.port,
                        "targetPort": sp.target_port.parse::<u16>().map_or(json!(sp.target_port), |n| json!(n)),
                        "protocol": sp.protocol.as_str(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut out = json!({"pods": pods, "services": services});
        if self.is_cluster() {
            out["nodes"] = self
                .state
                .nodes
                .iter()
                .map(|n| {
                    json!({"name": n.name, "netns": n.netns, "podSubnet": n.pod_subnet,
                        "linkIP": n.link_ip.to_string(), "agentPid": n.agent_pid})
                })
                .collect();
            out["controllerPid"] = json!(self.state.controller_pid);
        }
        out
    }

    /// The model pods of the lab with their addresses (for probes via Services).
    pub fn model(&self) -> septum_policy::Cluster {
        let mut cluster = septum_crd::files::load(&[self.dir.datastore()]).cluster;
        for rec in self.state.pods.values() {
            if let Some(p) = cluster.pods.get_mut(&septum_policy::model::ObjectKey::new(
                &rec.namespace,
                &rec.name,
            )) {
                p.ips = rec.ips.clone();
                p.ports = rec
                    .ports
                    .iter()
                    .map(|pp| ContainerPort {
                        name: pp.name.clone(),
                        port: pp.port,
                        protocol: match pp.protocol {
                            Protocol::Tcp => ModelProtocol::Tcp,
                            Protocol::Udp => ModelProtocol::Udp,
                            Protocol::Sctp => ModelProtocol::Sctp,
                        },
                    })
                    .collect();
            }
        }
        cluster
    }
}

/// Sets `spec.nodeName` and, when known, `status.podIP(s)` of a Pod object.
pub(crate) fn set_pod_status(o: &mut Object, node: &str, ips: &[IpAddr]) {
    o.value["spec"]["nodeName"] = json!(node);
    if !ips.is_empty() {
        o.value["status"]["podIP"] = json!(ips[0].to_string());
        o.value["status"]["podIPs"] = json!(
            ips.iter()
                .map(|ip| json!({"ip": ip.to_string()}))
                .collect::<Vec<_>>()
        );
    }
}

/// Whether the agent's status shows every written file enforced at its digest, none of the
/// removed ones, and every attached pod ready.
fn enforced(
    st: &Value,
    written: &[(PathBuf, String)],
    removed: &[PathBuf],
    lab: &LabState,
) -> std::result::Result<(), String> {
    if st["synced"] != Value::Bool(true) {
        return Err("agent not synced".into());
    }
    for (p, digest) in written {
        let f = &st["files"][p.display().to_string()];
        if f["enforced"].as_str() != Some(digest) {
            return Err(format!("{} not enforced yet", p.display()));
        }
    }
    for p in removed {
        if !st["files"][p.display().to_string()].is_null() {
            return Err(format!("{} still enforced", p.display()));
        }
    }
    let ready: BTreeSet<&str> = st["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["state"] == "ready")
        .filter_map(|e| e["pod"].as_str())
        .collect();
    for (key, rec) in &lab.pods {
        if rec.attached && !ready.contains(key.as_str()) {
            return Err(format!("pod {key} not ready"));
        }
    }
    Ok(())
}

/// `lab down`: removes everything a lab created, from its record and by name (so a crash or a
/// killed `up` leaves nothing behind). Returns what it removed, for the user.
pub fn down(dir: &LabDir, programs: &Programs) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let state = dir.load().ok().flatten();
    if let Some(state) = &state {
        let lab = Lab {
            dir: dir.clone(),
            programs: programs.clone(),
            state: state.clone(),
        };
        for rec in state.pods.values() {
            if let Some(pid) = rec.server_pid {
                stop_process(pid, true);
            }
            // DEL while the agent still runs, so nothing is queued for a dead agent.
            if rec.attached
                && let Err(e) = lab.cni_del(rec)
            {
                done.push(format!("warning: {e:#}"));
            }
        }
        if let Some(pid) = state.agent_pid {
            stop_process(pid, false);
            done.push(format!("stopped the agent (pid {pid})"));
        }
        for n in &state.nodes {
            if let Some(pid) = n.agent_pid {
                stop_process(pid, false);
                done.push(format!("stopped the agent of {} (pid {pid})", n.name));
            }
        }
        if let Some(pid) = state.controller_pid {
            stop_process(pid, false);
            done.push(format!("stopped the controller (pid {pid})"));
        }
    }
    // Processes the record may not know (a killed `up`): every one started with this lab dir.
    for pid in processes_mentioning(dir.root()) {
        stop_process(pid, true);
        done.push(format!("stopped process {pid}"));
    }
    for name in NetNs::list_with_prefix(&dir.netns_prefix()) {
        if NetNs::delete(&name)? {
            done.push(format!("removed network namespace {name}"));
        }
    }
    let pins = dir.pin_root();
    if pins.exists() {
        std::fs::remove_dir_all(&pins).with_context(|| format!("removing {}", pins.display()))?;
        done.push(format!("removed pins {}", pins.display()));
    }
    if dir.root().exists() {
        std::fs::remove_dir_all(dir.root())
            .with_context(|| format!("removing {}", dir.root().display()))?;
        done.push(format!("removed {}", dir.root().display()));
    }
    Ok(done)
}

/// Starts `cmd` in a session of its own, so it outlives the command that started it and a
/// terminal's signals do not reach it.
pub(crate) fn detach_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // A zombie child is not alive for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Stops a process: SIGTERM (SIGKILL at once when `kill`), SIGKILL after 2 s, then reaps it
/// if it is our child.
pub fn stop_process(pid: u32, kill: bool) {
    let Ok(p) = i32::try_from(pid) else { return };
    if p <= 1 {
        return;
    }
    let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(p, sig) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while pid_alive(pid) && Instant::now() < deadline {
        // SAFETY: waitpid with WNOHANG on a pid that may not be our child just fails.
        unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(5));
    }
    if pid_alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    // SAFETY: as above.
    unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
}

/// Processes whose command line mentions `dir` (the lab's agent and servers).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
        {
            out.push(pid);
        }
    }
    out
}

pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
