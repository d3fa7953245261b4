//! The controller's engine state: the [`Feed`] of API objects, the policy [`Engine`] it feeds,
//! the revisioned per-node states and each FlowPolicy's verdict. Pure (no I/O): the controller
//! loop hands it watch events and does the writing.
//!
//! Until every kind has completed its first list nothing is compiled (an agent must never see a
//! half-listed cluster: a missing policy opens, a missing pod closes). At the first full sync
//! the engine is built from the whole model in one go with the persisted allocations; after that
//! every change is applied incrementally and every node whose contents changed gets a delta.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::watcher::Event;
use septum_crd::identity_allocation::IdentityAllocationSpec;
use septum_crd::{ClusterNetworkPolicy, FlowPolicy};
use septum_policy::diagnostic::Diagnostic;
use septum_policy::model::{Change, ObjectKey};
use septum_policy::validate::validate_flow_policy;
use septum_policy::{Engine, InMemoryAllocations};

use crate::feed::{Feed, Kind, Watched};
use crate::node_state::{NodeDelta, NodeStates};

/// One watch event of any watched kind, or the news that an optional kind is not served.
#[derive(Clone, Debug)]
// One event at a time passes through the loop; boxing each would only add allocations.
#[allow(clippy::large_enum_variant)]
pub enum Observed {
    /// Namespaces.
    Namespace(Event<core::Namespace>),
    /// Nodes.
    Node(Event<core::Node>),
    /// Pods.
    Pod(Event<core::Pod>),
    /// Services.
    Service(Event<core::Service>),
    /// EndpointSlices (those not derived from a selector).
    EndpointSlice(Event<discovery::EndpointSlice>),
    /// NetworkPolicies.
    NetworkPolicy(Event<net::NetworkPolicy>),
    /// FlowPolicies.
    FlowPolicy(Event<FlowPolicy>),
    /// ClusterNetworkPolicies.
    ClusterNetworkPolicy(Event<ClusterNetworkPolicy>),
    /// The API does not serve this kind (its CRD is not installed).
    Absent(Kind),
}

impl Observed {
    /// The kind the event is about.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Namespace(_) => Kind::Namespace,
            Self::Node(_) => Kind::Node,
            Self::Pod(_) => Kind::Pod,
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::NetworkPolicy(_) => Kind::NetworkPolicy,
            Self::FlowPolicy(_) => Kind::FlowPolicy,
            Self::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
            Self::Absent(k) => *k,
        }
    }
}

fn feed_event<K: Watched>(feed: &mut Feed, event: &Event<K>) -> Vec<Change> {
    match event {
        Event::Apply(o) => feed.apply(o),
        Event::Delete(o) => feed.delete(o),
        Event::Init => {
            feed.init(K::KIND);
            Vec::new()
        }
        Event::InitApply(o) => {
            feed.init_apply(o);
            Vec::new()
        }
        Event::InitDone => feed.init_done(K::KIND),
    }
}

/// What a FlowPolicy's current version amounts to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Problems that refuse the current version.
    pub errors: Vec<Diagnostic>,
    /// References that do not resolve (missing Services, Services without backends, missing
    /// Service ports) and other warnings of the version in force.
    pub unresolved: Vec<Diagnostic>,
    /// Whether some version (the current one, or the last good one) is in force.
    pub in_force: bool,
}

/// What one observation produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Per node whose contents changed, its delta (sorted by node).
    pub deltas: Vec<NodeDelta>,
    /// FlowPolicies whose verdict changed (their status needs writing).
    pub status: Vec<ObjectKey>,
    /// Model changes applied.
    pub changes: usize,
}

/// The feed, the engine and the node states.
#[derive(Debug)]
pub struct Compiler {
    feed: Feed,
    engine: Option<Engine<InMemoryAllocations>>,
    loaded: Option<InMemoryAllocations>,
    nodes: NodeStates,
    verdicts: BTreeMap<ObjectKey, Verdict>,
    persisted: usize,
}

