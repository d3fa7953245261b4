//! From watch events to model changes: the API objects septum reads, converted into the policy
//! model exactly as standalone mode converts its YAML (the same `TryFrom` conversions and, for
//! policies, the same API-server checks of `septum_crd::lint`), and the bookkeeping that turns
//! a watcher's events into [`Change`]s.
//!
//! Per kind, a watcher delivers `Apply`/`Delete`, and on every (re)list `Init`, `InitApply`...,
//! `InitDone`. A relist is buffered and, at `InitDone`, compared with what is in force: changed
//! objects become upserts and objects that vanished while the watch was down become deletes. An
//! object whose current version does not convert keeps its last good version in force (as a
//! broken file does in standalone mode) and its problems are reported; after a controller
//! restart it has no good version, so nothing of it is in force until it is fixed.
//!
//! Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::ResourceExt;
use septum_crd::{ClusterNetworkPolicy, FlowPolicy};
use septum_policy::diagnostic::Diagnostic;
use septum_policy::k8s::namespace_of;
use septum_policy::model::{self as m, Change, Cluster, ObjectKey};

/// The kinds septum watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Namespaces (their labels).
    Namespace,
    /// Nodes (their addresses: the host).
    Node,
    /// Pods.
    Pod,
    /// Services.
    Service,
    /// EndpointSlices not derived from a selector (the backends of Services without one).
    EndpointSlice,
    /// NetworkPolicies.
    NetworkPolicy,
    /// septum's FlowPolicies.
    FlowPolicy,
    /// Upstream ClusterNetworkPolicies (optional: the CRD may be absent).
    ClusterNetworkPolicy,
}

impl Kind {
    /// Every kind, in feeding order.
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::FlowPolicy,
        Kind::ClusterNetworkPolicy,
    ];

    /// The kind's name as the API spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Node => "Node",
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::FlowPolicy => "FlowPolicy",
            Self::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// Whether problems of this kind refuse the object (policies) or are only reported
    /// (inventory the API server already validated: refusing a pod would leave it unenforced).
    const fn lint_refuses(self) -> bool {
        matches!(
            self,
            Self::NetworkPolicy | Self::FlowPolicy | Self::ClusterNetworkPolicy
        )
    }

    /// The change that removes the object `key` of this kind from the model.
    fn delete(self, key: &ObjectKey) -> Change {
        match self {
            Self::Namespace => Change::DeleteNamespace(key.name.clone()),
            Self::Node => Change::DeleteNode(key.name.clone()),
            Self::Pod => Change::DeletePod(key.clone()),
            Self::Service => Change::DeleteService(key.clone()),
            Self::EndpointSlice => Change::DeleteEndpointSlice(key.clone()),
            Self::NetworkPolicy => Change::DeleteNetworkPolicy(key.clone()),
            Self::FlowPolicy => Change::DeleteFlowPolicy(key.clone()),
            Self::ClusterNetworkPolicy => Change::DeleteClusterNetworkPolicy(key.name.clone()),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model object of any watched kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelObject {
    /// A namespace.
    Namespace(m::Namespace),
    /// A node.
    Node(m::Node),
    /// A pod.
    Pod(m::Pod),
    /// A Service.
    Service(m::Service),
    /// An EndpointSlice.
    EndpointSlice(m::EndpointSlice),
    /// A NetworkPolicy.
    NetworkPolicy(m::NetworkPolicy),
    /// A FlowPolicy.
    FlowPolicy(m::FlowPolicy),
    /// A ClusterNetworkPolicy.
    ClusterNetworkPolicy(m::ClusterNetworkPolicy),
}

impl ModelObject {
    /// The change that puts this object into the model.
    fn upsert(&self) -> Change {
        match self.clone() {
            Self::Namespace(o) => Change::UpsertNamespace(o),
            Self::Node(o) => Change::UpsertNode(o),
            Self::Pod(o) => Change::UpsertPod(o),
            Self::Service(o) => Change::UpsertService(o),
            Self::EndpointSlice(o) => Change::UpsertEndpointSlice(o),
            Self::NetworkPolicy(o) => Change::UpsertNetworkPolicy(o),
            Self::FlowPolicy(o) => Change::UpsertFlowPolicy(o),
            Self::ClusterNetworkPolicy(o) => Change::UpsertClusterNetworkPolicy(o),
        }
    }

    fn insert_into(&self, c: &mut Cluster) {
        c.apply(&self.upsert());
    }
}

/// An API type septum watches: its kind and its conversion into the model.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind.
    const KIND: Kind;

    /// The object in the model, or every problem that refuses it.
    fn to_model(&self) -> Result<ModelObject, Vec<Diagnostic>>;

    /// API-server checks the conversion does not make (see `septum_crd::lint`).
    fn lint(&self) -> Vec<Diagnostic>;

    /// The object's key (`""` namespace for cluster-scoped kinds).
    fn key(&self) -> ObjectKey {
        let namespaced = !matches!(
            Self::KIND,
            Kind::Namespace | Kind::Node | Kind::ClusterNetworkPolicy
        );
        let namespace = if namespaced {
            namespace_of(self.meta())
        } else {
            String::new()
        };
        ObjectKey::new(namespace, self.name_any())
    }
}

macro_rules! watched {
    ($ty:ty, $kind:ident, $lint:path) => {
        impl Watched for $ty {
            const KIND: Kind = Kind::$kind;
            fn to_model(&self) -> Result<ModelObject, Vec<Diagnostic>> {
                m::$kind::try_from(self).map(ModelObject::$kind)
            }
            fn lint(&self) -> Vec<Diagnostic> {
                $lint(self)
            }
        }
    };
}

watched!(core::Namespace, Namespace, septum_crd::lint::namespace);
watched!(core::Node, Node, septum_crd::lint::node);
watched!(core::Pod, Pod, septum_crd::lint::pod);
watched!(core::Service, Service, septum_crd::lint::service);
watched!(
    discovery::EndpointSlice,
    EndpointSlice,
    septum_crd::lint::endpoint_slice
);
watched!(
    net::NetworkPolicy,
    NetworkPolicy,
    septum_crd::lint::network_policy
);
watched!(FlowPolicy, FlowPolicy, septum_crd::lint::flow_policy);
watched!(
    ClusterNetworkPolicy,
    ClusterNetworkPolicy,
    septum_crd::lint::cluster_network_policy
);

/// The problems of one object's current version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    /// Problems that refuse the version (its last good version, if any, stays in force).
    pub errors: Vec<Diagnostic>,
    /// Problems reported only.
    pub warnings: Vec<Diagnostic>,
}

