//! The agent's core: the datapath, the endpoint registry, the allocated numbers and the
//! datastore's last good model, and the one operation that joins them, [`Agent::sync`]: compile
//! the node's model and write the difference into the pinned maps.
//!
//! Restart safety: on start the agent adopts the pinned maps and programs (enforcement never
//! stopped while it was away), swaps its own programs into the existing attachments, and drops
//! endpoints whose host interface vanished meanwhile. It prunes nothing until its first full
//! sync, which needs a good model: until the datastore has loaded once, only new endpoints are
//! written (in init-deny), and every entry the previous agent wrote stays as it was.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tonic::Status;

use septum_datapath::{Datapath, DatapathOptions, ifindex_of};
use septum_datapath_common::{EndpointInfo, MODE_ENFORCE, STATE_INIT_DENY, STATE_READY};
use septum_policy::model::{Cluster, ObjectKey};
use septum_policy::{InMemoryAllocations, node::node_state};
use septum_proto::agent::v1 as pb;

use crate::cluster::{HELD_FILE, Held};
use crate::config::AgentConfig;
use crate::datastore::{Datastore, FileStatus};
use crate::flows::Enricher;
use crate::flows::metrics::AgentMetrics;
use crate::reconcile::{ContentsDiff, MapContents, WriteStats, map_contents, node_model};
use crate::registry::{AttachmentKey, Endpoint, Registry};
use crate::state_dir::StateDir;

/// How long an Add may take when the request names no timeout.
const DEFAULT_ADD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the last sync did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    /// Microseconds from the start of compiling to the last map write.
    pub duration_us: u64,
    /// Map writes.
    pub writes: WriteStats,
    /// Entries the maps hold after it.
    pub entries: usize,
    /// Whether it was a full sync against what the kernel held.
    pub full: bool,
}

/// One endpoint in the status report.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointStatus {
    /// Endpoint id.
    pub id: u32,
    /// `namespace/name`, when known.
    pub pod: Option<String>,
    /// Host interface.
    pub host_ifname: String,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// `ready` or `init-deny`.
    pub state: &'static str,
    /// Identity (0 in init-deny).
    pub identity: u32,
}

/// What the agent reports (the status file and `/status`).
#[derive(Clone, Debug, Serialize)]
pub struct AgentStatus {
    /// Node name.
    pub node: String,
    /// Whether a good model has been enforced (first full sync done).
    pub synced: bool,
    /// Increases with every sync.
    pub generation: u64,
    /// The datastore's files: what is in force, what is on disk, and their problems.
    pub files: BTreeMap<String, FileStatus>,
    /// Problems of the datastore as a whole.
    pub diagnostics: Vec<String>,
    /// Endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// The last sync.
    pub last_sync: Option<SyncReport>,
    /// The last error, if the last sync or load failed.
    pub last_error: Option<String>,
    /// Cluster mode: the node-state stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerStatus>,
}

/// Cluster mode: where the agent stands with the controller.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ControllerStatus {
    /// The controller URL.
    pub url: String,
    /// Whether the stream is open.
    pub connected: bool,
    /// The epoch of the held state (hex; empty when nothing is held).
    pub epoch: String,
    /// The revision of the held state (0: none).
    pub revision: u64,
    /// Unix milliseconds of the last applied update.
    pub last_update_unix_ms: Option<u64>,
    /// Why the last update was refused or the stream ended, if it was.
    pub last_error: Option<String>,
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    dp: Datapath,
    dir: StateDir,
    registry: Registry,
    allocations: InMemoryAllocations,
    datastore: Datastore,
    base: Option<Cluster>,
    files: BTreeMap<String, FileStatus>,
    diagnostics: Vec<String>,
    /// What the maps hold, as far as this agent wrote them; `None` until the first full sync.
    applied: Option<MapContents>,
    generation: u64,
    last_sync: Option<SyncReport>,
    last_error: Option<String>,
    /// The flow pipeline's enrichment tables, rebuilt by every sync that compiles a model.
    enricher: Arc<RwLock<Arc<Enricher>>>,
    /// Cluster mode: the node state received from the controller.
    held: Option<Held>,
    controller: Option<ControllerStatus>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This network namespace's own addresses (the node), without loopback and link-local ones.
pub fn node_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if !ip.is_loopback() && !link_local && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.sort();
    out
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

