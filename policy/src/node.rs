//! Per-node slices of the cluster state: what one node's agent needs. The node gets the policy
//! entries of the identities of its own pods (both directions) and the egress entries of every
//! other identity toward its pods (egress is also checked at the destination's `to_pod`, after
//! Service DNAT, where the peer is always one of the node's pods: its identity, its address's
//! CIDR identity, or any peer), the full ipcache with the node's own addresses marked as the
//! host, every Service VIP, and for its flow logs what the numbers mean: the rules its policy
//! entries name, the cluster's identity table, the Services' names and the pods' addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use septum_datapath_common::{
    Cookie, Direction, IPCACHE_KIND_HOST, Identity, IpCacheEntry, PolicyEntry, ServiceEntry,
    ServiceId,
};

use crate::cidr::Cidr;
use crate::model::{Cluster, ObjectKey};
use crate::rules::RuleDescription;
use crate::state::{
    ClusterState, EndpointState, IdentityDescription, MapDiff, PolicyKey, ServiceVip,
};

/// One node's slice of the compiled state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Node name.
    pub node: String,
    /// Endpoints of pods on this node.
    pub endpoints: BTreeMap<ObjectKey, EndpointState>,
    /// ipcache, with this node's addresses as the host.
    pub ipcache: BTreeMap<Cidr, IpCacheEntry>,
    /// Policy entries this node needs.
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
    /// Service VIPs.
    pub services: BTreeMap<ServiceVip, ServiceEntry>,
    /// Cookie -> rule, for flow logs (the rules its policy entries name).
    pub rules: BTreeMap<Cookie, RuleDescription>,
    /// Identity -> what it stands for, for flow logs (the whole cluster's table).
    pub identities: BTreeMap<Identity, IdentityDescription>,
    /// Service id -> the Service, for flow logs (every id of the services map).
    pub service_names: BTreeMap<ServiceId, ObjectKey>,
    /// Pod address -> pod, for flow logs (the whole cluster's pods).
    pub pod_addresses: BTreeMap<IpAddr, ObjectKey>,
}

/// The difference between two states of one node, map by map (upserts, then deletes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStateDiff {
    /// Endpoints of the node's pods.
    pub endpoints: MapDiff<ObjectKey, EndpointState>,
    /// ipcache.
    pub ipcache: MapDiff<Cidr, IpCacheEntry>,
    /// Policy entries.
    pub policy: MapDiff<PolicyKey, PolicyEntry>,
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

impl NodeStateDiff {
    /// The minimal diff from `old` to `new`.
    pub fn between(old: &NodeState, new: &NodeState) -> Self {
        Self {
            endpoints: MapDiff::between(&old.endpoints, &new.endpoints),
            ipcache: MapDiff::between(&old.ipcache, &new.ipcache),
            policy: MapDiff::between(&old.policy, &new.policy),
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

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.endpoints.len()
            + self.ipcache.len()
            + self.policy.len()
            + self.services.len()
            + self.rules.len()
            + self.identities.len()
            + self.service_names.len()
            + self.pod_addresses.len()
    }

    /// Applies the diff to a node's state (what an agent does with a delta).
    pub fn apply_to(&self, state: &mut NodeState) {
        self.endpoints.apply_to(&mut state.endpoints);
        self.ipcache.apply_to(&mut state.ipcache);
        self.policy.apply_to(&mut state.policy);
        self.services.apply_to(&mut state.services);
        self.rules.apply_to(&mut state.rules);
        self.identities.apply_to(&mut state.identities);
        self.service_names.apply_to(&mut state.service_names);
        self.pod_addresses.apply_to(&mut state.pod_addresses);
    }
}

/// Which policy entries a node needs: those of the identities of its own pods, and the egress
/// entries of other identities toward its pods. A remote source's egress is decided here only
/// by a `to_pod`, whose peer is the destination pod: the lookups are its identity, its
/// address's CIDR identity (a pod-in-CIDR identity of it) and any peer. Entries toward the
/// world, nodes or plain CIDR identities are decided at the source's own node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFilter {
    local: BTreeSet<Identity>,
    allowed_peers: BTreeSet<Identity>,
}