impl Compiler {
    /// A compiler that will allocate from `allocations` (the persisted numbers).
    pub fn new(allocations: InMemoryAllocations) -> Self {
        let persisted = allocations.entries().count();
        Self {
            feed: Feed::new(),
            engine: None,
            loaded: Some(allocations),
            nodes: NodeStates::new(),
            verdicts: BTreeMap::new(),
            persisted,
        }
    }

    /// Feeds one observation.
    pub fn observe(&mut self, observed: &Observed) -> Outcome {
        let feed = &mut self.feed;
        let changes = match observed {
            Observed::Namespace(e) => feed_event(feed, e),
            Observed::Node(e) => feed_event(feed, e),
            Observed::Pod(e) => feed_event(feed, e),
            Observed::Service(e) => feed_event(feed, e),
            Observed::EndpointSlice(e) => feed_event(feed, e),
            Observed::NetworkPolicy(e) => feed_event(feed, e),
            Observed::FlowPolicy(e) => feed_event(feed, e),
            Observed::ClusterNetworkPolicy(e) => feed_event(feed, e),
            Observed::Absent(k) => feed.absent(*k),
        };
        let mut outcome = Outcome {
            changes: changes.len(),
            ..Outcome::default()
        };
        match &mut self.engine {
            // No model change (an unchanged object re-sent, a refused version): no node can
            // change, but a verdict can.
            Some(_) if changes.is_empty() => {
                outcome.status = self.refresh_verdicts();
                return outcome;
            }
            Some(engine) => {
                let diffs: Vec<_> = changes.iter().map(|c| engine.apply(c)).collect();
                outcome.deltas = self.nodes.apply(engine.cluster(), engine.state(), &diffs);
            }
            None if self.feed.all_synced() => {
                let store = self.loaded.take().unwrap_or_default();
                let engine = Engine::new(self.feed.cluster(), store);
                outcome.deltas = self.nodes.update(engine.cluster(), engine.state());
                self.engine = Some(engine);
            }
            // Not synced yet: the feed keeps the objects until the first full sync.
            None => return Outcome::default(),
        }
        outcome.status = self.refresh_verdicts();
        outcome
    }

    fn refresh_verdicts(&mut self) -> Vec<ObjectKey> {
        let Some(engine) = &self.engine else {
            return Vec::new();
        };
        let cluster = engine.cluster();
        let mut verdicts = BTreeMap::new();
        for key in self.feed.known(Kind::FlowPolicy) {
            let problems = self.feed.problems(Kind::FlowPolicy, &key);
            let errors = problems.map(|p| p.errors.clone()).unwrap_or_default();
            let unresolved = match cluster.flow_policies.get(&key) {
                // The version in force is the current one: its references.
                Some(fp) if errors.is_empty() => validate_flow_policy(fp, cluster),
                _ => Vec::new(),
            };
            verdicts.insert(
                key.clone(),
                Verdict {
                    errors,
                    unresolved,
                    in_force: self.feed.is_in_force(Kind::FlowPolicy, &key),
                },
            );
        }
        let changed = verdicts
            .iter()
            .filter(|(k, v)| self.verdicts.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        self.verdicts = verdicts;
        changed
    }

    /// Whether the first full sync has happened.
    pub fn is_synced(&self) -> bool {
        self.engine.is_some()
    }

    /// The engine, after the first full sync.
    pub fn engine(&self) -> Option<&Engine<InMemoryAllocations>> {
        self.engine.as_ref()
    }

    /// The per-node states.
    pub fn nodes(&self) -> &NodeStates {
        &self.nodes
    }

    /// The verdict of a FlowPolicy.
    pub fn verdict(&self, key: &ObjectKey) -> Option<&Verdict> {
        self.verdicts.get(key)
    }

    /// The allocations to persist, when numbers were allocated since the last persist (numbers
    /// are never freed, so a grown count is a new allocation), with their count.
    pub fn allocations_to_persist(&self) -> Option<(IdentityAllocationSpec, usize)> {
        let engine = self.engine.as_ref()?;
        let count = engine.store().entries().count();
        (count != self.persisted).then(|| {
            (
                IdentityAllocationSpec::from_entries(engine.store().entries()),
                count,
            )
        })
    }

    /// Records that `count` allocations are persisted.
    pub fn persisted(&mut self, count: usize) {
        self.persisted = count;
    }
}