impl Agent {
    /// Starts: state directory, datapath (adopting pins), endpoints re-attached, datastore
    /// loaded and, if it loads, the first full sync.
    pub fn start(cfg: AgentConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let dir = StateDir::open(&cfg.state_dir)?;
        let registry = dir
            .load_registry()
            .context("refusing to start without knowing this node's endpoints")?;
        let (allocations, bad) = dir.load_allocations()?;
        for b in bad {
            tracing::warn!(entry = %b, "skipping an unreadable persisted allocation");
        }
        let opts = DatapathOptions {
            pin_root: Some(cfg.pin_root.clone()),
            attach_mode: cfg.attach_mode,
            migrate: cfg.migrate,
            ..DatapathOptions::default()
        };
        let dp = Datapath::load(&opts).context("loading the datapath")?;
        let datastore =
            Datastore::with_cache(cfg.manifests.clone(), cfg.state_dir.join("last-good"));
        let enricher = Arc::new(RwLock::new(Arc::new(Enricher::empty(&cfg.node_name))));
        let held = match (&cfg.controller, dir.load_bytes(HELD_FILE)?) {
            (Some(_), Some(bytes)) => match Held::decode(&bytes) {
                Ok(h) if h.state.node == cfg.node_name => {
                    tracing::info!(
                        revision = h.revision,
                        "enforcing the node state held before the restart until the controller answers"
                    );
                    Some(h)
                }
                Ok(h) => {
                    tracing::warn!(held = %h.state.node, "the held node state is another node's; ignoring it");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the held node state is unreadable; ignoring it");
                    None
                }
            },
            _ => None,
        };
        let controller = cfg.controller.as_ref().map(|url| ControllerStatus {
            url: url.clone(),
            epoch: held
                .as_ref()
                .map(|h| format!("{:x}", h.epoch))
                .unwrap_or_default(),
            revision: held.as_ref().map_or(0, |h| h.revision),
            ..ControllerStatus::default()
        });
        let mut agent = Self {
            held,
            controller,
            enricher,
            cfg,
            dp,
            dir,
            registry,
            allocations,
            datastore,
            base: None,
            files: BTreeMap::new(),
            diagnostics: Vec::new(),
            applied: None,
            generation: 0,
            last_sync: None,
            last_error: None,
        };
        agent.readopt_endpoints()?;
        agent.reload();
        agent.sync();
        Ok(agent)
    }