type Converted = (Option<ModelObject>, Problems);

fn convert<K: Watched>(obj: &K) -> Converted {
    let mut problems = Problems::default();
    for d in obj.lint() {
        if d.is_error() && K::KIND.lint_refuses() {
            problems.errors.push(d);
        } else {
            problems.warnings.push(d);
        }
    }
    match obj.to_model() {
        Ok(o) if problems.errors.is_empty() => (Some(o), problems),
        Ok(_) => (None, problems),
        Err(errors) => {
            problems.errors.extend(errors);
            (None, problems)
        }
    }
}

/// The objects in force and the problems of every object, per kind.
#[derive(Clone, Debug, Default)]
pub struct Feed {
    in_force: BTreeMap<(Kind, ObjectKey), ModelObject>,
    problems: BTreeMap<(Kind, ObjectKey), Problems>,
    relisting: BTreeMap<Kind, BTreeMap<ObjectKey, Converted>>,
    synced: BTreeSet<Kind>,
}

impl Feed {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An object was added or modified.
    pub fn apply<K: Watched>(&mut self, obj: &K) -> Vec<Change> {
        let key = obj.key();
        let converted = convert(obj);
        self.set(K::KIND, key, converted).into_iter().collect()
    }

    /// An object was deleted.
    pub fn delete<K: Watched>(&mut self, obj: &K) -> Vec<Change> {
        self.remove(K::KIND, &obj.key()).into_iter().collect()
    }

    /// A (re)list of `kind` begins.
    pub fn init(&mut self, kind: Kind) {
        self.relisting.insert(kind, BTreeMap::new());
    }

    /// An object of the (re)list.
    pub fn init_apply<K: Watched>(&mut self, obj: &K) {
        self.relisting
            .entry(K::KIND)
            .or_default()
            .insert(obj.key(), convert(obj));
    }

    /// The (re)list of `kind` is complete: the changes that make the model hold exactly it.
    pub fn init_done(&mut self, kind: Kind) -> Vec<Change> {
        let listed = self.relisting.remove(&kind).unwrap_or_default();
        let gone: Vec<ObjectKey> = self
            .keys_of(kind)
            .filter(|k| !listed.contains_key(*k))
            .cloned()
            .collect();
        let mut changes = Vec::new();
        for key in gone {
            changes.extend(self.remove(kind, &key));
        }
        for (key, converted) in listed {
            changes.extend(self.set(kind, key, converted));
        }
        self.synced.insert(kind);
        changes
    }

