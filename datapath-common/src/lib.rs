//! The contract between septum's eBPF programs and user space: map names, `#[repr(C)]` keys,
//! values and events, and the stable codes (verdicts, drop reasons, counters) that the kernel, the
//! agent and the flow API share.
//!
//! Everything here is `no_std`, has no I/O and is layout-checked at compile time. A change to any
//! key or value layout is a new map layout version: bump [`LAYOUT_VERSION`] and the `_vN` suffix of
//! the map names, so the loader migrates old pins instead of silently reusing them.
//!
//! # Policy decision contract
//!
//! The policy map is an LPM trie keyed by [`PolicyKeyData`]:
//! `subject identity | peer identity | direction | protocol | port`. The first 72 bits (subject,
//! peer, direction) are always matched exactly; a rule for any protocol stops there
//! ([`POLICY_PREFIX_ANY_PROTO`]); a rule for one protocol on any port stops after the protocol
//! ([`POLICY_PREFIX_ANY_PORT`]); a port range is split into aligned power-of-two blocks, each a
//! prefix of the big-endian port.
//!
//! For a new flow, the datapath looks up (subject, direction, protocol, port) three times: with the
//! peer's identity, with the peer's CIDR identity (when it has one), and with [`IDENTITY_ANY`].
//! Within one lookup the longest prefix wins, so the writer of the map (the policy compiler) must
//! give every more specific entry the decision of any broader entry that overrides it. Across the
//! lookups, the entry with the highest `precedence` wins; on equal precedence, deny beats audit
//! beats allow. When no entry matches, the direction is not policed for that subject and the flow
//! is allowed. Isolation ("default deny") is therefore an ordinary entry: a deny for
//! (subject, direction, [`IDENTITY_ANY`]) with prefix [`POLICY_PREFIX_ANY_PROTO`] and precedence
//! [`PRECEDENCE_DEFAULT_DENY`].

#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

/// The map diff and its apply order (user space).
#[cfg(feature = "alloc")]
pub mod diff;
#[cfg(feature = "alloc")]
pub use diff::MapDiff;

/// The LPM key type, the longest-prefix reading and the decision contract.
pub mod lpm;
pub use lpm::{IpCacheKey, LpmData, LpmKey, PolicyKey};

use core::mem::size_of;

/// Version of every map layout below; part of every map name and of the pin directory.
pub const LAYOUT_VERSION: u32 = 1;

/// Map names. Kernel object names are limited to 15 bytes, hence the abbreviations.
pub mod map_names {
    /// Host ifindex -> [`super::EndpointInfo`].
    pub const ENDPOINTS: &str = "septum_ep_v1";
    /// LPM {family, address} -> [`super::IpCacheEntry`].
    pub const IPCACHE: &str = "septum_ipc_v1";
    /// LPM [`super::PolicyKeyData`] -> [`super::PolicyEntry`].
    pub const POLICY: &str = "septum_pol_v1";
    /// [`super::ServiceKey`] -> [`super::ServiceEntry`].
    pub const SERVICES: &str = "septum_svc_v1";
    /// LRU [`super::CtKey`] -> [`super::CtEntry`]. Version 2: a node-local flow (both ends
    /// pods of this node) has both of its entries keyed at [`super::POINT_FROM_POD`], flagged
    /// [`super::CT_F_LOCAL`] (version 1 had every flow's reply keyed at the other point). The
    /// key and value sizes did not change, so the name carries the version: a version 1 pin is
    /// [`RETIRED`], never adopted.
    pub const CONNTRACK: &str = "septum_ct_v2";
    /// LRU [`super::FragKey`] -> [`super::FragEntry`].
    pub const FRAGMENTS: &str = "septum_frag_v1";
    /// LRU [`super::CtKey`] -> last drop event time (ns), for rate-limiting drop events.
    pub const DROP_EVENTS: &str = "septum_drl_v1";
    /// Ring buffer of [`super::FlowEvent`].
    pub const EVENTS: &str = "septum_evt_v1";
    /// Per-CPU array of u64 counters indexed by [`super::Counter`].
    pub const COUNTERS: &str = "septum_cnt_v1";
    /// Array with one [`super::DatapathConfig`] at index 0.
    pub const CONFIG: &str = "septum_cfg_v1";
    /// Hash {family, address} ([`super::IpPrefixData`]) -> host ifindex of the endpoint of
    /// this node that owns the address: how `from_pod` knows that a destination is a pod on
    /// this node.
    pub const LOCAL_ADDRS: &str = "septum_lip_v1";

