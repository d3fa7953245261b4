//! Security identities and the numbers allocated to them.
//!
//! A pod's identity is its namespace, its security-relevant labels (volatile labels that change
//! on every rollout, like `pod-template-hash`, are left out), its service account and its named
//! container ports. Named ports are part of the identity because policies resolve port names on
//! the destination pod: pods sharing an identity must resolve every name the same way, or
//! per-identity entries could not be exact. Replicas of one workload share one identity.
//!
//! Numbers come from an [`AllocationStore`], so a controller can persist them and a restart
//! rewrites nothing. The same store numbers CIDR identities, the pod-in-CIDR identities used for
//! `ipBlock` rules that match pod IPs, Service ids and rule cookies. A fresh store fed the same
//! model allocates the same numbers: the compiler always allocates new keys in sorted order.

use std::collections::BTreeMap;

use septum_datapath_common::{IDENTITY_FIRST_CIDR, IDENTITY_FIRST_POD};

use crate::cidr::Cidr;
use crate::model::{ObjectKey, Pod, Protocol};
use crate::selector::Labels;

/// Labels that never take part in an identity (they change on every rollout or revision and
/// would split replicas into identities of their own).
pub const VOLATILE_LABELS: [&str; 4] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
];

/// Whether a label key is excluded from identities.
pub fn is_volatile_label(key: &str) -> bool {
    VOLATILE_LABELS.contains(&key)
}

/// What makes two pods the same security identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    /// Namespace.
    pub namespace: String,
    /// Security-relevant labels.
    pub labels: Labels,
    /// Service account.
    pub service_account: String,
    /// Named container ports (name, protocol, number), sorted.
    pub named_ports: Vec<(String, Protocol, u16)>,
}

impl IdentityKey {
    /// The identity of a pod.
    pub fn of_pod(pod: &Pod) -> Self {
        let mut named_ports: Vec<(String, Protocol, u16)> = pod
            .ports
            .iter()
            .filter_map(|p| p.name.clone().map(|n| (n, p.protocol, p.port)))
            .collect();
        named_ports.sort();
        named_ports.dedup();
        Self {
            namespace: pod.namespace.clone(),
            labels: pod
                .labels
                .iter()
                .filter(|(k, _)| !is_volatile_label(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            service_account: pod.service_account.clone(),
            named_ports,
        }
    }
}

/// A rule's stable name, the key of its cookie.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    /// `NetworkPolicy`, `FlowPolicy`, `ClusterNetworkPolicy` or `builtin`.
    pub kind: &'static str,
    /// Namespace and name (namespace empty for cluster-scoped objects).
    pub object: ObjectKey,
    /// `ingress`, `egress`, `isolation` or a builtin's name.
    pub section: &'static str,
    /// Index of the rule in its list (0 for isolation entries).
    pub index: u32,
}

/// What a number is allocated for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllocationKey {
    /// A pod identity.
    Identity(IdentityKey),
    /// A prefix named by some policy.
    Cidr(Cidr),
    /// The addresses of one pod identity inside one policy prefix (most specific).
    PodInCidr {
        /// The pod identity number.
        identity: u32,
        /// The most specific policy prefix containing the address.
        cidr: Cidr,
    },
    /// A Service.
    Service(ObjectKey),
    /// A rule cookie.
    Rule(RuleId),
}

impl AllocationKey {
    /// First number of this key's range.
    pub fn first_number(&self) -> u32 {
        match self {
            Self::Identity(_) => IDENTITY_FIRST_POD,
            Self::Cidr(_) | Self::PodInCidr { .. } => IDENTITY_FIRST_CIDR,
            Self::Service(_) => 1,
            Self::Rule(_) => crate::rules::FIRST_RULE_COOKIE,
        }
    }

    fn space(&self) -> u8 {
        match self {
            Self::Identity(_) => 0,
            Self::Cidr(_) | Self::PodInCidr { .. } => 1,
            Self::Service(_) => 2,
            Self::Rule(_) => 3,
        }
    }
}

/// Where allocated numbers live. Numbers are never reused for another key.
pub trait AllocationStore {
    /// The number of `key`, if allocated.
    fn get(&self, key: &AllocationKey) -> Option<u32>;
    /// The number of `key`, allocating the next free one of its range if needed.
    fn allocate(&mut self, key: &AllocationKey) -> u32;
}

/// An [`AllocationStore`] in memory (tests, the CLI, standalone mode before persistence).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InMemoryAllocations {
    numbers: BTreeMap<AllocationKey, u32>,
    next: [u32; 4],
}

impl InMemoryAllocations {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every allocation, for persisting.
    pub fn entries(&self) -> impl Iterator<Item = (&AllocationKey, u32)> {
        self.numbers.iter().map(|(k, v)| (k, *v))
    }

    /// A store holding previously persisted allocations.
    pub fn from_entries(entries: impl IntoIterator<Item = (AllocationKey, u32)>) -> Self {
        let mut s = Self::new();
        for (k, v) in entries {
            let space = usize::from(k.space());
            s.next[space] = s.next[space].max(v.saturating_add(1));
            s.numbers.insert(k, v);
        }
        s
    }
}

impl AllocationStore for InMemoryAllocations {
    fn get(&self, key: &AllocationKey) -> Option<u32> {
        self.numbers.get(key).copied()
    }

    fn allocate(&mut self, key: &AllocationKey) -> u32 {
        if let Some(n) = self.numbers.get(key) {
            return *n;
        }
        let space = usize::from(key.space());
        let n = self.next[space].max(key.first_number());
        self.next[space] = n + 1;
        self.numbers.insert(key.clone(), n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: "ns".into(),
            name: "p".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            ..Pod::default()
        }
    }

    #[test]
    fn volatile_labels_do_not_split_replicas() {
        let a = IdentityKey::of_pod(&pod(&[("app", "web"), ("pod-template-hash", "abc")]));
        let b = IdentityKey::of_pod(&pod(&[("app", "web"), ("pod-template-hash", "def")]));
        assert_eq!(a, b);
        let c = IdentityKey::of_pod(&pod(&[("app", "db")]));
        assert_ne!(a, c);
    }

    #[test]
    fn allocations_are_stable_and_persistable() {
        let mut s = InMemoryAllocations::new();
        let k1 = AllocationKey::Identity(IdentityKey::of_pod(&pod(&[("app", "a")])));
        let k2 = AllocationKey::Identity(IdentityKey::of_pod(&pod(&[("app", "b")])));
        let n1 = s.allocate(&k1);
        let n2 = s.allocate(&k2);
        assert_eq!(n1, IDENTITY_FIRST_POD);
        assert_eq!(n2, IDENTITY_FIRST_POD + 1);
        assert_eq!(s.allocate(&k1), n1);
        let restored = InMemoryAllocations::from_entries(s.entries().map(|(k, v)| (k.clone(), v)));
        let mut restored = restored;
        assert_eq!(restored.get(&k2), Some(n2));
        let k3 = AllocationKey::Identity(IdentityKey::of_pod(&pod(&[("app", "c")])));
        assert_eq!(
            restored.allocate(&k3),
            n2 + 1,
            "no number is reused after a restart"
        );
    }
}
