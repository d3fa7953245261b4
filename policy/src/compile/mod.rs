//! Compilation of the model into [`ClusterState`], full and incremental.
//!
//! [`Engine`] owns the model, the allocation store, the normalized rules and an index (identities,
//! each rule's subject and peer sets, policy prefixes, pod-in-CIDR pairs). A full compile builds
//! the index and compiles every subject identity; [`Engine::apply`] updates the index for one
//! [`Change`](crate::model::Change) and recompiles only the subjects whose entries can change, returning the minimal
//! [`StateDiff`](crate::state::StateDiff). Changes that alter the set of policy prefixes, namespaces or nodes rebuild
//! everything and diff (still minimal, just slower).
//!
//! Per subject and direction, the compiler evaluates the final decision (all tiers, audit
//! included) over the (protocol, port) space for: a peer nothing names (written under
//! `IDENTITY_ANY`), every pod identity some applicable rule names, every policy prefix some
//! applicable rule names, and every pod-in-prefix pair whose pod or prefix is named; each is
//! written only where it differs from the layer below it (see [`crate::state`] for the bands).
//!
//! The work is housed by concern:
//! - `index`: what compilation reads, derived from the model, and its upkeep per change;
//! - `evaluate`: the tier semantics, one subject toward one peer over the (protocol, port) space;
//! - `encode`: that decision written as policy LPM entries (port blocks, precedence bands);
//! - `subject`: which peers get entries of their own, per subject and direction;
//! - `full`: the rebuild from the model; `maps`: ipcache, endpoint, Service and identity entries;
//! - `incremental`: one change to the minimal diff.

mod encode;
mod evaluate;
mod full;
mod incremental;
mod index;
mod maps;
mod subject;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use septum_datapath_common::{Action, Cookie, Identity};

use crate::allocation::AllocationStore;
use crate::cidr::Cidr;
use crate::identity::IdentityKey;
use crate::model::{Cluster, ObjectKey};
use crate::ports::Segmented;
use crate::rules::{Direction, Isolation, Rule, RuleSet};
use crate::state::ClusterState;

pub use evaluate::port_matches;
use index::Index;

/// A final decision for one point of the (protocol, port) space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decision {
    /// What happens to the flow.
    pub action: Action,
    /// The decisive rule's cookie ([`Cookie::NONE`]: not policed).
    pub cookie: Cookie,
}

impl Decision {
    /// Nothing polices the flow: allowed, no cookie.
    pub const UNPOLICED: Decision = Decision {
        action: Action::Allow,
        cookie: Cookie::NONE,
    };

    /// Allowed by a rule.
    pub const fn allow(cookie: Cookie) -> Self {
        Self {
            action: Action::Allow,
            cookie,
        }
    }

    /// Denied by a rule.
    pub const fn deny(cookie: Cookie) -> Self {
        Self {
            action: Action::Deny,
            cookie,
        }
    }

    /// Would be denied by an Audit-mode policy.
    pub const fn audit(cookie: Cookie) -> Self {
        Self {
            action: Action::Audit,
            cookie,
        }
    }
}

/// One pod identity and its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    /// The identity.
    pub number: Identity,
    /// What it stands for.
    pub key: IdentityKey,
    /// Pods that have it.
    pub pods: BTreeSet<ObjectKey>,
}

/// A peer as the evaluator sees it.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// An address no policy prefix contains (and no pod): world, or a node.
    Outside,
    /// An address outside the pods whose most specific policy prefix is this.
    Class(Cidr),
    /// A pod of an identity, at an address whose most specific policy prefix is `class`.
    Pod {
        /// The identity.
        identity: &'a IdentityInfo,
        /// The prefix class of the address.
        class: Option<Cidr>,
    },
}

/// The compiler with its model, allocations and current output.
#[derive(Debug)]
pub struct Engine<S: AllocationStore> {
    cluster: Cluster,
    store: S,
    ruleset: RuleSet,
    index: Index,
    state: ClusterState,
    subject_flags: BTreeMap<Identity, u8>,
    cidr_refs: BTreeMap<Cidr, usize>,
}