    /// Names of maps that earlier layouts pinned and this one replaced: a pin of one of them
    /// is refused (or, migrating, removed), never left to be mistaken for live state.
    pub const RETIRED: [&str; 1] = ["septum_ct_v1"];

    /// Every map name, in a stable order.
    pub const ALL: [&str; 11] = [
        ENDPOINTS,
        IPCACHE,
        POLICY,
        SERVICES,
        CONNTRACK,
        FRAGMENTS,
        DROP_EVENTS,
        EVENTS,
        COUNTERS,
        CONFIG,
        LOCAL_ADDRS,
    ];
}

/// Program names (the ELF symbols of the TC classifiers).
pub mod program_names {
    /// TC ingress of the host-side veth: packets leaving the pod.
    pub const FROM_POD: &str = "from_pod";
    /// TC egress of the host-side veth: packets entering the pod.
    pub const TO_POD: &str = "to_pod";
    /// An empty classifier, the benchmark's baseline.
    pub const BENCH_EMPTY: &str = "bench_empty";
}

/// Map sizes.
pub mod map_sizes {
    pub const ENDPOINTS: u32 = 16_384;
    pub const IPCACHE: u32 = 524_288;
    pub const POLICY: u32 = 1_048_576;
    pub const SERVICES: u32 = 65_536;
    pub const CONNTRACK: u32 = 524_288;
    pub const FRAGMENTS: u32 = 8_192;
    pub const DROP_EVENTS: u32 = 16_384;
    /// Four addresses per endpoint.
    pub const LOCAL_ADDRS: u32 = 65_536;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 22;
    /// The programs wake the event reader only when this much is waiting in the ring (a
    /// sixteenth of it, about 3,000 events); below it the reader polls on its own timer
    /// ([`EVENTS_POLL_INTERVAL_MS`]). A wakeup per event would cost every new flow an interrupt
    /// and a context switch.
    pub const EVENTS_WAKEUP_BYTES: u64 = (EVENTS_BYTES as u64) / 16;
    /// How often the reader drains the ring without being woken, in milliseconds: the most an
    /// event waits when traffic is light.
    pub const EVENTS_POLL_INTERVAL_MS: u64 = 10;
}

// ---------------------------------------------------------------------------------------------
// Identities

/// Wildcard peer in policy keys: "any peer".
pub const IDENTITY_ANY: u32 = 0;
/// This node (the host network namespace, its addresses and the kubelet).
pub const IDENTITY_HOST: u32 = 1;
/// Anything outside the cluster that no CIDR rule names.
pub const IDENTITY_WORLD: u32 = 2;
/// Another node of the cluster.
pub const IDENTITY_REMOTE_NODE: u32 = 3;
/// First identity number allocated to pods (below are reserved).
pub const IDENTITY_FIRST_POD: u32 = 256;
/// First identity number allocated to CIDR prefixes named by policies.
pub const IDENTITY_FIRST_CIDR: u32 = 1 << 24;

/// Typed numbers: one `#[repr(transparent)]` newtype per kind of number, so that an identity, a
/// rule cookie and a Service id cannot be mixed up. The map structs below keep plain `u32`
/// fields (the eBPF programs read them as such); user space converts at the map boundary with
/// `From`/`Into`.
macro_rules! number_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u32);

        impl $name {
            /// The typed form of a raw number.
            pub const fn new(n: u32) -> Self {
                Self(n)
            }

            /// The raw number, as stored in the maps.
            pub const fn get(self) -> u32 {
                self.0
            }
        }

        impl From<u32> for $name {
            fn from(n: u32) -> Self {
                Self(n)
            }
        }

        impl From<$name> for u32 {
            fn from(n: $name) -> u32 {
                n.0
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Display::fmt(&self.0, f)
            }
        }

        /// Serialised as the bare number (reports, APIs), like [`Display`](core::fmt::Display).
        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u32(self.0)
            }
        }
    };
}

