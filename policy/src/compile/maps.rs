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

    /// The owner of a VIP: the first Service (by key) exposing it.
    pub(super) fn service_vip_entry(&mut self, vip: &ServiceVip) -> Option<ServiceEntry> {
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
        let id = self.store.allocate_service(owner);
        Some(ServiceEntry {
            service_id: id.get(),
        })
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
