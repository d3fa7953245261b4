//! Normalization: every NetworkPolicy, FlowPolicy and ClusterNetworkPolicy becomes a list of
//! uniform [`Rule`]s (subject, direction, peers, ports, action, tier) plus the [`Isolation`]s of
//! the namespaced tier, each with a cookie and a [`RuleDescription`]. All Kubernetes defaults and
//! traps that can be settled without looking at pods are settled here: `policyTypes` inference,
//! rules of a direction the policy does not isolate being ignored, missing protocol = TCP, empty
//! peer or port lists meaning "all", `podSelector` alone meaning the policy's own namespace,
//! Service names resolved through their selectors and Service ports through their
//! `targetPort`. Malformed parts match nothing (fail closed for allow rules); the validation
//! module reports them.
//!
//! This module holds the rule vocabulary, the isolation both namespaced kinds share, and the
//! [`RuleSet`] of a whole cluster; each policy kind is normalized in a module of its own, and
//! [`describe`] writes the one-line accounts of cookies.

mod cluster_network_policy;
pub mod describe;
mod flow_policy;
mod network_policy;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use septum_datapath_common::{Cookie, Direction};

use crate::allocation::{AllocationStore, RuleId};
pub use crate::allocation::{COOKIE_HOST, FIRST_RULE_COOKIE, PolicyKind, Section};
use crate::cidr::Cidr;
use crate::model::{Cluster, ObjectKey, Protocol};
use crate::ports::PortSel;
use crate::selector::{LabelSelector, Labels};

pub use cluster_network_policy::normalize_cluster_network_policy;
pub use describe::host_description;
pub use flow_policy::{normalize_flow_policy, references_service};
pub use network_policy::normalize_network_policy;

/// Evaluation tier, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// ClusterNetworkPolicy tier Admin.
    Admin,
    /// NetworkPolicy and FlowPolicy.
    Namespaced,
    /// ClusterNetworkPolicy tier Baseline.
    Baseline,
    /// Builtin behaviour (the node reaching its pods).
    Builtin,
}

impl Tier {
    /// Lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Namespaced => "namespaced",
            Self::Baseline => "baseline",
            Self::Builtin => "builtin",
        }
    }
}

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleAction {
    /// Allow (NetworkPolicy/FlowPolicy rules, CNP Accept).
    Allow,
    /// Deny (CNP Deny).
    Deny,
    /// Skip the rest of the tier (CNP Pass): from Admin to the namespaced tier; in Baseline, to
    /// the default allow.
    Pass,
}

/// Which namespaces a [`PodMatch`] covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceMatch {
    /// One namespace by name.
    Exact(String),
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

/// A set of pods: namespace, labels and optionally service account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodMatch {
    /// Namespaces.
    pub namespace: NamespaceMatch,
    /// Pod labels.
    pub pods: LabelSelector,
    /// Service account, when the match is by service account.
    pub service_account: Option<String>,
}

impl PodMatch {
    /// Whether a pod with these attributes is in the set.
    pub fn matches(&self, namespace: &str, ns_labels: &Labels, labels: &Labels, sa: &str) -> bool {
        (match &self.namespace {
            NamespaceMatch::Exact(n) => n == namespace,
            NamespaceMatch::Selector(s) => s.matches(ns_labels),
        }) && self.pods.matches(labels)
            && self.service_account.as_deref().is_none_or(|x| x == sa)
    }
}

impl fmt::Display for PodMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            NamespaceMatch::Exact(n) => write!(f, "pods[{}] in namespace {n}", self.pods)?,
            NamespaceMatch::Selector(s) => write!(f, "pods[{}] in namespaces[{s}]", self.pods)?,
        }
        if let Some(sa) = &self.service_account {
            write!(f, " as serviceaccount {sa}")?;
        }
        Ok(())
    }
}

/// A rule peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerMatch {
    /// Every peer: pods, nodes and addresses outside the cluster.
    Any,
    /// Pods (never nodes or outside addresses; hostNetwork pods are not endpoints).
    Pods(PodMatch),
    /// Addresses in `cidr` but in none of `except` (pod and node addresses included).
    Cidr {
        /// The prefix.
        cidr: Cidr,
        /// Carve-outs.
        except: Vec<Cidr>,
    },
}

impl PeerMatch {
    /// Whether addresses whose most specific policy prefix is `class` match (Cilium's
    /// carve-out rule: inside the prefix and not inside any carve-out).
    pub fn matches_cidr_class(&self, class: &Cidr) -> bool {
        match self {
            PeerMatch::Cidr { cidr, except } => {
                cidr.contains(class) && !except.iter().any(|e| e.contains(class))
            }
            _ => false,
        }
    }
}

