//! From the model to the kernel: the node's model (the datastore's objects, with this node's
//! endpoints filling in where their pods run and which addresses they have), its compiled slice,
//! the exact contents the pinned maps should hold, and writing only the difference.
//!
//! # Apply order
//!
//! A diff is applied as: upserts of ipcache, policy, Services, endpoints; then deletes of
//! endpoints, Services, policy, ipcache. Upserting before deleting means every intermediate
//! state holds every key that both the old and the new state hold, with one of their values: a
//! key is never missing while it is being replaced, so the broader entry behind it (often an
//! allow of a whole protocol behind a deny of one port) never decides in its place. Writing an
//! endpoint after the policy and ipcache entries it refers to, and removing it before them,
//! means a pod is never `ready` against entries that are not there yet. Deleting first, the
//! opposite order, opens exactly that hole: for the moment between the delete and the upsert, a
//! flow that both states deny can be allowed. (`septum_datapath::MapDiff`'s `apply` uses the
//! same order within one map.)

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use septum_datapath::Lpm;
use septum_datapath::{Datapath, DatapathError, MapDiff};
use septum_datapath_common::{
    EndpointInfo, IpCacheEntry, IpPrefixData, MODE_ENFORCE, PolicyEntry, PolicyKeyData,
    STATE_INIT_DENY, STATE_READY, ServiceEntry, ServiceKey,
};
use septum_policy::model::{Cluster, Node, ObjectKey};
use septum_policy::node::NodeState;

use crate::registry::Registry;

/// What the pinned maps should hold on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// Host ifindex -> endpoint.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// ipcache.
    pub ipcache: BTreeMap<Lpm<IpPrefixData>, IpCacheEntry>,
    /// Policy entries.
    pub policy: BTreeMap<Lpm<PolicyKeyData>, PolicyEntry>,
    /// Service VIPs.
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
}

impl MapContents {
    /// Total number of entries.
    pub fn len(&self) -> usize {
        self.endpoints.len() + self.ipcache.len() + self.policy.len() + self.services.len()
    }

    /// Whether there is no entry at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The model of this node: `base` (the datastore's objects) with every pod that has an endpoint
/// here placed on `node`, with the endpoint's addresses, and `node` itself with `node_ips`.
pub fn node_model(base: &Cluster, registry: &Registry, node: &str, node_ips: &[IpAddr]) -> Cluster {
    let mut cluster = base.clone();
    let mut ips: BTreeMap<&ObjectKey, Vec<IpAddr>> = BTreeMap::new();
    for ep in registry.endpoints.values() {
        if let Some(pod) = &ep.pod {
            ips.entry(pod).or_default().extend(ep.ips.iter().copied());
        }
    }
    for (key, addrs) in ips {
        if let Some(pod) = cluster.pods.get_mut(key) {
            let mut addrs = addrs;
            addrs.sort();
            addrs.dedup();
            pod.ips = addrs;
            pod.node = Some(node.to_string());
        }
    }
    cluster.nodes.insert(
        node.to_string(),
        Node {
            name: node.to_string(),
            ips: node_ips.to_vec(),
        },
    );
    cluster
}

/// The map contents for a node's compiled slice: every registered endpoint, `ready` with its
/// pod's identity when the compiler knows the pod, in init-deny (every packet dropped) when it
/// does not (no Pod object of that name, or no pod named at all).
pub fn map_contents(state: &NodeState, registry: &Registry) -> MapContents {
    let mut out = MapContents::default();
    for ep in registry.endpoints.values() {
        let compiled = ep.pod.as_ref().and_then(|p| state.endpoints.get(p));
        let info = match compiled {
            Some(c) => EndpointInfo {
                endpoint_id: ep.id,
                identity: c.identity.get(),
                flags: c.flags,
                mode: c.mode,
                state: STATE_READY,
                _pad: 0,
            },
            None => EndpointInfo {
                endpoint_id: ep.id,
                identity: 0,
                flags: 0,
                mode: MODE_ENFORCE,
                state: STATE_INIT_DENY,
                _pad: 0,
            },
        };
        out.endpoints.insert(ep.host_ifindex, info);
    }
    for (cidr, entry) in &state.ipcache {
        let (data, len) = cidr.lpm_key();
        out.ipcache.insert((len, data), *entry);
    }
    for (k, v) in &state.policy {
        out.policy.insert((k.prefix_len, k.data), *v);
    }
    for (vip, v) in &state.services {
        out.services.insert(vip.key(), *v);
    }
    out
}

/// How many writes a diff took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Entries written.
    pub upserted: usize,
    /// Entries removed.
    pub deleted: usize,
}

/// The diffs of the four maps.
#[derive(Clone, Debug, Default)]
pub struct ContentsDiff {
    endpoints: MapDiff<u32, EndpointInfo>,
    ipcache: MapDiff<Lpm<IpPrefixData>, IpCacheEntry>,
    policy: MapDiff<Lpm<PolicyKeyData>, PolicyEntry>,
    services: MapDiff<ServiceKey, ServiceEntry>,
}

