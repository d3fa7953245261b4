//! The controller: its [`Context`] (client, engine state, metrics, the FlowPolicy store, the
//! status queue, the node-delta broadcast), its watchers, and the loop that feeds every watch
//! event to the [`Compiler`], persists new identity numbers before publishing the node deltas
//! that use them, and queues FlowPolicy status reconciles.
//!
//! Watchers: Namespaces, Nodes, Pods, Services, EndpointSlices, NetworkPolicies, FlowPolicies (through a
//! reflector, whose store the status reconcile reads) and ClusterNetworkPolicies. The last is an
//! upstream CRD that may not be installed: a 404 on its list counts as an empty, synced kind
//! (logged once) and the watcher keeps retrying with backoff, so installing the CRD later is
//! picked up. Every watcher relists on 410 Gone (kube's watcher does; the [`Feed`] turns the
//! relist into exactly the changes missed) and backs off on errors.
//!
//! EndpointSlices are watched only where they add to what the engine derives: the engine takes
//! each Service's selector backends from the pods (EndpointSlice semantics: a named
//! `targetPort` resolved per pod), so the slices Kubernetes derives from selectors are
//! filtered out by the API server (a label selector on `managed-by`) and their churn never
//! reaches the controller. What is left are the slices of Services without a selector, managed
//! by hand or mirrored from Endpoints, whose addresses are those Services' backends.
//!
//! [`Feed`]: crate::feed::Feed

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{BoxStream, select_all};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use septum_crd::{ClusterNetworkPolicy, FlowPolicy};
use septum_policy::diagnostic::Diagnostic;
use septum_policy::model::ObjectKey;
use tokio::sync::{broadcast, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::compiler::{Compiler, Observed, Verdict};
use crate::feed::{Kind, Watched};
use crate::identities;
use crate::metrics::Metrics;
use crate::node_state::{NodeDelta, Revisioned};
use crate::stream::Published;

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The persisted identity allocation does not load.
    #[error("the persisted IdentityAllocation is invalid: {}", render(.0))]
    InvalidAllocation(Vec<Diagnostic>),
}