/// A port item of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortItem {
    /// Numeric ports.
    Sel(PortSel),
    /// A named port, resolved on the destination pod; with a protocol it must match too.
    Named {
        /// The port name.
        name: String,
        /// Required protocol (`None`: any).
        protocol: Option<Protocol>,
    },
}

/// The ports of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Every protocol and port.
    Any,
    /// These items (an empty list matches nothing).
    Items(Vec<PortItem>),
}

impl PortMatch {
    /// Whether any item is a named port.
    pub fn has_named(&self) -> bool {
        match self {
            PortMatch::Any => false,
            PortMatch::Items(items) => items.iter().any(|i| matches!(i, PortItem::Named { .. })),
        }
    }
}

/// The object a rule came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    /// Its kind.
    pub kind: PolicyKind,
    /// Namespace (empty for cluster-scoped) and name.
    pub object: ObjectKey,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.object.name)
        } else {
            write!(f, "{} {}", self.kind, self.object)
        }
    }
}

/// One normalized rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Cookie (shared by the parts of one source rule).
    pub cookie: Cookie,
    /// Tier.
    pub tier: Tier,
    /// Position in evaluation order inside its tier and policy (lower first).
    pub order: RuleOrder,
    /// False for rules of an Audit-mode FlowPolicy.
    pub enforce: bool,
    /// Direction.
    pub direction: Direction,
    /// Action.
    pub action: RuleAction,
    /// Subject pods.
    pub subject: PodMatch,
    /// Peers (any of them); empty matches nothing.
    pub peers: Vec<PeerMatch>,
    /// Ports.
    pub ports: PortMatch,
    /// Source object.
    pub policy: PolicyRef,
}

/// A namespaced policy isolating its subject pods in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// Cookie of the default deny it causes.
    pub cookie: Cookie,
    /// Direction.
    pub direction: Direction,
    /// False for Audit-mode FlowPolicies.
    pub enforce: bool,
    /// Subject pods.
    pub subject: PodMatch,
    /// Source object.
    pub policy: PolicyRef,
}

/// A human-readable account of what a cookie stands for (flow logs, explain).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleDescription {
    /// Tier.
    pub tier: Tier,
    /// Source object (kind `builtin` for builtin cookies).
    pub policy: PolicyRef,
    /// Its part of the source object.
    pub section: Section,
    /// Rule index in its list.
    pub index: u32,
    /// One-line summary.
    pub text: String,
}

impl fmt::Display for RuleDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.tier.as_str(), self.text)
    }
}

/// The normalized form of one policy object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NormalizedPolicy {
    /// Its rules, in its own order.
    pub rules: Vec<Rule>,
    /// Its isolations.
    pub isolations: Vec<Isolation>,
    /// Descriptions of its cookies.
    pub descriptions: BTreeMap<Cookie, RuleDescription>,
}

impl NormalizedPolicy {
    /// Every prefix its rules name (ipBlock cidrs, carve-outs, networks).
    pub fn cidrs(&self) -> BTreeSet<Cidr> {
        let mut out = BTreeSet::new();
        for r in &self.rules {
            for p in &r.peers {
                if let PeerMatch::Cidr { cidr, except } = p {
                    out.insert(*cidr);
                    out.extend(except.iter().copied());
                }
            }
        }
        out
    }
}

impl NormalizedPolicy {
    /// Isolates `subject` in `direction` (the default deny of a namespaced policy that selects
    /// it), with the isolation's cookie and description; `subject_text` names the pods the way
    /// the policy selects them.
    fn isolate(
        &mut self,
        store: &mut dyn AllocationStore,
        policy: &PolicyRef,
        subject: &PodMatch,
        subject_text: &str,
        direction: Direction,
        enforce: bool,
    ) {
        let section = Section::isolation(direction);
        let c = rule_cookie(store, policy, section, 0);
        self.isolations.push(Isolation {
            cookie: c,
            direction,
            enforce,
            subject: subject.clone(),
            policy: policy.clone(),
        });
        self.descriptions.insert(
            c,
            RuleDescription {
                tier: Tier::Namespaced,
                policy: policy.clone(),
                section,
                index: 0,
                text: describe::isolation_text(policy, subject_text, direction, enforce),
            },
        );
    }
}

/// The cookie of rule `index` of `section` of `policy`.
fn rule_cookie(
    store: &mut dyn AllocationStore,
    policy: &PolicyRef,
    section: Section,
    index: u32,
) -> Cookie {
    store.allocate_cookie(RuleId {
        kind: policy.kind,
        object: policy.object.clone(),
        section,
        index,
    })
}

