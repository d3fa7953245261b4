//! The flow record: one connection (or one run of folded drops) as a responder reads it, with
//! both ends enriched (namespace, pod, workload, labels, identity, Service) and the deciding rule
//! on each side.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A shared, immutable string: cloning one costs a reference count, not an allocation, so a
/// flow record naming a pod shares that name with every other record and the enrichment table.
/// The empty name allocates nothing.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(Option<Arc<str>>);

/// Hashes as the text does, so a `HashMap<Name, _>` can be looked up by `&str`.
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Name {
    /// The empty name.
    pub const EMPTY: Self = Self(None);

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    /// Whether the name is empty.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        if s.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::from(s)))
        }
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        if s.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::from(s)))
        }
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.as_str().to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

/// A pod's labels, shared like [`Name`]: every record of the pod points at one map.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Option<Arc<BTreeMap<String, String>>>);

/// The map an empty [`Labels`] reads as.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Labels {
    /// The map.
    pub fn map(&self) -> &BTreeMap<String, String> {
        self.0.as_deref().unwrap_or(&NO_LABELS)
    }

    /// Sets one label (copying the map first if another record shares it).
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        Arc::make_mut(self.0.get_or_insert_with(Default::default)).insert(key, value)
    }
}

impl Deref for Labels {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &BTreeMap<String, String> {
        self.map()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(m: BTreeMap<String, String>) -> Self {
        if m.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(m)))
        }
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Labels {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect::<BTreeMap<_, _>>(),
        )
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.map(), f)
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(Self::from)
    }
}

/// What happened to the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allowed and passed.
    Forwarded,
    /// Refused: dropped silently.
    Dropped,
    /// Passed, and reported as what an enforcing policy would have dropped.
    Audit,
}

impl Verdict {
    /// The stored code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Forwarded => 1,
            Self::Dropped => 2,
            Self::Audit => 3,
        }
    }

    /// The verdict of a stored code.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Forwarded),
            2 => Some(Self::Dropped),
            3 => Some(Self::Audit),
            _ => None,
        }
    }

    /// `forwarded`, `dropped` or `audit`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Dropped => "dropped",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "forwarded" | "allowed" => Ok(Self::Forwarded),
            "dropped" | "denied" => Ok(Self::Dropped),
            "audit" => Ok(Self::Audit),
            _ => Err(format!(
                "unknown verdict {s:?} (expected forwarded, dropped or audit)"
            )),
        }
    }
}

/// Where the datapath saw the flow: leaving a pod (its egress) or arriving at one (its ingress).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Point {
    /// On the pod's host veth, packets leaving the pod.
    FromPod,
    /// On the pod's host veth, packets arriving at the pod.
    ToPod,
}

impl Point {
    /// `from-pod` or `to-pod` (as serialised).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FromPod => "from-pod",
            Self::ToPod => "to-pod",
        }
    }

    /// The stored code (the datapath's `POINT_*`).
    pub const fn code(self) -> u8 {
        match self {
            Self::FromPod => 1,
            Self::ToPod => 2,
        }
    }

    /// The point of a stored code.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::FromPod),
            2 => Some(Self::ToPod),
            _ => None,
        }
    }
}

/// One end of a flow, as enrichment knows it. Every field but the address may be unknown (an
/// address outside the cluster has only its address and the world or CIDR identity).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEnd {
    /// Address.
    pub ip: Option<IpAddr>,
    /// Port (the ICMP echo id for ICMP).
    pub port: u16,
    /// Pod namespace.
    #[serde(default, skip_serializing_if = "Name::is_empty")]
    pub namespace: Name,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Name::is_empty")]
    pub pod: Name,
    /// The pod's owner (`Deployment/web`, `StatefulSet/db`, or the pod itself).
    #[serde(default, skip_serializing_if = "Name::is_empty")]
    pub workload: Name,
    /// Pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Security identity.
    pub identity: u32,
    /// The Service, `namespace/name`, when the flow was addressed to one.
    #[serde(default, skip_serializing_if = "Name::is_empty")]
    pub service: Name,
}

/// `namespace/pod:port`, or `address:port` outside the cluster (`[v6]:port`, `?:port` when the
/// address is unknown).
impl fmt::Display for FlowEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.pod.is_empty() {
            return write!(f, "{}/{}:{}", self.namespace, self.pod, self.port);
        }
        match self.ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Some(ip) => write!(f, "{ip}:{}", self.port),
            None => write!(f, "?:{}", self.port),
        }
    }
}