/// Compiles a model in one go (allocating numbers in `store`).
pub fn compile<S: AllocationStore>(cluster: &Cluster, store: S) -> (ClusterState, S) {
    let e = Engine::new(cluster.clone(), store);
    (e.state, e.store)
}

impl<S: AllocationStore> Engine<S> {
    /// Builds the engine and compiles the whole model.
    pub fn new(cluster: Cluster, store: S) -> Self {
        let mut e = Self {
            cluster,
            store,
            ruleset: RuleSet::default(),
            index: Index::default(),
            state: ClusterState::default(),
            subject_flags: BTreeMap::new(),
            cidr_refs: BTreeMap::new(),
        };
        e.rebuild();
        e
    }

    /// The model.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The current compiled state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The allocation store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The normalized rules.
    pub fn ruleset(&self) -> &RuleSet {
        &self.ruleset
    }

    /// The identity of a pod, if it is an endpoint.
    pub fn pod_identity(&self, pod: &ObjectKey) -> Option<Identity> {
        self.index.pod_identity.get(pod).copied()
    }

    /// The pod identities.
    pub fn identities(&self) -> &BTreeMap<Identity, IdentityInfo> {
        &self.index.identities
    }

    /// The pod-in-CIDR identity of a pod address, if the address is in a policy prefix.
    pub fn cidr_identity_of(&self, ip: IpAddr) -> Option<Identity> {
        match self.state.ipcache.get(&Cidr::host(ip)) {
            // The address's own entry says (0: in no policy prefix).
            Some(e) => (e.cidr_identity != 0).then_some(Identity::new(e.cidr_identity)),
            None => self.index.class_of(ip).map(|c| self.index.class_ids[&c]),
        }
    }

    /// The decision function of `subject` toward a peer, straight from the rules (what the
    /// compiled entries reproduce). Used by explain.
    pub fn decide(
        &self,
        subject: Identity,
        direction: Direction,
        peer: &Peer<'_>,
    ) -> Segmented<Decision> {
        match self.index.identities.get(&subject) {
            None => Segmented::constant(Decision::UNPOLICED),
            Some(info) => {
                let ctx = self.index.subject_ctx(info, direction);
                self.index.evaluate(&ctx, peer)
            }
        }
    }

    /// The policy prefix class of an address (most specific policy prefix containing it).
    pub fn class_of(&self, ip: IpAddr) -> Option<Cidr> {
        self.index.class_of(ip)
    }

