//! The compiled form: cluster datapath state in the exact key/value shapes of
//! `septum-datapath-common` (ipcache, policy LPM entries, endpoints, Service VIPs), the cookie
//! and identity tables that explain them, per-node slices, and diffs between two states.
//!
//! # Precedence bands
//!
//! The compiler computes the final decision for every (subject, direction, peer class, protocol,
//! port) and writes entries that reproduce it under the datapath's lookup rule (three lookups:
//! peer identity, peer CIDR identity, any peer; highest precedence wins; deny > audit > allow on
//! ties; longest prefix wins inside one lookup). Precedence is used as a layer, so that the most
//! specific lookup that has an entry decides:
//!
//! | band | key's peer | meaning |
//! | --- | --- | --- |
//! | [`PRECEDENCE_ANY_PEER`] = 0 | `IDENTITY_ANY` | decision for peers nothing more specific names (the default deny lives here) |
//! | [`PRECEDENCE_PEER`] = 1 | pod identity, CIDR identity | decision for that peer where it differs from the any-peer layer |
//! | [`PRECEDENCE_POD_IN_CIDR`] = 2 | pod-in-CIDR identity | decision for pods of one identity whose address lies in one policy prefix, where it differs from the pod identity's layer |
//! | [`PRECEDENCE_HOST`] = 3 | `IDENTITY_HOST` | the node may always reach its pods |
//!
//! Pod addresses inside a policy prefix carry, as their ipcache `cidr_identity`, a pod-in-CIDR
//! identity (one per pod identity and most specific prefix) rather than the bare prefix's
//! identity: decisions can depend on both the pod's labels and its address (an Admin Pass on
//! labels over a Deny on networks; dual-stack pods whose IPv4 and IPv6 addresses fall in
//! different prefixes), and only a joint identity makes every combination exact. Rules about the
//! prefix itself are still written for it, so the datapath contract is unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use septum_datapath_common::{
    Action, Cookie, Identity, IpCacheEntry, PolicyEntry, ServiceEntry, ServiceId, ServiceKey,
};

use crate::cidr::{Cidr, addr_bytes};
use crate::identity::IdentityKey;
use crate::model::{ObjectKey, Protocol};
use crate::rules::RuleDescription;

/// Band of any-peer entries, including the isolation default deny.
pub const PRECEDENCE_ANY_PEER: u16 = septum_datapath_common::PRECEDENCE_DEFAULT_DENY;
/// Band of entries keyed by a pod identity or a CIDR identity.
pub const PRECEDENCE_PEER: u16 = 1;
/// Band of entries keyed by a pod-in-CIDR identity.
pub const PRECEDENCE_POD_IN_CIDR: u16 = 2;
/// Band of the node-to-pod allow.
pub const PRECEDENCE_HOST: u16 = 3;

/// A policy LPM key (data, then prefix length: 72, 80, or 80 + port bits). Sorted by subject
/// first, so one subject's entries are one range.
pub use septum_datapath_common::PolicyKey;

/// A Service VIP key in sortable form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceVip {
    /// VIP.
    pub addr: IpAddr,
    /// Port on the VIP.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl ServiceVip {
    /// The datapath key.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: addr_bytes(self.addr),
            port: self.port.to_be_bytes(),
            protocol: self.protocol.number(),
            family: if self.addr.is_ipv4() {
                septum_datapath_common::FAMILY_IPV4
            } else {
                septum_datapath_common::FAMILY_IPV6
            },
        }
    }
}

/// What the compiler decided for one pod endpoint (the agent adds ifindex and endpoint id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointState {
    /// Identity.
    pub identity: Identity,
    /// `ENDPOINT_F_*`.
    pub flags: u8,
    /// `MODE_*`.
    pub mode: u8,
}

/// What an identity number stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityDescription {
    /// Pods.
    Pod(IdentityKey),
    /// Addresses whose most specific policy prefix is this one.
    Cidr(Cidr),
    /// Pods of one identity whose address lies in one policy prefix.
    PodInCidr {
        /// Pod identity.
        identity: Identity,
        /// Prefix.
        cidr: Cidr,
    },
}

impl fmt::Display for IdentityDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(k) => {
                write!(f, "pod ns={} sa={}", k.namespace, k.service_account)?;
                for (lk, lv) in &k.labels {
                    write!(f, " {lk}={lv}")?;
                }
                for (n, p, port) in &k.named_ports {
                    write!(f, " port:{n}={p}/{port}")?;
                }
                Ok(())
            }
            Self::Cidr(c) => write!(f, "cidr {c}"),
            Self::PodInCidr { identity, cidr } => write!(f, "pod identity {identity} in {cidr}"),
        }
    }
}

/// The whole cluster's datapath state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// ipcache: prefix -> entry.
    pub ipcache: BTreeMap<Cidr, IpCacheEntry>,
    /// Policy LPM entries.
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
    /// Pod endpoints.
    pub endpoints: BTreeMap<ObjectKey, EndpointState>,
    /// Service VIPs.
    pub services: BTreeMap<ServiceVip, ServiceEntry>,
    /// Cookie -> rule description.
    pub rules: BTreeMap<Cookie, RuleDescription>,
    /// Identity -> what it stands for.
    pub identities: BTreeMap<Identity, IdentityDescription>,
    /// Service id -> the Service, for every id the services map holds (flow logs name the
    /// Service a VIP belongs to).
    pub service_names: BTreeMap<ServiceId, ObjectKey>,
    /// Pod address -> the pod (the first by key where two claim one), for flow logs: an agent
    /// names the pods of other nodes too.
    pub pod_addresses: BTreeMap<IpAddr, ObjectKey>,
}