fn render(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What every part of the controller shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The agents connected to the node-state stream (for the flow relay).
    pub agents: crate::relay::Agents,
    compiler: Mutex<Option<Compiler>>,
    flow_policies: Store<FlowPolicy>,
    pub(crate) status_queue: mpsc::UnboundedSender<ObjectKey>,
    updates: broadcast::Sender<Arc<Vec<NodeDelta>>>,
    epoch: u64,
    published: Mutex<Published>,
    /// Set (under the compiler lock) from the moment a change's node states are computed
    /// until its deltas are published.
    unpublished: AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Context {
    fn compiler(&self) -> MutexGuard<'_, Option<Compiler>> {
        // A panic while holding the lock cannot leave the compiler half-updated in a way a
        // reader could misuse more than a missing state; keep serving.
        self.compiler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the compiler, once the persisted allocations are loaded.
    pub fn with_compiler<R>(&self, f: impl FnOnce(&Compiler) -> R) -> Option<R> {
        self.compiler().as_ref().map(f)
    }

    /// The published state of a node (what its agent gets), once the node has one; `None`
    /// also while a change is computed but not yet published.
    pub fn node_state(&self, node: &str) -> Option<Revisioned> {
        let guard = self.compiler();
        if self.unpublished.load(Ordering::Acquire) {
            return None;
        }
        guard.as_ref()?.nodes().get(node)
    }

    /// The published state of a node, waiting while a change is computed but not yet
    /// published (its identity numbers may not be persisted yet). Revision 0 and empty for a
    /// node nobody has mentioned.
    pub async fn snapshot(&self, node: &str) -> Revisioned {
        loop {
            {
                let guard = self.compiler();
                if !self.unpublished.load(Ordering::Acquire) {
                    return guard
                        .as_ref()
                        .and_then(|c| c.nodes().get(node))
                        .unwrap_or_else(|| crate::stream::empty(node));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// This run's epoch: the node-state stream's revisions count within it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What has been published to the agents, their acks and the policies' required revisions.
    pub fn published(&self) -> MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far the current version of a FlowPolicy has reached the nodes.
    pub fn rollout(&self, key: &ObjectKey) -> crate::status::Rollout {
        let p = self.published();
        let nodes = p.nodes().count();
        let (programmed, pending) = p.programmed(key).unwrap_or((0, Vec::new()));
        crate::status::Rollout {
            programmed,
            nodes,
            pending,
        }
    }

    /// Records that `node`'s agent has programmed `revision`, and queues the status of every
    /// FlowPolicy whose programmed count that changes.
    pub fn acked(&self, node: &str, revision: u64) {
        let changed = self.published().ack(node, revision);
        for key in changed {
            let _ = self.status_queue.send(key);
        }
    }

    /// Whether the first full sync has happened.
    pub fn is_synced(&self) -> bool {
        self.with_compiler(Compiler::is_synced).unwrap_or(false)
    }

    /// The deltas of every change, one message per change (the snapshot of every node first).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<NodeDelta>>> {
        self.updates.subscribe()
    }

    /// The verdict of a FlowPolicy.
    pub fn verdict(&self, key: &ObjectKey) -> Option<Verdict> {
        self.with_compiler(|c| c.verdict(key).cloned()).flatten()
    }

    /// A FlowPolicy as the reflector last saw it.
    pub fn flow_policy(&self, key: &ObjectKey) -> Option<Arc<FlowPolicy>> {
        self.flow_policies
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
    }
}

/// The controller, before it runs.
#[derive(Debug)]
pub struct Controller {
    ctx: Arc<Context>,
    writer: reflector::store::Writer<FlowPolicy>,
    status: mpsc::UnboundedReceiver<ObjectKey>,
}

fn describe<K: Watched>(event: &Event<K>) -> String {
    match event {
        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => o.key().to_string(),
        Event::Init => "(list)".to_string(),
        Event::InitDone => "(list done)".to_string(),
    }
}

fn event_name<K>(event: &Event<K>) -> &'static str {
    match event {
        Event::Apply(_) => "apply",
        Event::Delete(_) => "delete",
        Event::Init => "init",
        Event::InitApply(_) => "init-apply",
        Event::InitDone => "init-done",
    }
}

type Observations = BoxStream<'static, Result<Observed, watcher::Error>>;

fn watch<K: Watched>(client: &Client, wrap: fn(Event<K>) -> Observed) -> Observations {
    watch_with(client, watcher::Config::default(), wrap)
}

fn watch_with<K: Watched>(
    client: &Client,
    config: watcher::Config,
    wrap: fn(Event<K>) -> Observed,
) -> Observations {
    watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .map_ok(wrap)
        .boxed()
}

/// The label selector of the EndpointSlices septum reads: every slice not derived from a
/// Service's selector by the EndpointSlice controller.
pub fn manual_slices_selector() -> String {
    format!(
        "{}!={}",
        septum_policy::model::MANAGED_BY_LABEL,
        septum_policy::model::ENDPOINTSLICE_CONTROLLER
    )
}

fn is_not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.is_not_found()
    )
}

impl Controller {
    /// A controller talking to the API through `client`.
    pub fn new(client: Client) -> Self {
        let (store, writer) = reflector::store();
        let (status_queue, status) = mpsc::unbounded_channel();
        let (updates, _) = broadcast::channel(1024);
        let ctx = Arc::new(Context {
            client,
            metrics: Arc::new(Metrics::default()),
            agents: crate::relay::Agents::default(),
            compiler: Mutex::new(None),
            flow_policies: store,
            status_queue,
            updates,
            epoch: crate::stream::new_epoch(),
            published: Mutex::new(Published::default()),
            unpublished: AtomicBool::new(false),
        });
        Self {
            ctx,
            writer,
            status,
        }
    }

    /// The shared context (to subscribe to deltas or read node states).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Loads the persisted identity numbers, then watches and compiles until the task is
    /// dropped. Fails only when the persisted numbers cannot be read.
    pub async fn run(self) -> Result<(), Error> {
        let ctx = self.ctx;
        let allocations = identities::load(&ctx.client).await?;
        info!(
            allocations = allocations.entries().count(),
            "loaded persisted identity numbers"
        );
        *ctx.compiler() = Some(Compiler::new(allocations));
        tokio::spawn(crate::status::run_status(ctx.clone(), self.status));

        let client = &ctx.client;
        let flow_policies = reflector(
            self.writer,
            watcher(
                Api::<FlowPolicy>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map_ok(Observed::FlowPolicy)
        .boxed();
        let cnp_absent_logged = Arc::new(AtomicBool::new(false));
        let cluster_network_policies = watch::<ClusterNetworkPolicy>(
            client,
            Observed::ClusterNetworkPolicy,
        )
        .map(move |r| match r {
            Err(e) if is_not_found(&e) => {
                if !cnp_absent_logged.swap(true, Ordering::Relaxed) {
                    info!(
                        "ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) is not served: running without it until its CRD is installed"
                    );
                }
                Ok(Observed::Absent(Kind::ClusterNetworkPolicy))
            }
            other => other,
        })
        .boxed();
        let mut events = select_all([
            watch::<core::Namespace>(client, Observed::Namespace),
            watch::<core::Node>(client, Observed::Node),
            watch::<core::Pod>(client, Observed::Pod),
            watch::<core::Service>(client, Observed::Service),
            watch_with::<discovery::EndpointSlice>(
                client,
                watcher::Config::default().labels(&manual_slices_selector()),
                Observed::EndpointSlice,
            ),
            watch::<net::NetworkPolicy>(client, Observed::NetworkPolicy),
            flow_policies,
            cluster_network_policies,
        ]);
        while let Some(item) = events.next().await {
            match item {
                Ok(observed) => {
                    let span = span_of(&observed);
                    handle(&ctx, observed).instrument(span).await;
                }
                Err(e) => {
                    ctx.metrics.watch_errors.inc();
                    warn!(error = %e, "watch failed; retrying after a backoff");
                }
            }
        }
        Ok(())
    }
}

fn span_of(observed: &Observed) -> tracing::Span {
    let (event, object) = match observed {
        Observed::Namespace(e) => (event_name(e), describe(e)),
        Observed::Node(e) => (event_name(e), describe(e)),
        Observed::Pod(e) => (event_name(e), describe(e)),
        Observed::Service(e) => (event_name(e), describe(e)),
        Observed::EndpointSlice(e) => (event_name(e), describe(e)),
        Observed::NetworkPolicy(e) => (event_name(e), describe(e)),
        Observed::FlowPolicy(e) => (event_name(e), describe(e)),
        Observed::ClusterNetworkPolicy(e) => (event_name(e), describe(e)),
        Observed::Absent(_) => ("absent", String::new()),
    };
    info_span!("observe", object.kind = %observed.kind(), object.ref = %object, event)
}

/// Feeds one observation, persists new numbers, publishes deltas and queues status reconciles.
async fn handle(ctx: &Arc<Context>, observed: Observed) {
    ctx.metrics.watch_events.inc();
    let (outcome, to_persist) = {
        let mut guard = ctx.compiler();
        let Some(compiler) = guard.as_mut() else {
            return;
        };
        let outcome = compiler.observe(&observed);
        if !outcome.deltas.is_empty() {
            ctx.unpublished.store(true, Ordering::Release);
        }
        ctx.metrics.synced.set(u64::from(compiler.is_synced()));
        ctx.metrics.nodes.set(compiler.nodes().len() as u64);
        (outcome, compiler.allocations_to_persist())
    };
    ctx.metrics.changes.add(outcome.changes as u64);
    if let Some((spec, count)) = to_persist {
        // No delta that uses a new number leaves before the number is persisted.
        let mut delay = Duration::from_millis(200);
        loop {
            match identities::persist(&ctx.client, spec.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    ctx.metrics.identity_write_errors.inc();
                    warn!(error = %e, retry_in = ?delay, "cannot persist identity numbers");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        ctx.metrics.identity_writes.inc();
        ctx.metrics.allocations.set(count as u64);
        if let Some(c) = ctx.compiler().as_mut() {
            c.persisted(count);
        }
    }
    if !outcome.deltas.is_empty() {
        ctx.metrics.node_deltas.add(outcome.deltas.len() as u64);
        for d in &outcome.deltas {
            debug!(node = %d.node, revision = d.revision, ops = d.diff.len(), "node state changed");
        }
        ctx.published().publish(&outcome.deltas);
        ctx.unpublished.store(false, Ordering::Release);
        // No subscriber yet is fine: node states stay readable through the context.
        let _ = ctx.updates.send(Arc::new(outcome.deltas));
    }
    for key in &outcome.status {
        if ctx.verdict(key).is_some() {
            ctx.published().require(key.clone());
        } else {
            ctx.published().forget(key);
        }
    }
    for key in outcome.status {
        let _ = ctx.status_queue.send(key);
    }
}
