//! The endpoint registry: every pod network attachment the CNI plugin registered on this node,
//! with the facts the agent needs to enforce and to clean up (host veth, pod reference,
//! addresses), and the next endpoint id. It is the agent's own state (no Kubernetes object
//! holds it), so it is written to the state directory before any reply, and a restart resumes it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use septum_policy::model::ObjectKey;

/// One CNI attachment, as the spec identifies it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// The CNI network name.
    pub network: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// A registered endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The agent's endpoint id (non-zero; the datapath's `endpoint_id`).
    pub id: u32,
    /// Which attachment it is.
    pub attachment: AttachmentKey,
    /// The pod, when the runtime named it (K8S_POD_NAMESPACE / K8S_POD_NAME).
    pub pod: Option<ObjectKey>,
    /// K8S_POD_UID, when given.
    #[serde(default)]
    pub pod_uid: String,
    /// CNI_NETNS as given at ADD.
    pub netns: String,
    /// Host-side veth ifindex (in the agent's network namespace).
    pub host_ifindex: u32,
    /// Host-side veth name.
    pub host_ifname: String,
    /// The pod's addresses on this attachment.
    pub ips: Vec<IpAddr>,
    /// When it was registered, in milliseconds since the Unix epoch (to order queued DELs).
    pub created_unix_ms: u64,
}

/// Every endpoint of this node, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Endpoints by id.
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// The next id to hand out (ids are never reused while the state directory lives, so a
    /// flow record's endpoint id stays unambiguous).
    pub next_id: u32,
}

impl Registry {
    /// The endpoint of an attachment.
    pub fn by_attachment(&self, key: &AttachmentKey) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| &e.attachment == key)
    }

    /// A fresh endpoint id.
    pub fn allocate_id(&mut self) -> u32 {
        let used_max = self.endpoints.keys().next_back().copied().unwrap_or(0);
        let id = self.next_id.max(used_max.saturating_add(1)).max(1);
        self.next_id = id.saturating_add(1);
        id
    }

    /// The endpoints of a pod.
    pub fn of_pod<'a>(&'a self, pod: &'a ObjectKey) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .values()
            .filter(move |e| e.pod.as_ref() == Some(pod))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: u32, container: &str) -> Endpoint {
        Endpoint {
            id,
            attachment: AttachmentKey {
                network: "net".into(),
                container_id: container.into(),
                ifname: "eth0".into(),
            },
            pod: Some(ObjectKey::new("ns", container)),
            pod_uid: String::new(),
            netns: "/run/netns/x".into(),
            host_ifindex: 7,
            host_ifname: "veth0".into(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            created_unix_ms: 1,
        }
    }

    #[test]
    fn ids_are_never_reused() {
        let mut r = Registry::default();
        let a = r.allocate_id();
        r.endpoints.insert(a, ep(a, "a"));
        let b = r.allocate_id();
        r.endpoints.remove(&a);
        let c = r.allocate_id();
        assert_eq!((a, b, c), (1, 2, 3));
    }

    #[test]
    fn survives_a_json_round_trip() {
        let mut r = Registry::default();
        let id = r.allocate_id();
        r.endpoints.insert(id, ep(id, "a"));
        let text = serde_json::to_string(&r).unwrap();
        let back: Registry = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(back.by_attachment(&ep(id, "a").attachment).is_some());
    }
}