/// The rule that decided one side of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// `NetworkPolicy`, `FlowPolicy`, `ClusterNetworkPolicy`, or `builtin`.
    pub kind: String,
    /// Policy namespace (empty for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Policy name.
    pub name: String,
    /// The ClusterNetworkPolicy tier (`Admin`, `Baseline`), empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tier: String,
    /// Index of the rule in its section (`-1`: the isolation default deny).
    pub rule_index: i32,
}

/// One flow record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// First seen, milliseconds since the Unix epoch.
    pub first_seen_ms: i64,
    /// Last seen, milliseconds since the Unix epoch.
    pub last_seen_ms: i64,
    /// The node that observed it.
    pub node: Name,
    /// Observation point.
    pub point: Point,
    /// IP protocol number.
    pub protocol: u8,
    /// Source.
    pub src: FlowEnd,
    /// Destination.
    pub dst: FlowEnd,
    /// Verdict.
    pub verdict: Verdict,
    /// The datapath's stable drop-reason code (0: none).
    pub drop_reason: u8,
    /// Deciding rule on the egress side (the source pod's policy), if any.
    pub egress_rule: Option<Arc<RuleRef>>,
    /// Deciding rule on the ingress side (the destination pod's policy), if any.
    pub ingress_rule: Option<Arc<RuleRef>>,
    /// TCP flags seen (OR of every packet's).
    pub tcp_flags: u8,
    /// Packets source -> destination.
    pub packets_forward: u64,
    /// Bytes source -> destination.
    pub bytes_forward: u64,
    /// Packets destination -> source.
    pub packets_reverse: u64,
    /// Bytes destination -> source.
    pub bytes_reverse: u64,
    /// The record describes reply traffic of a connection opened the other way.
    pub is_reply: bool,
    /// Events folded into this record (repeated drops of one tuple count up here).
    pub count: u64,
}

impl FlowRecord {
    /// The IP family (4 or 6) of the addresses, 0 when neither is known.
    pub fn family(&self) -> u8 {
        match self.src.ip.or(self.dst.ip) {
            Some(IpAddr::V4(_)) => 4,
            Some(IpAddr::V6(_)) => 6,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_cloned_name_shares_its_text_and_the_empty_name_allocates_nothing() {
        let a = Name::from("shop/web");
        let b = a.clone();
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(Name::from(""), Name::EMPTY);
        assert_eq!(Name::from(String::new()).0, None);
        assert_eq!(Name::default().as_str(), "");
    }

    #[test]
    fn a_name_is_looked_up_by_its_text() {
        let mut m = HashMap::new();
        m.insert(Name::from("web"), 1);
        m.insert(Name::EMPTY, 2);
        assert_eq!(m.get("web"), Some(&1));
        assert_eq!(m.get(""), Some(&2));
        assert_eq!(m.get("api"), None);
        let mut sorted = vec![Name::from("b"), Name::EMPTY, Name::from("a")];
        sorted.sort();
        assert_eq!(sorted, ["", "a", "b"]);
    }

    #[test]
    fn shared_labels_are_copied_before_a_change() {
        let a: Labels = [("app", "web")].into();
        let mut b = a.clone();
        b.insert("tier".into(), "front".into());
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 2);
        let mut empty = Labels::default();
        assert!(empty.is_empty());
        empty.insert("k".into(), "v".into());
        assert_eq!(empty["k"], "v");
    }

    #[test]
    fn shared_fields_serialise_as_plain_strings_and_maps() {
        let end = FlowEnd {
            ip: Some(IpAddr::from([10, 0, 0, 2])),
            port: 80,
            namespace: "shop".into(),
            pod: "web-0".into(),
            labels: [("app", "web")].into(),
            identity: 300,
            ..FlowEnd::default()
        };
        let json = serde_json::to_string(&end).unwrap();
        assert_eq!(
            json,
            r#"{"ip":"10.0.0.2","port":80,"namespace":"shop","pod":"web-0","labels":{"app":"web"},"identity":300}"#
        );
        let back: FlowEnd = serde_json::from_str(&json).unwrap();
        assert_eq!(back, end);
        assert!(back.workload.is_empty() && back.service.is_empty());
    }
}
