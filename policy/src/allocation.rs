//! The numbers septum allocates and the keys they are allocated for: pod identities, CIDR and
//! pod-in-CIDR identities, Service ids and rule cookies, each in its own range, and the stable
//! name of a rule ([`RuleId`]) that keys its cookie.
//!
//! Numbers come from an [`AllocationStore`], so a controller can persist them and a restart
//! rewrites nothing. A fresh store fed the same model allocates the same numbers: the compiler
//! always allocates new keys in sorted order.

use std::collections::BTreeMap;

use septum_datapath_common::{IDENTITY_FIRST_CIDR, IDENTITY_FIRST_POD};

use crate::cidr::Cidr;
use crate::identity::IdentityKey;
use crate::model::ObjectKey;

/// Cookie reported when the node reached one of its pods (always allowed).
pub const COOKIE_HOST: u32 = 1;
/// First cookie number allocated to rules (lower ones are builtin).
pub const FIRST_RULE_COOKIE: u32 = 16;
/// First Service id.
pub const FIRST_SERVICE_ID: u32 = 1;

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
            Self::Service(_) => FIRST_SERVICE_ID,
            Self::Rule(_) => FIRST_RULE_COOKIE,
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
    use crate::model::Pod;

    fn pod(app: &str) -> Pod {
        Pod {
            namespace: "ns".into(),
            name: "p".into(),
            labels: [("app".to_string(), app.to_string())].into_iter().collect(),
            service_account: "default".into(),
            ..Pod::default()
        }
    }

    #[test]
    fn allocations_are_stable_and_persistable() {
        let mut s = InMemoryAllocations::new();
        let k1 = AllocationKey::Identity(IdentityKey::of_pod(&pod("a")));
        let k2 = AllocationKey::Identity(IdentityKey::of_pod(&pod("b")));
        let n1 = s.allocate(&k1);
        let n2 = s.allocate(&k2);
        assert_eq!(n1, IDENTITY_FIRST_POD);
        assert_eq!(n2, IDENTITY_FIRST_POD + 1);
        assert_eq!(s.allocate(&k1), n1);
        let restored = InMemoryAllocations::from_entries(s.entries().map(|(k, v)| (k.clone(), v)));
        let mut restored = restored;
        assert_eq!(restored.get(&k2), Some(n2));
        let k3 = AllocationKey::Identity(IdentityKey::of_pod(&pod("c")));
        assert_eq!(
            restored.allocate(&k3),
            n2 + 1,
            "no number is reused after a restart"
        );
    }
}
