//! What the policy maps hold, as one value, and writing the difference between two of them.
//!
//! # Apply order
//!
//! A diff is applied as: upserts of ipcache, policy, Services, endpoints, local addresses; then
//! deletes of local addresses, endpoints, Services, policy, ipcache. Upserting before deleting
//! means every intermediate state holds every key that both the old and the new state hold,
//! with one of their values: a
//! key is never missing while it is being replaced, so the broader entry behind it (often an
//! allow of a whole protocol behind a deny of one port) never decides in its place. Writing an
//! endpoint after the policy and ipcache entries it refers to, and removing it before them,
//! means a pod is never `ready` against entries that are not there yet. Deleting first, the
//! opposite order, opens exactly that hole: for the moment between the delete and the upsert, a
//! flow that both states deny can be allowed. ([`MapDiff`]'s `apply` uses the same order within one
//! map.) A local address names an endpoint, so it comes after it and goes before it; one that
//! names no endpoint is ignored by the programs (the flow is decided at both points).

use std::collections::BTreeMap;

use septum_datapath_common::{
    EndpointInfo, IpCacheEntry, IpCacheKey, IpPrefixData, PolicyEntry, PolicyKey, ServiceEntry,
    ServiceKey,
};

use crate::{Datapath, DatapathError, MapDiff};

/// The contents of the policy maps (endpoints, ipcache, policy, Services, local addresses).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// Host ifindex -> endpoint.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// The addresses of this node's endpoints: {family, address} -> host ifindex (how
    /// `from_pod` knows a destination is a pod of this node and decides its ingress too).
    pub local_addrs: BTreeMap<IpPrefixData, u32>,
    /// ipcache.
    pub ipcache: BTreeMap<IpCacheKey, IpCacheEntry>,
    /// Policy entries.
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
    /// Service VIPs.
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
}

impl MapContents {
    /// Total number of entries.
    pub fn len(&self) -> usize {
        self.endpoints.len()
            + self.local_addrs.len()
            + self.ipcache.len()
            + self.policy.len()
            + self.services.len()
    }

    /// Records `ip` as an address of the endpoint on `ifindex`, and its ipcache entry, if it has
    /// a pod's already, as a pod of this node's ([`Self::mark_local_pods`]).
    pub fn add_local_addr(&mut self, ip: std::net::IpAddr, ifindex: u32) {
        let data = match ip {
            std::net::IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                IpPrefixData::new(septum_datapath_common::FAMILY_IPV4, a)
            }
            std::net::IpAddr::V6(v6) => {
                IpPrefixData::new(septum_datapath_common::FAMILY_IPV6, v6.octets())
            }
        };
        self.local_addrs.insert(data, ifindex);
        self.mark_local_pod(data);
    }

    /// Gives every local address's full-length ipcache entry of kind pod the kind
    /// [`IPCACHE_KIND_LOCAL_POD`](septum_datapath_common::IPCACHE_KIND_LOCAL_POD): what lets
    /// `from_pod` look up the local addresses map for those destinations only. Call it after
    /// adding ipcache entries for addresses already recorded local.
    pub fn mark_local_pods(&mut self) {
        let addrs: Vec<IpPrefixData> = self.local_addrs.keys().copied().collect();
        for a in addrs {
            self.mark_local_pod(a);
        }
    }

    fn mark_local_pod(&mut self, data: IpPrefixData) {
        let key = IpCacheKey::new(IpPrefixData::full_prefix_len(data.family[3]), data);
        if let Some(e) = self.ipcache.get_mut(&key)
            && e.kind == septum_datapath_common::IPCACHE_KIND_POD
        {
            e.kind = septum_datapath_common::IPCACHE_KIND_LOCAL_POD;
        }
    }

    /// Whether there is no entry at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many writes a diff took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Entries written.
    pub upserted: usize,
    /// Entries removed.
    pub deleted: usize,
}

/// The diffs of the maps.
#[derive(Clone, Debug, Default)]
pub struct ContentsDiff {
    endpoints: MapDiff<u32, EndpointInfo>,
    local_addrs: MapDiff<IpPrefixData, u32>,
    ipcache: MapDiff<IpCacheKey, IpCacheEntry>,
    policy: MapDiff<PolicyKey, PolicyEntry>,
    services: MapDiff<ServiceKey, ServiceEntry>,
}

impl ContentsDiff {
    /// The minimal diff from `old` to `new`.
    pub fn between(old: &MapContents, new: &MapContents) -> Self {
        Self {
            endpoints: MapDiff::between(&old.endpoints, &new.endpoints),
            local_addrs: MapDiff::between(&old.local_addrs, &new.local_addrs),
            ipcache: MapDiff::between(&old.ipcache, &new.ipcache),
            policy: MapDiff::between(&old.policy, &new.policy),
            services: MapDiff::between(&old.services, &new.services),
        }
    }

    /// The same diff without its deletes (before the first full sync nothing is pruned).
    pub fn without_deletes(mut self) -> Self {
        self.endpoints.deletes.clear();
        self.local_addrs.deletes.clear();
        self.ipcache.deletes.clear();
        self.policy.deletes.clear();
        self.services.deletes.clear();
        self
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.local_addrs.is_empty()
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
        for (k, v) in &self.local_addrs.upserts {
            dp.local_addrs.insert(*k, *v)?;
        }
        s.upserted = self.ipcache.upserts.len()
            + self.policy.upserts.len()
            + self.services.upserts.len()
            + self.endpoints.upserts.len()
            + self.local_addrs.upserts.len();
        for k in &self.local_addrs.deletes {
            dp.local_addrs.remove(k)?;
        }
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
            + self.endpoints.deletes.len()
            + self.local_addrs.deletes.len();
        Ok(s)
    }
}

impl MapContents {
    /// What the pinned maps hold now (read from the kernel).
    pub fn read(dp: &Datapath) -> Result<Self, DatapathError> {
        Ok(Self {
            endpoints: dp.endpoints.entries()?,
            local_addrs: dp.local_addrs.entries()?,
            ipcache: dp.ipcache.entries()?,
            policy: dp.policy.entries()?,
            services: dp.services.entries()?,
        })
    }

    /// Makes the maps hold exactly these contents, writing only what differs, in the order of
    /// the module docs.
    pub fn sync_to(&self, dp: &mut Datapath) -> Result<WriteStats, DatapathError> {
        ContentsDiff::between(&Self::read(dp)?, self).apply(dp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
