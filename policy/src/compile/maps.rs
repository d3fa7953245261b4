//! The maps besides policy: ipcache entries of addresses and prefixes, endpoint entries, Service
//! VIPs and the identity table.

use std::collections::BTreeMap;
use std::net::IpAddr;

use septum_datapath_common::{
    IPCACHE_KIND_CIDR, IPCACHE_KIND_POD, IPCACHE_KIND_REMOTE_NODE, Identity, IpCacheEntry,
    MODE_ENFORCE, ServiceEntry,
};

use super::Engine;
use crate::allocation::AllocationStore;
use crate::cidr::Cidr;
use crate::model::ObjectKey;
use crate::state::{EndpointState, IdentityDescription, ServiceVip};

impl<S: AllocationStore> Engine<S> {
    pub(super) fn identity_table(&self) -> BTreeMap<Identity, IdentityDescription> {
        let mut t = BTreeMap::new();
        for (n, i) in &self.index.identities {
            t.insert(*n, IdentityDescription::Pod(i.key.clone()));
        }
        for (c, n) in &self.index.class_ids {
            t.insert(*n, IdentityDescription::Cidr(*c));
        }
        for ((id, c), (n, _)) in &self.index.pairs {
            t.insert(
                *n,
                IdentityDescription::PodInCidr {
                    identity: *id,
                    cidr: *c,
                },
            );
        }
        t
    }

    pub(super) fn endpoint_of(&self, k: &ObjectKey, host_network: bool) -> Option<EndpointState> {
        if host_network {
            return None;
        }
        let id = *self.index.pod_identity.get(k)?;
        Some(EndpointState {
            identity: id,
            flags: self.subject_flags.get(&id).copied().unwrap_or(0),
            mode: MODE_ENFORCE,
        })
    }

    pub(super) fn service_entries(&mut self, k: &ObjectKey) -> Vec<(ServiceVip, ServiceEntry)> {
        let Some(svc) = self.cluster.services.get(k) else {
            return Vec::new();
        };
        if svc.cluster_ips.is_empty() || svc.ports.is_empty() {
            return Vec::new();
        }
        let svc = svc.clone();
        let id = self.store.allocate_service(k.clone());
        let mut out = Vec::new();
        for ip in &svc.cluster_ips {
            for p in &svc.ports {
                out.push((
                    ServiceVip {
                        addr: *ip,
                        port: p.port,
                        protocol: p.protocol,
                    },
                    ServiceEntry {
                        service_id: id.get(),
                    },
                ));
            }
        }
        out
    }

    /// The owner of a VIP, the first Service (by key) exposing it, and its entry.
    pub(super) fn service_vip_entry(
        &mut self,
        vip: &ServiceVip,
    ) -> Option<(ObjectKey, ServiceEntry)> {
        let owner = self
            .cluster
            .services
            .values()
            .find(|s| {
                s.cluster_ips.contains(&vip.addr)
                    && s.ports
                        .iter()
                        .any(|p| p.port == vip.port && p.protocol == vip.protocol)
            })?
            .key();
        let id = self.store.allocate_service(owner.clone());
        Some((
            owner,
            ServiceEntry {
                service_id: id.get(),
            },
        ))
    }

    pub(super) fn ipcache_host_entry(&self, ip: IpAddr) -> Option<IpCacheEntry> {
        let class = self.index.class_of(ip);
        if let Some(owner) = self.index.ip_owners.get(&ip).and_then(|o| o.iter().next()) {
            let id = self.index.pod_identity[owner];
            let cidr_identity = class
                .and_then(|c| self.index.pairs.get(&(id, c)))
                .map_or(0, |p| p.0.get());
            return Some(IpCacheEntry {
                identity: id.get(),
                cidr_identity,
                kind: IPCACHE_KIND_POD,
                _pad: [0; 3],
            });
        }
        if self.index.node_ips.contains_key(&ip) {
            return Some(IpCacheEntry {
                identity: Identity::REMOTE_NODE.get(),
                cidr_identity: class.map_or(0, |c| self.index.class_ids[&c].get()),
                kind: IPCACHE_KIND_REMOTE_NODE,
                _pad: [0; 3],
            });
        }
        let host = Cidr::host(ip);
        self.index.class_ids.get(&host).map(|id| cidr_entry(*id))
    }
}

/// The ipcache entry of a policy prefix (or of an address in it that is no pod or node).
pub(super) fn cidr_entry(id: Identity) -> IpCacheEntry {
    IpCacheEntry {
        identity: id.get(),
        cidr_identity: id.get(),
        kind: IPCACHE_KIND_CIDR,
        _pad: [0; 3],
    }
}

