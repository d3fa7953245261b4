//! From the model to the kernel: the node's model (the datastore's objects, with this node's
//! endpoints filling in where their pods run and which addresses they have), its compiled slice,
//! the exact contents the pinned maps should hold, and writing only the difference.
//!
//! Writing them is `septum_datapath::ContentsDiff` (its docs give the apply order).

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use septum_datapath::{ContentsDiff, MapContents, WriteStats};
use septum_datapath_common::{EndpointInfo, MODE_ENFORCE, STATE_INIT_DENY, STATE_READY};
use septum_policy::model::{Cluster, Node, ObjectKey};
use septum_policy::node::NodeState;

use crate::registry::Registry;

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
        // Its addresses: a flow to one of them from another pod here is decided whole at the
        // source's from_pod.
        for ip in &ep.ips {
            out.add_local_addr(*ip, ep.host_ifindex);
        }
    }
    for (cidr, entry) in &state.ipcache {
        out.ipcache.insert(cidr.lpm_key(), *entry);
    }
    for (k, v) in &state.policy {
        out.policy.insert(*k, *v);
    }
    for (vip, v) in &state.services {
        out.services.insert(vip.key(), *v);
    }
    // The endpoints' addresses are this node's pods in the ipcache.
    out.mark_local_pods();
    out
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
        assert_eq!(contents.local_addrs.len(), 2);
        assert!(contents.local_addrs.values().all(|i| [10, 11].contains(i)));
    }
}