impl PolicyFilter {
    /// The filter of a node with these endpoints.
    pub fn new<'a>(
        state: &ClusterState,
        endpoints: impl IntoIterator<Item = &'a EndpointState>,
    ) -> Self {
        let local: BTreeSet<Identity> = endpoints.into_iter().map(|e| e.identity).collect();
        let mut allowed_peers: BTreeSet<Identity> = BTreeSet::from([Identity::ANY]);
        allowed_peers.extend(local.iter().copied());
        for (n, d) in &state.identities {
            if let IdentityDescription::PodInCidr { identity, .. } = d
                && local.contains(identity)
            {
                allowed_peers.insert(*n);
            }
        }
        Self {
            local,
            allowed_peers,
        }
    }

    /// Whether the node needs this entry.
    pub fn keeps(&self, k: &PolicyKey) -> bool {
        self.local.contains(&k.subject())
            || (k.direction() == Some(Direction::Egress) && self.allowed_peers.contains(&k.peer()))
    }
}

/// The host entry of one of the node's own addresses, keeping the policy CIDR it falls in.
pub fn host_entry(cidr_identity: u32) -> IpCacheEntry {
    IpCacheEntry {
        identity: Identity::HOST.get(),
        cidr_identity,
        kind: IPCACHE_KIND_HOST,
        _pad: [0; 3],
    }
}

/// The descriptions of the rules `policy` names (what a node's flow events can carry).
pub fn rules_of(
    policy: &BTreeMap<PolicyKey, PolicyEntry>,
    state: &ClusterState,
) -> BTreeMap<Cookie, RuleDescription> {
    // Many entries share a rule: each description is looked up and cloned once.
    let cookies: BTreeSet<u32> = policy.values().map(|e| e.cookie).collect();
    cookies
        .into_iter()
        .filter_map(|c| {
            let c = Cookie::new(c);
            state.rules.get(&c).map(|d| (c, d.clone()))
        })
        .collect()
}

/// The slice of `state` for `node`.
pub fn node_state(cluster: &Cluster, state: &ClusterState, node: &str) -> NodeState {
    NodeState {
        identities: state.identities.clone(),
        service_names: state.service_names.clone(),
        pod_addresses: state.pod_addresses.clone(),
        ..node_slice(cluster, state, node)
    }
}

/// The slice of `state` for `node` without the tables every node gets whole (identities,
/// Service names, pod addresses), for a holder of many nodes' states that keeps those once.
pub fn node_slice(cluster: &Cluster, state: &ClusterState, node: &str) -> NodeState {
    let mut endpoints = BTreeMap::new();
    for (k, e) in &state.endpoints {
        if cluster.pods.get(k).and_then(|p| p.node.as_deref()) == Some(node) {
            endpoints.insert(k.clone(), *e);
        }
    }
    let filter = PolicyFilter::new(state, endpoints.values());
    let policy: BTreeMap<PolicyKey, PolicyEntry> = state
        .policy
        .iter()
        .filter(|(k, _)| filter.keeps(k))
        .map(|(k, v)| (*k, *v))
        .collect();
    let mut ipcache = state.ipcache.clone();
    if let Some(n) = cluster.nodes.get(node) {
        for ip in &n.ips {
            let c = Cidr::host(*ip);
            let cidr_identity = ipcache.get(&c).map_or(0, |e| e.cidr_identity);
            ipcache.insert(c, host_entry(cidr_identity));
        }
    }
    let rules = rules_of(&policy, state);
    NodeState {
        node: node.to_string(),
        endpoints,
        ipcache,
        policy,
        services: state.services.clone(),
        rules,
        ..NodeState::default()
    }
}