    /// Re-attaches this build's programs to every registered endpoint whose host interface is
    /// still there, and forgets the others.
    fn readopt_endpoints(&mut self) -> anyhow::Result<()> {
        let mut gone = Vec::new();
        for ep in self.registry.endpoints.values() {
            match ifindex_of(&ep.host_ifname) {
                Ok(i) if i == ep.host_ifindex => {
                    if let Err(e) = self.dp.attach(&ep.host_ifname) {
                        tracing::error!(endpoint.id = ep.id, error = %e, "cannot re-attach");
                    }
                }
                _ => gone.push(ep.id),
            }
        }
        for id in gone {
            if let Some(ep) = self.registry.endpoints.remove(&id) {
                tracing::info!(endpoint.id = id, ifname = %ep.host_ifname, "host interface gone while the agent was away; forgetting the endpoint");
                let _ = self.dp.detach("", ep.host_ifindex);
            }
        }
        self.dir.save_registry(&self.registry)?;
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The endpoints.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reloads the datastore; keeps the previous model when the load is refused. (Cluster
    /// mode has no datastore: nothing to do.)
    pub fn reload(&mut self) {
        if self.cfg.controller.is_some() {
            return;
        }
        match self.datastore.load() {
            Ok(l) => {
                for (f, st) in &l.files {
                    if st.enforced.as_ref() != Some(&st.current) {
                        tracing::warn!(file = %f, problems = ?st.diagnostics, "file has errors; its last good version stays in force");
                    }
                }
                self.base = Some(l.cluster);
                self.files = l.files;
                self.diagnostics = l.diagnostics;
                self.last_error = None;
            }
            Err(r) => {
                tracing::warn!(problems = ?r.diagnostics, "datastore refused; the previous model stays in force");
                self.files = r.files;
                self.last_error = Some(format!(
                    "datastore refused, previous model in force: {}",
                    r.diagnostics.join("; ")
                ));
                self.diagnostics = r.diagnostics;
            }
        }
    }

    /// Compiles the node's model and writes the difference into the maps (see module docs).
    pub fn sync(&mut self) {
        let _ = self.sync_checked();
    }

    fn sync_checked(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let result = self.sync_inner();
        self.generation += 1;
        let out = match result {
            Ok(mut report) => {
                report.duration_us = started.elapsed().as_micros() as u64;
                tracing::debug!(generation = self.generation, ?report, "synced");
                self.last_sync = Some(report);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "sync failed; the next sync re-reads the maps");
                self.applied = None;
                self.last_error = Some(e.clone());
                Err(e)
            }
        };
        if let Err(e) = self.dir.save_status(&self.status()) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
        out
    }

    /// No good model yet: write new endpoints (in init-deny) and nothing else.
    fn sync_without_model(&mut self) -> Result<SyncReport, String> {
        let mut writes = WriteStats::default();
        for ep in self.registry.endpoints.values() {
            if self.dp.endpoints.get(ep.host_ifindex).is_none() {
                self.dp
                    .endpoints
                    .insert(ep.host_ifindex, init_deny(ep.id))
                    .map_err(|e| e.to_string())?;
                writes.upserted += 1;
            }
        }
        Ok(SyncReport {
            writes,
            ..SyncReport::default()
        })
    }

    /// Writes `desired` into the maps: the difference from what this agent last wrote, or from
    /// what the maps hold on the first sync.
    fn write_contents(&mut self, desired: MapContents) -> Result<SyncReport, String> {
        let full = self.applied.is_none();
        let diff = match &self.applied {
            Some(applied) => ContentsDiff::between(applied, &desired),
            None => ContentsDiff::between(
                &MapContents::read(&self.dp).map_err(|e| e.to_string())?,
                &desired,
            ),
        };
        let writes = diff.apply(&mut self.dp).map_err(|e| e.to_string())?;
        let entries = desired.len();
        self.applied = Some(desired);
        Ok(SyncReport {
            duration_us: 0,
            writes,
            entries,
            full,
        })
    }

    /// Cluster mode: the held node state, as the controller computed it, with the addresses
    /// of this node's endpoints filled into the ipcache where the controller does not know
    /// them yet (a pod's IP reaches the API server only after its CNI ADD returned).
    fn sync_cluster(&mut self) -> Result<SyncReport, String> {
        let Some(held) = &self.held else {
            return self.sync_without_model();
        };
        let mut desired = map_contents(&held.state, &self.registry);
        for ep in self.registry.endpoints.values() {
            let Some(info) = desired.endpoints.get(&ep.host_ifindex).copied() else {
                continue;
            };
            if info.state != STATE_READY {
                continue;
            }
            for ip in &ep.ips {
                desired
                    .ipcache
                    .entry(septum_policy::cidr::Cidr::host(*ip).lpm_key())
                    .or_insert(septum_datapath_common::IpCacheEntry {
                        identity: info.identity,
                        cidr_identity: 0,
                        kind: septum_datapath_common::IPCACHE_KIND_POD,
                        _pad: [0; 3],
                    });
            }
        }
        // Those too are this node's pods.
        desired.mark_local_pods();
        let previous = self.enricher.read().ok().map(|g| g.clone());
        let enricher = Enricher::from_endpoints(
            &self.cfg.node_name,
            self.registry
                .endpoints
                .values()
                .filter_map(|ep| ep.pod.as_ref().map(|p| (ep.ips.as_slice(), p))),
            &held.state,
            previous.as_deref(),
        );
        if let Ok(mut g) = self.enricher.write() {
            *g = Arc::new(enricher);
        }
        self.write_contents(desired)
    }

    /// Cluster mode: applies one update of the node-state stream, persists the new held state
    /// and writes the kernel. An update that does not apply changes nothing.
    pub fn apply_update(&mut self, u: &septum_policy::wire::Update) -> Result<(), String> {
        let next = Held::after(self.held.as_ref(), &self.cfg.node_name, u)?;
        self.dir
            .save_bytes(HELD_FILE, &next.encode())
            .map_err(|e| format!("persisting the node state: {e}"))?;
        if let Some(c) = &mut self.controller {
            c.epoch = format!("{:x}", next.epoch);
            c.revision = next.revision;
            c.last_update_unix_ms = Some(now_unix_ms());
            c.last_error = None;
        }
        self.held = Some(next);
        self.sync_checked()
    }

    /// The epoch and revision held (zeros: nothing).
    pub fn held_revision(&self) -> (u64, u64) {
        self.held.as_ref().map_or((0, 0), |h| (h.epoch, h.revision))
    }

    /// Keeps enforcing the held state but asks the controller for a snapshot next time.
    pub fn forget_revision(&mut self) {
        if let Some(h) = &mut self.held {
            h.epoch = 0;
        }
    }

    /// Records whether the stream is open (and why it closed).
    pub fn set_controller_connected(&mut self, connected: bool, error: Option<String>) {
        if let Some(c) = &mut self.controller {
            c.connected = connected;
            if error.is_some() {
                c.last_error = error;
            }
        }
        if let Err(e) = self.dir.save_status(&self.status()) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
    }

    fn sync_inner(&mut self) -> Result<SyncReport, String> {
        if self.cfg.controller.is_some() {
            return self.sync_cluster();
        }
        let Some(base) = &self.base else {
            return self.sync_without_model();
        };
        let node = self.cfg.node_name.clone();
        let model = node_model(base, &self.registry, &node, &node_addresses());
        let (state, allocations) = septum_policy::compile(&model, self.allocations.clone());
        if allocations != self.allocations {
            self.dir
                .save_allocations(&allocations)
                .map_err(|e| e.to_string())?;
            self.allocations = allocations;
        }
        let previous = self.enricher.read().ok().map(|g| g.clone());
        let enricher = Enricher::build(&node, &model, &state, previous.as_deref());
        if let Ok(mut g) = self.enricher.write() {
            *g = Arc::new(enricher);
        }
        let slice = node_state(&model, &state, &node);
        let desired = map_contents(&slice, &self.registry);
        self.write_contents(desired)
    }

    /// The status report.
    pub fn status(&self) -> AgentStatus {
        let endpoints = self
            .registry
            .endpoints
            .values()
            .map(|ep| {
                let info = self.endpoint_info(ep);
                EndpointStatus {
                    id: ep.id,
                    pod: ep.pod.as_ref().map(ToString::to_string),
                    host_ifname: ep.host_ifname.clone(),
                    ips: ep.ips.clone(),
                    state: if info.state == STATE_READY {
                        "ready"
                    } else {
                        "init-deny"
                    },
                    identity: info.identity,
                }
            })
            .collect();
        AgentStatus {
            node: self.cfg.node_name.clone(),
            synced: self.applied.is_some(),
            generation: self.generation,
            files: self.files.clone(),
            diagnostics: self.diagnostics.clone(),
            endpoints,
            last_sync: self.last_sync.clone(),
            last_error: self.last_error.clone(),
            controller: self.controller.clone(),
        }
    }

    /// The enrichment tables the flow pipeline reads (shared; every sync replaces them).
    pub fn enricher_cell(&self) -> Arc<RwLock<Arc<Enricher>>> {
        self.enricher.clone()
    }

    /// What the flow pipeline reads from the datapath: the ring buffer (once; `None` after)
    /// and a read-only handle on conntrack and the counters.
    pub fn flow_sources(
        &mut self,
    ) -> Result<
        (
            Option<septum_datapath::EventReader>,
            septum_datapath::Observer,
        ),
        String,
    > {
        let observer = self.dp.observer().map_err(|e| e.to_string())?;
        Ok((self.dp.take_events(), observer))
    }

    /// The agent's part of the metrics page.
    pub fn metrics(&self) -> AgentMetrics {
        use septum_datapath_common::map_sizes;
        let (ep, ipc, pol, svc) = self.applied.as_ref().map_or((0, 0, 0, 0), |a| {
            (
                a.endpoints.len(),
                a.ipcache.len(),
                a.policy.len(),
                a.services.len(),
            )
        });
        AgentMetrics {
            counters: self.dp.counters().unwrap_or_default(),
            maps: vec![
                ("endpoints", ep as u64, u64::from(map_sizes::ENDPOINTS)),
                ("ipcache", ipc as u64, u64::from(map_sizes::IPCACHE)),
                ("policy", pol as u64, u64::from(map_sizes::POLICY)),
                ("services", svc as u64, u64::from(map_sizes::SERVICES)),
            ],
            endpoints: self.registry.endpoints.len() as u64,
            generation: self.generation,
            synced: self.applied.is_some(),
        }
    }

    /// Whether Add can attach programs now.
    pub fn ready(&self) -> bool {
        true
    }

    /// Whether the first full sync is done.
    pub fn synced(&self) -> bool {
        self.applied.is_some()
    }

    /// What the datapath holds for an endpoint: as last written, else as read from the map,
    /// else init-deny (what the programs do without an entry).
    fn endpoint_info(&self, ep: &Endpoint) -> EndpointInfo {
        self.applied
            .as_ref()
            .and_then(|a| a.endpoints.get(&ep.host_ifindex).copied())
            .or_else(|| self.dp.endpoints.get(ep.host_ifindex))
            .unwrap_or_else(|| init_deny(ep.id))
    }

    fn endpoint_state(&self, ep: &Endpoint) -> (pb::EndpointState, u32) {
        let info = self.endpoint_info(ep);
        if info.state == STATE_READY {
            (pb::EndpointState::Ready, info.identity)
        } else {
            (pb::EndpointState::InitDeny, 0)
        }
    }

    /// CNI ADD (see the proto for the contract).
    pub fn add(&mut self, req: pb::AddRequest) -> Result<pb::AddResponse, Status> {
        let deadline = Instant::now()
            + match req.timeout_ms {
                0 => DEFAULT_ADD_TIMEOUT,
                ms => Duration::from_millis(u64::from(ms)),
            };
        let key = attachment_key(req.attachment.as_ref(), &req.network)?;
        let host = req
            .host_interface
            .as_ref()
            .filter(|h| h.ifindex != 0 && !h.name.is_empty())
            .ok_or_else(|| Status::invalid_argument("host_interface: ifindex and name required"))?;
        let ips = parse_ips(&req.ips)?;
        let pod = req
            .pod
            .as_ref()
            .filter(|p| !p.namespace.is_empty() && !p.name.is_empty())
            .map(|p| ObjectKey::new(&p.namespace, &p.name));

        if let Some(existing) = self.registry.by_attachment(&key) {
            if existing.host_ifindex == host.ifindex && existing.host_ifname == host.name {
                let (state, identity) = self.endpoint_state(existing);
                return Ok(pb::AddResponse {
                    endpoint_id: u64::from(existing.id),
                    identity,
                    state: state as i32,
                });
            }
            // The same attachment on another interface: the old one is stale.
            let id = existing.id;
            self.remove_endpoint(id)?;
        }
        match ifindex_of(&host.name) {
            Ok(i) if i == host.ifindex => {}
            Ok(i) => {
                return Err(Status::failed_precondition(format!(
                    "host interface {} has ifindex {i} here, not {}",
                    host.name, host.ifindex
                )));
            }
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "host interface {}: {e}",
                    host.name
                )));
            }
        }
        let id = self.registry.allocate_id();
        // The entry first: from the moment the programs are attached, they find it (init-deny).
        self.dp
            .endpoints
            .insert(host.ifindex, init_deny(id))
            .map_err(|e| internal("writing the endpoint", e))?;
        if let Err(e) = self.dp.attach(&host.name) {
            let _ = self.dp.endpoints.remove(host.ifindex);
            let _ = self.dp.detach(&host.name, host.ifindex);
            return Err(internal("attaching the programs", e));
        }
        let ep = Endpoint {
            id,
            attachment: key,
            pod,
            pod_uid: req.pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default(),
            netns: req.netns.clone(),
            host_ifindex: host.ifindex,
            host_ifname: host.name.clone(),
            ips,
            created_unix_ms: now_unix_ms(),
        };
        if Instant::now() > deadline {
            let _ = self.dp.detach(&host.name, host.ifindex);
            let _ = self.dp.endpoints.remove(host.ifindex);
            return Err(Status::deadline_exceeded(
                "the attachment took longer than the plugin waits; undone",
            ));
        }
        self.registry.endpoints.insert(id, ep.clone());
        if let Err(e) = self.dir.save_registry(&self.registry) {
            self.registry.endpoints.remove(&id);
            let _ = self.dp.detach(&host.name, host.ifindex);
            let _ = self.dp.endpoints.remove(host.ifindex);
            return Err(internal("persisting the endpoint", e));
        }
        tracing::info!(endpoint.id = id, pod = ?ep.pod, ifname = %ep.host_ifname, "endpoint added");
        self.sync();
        let (state, identity) = self.endpoint_state(&ep);
        Ok(pb::AddResponse {
            endpoint_id: u64::from(id),
            identity,
            state: state as i32,
        })
    }

    /// Detaches and forgets an endpoint (the next sync removes its map entry).
    fn remove_endpoint(&mut self, id: u32) -> Result<(), Status> {
        let Some(ep) = self.registry.endpoints.remove(&id) else {
            return Ok(());
        };
        // Detach by name only if the name is still this endpoint's interface: a new veth may
        // have taken it.
        let ifname = match ifindex_of(&ep.host_ifname) {
            Ok(i) if i == ep.host_ifindex => ep.host_ifname.as_str(),
            _ => "",
        };
        if let Err(e) = self.dp.detach(ifname, ep.host_ifindex) {
            tracing::warn!(endpoint.id = id, error = %e, "detach failed");
        }
        if self.applied.is_none() {
            // No full sync will prune it soon: remove the entry now (it is ours alone).
            let _ = self.dp.endpoints.remove(ep.host_ifindex);
        }
        self.dir
            .save_registry(&self.registry)
            .map_err(|e| internal("persisting the registry", e))?;
        tracing::info!(endpoint.id = id, pod = ?ep.pod, "endpoint removed");
        Ok(())
    }

    /// CNI DEL.
    pub fn del(&mut self, req: pb::DelRequest) -> Result<pb::DelResponse, Status> {
        let key = attachment_key(req.attachment.as_ref(), &req.network)?;
        let Some(ep) = self.registry.by_attachment(&key) else {
            return Ok(pb::DelResponse { found: false });
        };
        if req.queued_at_unix_ms != 0 && ep.created_unix_ms > req.queued_at_unix_ms {
            // A DEL queued before this attachment was registered again belongs to its
            // predecessor.
            return Ok(pb::DelResponse { found: false });
        }
        let id = ep.id;
        self.remove_endpoint(id)?;
        self.sync();
        Ok(pb::DelResponse { found: true })
    }

    /// CNI CHECK.
    pub fn check(&self, req: pb::CheckRequest) -> Result<pb::CheckResponse, Status> {
        let key = attachment_key(req.attachment.as_ref(), &req.network)?;
        let fail = |reason: String| Ok(pb::CheckResponse { ok: false, reason });
        let Some(ep) = self.registry.by_attachment(&key) else {
            return fail(format!("attachment {key} is not registered"));
        };
        if let Some(h) = &req.host_interface
            && (h.ifindex != ep.host_ifindex || h.name != ep.host_ifname)
        {
            return fail(format!(
                "registered on {} (ifindex {}), the plugin sees {} (ifindex {})",
                ep.host_ifname, ep.host_ifindex, h.name, h.ifindex
            ));
        }
        if ifindex_of(&ep.host_ifname).ok() != Some(ep.host_ifindex) {
            return fail(format!("host interface {} is gone", ep.host_ifname));
        }
        if self.dp.endpoints.get(ep.host_ifindex).is_none() {
            return fail(format!("no datapath entry for ifindex {}", ep.host_ifindex));
        }
        let mut want = parse_ips(&req.ips)?;
        want.sort();
        let mut have = ep.ips.clone();
        have.sort();
        if want != have {
            return fail(format!(
                "addresses differ: registered {have:?}, result lists {want:?}"
            ));
        }
        Ok(pb::CheckResponse {
            ok: true,
            reason: String::new(),
        })
    }

    /// CNI GC.
    pub fn gc(&mut self, req: pb::GcRequest) -> Result<pb::GcResponse, Status> {
        let mut valid = Vec::new();
        for a in &req.valid_attachments {
            valid.push(attachment_key(Some(a), &req.network)?);
        }
        let stale: Vec<(u32, AttachmentKey)> = self
            .registry
            .endpoints
            .values()
            .filter(|e| e.attachment.network == req.network && !valid.contains(&e.attachment))
            .map(|e| (e.id, e.attachment.clone()))
            .collect();
        let mut removed = Vec::new();
        for (id, key) in stale {
            self.remove_endpoint(id)?;
            removed.push(pb::Attachment {
                container_id: key.container_id,
                ifname: key.ifname,
            });
        }
        if !removed.is_empty() {
            self.sync();
        }
        Ok(pb::GcResponse { removed })
    }
}

fn init_deny(id: u32) -> EndpointInfo {
    EndpointInfo {
        endpoint_id: id,
        identity: 0,
        flags: 0,
        mode: MODE_ENFORCE,
        state: STATE_INIT_DENY,
        _pad: 0,
    }
}

fn attachment_key(a: Option<&pb::Attachment>, network: &str) -> Result<AttachmentKey, Status> {
    let a = a.ok_or_else(|| Status::invalid_argument("attachment: required"))?;
    if a.container_id.is_empty() || a.ifname.is_empty() || network.is_empty() {
        return Err(Status::invalid_argument(
            "attachment: network, container_id and ifname must not be empty",
        ));
    }
    Ok(AttachmentKey {
        network: network.to_string(),
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
    })
}

fn parse_ips(ips: &[String]) -> Result<Vec<IpAddr>, Status> {
    ips.iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| Status::invalid_argument(format!("ips: {s:?} is not an IP address")))
        })
        .collect()
}
