//! Per-node state, revisioned: what one node's agent holds (its pods' endpoints and the ipcache,
//! policy and Service map contents the engine computes for it, [`septum_policy::node`]) and the
//! delta between two revisions of it (only what changed, map by map). This is what the
//! node-state stream sends: a snapshot, then deltas, each naming the revision it starts from.
//!
//! Pure: no I/O, deterministic. [`NodeStates::update`] recomputes every node's slice after a
//! change and bumps the revision of exactly the nodes whose contents changed. Recomputing every
//! slice is O(nodes x state) per change; deriving slices from the engine's cluster-wide diff is
//! the known next step when the benchmark asks for it.

use std::collections::BTreeMap;

use septum_policy::model::Cluster;
pub use septum_policy::node::NodeStateDiff;
use septum_policy::node::{NodeState, node_state};
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
    nodes: BTreeMap<String, Revisioned>,
}

impl NodeStates {
    /// No node known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Recomputes every node's state from the model and the compiled state, and returns the
    /// delta of each node whose contents changed (sorted by node; nothing for the others).
    pub fn update(&mut self, cluster: &Cluster, state: &ClusterState) -> Vec<NodeDelta> {
        let mut names: Vec<String> = cluster.nodes.keys().cloned().collect();
        names.extend(cluster.pods.values().filter_map(|p| p.node.clone()));
        names.extend(self.nodes.keys().cloned());
        names.sort();
        names.dedup();
        let mut deltas = Vec::new();
        for name in names {
            let new = node_state(cluster, state, &name);
            let entry = self
                .nodes
                .entry(name.clone())
                .or_insert_with(|| Revisioned {
                    revision: 0,
                    state: NodeState {
                        node: name.clone(),
                        ..NodeState::default()
                    },
                });
            let diff = NodeStateDiff::between(&entry.state, &new);
            if diff.is_empty() && entry.revision > 0 {
                continue;
            }
            let from_revision = entry.revision;
            entry.revision += 1;
            entry.state = new;
            deltas.push(NodeDelta {
                node: name,
                from_revision,
                revision: entry.revision,
                diff,
            });
        }
        deltas
    }

    /// The current state of a node, if known.
    pub fn get(&self, node: &str) -> Option<&Revisioned> {
        self.nodes.get(node)
    }

    /// Every known node's state.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Revisioned)> {
        self.nodes.iter()
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
        assert_eq!(nodes.get("b"), Some(&before_b));
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
            assert_eq!(d.diff.len(), 1, "only the VIP: {d:?}");
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
}