number_newtype!(
    /// A security identity: a pod identity, a reserved identity (`IDENTITY_*`), a CIDR identity
    /// or a pod-in-CIDR identity. Policy keys and ipcache entries hold its number.
    Identity
);

impl Identity {
    /// [`IDENTITY_ANY`]: the wildcard peer of policy keys.
    pub const ANY: Self = Self(IDENTITY_ANY);
    /// [`IDENTITY_HOST`].
    pub const HOST: Self = Self(IDENTITY_HOST);
    /// [`IDENTITY_WORLD`].
    pub const WORLD: Self = Self(IDENTITY_WORLD);
    /// [`IDENTITY_REMOTE_NODE`].
    pub const REMOTE_NODE: Self = Self(IDENTITY_REMOTE_NODE);
}

number_newtype!(
    /// A rule cookie: names the rule that decided a flow, in policy entries, conntrack and flow
    /// events. [`Cookie::NONE`] means that nothing policed the flow.
    Cookie
);

impl Cookie {
    /// No rule: the flow was not policed.
    pub const NONE: Self = Self(0);
}

number_newtype!(
    /// A Service id, the value of the services map.
    ServiceId
);

// ---------------------------------------------------------------------------------------------
// Small codes

/// IP family, as stored in keys and events.
pub const FAMILY_IPV4: u8 = 4;
/// IP family, as stored in keys and events.
pub const FAMILY_IPV6: u8 = 6;

/// IP protocol numbers the datapath understands.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// TCP header flags, as the datapath reads them and conntrack entries record them
/// ([`CtEntry::tcp_flags`]).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Direction of a policy, from the subject's point of view.
pub const DIRECTION_INGRESS: u8 = 1;
/// Direction of a policy, from the subject's point of view.
pub const DIRECTION_EGRESS: u8 = 2;

/// Direction of a policy, from its subject's point of view; the code is `DIRECTION_*`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic into the subject.
    Ingress = DIRECTION_INGRESS,
    /// Traffic out of the subject.
    Egress = DIRECTION_EGRESS,
}

impl Direction {
    /// Both directions.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The datapath code (`DIRECTION_*`).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Decodes a direction byte; unknown values are `None`.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            DIRECTION_INGRESS => Some(Self::Ingress),
            DIRECTION_EGRESS => Some(Self::Egress),
            _ => None,
        }
    }

    /// `ingress` or `egress`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl core::fmt::Display for Direction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a packet was observed.
pub const POINT_FROM_POD: u8 = 1;
/// Where a packet was observed.
pub const POINT_TO_POD: u8 = 2;

/// Policy entry actions.
pub const ACTION_ALLOW: u8 = 1;
/// Policy entry actions.
pub const ACTION_DENY: u8 = 2;
/// Would deny, but the packet passes and is reported with verdict audit.
pub const ACTION_AUDIT: u8 = 3;

/// What a policy entry does; the code is `ACTION_*`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// The flow passes.
    Allow = ACTION_ALLOW,
    /// The flow is dropped.
    Deny = ACTION_DENY,
    /// The flow passes and is reported as a would-be deny.
    Audit = ACTION_AUDIT,
}

impl Action {
    /// The datapath code (`ACTION_*`).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Decodes an action byte; unknown values are `None`.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            ACTION_ALLOW => Some(Self::Allow),
            ACTION_DENY => Some(Self::Deny),
            ACTION_AUDIT => Some(Self::Audit),
            _ => None,
        }
    }

    /// The tie-break between entries of equal precedence found by different lookups: deny beats
    /// audit beats allow.
    pub const fn rank(self) -> u8 {
        match self {
            Self::Deny => 3,
            Self::Audit => 2,
            Self::Allow => 1,
        }
    }

    /// `allow`, `deny` or `audit`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

impl From<Action> for u8 {
    fn from(a: Action) -> u8 {
        a.code()
    }
}