pub(super) fn world_prefixes() -> [Cidr; 2] {
    [
        Cidr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0).expect("valid /0"),
        Cidr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0).expect("valid /0"),
    ]
}

#[cfg(test)]
mod tests {
    use septum_datapath_common::{FAMILY_IPV4, IPCACHE_KIND_WORLD, IpPrefixData};

    use super::*;
    use crate::allocation::InMemoryAllocations;
    use crate::cidr::addr_bytes;
    use crate::lpm;
    use crate::model::{Cluster, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule, Pod};
    use crate::selector::LabelSelector;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    /// One policy naming 10.1.0.0/16 except 10.1.2.0/24; pod `in` at 10.1.2.5, pod `out` at
    /// 10.2.0.1.
    fn engine() -> Engine<InMemoryAllocations> {
        let mut c = Cluster::default();
        for (name, addr) in [("in", "10.1.2.5"), ("out", "10.2.0.1")] {
            let p = Pod {
                namespace: "ns".into(),
                name: name.into(),
                ips: vec![ip(addr)],
                service_account: "default".into(),
                ..Pod::default()
            };
            c.pods.insert(p.key(), p);
        }
        let np = NetworkPolicy {
            namespace: "ns".into(),
            name: "np".into(),
            pod_selector: LabelSelector::everything(),
            policy_types: None,
            ingress: vec![NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::IpBlock {
                    cidr: cidr("10.1.0.0/16"),
                    except: vec![cidr("10.1.2.0/24")],
                }],
                ports: Vec::new(),
            }],
            egress: Vec::new(),
        };
        c.network_policies.insert(np.key(), np);
        Engine::new(c, InMemoryAllocations::new())
    }

    #[test]
    fn a_prefix_key_is_the_family_then_the_masked_address() {
        let key = cidr("10.1.0.0/16").lpm_key();
        assert_eq!(
            key.data(),
            IpPrefixData::new(FAMILY_IPV4, addr_bytes(ip("10.1.0.0")))
        );
        assert_eq!(key.prefix_len(), 32 + 16);
        assert_eq!(cidr("2001:db8::/64").lpm_key().prefix_len(), 32 + 64);
        for c in ["10.1.0.0/16", "0.0.0.0/0", "2001:db8::/64", "10.1.2.3/32"] {
            assert_eq!(Cidr::from_lpm_key(&cidr(c).lpm_key()), Some(cidr(c)));
        }
    }

    #[test]
    fn policy_prefixes_get_cidr_identities_and_the_longest_prefix_wins() {
        let e = engine();
        let state = e.state();
        let class = |c: &str| {
            let entry = state.ipcache[&cidr(c)];
            assert_eq!(entry.kind, IPCACHE_KIND_CIDR, "{c}");
            assert_eq!(entry.identity, entry.cidr_identity, "{c}");
            entry.identity
        };
        let (wide, carve_out) = (class("10.1.0.0/16"), class("10.1.2.0/24"));
        assert_ne!(wide, carve_out);
        let lookup =
            |a: &str| lpm::ipcache_lookup(&state.ipcache, ip(a)).expect("the world covers all");
        assert_eq!(lookup("10.1.3.4").identity, wide);
        assert_eq!(lookup("10.1.2.9").identity, carve_out);
        let world = lookup("8.8.8.8");
        assert_eq!(
            (world.identity, world.kind),
            (Identity::WORLD.get(), IPCACHE_KIND_WORLD)
        );
        assert_eq!(lookup("2001:db8::1").identity, Identity::WORLD.get());
    }

    #[test]
    fn a_pod_in_a_policy_prefix_carries_a_pod_in_cidr_identity() {
        let e = engine();
        let state = e.state();
        let inside = e
            .pod_identity(&ObjectKey::new("ns", "in"))
            .expect("an endpoint");
        let entry = state.ipcache[&Cidr::host(ip("10.1.2.5"))];
        assert_eq!(
            (entry.identity, entry.kind),
            (inside.get(), IPCACHE_KIND_POD)
        );
        let pair = Identity::new(entry.cidr_identity);
        assert_eq!(
            state.identities.get(&pair),
            Some(&IdentityDescription::PodInCidr {
                identity: inside,
                cidr: cidr("10.1.2.0/24"),
            })
        );
        assert_eq!(e.cidr_identity_of(ip("10.1.2.5")), Some(pair));
        // Outside every policy prefix: no CIDR identity.
        let outside = state.ipcache[&Cidr::host(ip("10.2.0.1"))];
        assert_eq!(outside.cidr_identity, 0);
        assert_eq!(e.cidr_identity_of(ip("10.2.0.1")), None);
    }
}