/// Which policy object a [`NormalizedPolicy`] came from (its slot in a [`RuleSet`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicySlot {
    /// A ClusterNetworkPolicy by name.
    Cluster(String),
    /// A NetworkPolicy.
    Network(ObjectKey),
    /// A FlowPolicy.
    Flow(ObjectKey),
}

/// Where a rule stands inside its tier and policy: ClusterNetworkPolicy priority (0 for the
/// namespaced tier) and its index in its list (0 for the namespaced tier, where rules only
/// allow and their order decides nothing but which cookie is reported).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleOrder {
    /// ClusterNetworkPolicy `priority` (lower first).
    pub priority: u32,
    /// Index of the rule in its list.
    pub index: u32,
}

/// A rule's place in evaluation order among every rule of a cluster: by tier, by priority, by
/// source object (its [`PolicySlot`]: a ClusterNetworkPolicy's slot is its name, so equal
/// priorities go by name; namespaced policies go by kind, namespace and name), by index in its
/// list, then by its place among the parts a source rule became.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    /// Tier.
    pub tier: Tier,
    /// ClusterNetworkPolicy priority.
    pub priority: u32,
    /// Source object.
    pub slot: PolicySlot,
    /// Index in its list.
    pub index: u32,
    /// Position among the normalized rules of its object.
    pub seq: u32,
}

impl RuleKey {
    /// The key of rule number `seq` of the policy in `slot`.
    pub fn of(slot: &PolicySlot, seq: u32, rule: &Rule) -> Self {
        Self {
            tier: rule.tier,
            priority: rule.order.priority,
            slot: slot.clone(),
            index: rule.order.index,
            seq,
        }
    }
}

/// Every normalized policy of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Per source object.
    pub policies: BTreeMap<PolicySlot, NormalizedPolicy>,
}

impl RuleSet {
    /// Normalizes every policy of the cluster, in sorted order (so a fresh store allocates the
    /// same cookies for the same model).
    pub fn build(cluster: &Cluster, store: &mut dyn AllocationStore) -> Self {
        let mut policies = BTreeMap::new();
        for (name, p) in &cluster.cluster_network_policies {
            policies.insert(
                PolicySlot::Cluster(name.clone()),
                normalize_cluster_network_policy(p, store),
            );
        }
        for (k, p) in &cluster.network_policies {
            policies.insert(
                PolicySlot::Network(k.clone()),
                normalize_network_policy(p, store),
            );
        }
        for (k, p) in &cluster.flow_policies {
            policies.insert(
                PolicySlot::Flow(k.clone()),
                normalize_flow_policy(p, cluster, store),
            );
        }
        Self { policies }
    }

    /// Renormalizes one slot from the cluster (removing it if the object is gone).
    pub fn refresh(
        &mut self,
        cluster: &Cluster,
        slot: &PolicySlot,
        store: &mut dyn AllocationStore,
    ) {
        let n = match slot {
            PolicySlot::Cluster(name) => cluster
                .cluster_network_policies
                .get(name)
                .map(|p| normalize_cluster_network_policy(p, store)),
            PolicySlot::Network(k) => cluster
                .network_policies
                .get(k)
                .map(|p| normalize_network_policy(p, store)),
            PolicySlot::Flow(k) => cluster
                .flow_policies
                .get(k)
                .map(|p| normalize_flow_policy(p, cluster, store)),
        };
        match n {
            Some(n) => {
                self.policies.insert(slot.clone(), n);
            }
            None => {
                self.policies.remove(slot);
            }
        }
    }

    /// Every prefix named by any rule.
    pub fn cidrs(&self) -> BTreeSet<Cidr> {
        self.policies.values().flat_map(|p| p.cidrs()).collect()
    }

    /// Every cookie description, plus the builtin ones.
    pub fn descriptions(&self) -> BTreeMap<Cookie, RuleDescription> {
        let mut out: BTreeMap<Cookie, RuleDescription> = self
            .policies
            .values()
            .flat_map(|p| p.descriptions.iter().map(|(k, v)| (*k, v.clone())))
            .collect();
        out.insert(COOKIE_HOST, host_description());
        out
    }

    /// Every rule, in evaluation order (see [`RuleKey`]).
    pub fn ordered_rules(&self) -> Vec<&Rule> {
        let mut rules: Vec<(RuleKey, &Rule)> = self
            .policies
            .iter()
            .flat_map(|(slot, p)| {
                p.rules
                    .iter()
                    .enumerate()
                    .map(move |(seq, r)| (RuleKey::of(slot, seq as u32, r), r))
            })
            .collect();
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        rules.into_iter().map(|(_, r)| r).collect()
    }

    /// Every isolation, in the namespaced order.
    pub fn isolations(&self) -> Vec<&Isolation> {
        self.policies.values().flat_map(|p| &p.isolations).collect()
    }
}
