//! The flow record: one connection (or one run of folded drops) as a responder reads it, with
//! both ends enriched (namespace, pod, workload, labels, identity, Service) and the deciding rule
//! on each side.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Pod name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// The pod's owner (`Deployment/web`, `StatefulSet/db`, or the pod itself).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// Pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Security identity.
    pub identity: u32,
    /// The Service, `namespace/name`, when the flow was addressed to one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
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
    pub node: String,
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
    pub egress_rule: Option<RuleRef>,
    /// Deciding rule on the ingress side (the destination pod's policy), if any.
    pub ingress_rule: Option<RuleRef>,
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