impl core::fmt::Display for Action {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Precedence band of the default deny that isolates a subject.
pub const PRECEDENCE_DEFAULT_DENY: u16 = 0;

/// Endpoint flags: policy entries exist for this endpoint's identity in that direction. When
/// clear, the direction is not policed and the policy lookups are skipped.
pub const ENDPOINT_F_INGRESS_POLICY: u8 = 1 << 0;
/// See [`ENDPOINT_F_INGRESS_POLICY`].
pub const ENDPOINT_F_EGRESS_POLICY: u8 = 1 << 1;

/// Endpoint mode: denies drop.
pub const MODE_ENFORCE: u8 = 0;
/// Endpoint mode: denies pass and are reported as audit.
pub const MODE_AUDIT: u8 = 1;

/// Endpoint state: everything but the host is dropped until the agent knows the pod's policy.
pub const STATE_INIT_DENY: u8 = 0;
/// Endpoint state: policy is known and enforced.
pub const STATE_READY: u8 = 1;

/// Verdicts reported in flow events.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forwarded = 1,
    Dropped = 2,
    /// A deny that passed because of audit mode.
    Audit = 3,
}

impl Verdict {
    /// Decodes a verdict byte from the kernel; unknown values are `None`.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Forwarded),
            2 => Some(Self::Dropped),
            3 => Some(Self::Audit),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Dropped => "dropped",
            Self::Audit => "audit",
        }
    }
}

/// Stable drop reasons, shared by kernel, agent and API. Never renumber; only append.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    None = 0,
    /// An explicit deny rule matched.
    PolicyDeny = 1,
    /// The subject is isolated and no rule allowed the flow.
    PolicyDefaultDeny = 2,
    /// The endpoint is known to the datapath but its policy is not (init-deny).
    EndpointNotReady = 3,
    /// The packet arrived on an interface with no endpoint entry (fail closed).
    UnknownEndpoint = 4,
    /// A non-first fragment whose first fragment was never seen.
    FragmentUnknown = 5,
    /// Headers could not be parsed (truncated or malformed).
    Malformed = 6,
}

impl DropReason {
    /// Decodes a drop-reason byte from the kernel; unknown values are `None`.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::PolicyDeny),
            2 => Some(Self::PolicyDefaultDeny),
            3 => Some(Self::EndpointNotReady),
            4 => Some(Self::UnknownEndpoint),
            5 => Some(Self::FragmentUnknown),
            6 => Some(Self::Malformed),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PolicyDeny => "policy-deny",
            Self::PolicyDefaultDeny => "policy-default-deny",
            Self::EndpointNotReady => "endpoint-not-ready",
            Self::UnknownEndpoint => "unknown-endpoint",
            Self::FragmentUnknown => "fragment-unknown",
            Self::Malformed => "malformed",
        }
    }
}

/// Indexes into the per-CPU counters array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    PacketsFromPod = 0,
    PacketsToPod = 1,
    /// Packets that matched an existing conntrack entry (the fast path).
    ConntrackHit = 2,
    /// Flows evaluated against policy.
    NewFlows = 3,
    Forwarded = 4,
    Dropped = 5,
    Audit = 6,
    EventsSent = 7,
    /// Events lost because the ring buffer was full.
    EventsLost = 8,
    /// Drop events suppressed by the per-flow rate limit.
    DropEventsSuppressed = 9,
    /// Mid-stream TCP connections picked up without a conntrack entry.
    ConntrackPickup = 10,
    /// Packets passed without inspection (ARP, neighbour discovery, other non-IP).
    NonIp = 11,
    /// Related ICMP errors passed because their inner flow is tracked.
    IcmpRelated = 12,
    /// Service VIP flows whose egress check was deferred to the backend's to_pod.
    EgressDeferred = 13,
    /// New node-local flows decided whole (source's egress and destination's ingress) at the
    /// source's from_pod.
    NodeLocalDecided = 14,
    /// Packets the destination's to_pod passed because the source's from_pod decided their
    /// node-local flow ([`SKB_MARK_NODE_LOCAL`], or the flow's local conntrack entry).
    NodeLocalPassed = 15,
}

/// Number of counters (the array's size).
pub const COUNTER_COUNT: u32 = 16;