    /// The rules that apply to a subject in a direction, in evaluation order.
    pub fn rules_of(&self, subject: Identity, direction: Direction) -> Vec<&Rule> {
        self.index
            .subject_rules
            .get(&subject)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|h| &self.index.rules[h].rule)
            .filter(|r| r.direction == direction)
            .collect()
    }

    /// The isolations of a subject in a direction.
    pub fn isolations_of(&self, subject: Identity, direction: Direction) -> Vec<&Isolation> {
        self.index
            .subject_isos
            .get(&subject)
            .into_iter()
            .flat_map(|m| m.keys())
            .map(|k| &self.index.isolations[k].iso)
            .filter(|i| i.direction == direction)
            .collect()
    }

    /// The full recompile of the current model with this engine's allocations (what every
    /// incremental result must equal).
    pub fn full_recompile(&self) -> ClusterState
    where
        S: Clone,
    {
        compile(&self.cluster, self.store.clone()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::InMemoryAllocations;
    use crate::explain::{ExplainQuery, FlowEnd, explain};
    use crate::model::{
        NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicyRule, Pod, PolicyType,
        PortRef, Protocol,
    };
    use crate::selector::LabelSelector;

    fn pod(name: &str, ip: &str) -> Pod {
        Pod {
            namespace: "ns".into(),
            name: name.into(),
            labels: [("app".to_string(), name.to_string())]
                .into_iter()
                .collect(),
            ips: vec![ip.parse().expect("test IP")],
            service_account: "default".into(),
            ..Pod::default()
        }
    }

    fn app(name: &str) -> LabelSelector {
        LabelSelector::from_labels([("app", name)])
    }

    /// `a` may send to `b` on TCP/80 only (egress isolated); `b` accepts nothing unless
    /// `b_accepts` (ingress isolated either way).
    fn cluster(b_accepts: bool) -> Cluster {
        let mut c = Cluster::default();
        for p in [pod("a", "10.0.0.1"), pod("b", "10.0.0.2")] {
            c.pods.insert(p.key(), p);
        }
        let egress = NetworkPolicy {
            namespace: "ns".into(),
            name: "a-egress".into(),
            pod_selector: app("a"),
            policy_types: Some(vec![PolicyType::Egress]),
            ingress: Vec::new(),
            egress: vec![NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::Pods {
                    pod_selector: Some(app("b")),
                    namespace_selector: None,
                }],
                ports: vec![NetworkPolicyPort {
                    protocol: Some(Protocol::Tcp),
                    port: Some(PortRef::Number(80)),
                    end_port: None,
                }],
            }],
        };
        let ingress = NetworkPolicy {
            namespace: "ns".into(),
            name: "b-ingress".into(),
            pod_selector: app("b"),
            policy_types: Some(vec![PolicyType::Ingress]),
            ingress: if b_accepts {
                vec![NetworkPolicyRule::default()]
            } else {
                Vec::new()
            },
            egress: Vec::new(),
        };
        for np in [egress, ingress] {
            c.network_policies.insert(np.key(), np);
        }
        c
    }

    /// (egress action, ingress action, verdict) of a -> b on TCP `port`.
    fn flow(c: &Cluster, port: u16) -> (String, String, String) {
        let engine = Engine::new(c.clone(), InMemoryAllocations::new());
        let query = ExplainQuery {
            from: FlowEnd::Pod(ObjectKey::new("ns", "a")),
            to: FlowEnd::Pod(ObjectKey::new("ns", "b")),
            port: PortRef::Number(port),
            protocol: Protocol::Tcp,
        };
        let out = explain(&engine, &query).expect("both pods exist and have addresses");
        let [f] = out.as_slice() else {
            panic!("one destination, one explanation: {out:?}");
        };
        (
            f.egress.action.clone(),
            f.ingress.action.clone(),
            f.verdict.clone(),
        )
    }

    fn strings(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn a_flow_passes_only_if_both_sides_allow_it() {
        // The source allows, the destination does not.
        assert_eq!(flow(&cluster(false), 80), strings("allow", "deny", "deny"));
        // The destination allows, the source does not.
        assert_eq!(flow(&cluster(true), 81), strings("deny", "allow", "deny"));
        // Both allow.
        assert_eq!(flow(&cluster(true), 80), strings("allow", "allow", "allow"));
    }

    #[test]
    fn each_side_is_compiled_for_its_own_subject() {
        let engine = Engine::new(cluster(false), InMemoryAllocations::new());
        let id = |n: &str| {
            engine
                .pod_identity(&ObjectKey::new("ns", n))
                .expect("pods are endpoints")
        };
        let (a, b) = (id("a"), id("b"));
        let b_info = &engine.identities()[&b];
        let a_info = &engine.identities()[&a];
        let to_b = engine.decide(
            a,
            Direction::Egress,
            &Peer::Pod {
                identity: b_info,
                class: None,
            },
        );
        let from_a = engine.decide(
            b,
            Direction::Ingress,
            &Peer::Pod {
                identity: a_info,
                class: None,
            },
        );
        let tcp = Protocol::Tcp.number();
        assert_eq!(to_b.get(tcp, 80).action, Action::Allow);
        assert_eq!(to_b.get(tcp, 81).action, Action::Deny);
        assert_eq!(from_a.get(tcp, 80).action, Action::Deny);
        // b's egress and a's ingress are not policed at all.
        assert_eq!(
            engine.decide(b, Direction::Egress, &Peer::Outside),
            Segmented::constant(Decision::UNPOLICED)
        );
        assert_eq!(
            engine.decide(a, Direction::Ingress, &Peer::Outside),
            Segmented::constant(Decision::UNPOLICED)
        );
    }
}