/// Upserts and deletes for one map: the datapath contract's one diff type (upserts first).
pub use septum_datapath_common::MapDiff;

/// The difference between two [`ClusterState`]s, map by map: what an agent writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// ipcache.
    pub ipcache: MapDiff<Cidr, IpCacheEntry>,
    /// Policy entries.
    pub policy: MapDiff<PolicyKey, PolicyEntry>,
    /// Endpoints.
    pub endpoints: MapDiff<ObjectKey, EndpointState>,
    /// Service VIPs.
    pub services: MapDiff<ServiceVip, ServiceEntry>,
    /// Cookie table.
    pub rules: MapDiff<Cookie, RuleDescription>,
    /// Identity table.
    pub identities: MapDiff<Identity, IdentityDescription>,
    /// Service names.
    pub service_names: MapDiff<ServiceId, ObjectKey>,
    /// Pod addresses.
    pub pod_addresses: MapDiff<IpAddr, ObjectKey>,
}

impl StateDiff {
    /// The minimal diff from `old` to `new`.
    pub fn between(old: &ClusterState, new: &ClusterState) -> Self {
        Self {
            ipcache: MapDiff::between(&old.ipcache, &new.ipcache),
            policy: MapDiff::between(&old.policy, &new.policy),
            endpoints: MapDiff::between(&old.endpoints, &new.endpoints),
            services: MapDiff::between(&old.services, &new.services),
            rules: MapDiff::between(&old.rules, &new.rules),
            identities: MapDiff::between(&old.identities, &new.identities),
            service_names: MapDiff::between(&old.service_names, &new.service_names),
            pod_addresses: MapDiff::between(&old.pod_addresses, &new.pod_addresses),
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of operations.
    pub fn len(&self) -> usize {
        self.ipcache.len()
            + self.policy.len()
            + self.endpoints.len()
            + self.services.len()
            + self.rules.len()
            + self.identities.len()
            + self.service_names.len()
            + self.pod_addresses.len()
    }

    /// Applies the diff to a state.
    pub fn apply_to(&self, state: &mut ClusterState) {
        self.ipcache.apply_to(&mut state.ipcache);
        self.policy.apply_to(&mut state.policy);
        self.endpoints.apply_to(&mut state.endpoints);
        self.services.apply_to(&mut state.services);
        self.rules.apply_to(&mut state.rules);
        self.identities.apply_to(&mut state.identities);
        self.service_names.apply_to(&mut state.service_names);
        self.pod_addresses.apply_to(&mut state.pod_addresses);
    }
}

impl ClusterState {
    /// Total number of map entries (ipcache + policy + endpoints + services).
    pub fn entry_count(&self) -> usize {
        self.ipcache.len() + self.policy.len() + self.endpoints.len() + self.services.len()
    }

    /// Service entries in datapath form.
    pub fn service_entries(&self) -> impl Iterator<Item = (ServiceKey, ServiceEntry)> + '_ {
        self.services.iter().map(|(k, v)| (k.key(), *v))
    }

    /// Policy entries of one subject identity.
    pub fn policy_of(&self, subject: Identity) -> impl Iterator<Item = (&PolicyKey, &PolicyEntry)> {
        let start = PolicyKey::subject_start(subject);
        let end = subject
            .get()
            .checked_add(1)
            .map(|n| PolicyKey::subject_start(Identity::new(n)));
        self.policy
            .range(start..)
            .take_while(move |(k, _)| end.is_none_or(|e| **k < e))
    }
}

/// Short name of an action code (`?` for a code that is no [`Action`]).
pub fn action_name(action: u8) -> &'static str {
    Action::from_u8(action).map_or("?", Action::as_str)
}

/// A readable, stable rendering (for snapshots and debugging).
impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# identities")?;
        for (n, d) in &self.identities {
            writeln!(f, "{n}: {d}")?;
        }
        writeln!(f, "# ipcache")?;
        for (c, e) in &self.ipcache {
            writeln!(
                f,
                "{c} -> identity {} cidr_identity {} kind {}",
                e.identity, e.cidr_identity, e.kind
            )?;
        }
        writeln!(f, "# endpoints")?;
        for (k, e) in &self.endpoints {
            writeln!(
                f,
                "{k} -> identity {} flags {:#04b} mode {}",
                e.identity, e.flags, e.mode
            )?;
        }
        writeln!(f, "# policy")?;
        for (k, e) in &self.policy {
            let d = k.data();
            let dir = if d.direction == septum_datapath_common::DIRECTION_INGRESS {
                "in"
            } else {
                "out"
            };
            let what = match k.prefix_len() {
                72 => "any".to_string(),
                80 => format!("proto {}", d.protocol),
                n => format!("proto {} port {}/{}", d.protocol, d.port(), n - 80),
            };
            writeln!(
                f,
                "{} {dir} peer {} {what} -> {} prec {} cookie {}",
                d.subject(),
                d.peer(),
                action_name(e.action),
                e.precedence,
                e.cookie
            )?;
        }
        writeln!(f, "# services")?;
        for (k, v) in &self.services {
            writeln!(
                f,
                "{} {}/{} -> {}",
                k.addr, k.protocol, k.port, v.service_id
            )?;
        }
        writeln!(f, "# rules")?;
        for (c, d) in &self.rules {
            writeln!(f, "{c}: {d}")?;
        }
        Ok(())
    }
}