impl Counter {
    /// Every counter with its metric-friendly name.
    pub const ALL: [(Counter, &'static str); 16] = [
        (Counter::PacketsFromPod, "packets_from_pod"),
        (Counter::PacketsToPod, "packets_to_pod"),
        (Counter::ConntrackHit, "conntrack_hit"),
        (Counter::NewFlows, "new_flows"),
        (Counter::Forwarded, "forwarded"),
        (Counter::Dropped, "dropped"),
        (Counter::Audit, "audit"),
        (Counter::EventsSent, "events_sent"),
        (Counter::EventsLost, "events_lost"),
        (Counter::DropEventsSuppressed, "drop_events_suppressed"),
        (Counter::ConntrackPickup, "conntrack_pickup"),
        (Counter::NonIp, "non_ip"),
        (Counter::IcmpRelated, "icmp_related"),
        (Counter::EgressDeferred, "egress_deferred"),
        (Counter::NodeLocalDecided, "node_local_decided"),
        (Counter::NodeLocalPassed, "node_local_passed"),
    ];
}

// ---------------------------------------------------------------------------------------------
// Map types

/// Value of the endpoints map, keyed by the host-side veth's ifindex (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    pub endpoint_id: u32,
    pub identity: u32,
    /// `ENDPOINT_F_*`.
    pub flags: u8,
    /// `MODE_*`.
    pub mode: u8,
    /// `STATE_*`.
    pub state: u8,
    pub _pad: u8,
}

/// The data half of an LPM key over addresses: `family` (as a big-endian u32, so it is matched
/// first) and a 16-byte address (IPv4 in the first 4 bytes). Prefix length = 32 + address bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefixData {
    pub family: [u8; 4],
    pub addr: [u8; 16],
}

impl IpPrefixData {
    pub const fn new(family: u8, addr: [u8; 16]) -> Self {
        Self {
            family: [0, 0, 0, family],
            addr,
        }
    }

    /// LPM prefix length for an address prefix of `bits` bits.
    pub const fn prefix_len(bits: u8) -> u32 {
        32 + bits as u32
    }

    /// LPM prefix length of a full address of `family`.
    pub const fn full_prefix_len(family: u8) -> u32 {
        if family == FAMILY_IPV4 {
            32 + 32
        } else {
            32 + 128
        }
    }
}

/// What the ipcache knows about an address.
pub const IPCACHE_KIND_POD: u8 = 1;
/// See [`IPCACHE_KIND_POD`].
pub const IPCACHE_KIND_HOST: u8 = 2;
/// See [`IPCACHE_KIND_POD`].
pub const IPCACHE_KIND_REMOTE_NODE: u8 = 3;
/// See [`IPCACHE_KIND_POD`].
pub const IPCACHE_KIND_WORLD: u8 = 4;
/// See [`IPCACHE_KIND_POD`].
pub const IPCACHE_KIND_CIDR: u8 = 5;
/// A pod of this node: the agent gives this kind to its own endpoints' addresses (which the
/// node state names as pods) and lists them in the local addresses map, so `from_pod` looks an
/// address up there only when it is one of them. Otherwise a pod like [`IPCACHE_KIND_POD`].
pub const IPCACHE_KIND_LOCAL_POD: u8 = 6;

/// Whether an ipcache kind is a pod's, of this node or another.
pub const fn is_pod_kind(kind: u8) -> bool {
    kind == IPCACHE_KIND_POD || kind == IPCACHE_KIND_LOCAL_POD
}

/// Value of the ipcache LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpCacheEntry {
    /// The address's identity (pod, host, remote node, world or CIDR identity).
    pub identity: u32,
    /// The identity of the most specific policy CIDR containing the address, 0 if none. This is
    /// how ipBlock rules match pod IPs: a pod IP's entry carries both identities.
    pub cidr_identity: u32,
    /// `IPCACHE_KIND_*`.
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// The data half of a policy LPM key. Integers are big-endian so prefixes of the port work.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyData {
    pub subject: [u8; 4],
    pub peer: [u8; 4],
    pub direction: u8,
    pub protocol: u8,
    pub port: [u8; 2],
}

/// Prefix bits that cover subject, peer and direction: a rule for every protocol and port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Prefix bits that also cover the protocol: a rule for every port of one protocol.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// Prefix bits of a full key: one protocol, one port.
pub const POLICY_PREFIX_FULL: u32 = 96;

