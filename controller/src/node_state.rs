//! Per-node state, revisioned: what one node's agent holds (its pods' endpoints and the ipcache,
//! policy and Service map contents the engine computes for it, [`septum_policy::node`]) and the
//! delta between two revisions of it (only what changed, map by map). This is what the
//! node-state stream sends: a snapshot, then deltas, each naming the revision it starts from.
//!
//! Pure: no I/O, deterministic. [`NodeStates::update`] recomputes every node's slice (the
//! first sync); [`NodeStates::apply`] derives each node's delta from the engine's cluster-wide
//! diffs instead, O(diff) per node, and recomputes only the nodes whose *filter* changed (an
//! endpoint of theirs, their own addresses, or a CIDR identity every filter reads). Both bump the
//! revision of exactly the nodes whose contents changed; a test checks they agree.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use septum_datapath_common::IDENTITY_FIRST_CIDR;
use septum_policy::StateDiff;
use septum_policy::cidr::Cidr;
use septum_policy::node::{PolicyFilter, host_entry};

use septum_policy::model::Cluster;
pub use septum_policy::node::NodeStateDiff;
use septum_policy::node::{NodeState, node_slice};
use septum_policy::state::ClusterState;

/// One node's state moving from one revision to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDelta {
    /// Node name.
    pub node: String,
    /// The revision the diff applies to (0: the empty state, i.e. the diff is a snapshot).
    pub from_revision: u64,
    /// The revision after it.
    pub revision: u64,
    /// What changed.
    pub diff: NodeStateDiff,
}

/// A node's state at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revisioned {
    /// Revision (1 for the first state; bumped on every change of contents).
    pub revision: u64,
    /// The state.
    pub state: NodeState,
}

/// The current revision of every node's state.
///
/// Nodes are the Node objects and the nodes pods are scheduled on. A node is never forgotten
/// while the controller runs (its revisions stay monotonic for an agent that resumes).
#[derive(Clone, Debug, Default)]
pub struct NodeStates {
    /// Each node's own slice, without the tables every node gets whole (held once, in
    /// `shared`).
    nodes: BTreeMap<String, Revisioned>,
    /// The tables every node gets whole: identities, Service names, pod addresses.
    shared: NodeState,
    /// The node addresses each node's state was computed with.
    ips: BTreeMap<String, Vec<IpAddr>>,
}

fn node_ips<'a>(cluster: &'a Cluster, node: &str) -> &'a [IpAddr] {
    cluster.nodes.get(node).map_or(&[], |n| n.ips.as_slice())
}

/// The original value of every key a sequence of writes touched, so that the net change is
/// known without copying the map first.
struct Journal<K, V> {
    original: BTreeMap<K, Option<V>>,
}

