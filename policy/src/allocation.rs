//! The numbers septum allocates and the keys they are allocated for: pod identities, CIDR and
//! pod-in-CIDR identities, Service ids and rule cookies, each in its own range, and the stable
//! name of a rule ([`RuleId`]) that keys its cookie.
//!
//! Numbers come from an [`AllocationStore`], so a controller can persist them and a restart
//! rewrites nothing. The store keeps raw `u32`s (that is what it persists, for every kind of
//! number); its `allocate_*` methods hand them out typed. A fresh store fed the same model allocates the same numbers: the compiler
//! always allocates new keys in sorted order.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use septum_datapath_common::{
    Cookie, Direction, IDENTITY_FIRST_CIDR, IDENTITY_FIRST_POD, Identity, ServiceId,
};

use crate::cidr::Cidr;
use crate::identity::IdentityKey;
use crate::model::ObjectKey;

/// Cookie reported when the node reached one of its pods (always allowed).
pub const COOKIE_HOST: Cookie = Cookie::new(1);
/// First cookie number allocated to rules (lower ones are builtin).
pub const FIRST_RULE_COOKIE: u32 = 16;
/// First Service id.
pub const FIRST_SERVICE_ID: u32 = 1;

/// The kind of object a rule comes from.
///
/// Variants are declared in the order of their names, so that [`RuleId`]s (and the stores keyed
/// by them) sort as they did when kinds were strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// An upstream ClusterNetworkPolicy.
    ClusterNetworkPolicy,
    /// septum's FlowPolicy.
    FlowPolicy,
    /// A Kubernetes NetworkPolicy.
    NetworkPolicy,
    /// Behaviour built into septum (the node reaching its pods).
    Builtin,
}

impl PolicyKind {
    /// The kind as written in manifests (`builtin` for builtin rules).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Self::FlowPolicy => "FlowPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::Builtin => "builtin",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::ClusterNetworkPolicy,
            Self::FlowPolicy,
            Self::NetworkPolicy,
            Self::Builtin,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownName(s.to_string()))
    }
}

/// The part of a policy a rule comes from: a direction's rule list, or a direction's isolation
/// (the default deny).
///
/// Variants are declared in the order of their names, like [`PolicyKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// The egress rules.
    Egress,
    /// The egress isolation.
    EgressIsolation,
    /// The ingress rules.
    Ingress,
    /// The ingress isolation.
    IngressIsolation,
}

impl Section {
    /// The rule list of a direction.
    pub const fn rules(direction: Direction) -> Self {
        match direction {
            Direction::Ingress => Self::Ingress,
            Direction::Egress => Self::Egress,
        }
    }

    /// The isolation of a direction.
    pub const fn isolation(direction: Direction) -> Self {
        match direction {
            Direction::Ingress => Self::IngressIsolation,
            Direction::Egress => Self::EgressIsolation,
        }
    }

    /// `ingress`, `egress`, `ingress-isolation` or `egress-isolation`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::EgressIsolation => "egress-isolation",
            Self::Ingress => "ingress",
            Self::IngressIsolation => "ingress-isolation",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Section {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Egress,
            Self::EgressIsolation,
            Self::Ingress,
            Self::IngressIsolation,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownName(s.to_string()))
    }
}

/// A name that is no [`PolicyKind`] or [`Section`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown name {0:?}")]
pub struct UnknownName(pub String);

/// A rule's stable name, the key of its cookie.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    /// The kind of its object.
    pub kind: PolicyKind,
    /// Namespace and name (namespace empty for cluster-scoped objects).
    pub object: ObjectKey,
    /// Its part of the object.
    pub section: Section,
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
        /// The pod identity.
        identity: Identity,
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

    /// The identity of pods with this key.
    fn allocate_identity(&mut self, key: IdentityKey) -> Identity {
        Identity::new(self.allocate(&AllocationKey::Identity(key)))
    }

    /// The CIDR identity of addresses whose most specific policy prefix is `cidr`.
    fn allocate_cidr(&mut self, cidr: Cidr) -> Identity {
        Identity::new(self.allocate(&AllocationKey::Cidr(cidr)))
    }

    /// The identity of the addresses of pod identity `identity` inside policy prefix `cidr`.
    fn allocate_pod_in_cidr(&mut self, identity: Identity, cidr: Cidr) -> Identity {
        Identity::new(self.allocate(&AllocationKey::PodInCidr { identity, cidr }))
    }

    /// The id of a Service.
    fn allocate_service(&mut self, service: ObjectKey) -> ServiceId {
        ServiceId::new(self.allocate(&AllocationKey::Service(service)))
    }

    /// The id of a Service, if allocated.
    fn service_id(&self, service: ObjectKey) -> Option<ServiceId> {
        self.get(&AllocationKey::Service(service))
            .map(ServiceId::new)
    }

    /// The cookie of a rule.
    fn allocate_cookie(&mut self, rule: RuleId) -> Cookie {
        Cookie::new(self.allocate(&AllocationKey::Rule(rule)))
    }
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
    fn kinds_and_sections_sort_and_parse_as_their_names() {
        let kinds = [
            PolicyKind::ClusterNetworkPolicy,
            PolicyKind::FlowPolicy,
            PolicyKind::NetworkPolicy,
            PolicyKind::Builtin,
        ];
        let sections = [
            Section::Egress,
            Section::EgressIsolation,
            Section::Ingress,
            Section::IngressIsolation,
        ];
        // Stored allocations keyed by rule ids keep the order they had with string names.
        assert!(
            kinds
                .windows(2)
                .all(|w| w[0].as_str() < w[1].as_str() && w[0] < w[1])
        );
        assert!(
            sections
                .windows(2)
                .all(|w| w[0].as_str() < w[1].as_str() && w[0] < w[1])
        );
        for k in kinds {
            assert_eq!(k.as_str().parse::<PolicyKind>(), Ok(k));
        }
        for s in sections {
            assert_eq!(s.as_str().parse::<Section>(), Ok(s));
        }
        assert_eq!(
            "Ingress".parse::<Section>(),
            Err(UnknownName("Ingress".into()))
        );
        assert_eq!(
            Section::isolation(Direction::Egress),
            Section::EgressIsolation
        );
        assert_eq!(Section::rules(Direction::Ingress), Section::Ingress);
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