impl ContentsDiff {
    /// The minimal diff from `old` to `new`.
    pub fn between(old: &MapContents, new: &MapContents) -> Self {
        Self {
            endpoints: MapDiff::between(&old.endpoints, &new.endpoints),
            ipcache: MapDiff::between(&old.ipcache, &new.ipcache),
            policy: MapDiff::between(&old.policy, &new.policy),
            services: MapDiff::between(&old.services, &new.services),
        }
    }

    /// The same diff without its deletes (before the first full sync nothing is pruned).
    pub fn without_deletes(mut self) -> Self {
        self.endpoints.deletes.clear();
        self.ipcache.deletes.clear();
        self.policy.deletes.clear();
        self.services.deletes.clear();
        self
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ipcache.is_empty()
            && self.policy.is_empty()
            && self.services.is_empty()
    }

    /// Writes the diff in the documented order (module docs).
    pub fn apply(&self, dp: &mut Datapath) -> Result<WriteStats, DatapathError> {
        let mut s = WriteStats::default();
        for (k, v) in &self.ipcache.upserts {
            dp.ipcache.insert(*k, *v)?;
        }
        for (k, v) in &self.policy.upserts {
            dp.policy.insert(*k, *v)?;
        }
        for (k, v) in &self.services.upserts {
            dp.services.insert(*k, *v)?;
        }
        for (k, v) in &self.endpoints.upserts {
            dp.endpoints.insert(*k, *v)?;
        }
        s.upserted = self.ipcache.upserts.len()
            + self.policy.upserts.len()
            + self.services.upserts.len()
            + self.endpoints.upserts.len();
        for k in &self.endpoints.deletes {
            dp.endpoints.remove(*k)?;
        }
        for k in &self.services.deletes {
            dp.services.remove(k)?;
        }
        for k in &self.policy.deletes {
            dp.policy.remove(*k)?;
        }
        for k in &self.ipcache.deletes {
            dp.ipcache.remove(*k)?;
        }
        s.deleted = self.ipcache.deletes.len()
            + self.policy.deletes.len()
            + self.services.deletes.len()
            + self.endpoints.deletes.len();
        Ok(s)
    }
}

/// What the pinned maps hold now (read from the kernel).
pub fn read_maps(dp: &Datapath) -> Result<MapContents, DatapathError> {
    Ok(MapContents {
        endpoints: dp.endpoints.entries()?,
        ipcache: dp.ipcache.entries()?,
        policy: dp.policy.entries()?,
        services: dp.services.entries()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{AttachmentKey, Endpoint};
    use septum_policy::model::Pod;

    fn registry() -> Registry {
        let mut r = Registry::default();
        for (id, name, ifindex) in [(1, "a", 10), (2, "ghost", 11)] {
            r.endpoints.insert(
                id,
                Endpoint {
                    id,
                    attachment: AttachmentKey {
                        network: "n".into(),
                        container_id: name.into(),
                        ifname: "eth0".into(),
                    },
                    pod: Some(ObjectKey::new("ns", name)),
                    pod_uid: String::new(),
                    netns: String::new(),
                    host_ifindex: ifindex,
                    host_ifname: format!("veth{id}"),
                    ips: vec![format!("10.1.0.{id}").parse().unwrap()],
                    created_unix_ms: 0,
                },
            );
        }
        r
    }

    #[test]
    fn endpoints_get_their_pods_addresses_and_unknown_pods_stay_in_init_deny() {
        let mut base = Cluster::default();
        let pod = Pod {
            namespace: "ns".into(),
            name: "a".into(),
            service_account: "default".into(),
            ..Pod::default()
        };
        base.pods.insert(pod.key(), pod);
        let r = registry();
        let node_ip: IpAddr = "10.1.0.254".parse().unwrap();
        let model = node_model(&base, &r, "node-1", &[node_ip]);
        let a = &model.pods[&ObjectKey::new("ns", "a")];
        assert_eq!(a.ips, vec!["10.1.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.node.as_deref(), Some("node-1"));
        assert_eq!(model.nodes["node-1"].ips, vec![node_ip]);
        assert!(!model.pods.contains_key(&ObjectKey::new("ns", "ghost")));

        let (state, _) = septum_policy::compile(&model, septum_policy::InMemoryAllocations::new());
        let slice = septum_policy::node::node_state(&model, &state, "node-1");
        let contents = map_contents(&slice, &r);
        assert_eq!(contents.endpoints[&10].state, STATE_READY);
        assert_ne!(contents.endpoints[&10].identity, 0);
        assert_eq!(contents.endpoints[&11].state, STATE_INIT_DENY);
        assert_eq!(contents.endpoints[&11].endpoint_id, 2);
    }

    #[test]
    fn a_diff_without_deletes_only_writes() {
        let mut old = MapContents::default();
        old.endpoints.insert(1, EndpointInfo::default());
        let mut new = MapContents::default();
        new.endpoints.insert(2, EndpointInfo::default());
        let d = ContentsDiff::between(&old, &new);
        assert_eq!(d.endpoints.deletes, vec![1]);
        let d = d.without_deletes();
        assert!(d.endpoints.deletes.is_empty());
        assert_eq!(d.endpoints.upserts.len(), 1);
    }
}