impl<K, V> Default for Journal<K, V> {
    fn default() -> Self {
        Self {
            original: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Journal<K, V> {
    fn set(&mut self, map: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
        let old = match v {
            Some(v) => map.insert(k.clone(), v),
            None => map.remove(&k),
        };
        self.original.entry(k).or_insert(old);
    }

    /// The net change, as the map now is.
    fn diff(self, map: &BTreeMap<K, V>) -> septum_policy::state::MapDiff<K, V> {
        let mut out = septum_policy::state::MapDiff::default();
        for (k, old) in self.original {
            match (old, map.get(&k)) {
                (old, Some(new)) if old.as_ref() != Some(new) => out.upserts.push((k, new.clone())),
                (Some(_), None) => out.deletes.push(k),
                _ => {}
            }
        }
        out
    }
}

impl NodeStates {
    /// No node known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Recomputes every node's state from the model and the compiled state, and returns the
    /// delta of each node whose contents changed (sorted by node; nothing for the others).
    pub fn update(&mut self, cluster: &Cluster, state: &ClusterState) -> Vec<NodeDelta> {
        let shared = NodeState {
            identities: state.identities.clone(),
            service_names: state.service_names.clone(),
            pod_addresses: state.pod_addresses.clone(),
            ..NodeState::default()
        };
        let shared_diff = NodeStateDiff::between(&self.shared, &shared);
        self.shared = shared;
        self.names(cluster)
            .into_iter()
            .filter_map(|name| self.recompute(cluster, state, &name, &shared_diff))
            .collect()
    }

    /// Applies the diffs' changes of the tables every node gets whole, once; returns them.
    fn apply_shared(&mut self, diffs: &[StateDiff]) -> NodeStateDiff {
        let s = &mut self.shared;
        let mut identities = Journal::default();
        let mut service_names = Journal::default();
        let mut pod_addresses = Journal::default();
        for d in diffs {
            for (k, v) in &d.identities.upserts {
                identities.set(&mut s.identities, *k, Some(v.clone()));
            }
            for k in &d.identities.deletes {
                identities.set(&mut s.identities, *k, None);
            }
            for (k, v) in &d.service_names.upserts {
                service_names.set(&mut s.service_names, *k, Some(v.clone()));
            }
            for k in &d.service_names.deletes {
                service_names.set(&mut s.service_names, *k, None);
            }
            for (k, v) in &d.pod_addresses.upserts {
                pod_addresses.set(&mut s.pod_addresses, *k, Some(v.clone()));
            }
            for k in &d.pod_addresses.deletes {
                pod_addresses.set(&mut s.pod_addresses, *k, None);
            }
        }
        NodeStateDiff {
            identities: identities.diff(&s.identities),
            service_names: service_names.diff(&s.service_names),
            pod_addresses: pod_addresses.diff(&s.pod_addresses),
            ..NodeStateDiff::default()
        }
    }

    /// The shared tables' part of a node's delta: `changed`, or everything for a node's first
    /// state (a snapshot).
    fn shared_part(&self, revision: u64, changed: &NodeStateDiff) -> NodeStateDiff {
        if revision == 0 {
            NodeStateDiff::between(&NodeState::default(), &self.shared)
        } else {
            changed.clone()
        }
    }

    /// Every node: the Node objects, the nodes pods are scheduled on, and every node known
    /// before (sorted).
    fn names(&self, cluster: &Cluster) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = cluster.nodes.keys().cloned().collect();
        names.extend(cluster.pods.values().filter_map(|p| p.node.clone()));
        names.extend(self.nodes.keys().cloned());
        names
    }

    /// Applies the engine's cluster-wide diffs (in order, the changes of one observation) to
    /// every node's state, and returns the delta of each node whose contents changed. Equal to
    /// [`NodeStates::update`] on the resulting model and state, at O(diff) per node.
    pub fn apply(
        &mut self,
        cluster: &Cluster,
        state: &ClusterState,
        diffs: &[StateDiff],
    ) -> Vec<NodeDelta> {
        let cidr_identities_changed = diffs.iter().any(|d| {
            d.identities
                .upserts
                .iter()
                .map(|(k, _)| k)
                .chain(&d.identities.deletes)
                .any(|i| i.get() >= IDENTITY_FIRST_CIDR)
        });
        let names = self.names(cluster);
        // Nodes whose filter or own addresses may have changed: recomputed whole.
        let mut full: BTreeSet<String> = names
            .iter()
            .filter(|n| {
                cidr_identities_changed
                    || !self.nodes.contains_key(*n)
                    || self.ips.get(*n).map(Vec::as_slice) != Some(node_ips(cluster, n))
            })
            .cloned()
            .collect();
        for d in diffs {
            for key in d
                .endpoints
                .upserts
                .iter()
                .map(|(k, _)| k)
                .chain(&d.endpoints.deletes)
            {
                if let Some(n) = cluster.pods.get(key).and_then(|p| p.node.clone()) {
                    full.insert(n);
                }
                for (n, r) in &self.nodes {
                    if r.state.endpoints.contains_key(key) {
                        full.insert(n.clone());
                    }
                }
            }
        }
        let shared_diff = self.apply_shared(diffs);
        let mut deltas = Vec::new();
        for name in names {
            let delta = if full.contains(&name) {
                self.recompute(cluster, state, &name, &shared_diff)
            } else {
                self.derive(cluster, state, &name, diffs, &shared_diff)
            };
            deltas.extend(delta);
        }
        deltas
    }

    fn recompute(
        &mut self,
        cluster: &Cluster,
        state: &ClusterState,
        name: &str,
        shared_diff: &NodeStateDiff,
    ) -> Option<NodeDelta> {
        let new = node_slice(cluster, state, name);
        self.ips
            .insert(name.to_string(), node_ips(cluster, name).to_vec());
        let shared = self.shared_part(self.nodes.get(name).map_or(0, |r| r.revision), shared_diff);
        let entry = self
            .nodes
            .entry(name.to_string())
            .or_insert_with(|| Revisioned {
                revision: 0,
                state: NodeState {
                    node: name.to_string(),
                    ..NodeState::default()
                },
            });
        // The slices hold no shared tables: those come from the shared part alone.
        let diff = NodeStateDiff {
            identities: shared.identities,
            service_names: shared.service_names,
            pod_addresses: shared.pod_addresses,
            ..NodeStateDiff::between(&entry.state, &new)
        };
        if diff.is_empty() && entry.revision > 0 {
            return None;
        }
        let from_revision = entry.revision;
        entry.revision += 1;
        entry.state = new;
        Some(NodeDelta {
            node: name.to_string(),
            from_revision,
            revision: entry.revision,
            diff,
        })
    }

    /// A node whose filter is unchanged: its delta is the part of the diffs it keeps.
    fn derive(
        &mut self,
        cluster: &Cluster,
        state: &ClusterState,
        name: &str,
        diffs: &[StateDiff],
        shared_diff: &NodeStateDiff,
    ) -> Option<NodeDelta> {
        let shared = self.shared_part(self.nodes.get(name)?.revision, shared_diff);
        let entry = self.nodes.get_mut(name)?;
        let filter = PolicyFilter::new(state, entry.state.endpoints.values());
        let own: BTreeSet<Cidr> = node_ips(cluster, name)
            .iter()
            .map(|ip| Cidr::host(*ip))
            .collect();
        let mut policy = Journal::default();
        let mut ipcache = Journal::default();
        let mut services = Journal::default();
        let mut rules = Journal::default();
        let s = &mut entry.state;
        for d in diffs {
            for (k, v) in d.policy.upserts.iter().filter(|(k, _)| filter.keeps(k)) {
                policy.set(&mut s.policy, *k, Some(*v));
            }
            for k in d.policy.deletes.iter().filter(|k| filter.keeps(k)) {
                policy.set(&mut s.policy, *k, None);
            }
            for (c, v) in &d.ipcache.upserts {
                let v = if own.contains(c) {
                    host_entry(v.cidr_identity)
                } else {
                    *v
                };
                ipcache.set(&mut s.ipcache, *c, Some(v));
            }
            for c in &d.ipcache.deletes {
                let v = own.contains(c).then(|| host_entry(0));
                ipcache.set(&mut s.ipcache, *c, v);
            }
            for (k, v) in &d.services.upserts {
                services.set(&mut s.services, *k, Some(*v));
            }
            for k in &d.services.deletes {
                services.set(&mut s.services, *k, None);
            }
        }
        let rules_changed = diffs.iter().any(|d| !d.rules.is_empty());
        let policy = policy.diff(&s.policy);
        let policy_changed = !policy.is_empty();
        let diff = NodeStateDiff {
            endpoints: Default::default(),
            policy,
            ipcache: ipcache.diff(&s.ipcache),
            services: services.diff(&s.services),
            rules: if policy_changed || rules_changed {
                // The rules its policy entries name, as they now are.
                let wanted = septum_policy::node::rules_of(&s.policy, state);
                let gone: Vec<_> = s
                    .rules
                    .keys()
                    .filter(|c| !wanted.contains_key(c))
                    .copied()
                    .collect();
                for c in gone {
                    rules.set(&mut s.rules, c, None);
                }
                for (c, d) in wanted {
                    if s.rules.get(&c) != Some(&d) {
                        rules.set(&mut s.rules, c, Some(d));
                    }
                }
                rules.diff(&s.rules)
            } else {
                Default::default()
            },
            identities: shared.identities,
            service_names: shared.service_names,
            pod_addresses: shared.pod_addresses,
        };
        if diff.is_empty() {
            return None;
        }
        let from_revision = entry.revision;
        entry.revision += 1;
        Some(NodeDelta {
            node: name.to_string(),
            from_revision,
            revision: entry.revision,
            diff,
        })
    }

    /// The current state of a node, if known (its slice with the shared tables: a copy, as
    /// for a snapshot).
    pub fn get(&self, node: &str) -> Option<Revisioned> {
        let r = self.nodes.get(node)?;
        Some(Revisioned {
            revision: r.revision,
            state: NodeState {
                identities: self.shared.identities.clone(),
                service_names: self.shared.service_names.clone(),
                pod_addresses: self.shared.pod_addresses.clone(),
                ..r.state.clone()
            },
        })
    }

    /// The known nodes.
    pub fn names_known(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    /// How many nodes are known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use septum_datapath_common::{Identity, IpCacheEntry};
    use septum_policy::InMemoryAllocations;
    use septum_policy::cidr::Cidr;
    use septum_policy::model::ObjectKey;
    use septum_policy::model::{
        NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule, Node, Pod, Service, ServicePort,
    };
    use septum_policy::selector::LabelSelector;
    use septum_policy::state::EndpointState;
    use septum_policy::{Change, Engine};

    fn pod(ns: &str, name: &str, app: &str, ip: &str, node: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().expect("test IP")],
            node: Some(node.into()),
            service_account: "default".into(),
            ..Pod::default()
        }
    }

    fn selector(app: &str) -> LabelSelector {
        LabelSelector {
            match_labels: [("app".to_string(), app.to_string())].into(),
            match_expressions: Vec::new(),
        }
    }

    /// web (node a) admits ingress only from client (node a); db lives on node b.
    fn cluster() -> Cluster {
        let mut c = Cluster::default();
        for (n, ip) in [("a", "192.168.0.1"), ("b", "192.168.0.2")] {
            c.nodes.insert(
                n.into(),
                Node {
                    name: n.into(),
                    ips: vec![ip.parse().expect("test IP")],
                },
            );
        }
        for p in [
            pod("shop", "web", "web", "10.0.0.1", "a"),
            pod("shop", "client", "client", "10.0.0.2", "a"),
            pod("shop", "db", "db", "10.0.1.1", "b"),
        ] {
            c.pods.insert(p.key(), p);
        }
        let np = NetworkPolicy {
            namespace: "shop".into(),
            name: "web-in".into(),
            pod_selector: selector("web"),
            ingress: vec![NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::Pods {
                    pod_selector: Some(selector("client")),
                    namespace_selector: None,
                }],
                ports: Vec::new(),
            }],
            ..NetworkPolicy::default()
        };
        c.network_policies.insert(np.key(), np);
        c
    }

    #[test]
    fn each_node_gets_its_own_pods_and_the_first_update_is_a_snapshot() {
        let c = cluster();
        let engine = Engine::new(c.clone(), InMemoryAllocations::new());
        let mut nodes = NodeStates::new();
        let deltas = nodes.update(&c, engine.state());
        let names: Vec<&str> = deltas.iter().map(|d| d.node.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        for d in &deltas {
            assert_eq!((d.from_revision, d.revision), (0, 1));
            assert!(d.diff.endpoints.deletes.is_empty());
        }
        let a = &nodes.get("a").expect("node a").state;
        let b = &nodes.get("b").expect("node b").state;
        let keys = |s: &NodeState| {
            s.endpoints
                .keys()
                .map(|k| k.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(a), ["client", "web"]);
        assert_eq!(keys(b), ["db"]);
        // web's ingress entries live only where web runs.
        let web = engine
            .pod_identity(&ObjectKey::new("shop", "web"))
            .expect("web identity");
        assert!(a.policy.keys().any(|k| k.subject() == web));
        assert!(!b.policy.keys().any(|k| k.subject() == web));
        // The node's own address is the host in its own ipcache only.
        let host_a = Cidr::host("192.168.0.1".parse().expect("ip"));
        assert_eq!(a.ipcache[&host_a].identity, Identity::HOST.get());
        assert_ne!(
            b.ipcache.get(&host_a).map(|e| e.identity),
            Some(Identity::HOST.get())
        );
        // Nothing changed: no delta, no revision.
        assert!(nodes.update(&c, engine.state()).is_empty());
        assert_eq!(nodes.get("a").map(|r| r.revision), Some(1));
    }

    #[test]
    fn a_policy_on_one_nodes_pods_changes_only_that_node() {
        let c = cluster();
        let mut engine = Engine::new(c.clone(), InMemoryAllocations::new());
        let mut nodes = NodeStates::new();
        nodes.update(&c, engine.state());
        let before_b = nodes.get("b").expect("b").clone();
        engine.apply(&Change::DeleteNetworkPolicy(ObjectKey::new(
            "shop", "web-in",
        )));
        let deltas = nodes.update(engine.cluster(), engine.state());
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        assert_eq!(deltas[0].node, "a");
        assert_eq!((deltas[0].from_revision, deltas[0].revision), (1, 2));
        assert!(!deltas[0].diff.policy.deletes.is_empty());
        assert!(
            deltas[0]
                .diff
                .endpoints
                .upserts
                .iter()
                .all(|(k, _)| k.name == "web")
        );
        assert_eq!(nodes.get("b"), Some(before_b));
    }

    #[test]
    fn a_service_reaches_every_node() {
        let c = cluster();
        let mut engine = Engine::new(c.clone(), InMemoryAllocations::new());
        let mut nodes = NodeStates::new();
        nodes.update(&c, engine.state());
        engine.apply(&Change::UpsertService(Service {
            namespace: "shop".into(),
            name: "db".into(),
            selector: Some([("app".to_string(), "db".to_string())].into()),
            ports: vec![ServicePort {
                name: None,
                port: 5432,
                protocol: septum_policy::model::Protocol::Tcp,
                target_port: None,
            }],
            cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
        }));
        let deltas = nodes.update(engine.cluster(), engine.state());
        assert_eq!(deltas.len(), 2);
        for d in &deltas {
            assert_eq!(d.diff.services.upserts.len(), 1);
            assert_eq!(
                d.diff.service_names.upserts,
                [(
                    septum_datapath_common::ServiceId::new(d.diff.services.upserts[0].1.service_id),
                    septum_policy::model::ObjectKey::new("shop", "db")
                )]
            );
            assert_eq!(
                d.diff.len(),
                2,
                "only the VIP and its Service's name: {d:?}"
            );
        }
    }

    fn arb_state() -> impl Strategy<Value = NodeState> {
        let ip = (0u8..8).prop_map(|n| Cidr::host(std::net::IpAddr::from([10, 0, 0, n])));
        let entry = (1u32..4, 0u32..3).prop_map(|(identity, cidr_identity)| IpCacheEntry {
            identity,
            cidr_identity,
            kind: 0,
            _pad: [0; 3],
        });
        let ep = (0u8..6, 1u32..4).prop_map(|(n, id)| {
            (
                ObjectKey::new("ns", format!("p{n}")),
                EndpointState {
                    identity: Identity::new(id),
                    flags: 0,
                    mode: 0,
                },
            )
        });
        (
            proptest::collection::btree_map(ip, entry, 0..8),
            proptest::collection::vec(ep, 0..6),
        )
            .prop_map(|(ipcache, eps)| NodeState {
                node: "n".into(),
                endpoints: eps.into_iter().collect(),
                ipcache,
                ..NodeState::default()
            })
    }

    proptest! {
        /// A delta takes the old state exactly to the new one, touches only keys that differ,
        /// and is empty between equal states.
        #[test]
        fn deltas_are_exact_and_minimal(old in arb_state(), new in arb_state()) {
            let d = NodeStateDiff::between(&old, &new);
            let mut applied = old.clone();
            d.apply_to(&mut applied);
            prop_assert_eq!(&applied, &new);
            for (k, v) in &d.ipcache.upserts {
                prop_assert_ne!(old.ipcache.get(k), Some(v));
            }
            for k in &d.endpoints.deletes {
                prop_assert!(!new.endpoints.contains_key(k));
            }
            prop_assert!(NodeStateDiff::between(&new, &new).is_empty());
        }
    }

    fn change(i: usize) -> Change {
        let egress = NetworkPolicy {
            namespace: "shop".into(),
            name: "client-out".into(),
            pod_selector: selector("client"),
            egress: vec![NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::IpBlock {
                    cidr: "10.0.1.0/24".parse().expect("cidr"),
                    except: vec!["10.0.1.1/32".parse().expect("cidr")],
                }],
                ports: Vec::new(),
            }],
            policy_types: Some(vec![septum_policy::model::PolicyType::Egress]),
            ..NetworkPolicy::default()
        };
        match i {
            0 => Change::UpsertPod(pod("shop", "web", "client", "10.0.0.1", "a")),
            1 => Change::UpsertPod(pod("shop", "web", "web", "10.0.0.1", "a")),
            2 => Change::DeleteNetworkPolicy(ObjectKey::new("shop", "web-in")),
            3 => Change::UpsertNetworkPolicy(
                cluster().network_policies[&ObjectKey::new("shop", "web-in")].clone(),
            ),
            4 => Change::UpsertService(Service {
                namespace: "shop".into(),
                name: "db".into(),
                selector: Some([("app".to_string(), "db".to_string())].into()),
                ports: vec![ServicePort {
                    name: None,
                    port: 5432,
                    protocol: septum_policy::model::Protocol::Tcp,
                    target_port: None,
                }],
                cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
            }),
            5 => Change::DeleteService(ObjectKey::new("shop", "db")),
            6 => Change::UpsertNode(Node {
                name: "a".into(),
                ips: vec!["10.0.1.7".parse().expect("ip")],
            }),
            7 => Change::UpsertNode(Node {
                name: "a".into(),
                ips: vec!["192.168.0.1".parse().expect("ip")],
            }),
            8 => Change::UpsertPod(pod("shop", "new", "web", "10.0.1.9", "b")),
            9 => Change::DeletePod(ObjectKey::new("shop", "new")),
            10 => Change::UpsertNetworkPolicy(egress),
            11 => Change::DeleteNetworkPolicy(ObjectKey::new("shop", "client-out")),
            12 => Change::UpsertPod(pod("shop", "db", "client", "10.0.1.1", "b")),
            13 => Change::UpsertPod(pod("shop", "db", "db", "10.0.1.1", "b")),
            // Egress from client (node a) to db (node b): entries node b keeps for db's sake.
            14 => Change::UpsertNetworkPolicy(NetworkPolicy {
                namespace: "shop".into(),
                name: "client-to-db".into(),
                pod_selector: selector("client"),
                egress: vec![NetworkPolicyRule {
                    peers: vec![NetworkPolicyPeer::Pods {
                        pod_selector: Some(selector("db")),
                        namespace_selector: None,
                    }],
                    ports: Vec::new(),
                }],
                policy_types: Some(vec![septum_policy::model::PolicyType::Egress]),
                ..NetworkPolicy::default()
            }),
            _ => Change::DeleteNetworkPolicy(ObjectKey::new("shop", "client-to-db")),
        }
    }

    proptest! {
        /// Deriving node deltas from the engine's diffs gives exactly the states (and revisions)
        /// a full recompute of every node gives, whatever the sequence of changes.
        #[test]
        fn derived_deltas_equal_a_full_recompute(
            steps in proptest::collection::vec(proptest::collection::vec(0usize..16, 1..3), 1..12)
        ) {
            let c = cluster();
            let mut engine = Engine::new(c.clone(), InMemoryAllocations::new());
            let mut derived = NodeStates::new();
            let mut full = NodeStates::new();
            derived.update(&c, engine.state());
            full.update(&c, engine.state());
            for step in steps {
                let before: BTreeMap<String, NodeState> =
                    derived.names_known().map(|n| (n.clone(), derived.get(n).expect("known").state)).collect();
                let diffs: Vec<_> = step.iter().map(|i| engine.apply(&change(*i))).collect();
                let deltas = derived.apply(engine.cluster(), engine.state(), &diffs);
                let want = full.update(engine.cluster(), engine.state());
                prop_assert_eq!(
                    deltas.iter().map(|d| (&d.node, d.from_revision, d.revision)).collect::<Vec<_>>(),
                    want.iter().map(|d| (&d.node, d.from_revision, d.revision)).collect::<Vec<_>>()
                );
                for d in &deltas {
                    let mut s = before.get(&d.node).cloned().unwrap_or_default();
                    if d.from_revision == 0 {
                        s = NodeState { node: d.node.clone(), ..NodeState::default() };
                    }
                    d.diff.apply_to(&mut s);
                    prop_assert_eq!(&s, &full.get(&d.node).expect("node").state);
                }
                for n in full.names_known() {
                    prop_assert_eq!(derived.get(n), full.get(n), "node {}", n);
                }
            }
        }
    }
}