impl PolicyKeyData {
    pub const fn new(subject: u32, direction: u8, peer: u32, protocol: u8, port: u16) -> Self {
        Self {
            subject: subject.to_be_bytes(),
            peer: peer.to_be_bytes(),
            direction,
            protocol,
            port: port.to_be_bytes(),
        }
    }

    pub const fn subject(&self) -> u32 {
        u32::from_be_bytes(self.subject)
    }

    pub const fn peer(&self) -> u32 {
        u32::from_be_bytes(self.peer)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Value of the policy LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    /// `ACTION_*`.
    pub action: u8,
    pub _pad: u8,
    /// Higher wins across lookups (tiers: admin > namespaced > baseline > default deny).
    pub precedence: u16,
    /// Identifies the rule that wrote this entry; reported in flow events.
    pub cookie: u32,
}

/// Key of the services map: a Service VIP (ClusterIP, externalIP, LoadBalancer IP) and port.
///
/// 4-byte aligned (its bytes are the same), so the BPF target copies an address into it with
/// word moves.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub protocol: u8,
    pub family: u8,
}

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceEntry {
    pub service_id: u32,
}

/// Conntrack key: a 5-tuple as seen at one observation point (`POINT_*`). A new flow writes two
/// entries: the forward tuple at the point that saw it and the reversed tuple at the other point,
/// so every later packet, either way, costs one lookup.
///
/// 8-byte aligned (its bytes are the same): the BPF target copies and clears an aligned key
/// with word stores, and a byte-aligned one with a call to a byte-at-a-time loop.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub protocol: u8,
    pub family: u8,
    pub point: u8,
    pub _pad: u8,
}

impl CtKey {
    /// The tuple of the packets flowing the other way, observed at the other point.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            protocol: self.protocol,
            family: self.family,
            point: opposite_point(self.point),
            _pad: 0,
        }
    }

    /// The key of the other direction's entry of the flow whose entry is keyed `self` and
    /// flagged `flags`: [`reversed`](Self::reversed), at the same point for a node-local flow
    /// ([`CT_F_LOCAL`]).
    pub const fn reply_key(&self, flags: u16) -> Self {
        let mut r = self.reversed();
        if flags & CT_F_LOCAL != 0 {
            r.point = self.point;
        }
        r
    }
}

/// The other observation point.
pub const fn opposite_point(point: u8) -> u8 {
    if point == POINT_FROM_POD {
        POINT_TO_POD
    } else {
        POINT_FROM_POD
    }
}

/// This entry describes the reply direction of its flow.
pub const CT_F_REPLY: u16 = 1 << 0;
/// The source's egress policy was evaluated when this flow was created.
pub const CT_F_EGRESS_EVALUATED: u16 = 1 << 1;
/// The egress check was deferred because the destination was a Service VIP.
pub const CT_F_EGRESS_DEFERRED: u16 = 1 << 2;
/// The flow passed only because of audit.
pub const CT_F_AUDIT: u16 = 1 << 3;
/// The flow was picked up mid-stream (no SYN seen; it predates enforcement).
pub const CT_F_PICKUP: u16 = 1 << 4;
/// A FIN or RST was seen.
pub const CT_F_CLOSING: u16 = 1 << 5;
/// A node-local flow, decided whole at the source's `from_pod`: this entry and its other
/// direction's are both keyed at [`POINT_FROM_POD`] (see [`CtKey::reply_key`]), and the
/// destination's `to_pod` keeps no entry of its own.
pub const CT_F_LOCAL: u16 = 1 << 6;

