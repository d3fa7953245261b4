//! What the policy maps hold, as one value, and writing the difference between two of them.
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
//! flow that both states deny can be allowed. ([`MapDiff`]'s `apply` uses the same order within one
//! map.)

use std::collections::BTreeMap;

use septum_datapath_common::{
    EndpointInfo, IpCacheEntry, IpCacheKey, PolicyEntry, PolicyKey, ServiceEntry, ServiceKey,
};

use crate::{Datapath, DatapathError, MapDiff};

/// The contents of the four policy maps (endpoints, ipcache, policy, Services).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// Host ifindex -> endpoint.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
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
        self.endpoints.len() + self.ipcache.len() + self.policy.len() + self.services.len()
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

/// The diffs of the four maps.
#[derive(Clone, Debug, Default)]
pub struct ContentsDiff {
    endpoints: MapDiff<u32, EndpointInfo>,
    ipcache: MapDiff<IpCacheKey, IpCacheEntry>,
    policy: MapDiff<PolicyKey, PolicyEntry>,
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

impl MapContents {
    /// What the pinned maps hold now (read from the kernel).
    pub fn read(dp: &Datapath) -> Result<Self, DatapathError> {
        Ok(Self {
            endpoints: dp.endpoints.entries()?,
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