    /// The API does not serve `kind` (an optional CRD that is not installed): it is synced,
    /// empty. Anything of it seen before is removed.
    pub fn absent(&mut self, kind: Kind) -> Vec<Change> {
        self.init(kind);
        self.init_done(kind)
    }

    /// Whether every kind has completed its first list.
    pub fn all_synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// The model of the objects in force.
    pub fn cluster(&self) -> Cluster {
        let mut c = Cluster::default();
        for o in self.in_force.values() {
            o.insert_into(&mut c);
        }
        c
    }

    /// The problems of an object's current version (`None`: it has none, or is unknown).
    pub fn problems(&self, kind: Kind, key: &ObjectKey) -> Option<&Problems> {
        self.problems.get(&(kind, key.clone()))
    }

    /// Whether some version of the object is in force.
    pub fn is_in_force(&self, kind: Kind, key: &ObjectKey) -> bool {
        self.in_force.contains_key(&(kind, key.clone()))
    }

    /// Every known object of a kind (in force or refused).
    pub fn known(&self, kind: Kind) -> BTreeSet<ObjectKey> {
        let mut out: BTreeSet<ObjectKey> = self.keys_of(kind).cloned().collect();
        out.extend(
            self.problems
                .keys()
                .filter(|(k, _)| *k == kind)
                .map(|(_, key)| key.clone()),
        );
        out
    }

    fn keys_of(&self, kind: Kind) -> impl Iterator<Item = &ObjectKey> {
        self.in_force
            .keys()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, key)| key)
    }

    fn set(&mut self, kind: Kind, key: ObjectKey, (object, problems): Converted) -> Option<Change> {
        let slot = (kind, key);
        if problems == Problems::default() {
            self.problems.remove(&slot);
        } else {
            self.problems.insert(slot.clone(), problems);
        }
        let object = object?;
        if self.in_force.get(&slot) == Some(&object) {
            return None;
        }
        let change = object.upsert();
        self.in_force.insert(slot, object);
        Some(change)
    }

    fn remove(&mut self, kind: Kind, key: &ObjectKey) -> Option<Change> {
        let slot = (kind, key.clone());
        self.problems.remove(&slot);
        self.in_force.remove(&slot).map(|_| kind.delete(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn pod(name: &str, app: &str) -> core::Pod {
        core::Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some([("app".to_string(), app.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..core::Pod::default()
        }
    }

    fn np(name: &str, policy_type: &str) -> net::NetworkPolicy {
        net::NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            spec: Some(net::NetworkPolicySpec {
                policy_types: Some(vec![policy_type.into()]),
                ..net::NetworkPolicySpec::default()
            }),
        }
    }

    #[test]
    fn a_relist_deletes_what_vanished_and_skips_what_did_not_change() {
        let mut f = Feed::new();
        f.init(Kind::Pod);
        f.init_apply(&pod("a", "web"));
        f.init_apply(&pod("b", "web"));
        assert_eq!(f.init_done(Kind::Pod).len(), 2);
        assert!(f.apply(&pod("a", "web")).is_empty(), "unchanged: no change");
        f.init(Kind::Pod);
        f.init_apply(&pod("a", "db"));
        let changes = f.init_done(Kind::Pod);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes.contains(&Change::DeletePod(ObjectKey::new("shop", "b"))));
        assert!(
            matches!(&changes[1], Change::UpsertPod(p) if p.labels["app"] == "db"),
            "{changes:?}"
        );
    }

    #[test]
    fn a_broken_version_keeps_the_last_good_one_and_is_reported() {
        let mut f = Feed::new();
        let key = ObjectKey::new("shop", "p");
        assert_eq!(f.apply(&np("p", "Ingress")).len(), 1);
        assert!(f.apply(&np("p", "Sideways")).is_empty());
        assert!(f.is_in_force(Kind::NetworkPolicy, &key));
        let problems = f.problems(Kind::NetworkPolicy, &key).expect("problems");
        assert!(
            problems.errors[0].message.contains("Sideways"),
            "{problems:?}"
        );
        assert_eq!(f.delete(&np("p", "Sideways")).len(), 1);
        assert!(f.problems(Kind::NetworkPolicy, &key).is_none());
        assert!(!f.all_synced());
        for k in Kind::ALL {
            f.absent(k);
        }
        assert!(f.all_synced());
    }
}