/// `skb->mark` bits that say "`from_pod` decided this packet's node-local flow": the
/// destination's `to_pod` passes it, a TCP segment without SYN without a conntrack lookup,
/// anything else once the flow's entries are found to know its tuple (the host may have
/// rewritten its ports on the way). The bits sit in the nibble
/// [`SKB_MARK_MASK`] (where Cilium keeps its magics; the two do not run together), clear of
/// kube-proxy's 0x4000 (masquerade) and 0x8000 (drop) and of Calico's 0xffff0000. A pod cannot
/// forge them: a veth clears `skb->mark` when a packet changes network namespace, and `to_pod`
/// ignores them on a packet not received from an interface (locally generated: a host process
/// with `SO_MARK`).
///
/// With the mark, `from_pod` hands over the destination pod's host ifindex: it writes it to
/// the packet's `tc_classid`, which the kernel copies into `skb->tc_index` when the program
/// passes the packet (TCX and direct-action cls_bpf alike). The destination's `to_pod` passes a
/// marked packet at once when `tc_index` is its own ifindex; when `tc_index` names another pod
/// (the host redirected the packet after the decision, say a DNAT to another pod), it decides
/// the packet itself, as if unmarked. When `tc_index` is 0 (an ifindex above 16 bits, or a
/// packet handed over by `BPF_PROG_TEST_RUN`, which cannot carry it), `to_pod` checks instead
/// that the packet is addressed to its own pod (the local addresses map), one lookup more.
pub const SKB_MARK_NODE_LOCAL: u32 = 0x0700;
/// The nibble of `skb->mark` that [`SKB_MARK_NODE_LOCAL`] is compared in.
pub const SKB_MARK_MASK: u32 = 0x0F00;

/// Conntrack value: one direction of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Rule cookies that allowed the flow on the egress and ingress side (0 = not policed).
    pub egress_cookie: u32,
    pub ingress_cookie: u32,
    /// `CT_F_*`.
    pub flags: u16,
    /// OR of the TCP flags seen in this direction.
    pub tcp_flags: u8,
    pub _pad: u8,
    /// A node-local flow's ([`CT_F_LOCAL`]): the host ifindex of the pod this direction's
    /// packets are for, which `from_pod` hands to that pod's `to_pod` with the mark (see
    /// [`SKB_MARK_NODE_LOCAL`]); 0 otherwise. (Bytes that were padding: an entry written
    /// before it existed reads 0, and its pod's `to_pod` checks the address instead.)
    pub local_ifindex: u32,
}

/// Key of the fragments map: which L4 ports a fragmented datagram carries, learned from its
/// first fragment so later fragments get the same verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub id: u32,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of the fragments map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragEntry {
    pub sport: u16,
    pub dport: u16,
}

/// Global datapath settings (array index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatapathConfig {
    /// Minimum interval between two drop events of one flow, in ns (0 = every drop).
    pub drop_event_interval_ns: u64,
    /// Bit 0: emit events for new forwarded flows.
    pub flags: u32,
    pub _pad: u32,
}

/// [`DatapathConfig::flags`]: report new forwarded flows (drops are always reported).
pub const CONFIG_F_TRACE_FORWARDED: u32 = 1 << 0;

impl DatapathConfig {
    /// One drop event per flow per second; forwarded flows reported.
    pub const DEFAULT: Self = Self {
        drop_event_interval_ns: 1_000_000_000,
        flags: CONFIG_F_TRACE_FORWARDED,
        _pad: 0,
    };
}

/// Flow event flags.
pub const EVENT_F_REPLY: u8 = 1 << 0;
/// The egress check was deferred (Service VIP) or done at the destination.
pub const EVENT_F_EGRESS_DEFERRED: u8 = 1 << 1;
/// The egress side decided a drop.
pub const EVENT_F_DENIED_BY_EGRESS: u8 = 1 << 2;
/// The ingress side decided a drop.
pub const EVENT_F_DENIED_BY_INGRESS: u8 = 1 << 3;
/// The flow was picked up mid-stream.
pub const EVENT_F_PICKUP: u8 = 1 << 4;
/// The packet was an ICMP error related to a tracked flow.
pub const EVENT_F_RELATED: u8 = 1 << 5;
/// The source was the host, which may always reach its pods.
pub const EVENT_F_FROM_HOST: u8 = 1 << 6;
/// A node-local flow, decided whole at the source's `from_pod`: the event carries both sides'
/// decisions (egress and ingress cookies) and the destination's `to_pod` reports nothing.
pub const EVENT_F_NODE_LOCAL: u8 = 1 << 7;

/// One flow event: a new flow, or a drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (monotonic, since boot).
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub egress_cookie: u32,
    pub ingress_cookie: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub packet_len: u32,
    pub family: u8,
    pub protocol: u8,
    /// `POINT_*`.
    pub point: u8,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// [`DropReason`] as u8.
    pub drop_reason: u8,
    pub tcp_flags: u8,
    /// `EVENT_F_*`.
    pub flags: u8,
    pub _pad: u8,
}

// Layout asserts: the kernel and user space must agree byte for byte.
const _: () = assert!(size_of::<EndpointInfo>() == 12);
const _: () = assert!(size_of::<IpPrefixData>() == 20);
const _: () = assert!(size_of::<IpCacheEntry>() == 12);
const _: () = assert!(size_of::<PolicyKeyData>() == 12);
const _: () = assert!(size_of::<PolicyEntry>() == 8);
const _: () = assert!(size_of::<ServiceKey>() == 20);
const _: () = assert!(size_of::<ServiceEntry>() == 4);
const _: () = assert!(size_of::<CtKey>() == 40);
const _: () = assert!(size_of::<CtEntry>() == 56);
const _: () = assert!(size_of::<FragKey>() == 40);
const _: () = assert!(size_of::<FragEntry>() == 4);
const _: () = assert!(size_of::<DatapathConfig>() == 16);
const _: () = assert!(size_of::<FlowEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and byte arrays, and have no
    // implicit padding (checked by the size asserts above), so any byte pattern is valid.
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for IpPrefixData {}
    unsafe impl aya::Pod for IpCacheEntry {}
    unsafe impl aya::Pod for PolicyKeyData {}
    unsafe impl aya::Pod for PolicyEntry {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_twice_is_identity() {
        let k = CtKey {
            saddr: [1; 16],
            daddr: [2; 16],
            sport: 1234,
            dport: 80,
            protocol: proto::TCP,
            family: FAMILY_IPV6,
            point: POINT_FROM_POD,
            _pad: 0,
        };
        let r = k.reversed();
        assert_eq!(r.point, POINT_TO_POD);
        assert_eq!((r.sport, r.dport), (80, 1234));
        assert_eq!(r.reversed(), k);
        let local = k.reply_key(CT_F_LOCAL);
        assert_eq!((local.point, local.sport), (POINT_FROM_POD, 80));
        assert_eq!(k.reply_key(0), r);
    }

    #[test]
    fn codes_round_trip() {
        for v in 0..=255u8 {
            if let Some(r) = DropReason::from_u8(v) {
                assert_eq!(r as u8, v);
            }
            if let Some(x) = Verdict::from_u8(v) {
                assert_eq!(x as u8, v);
            }
        }
    }

    #[test]
    fn typed_codes_round_trip() {
        for v in 0..=255u8 {
            if let Some(a) = Action::from_u8(v) {
                assert_eq!(a.code(), v);
            }
            if let Some(d) = Direction::from_u8(v) {
                assert_eq!(d.code(), v);
            }
        }
        assert_eq!(Action::from_u8(ACTION_AUDIT), Some(Action::Audit));
        assert_eq!(
            Direction::from_u8(DIRECTION_EGRESS),
            Some(Direction::Egress)
        );
        assert!(Action::Deny.rank() > Action::Audit.rank());
        assert!(Action::Audit.rank() > Action::Allow.rank());
    }

    #[test]
    fn number_newtypes_keep_the_number() {
        assert_eq!(u32::from(Identity::from(300)), 300);
        assert_eq!(Identity::HOST.get(), IDENTITY_HOST);
        assert_eq!(Cookie::NONE, Cookie::new(0));
        assert_eq!(ServiceId::new(7).get(), 7);
        assert_eq!(size_of::<Identity>(), size_of::<u32>());
    }

    #[test]
    fn policy_key_is_big_endian() {
        let k = PolicyKeyData::new(0x0102_0304, DIRECTION_EGRESS, 7, proto::UDP, 0x1f90);
        assert_eq!(k.subject, [1, 2, 3, 4]);
        assert_eq!(k.port, [0x1f, 0x90]);
        assert_eq!((k.subject(), k.peer(), k.port()), (0x0102_0304, 7, 8080));
    }
}
