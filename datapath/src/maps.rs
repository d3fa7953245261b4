//! Typed handles over the pinned maps, and diff application: the agent computes the desired
//! contents, [`MapDiff::between`] finds the minimal set of writes, and `apply` performs them,
//! upserts before deletes so that a lookup never meets a gap (an entry replaced by a broader or
//! narrower one is written before the old one disappears).
//!
//! aya 0.14 exposes no batch syscalls, and LPM tries have no batch operations in the kernel, so
//! a diff is applied element by element; only the changed elements are written.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
pub use septum_datapath_common::MapDiff;
use septum_datapath_common::{
    CtEntry, CtKey, EndpointInfo, IpCacheEntry, IpPrefixData, LpmKey, PolicyEntry, PolicyKeyData,
    ServiceEntry, ServiceKey,
};

/// What applying a diff did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub upserted: usize,
    pub deleted: usize,
}

macro_rules! map_error {
    ($name:expr) => {
        |source: MapError| crate::DatapathError::Map {
            name: $name,
            source,
        }
    };
}

/// Host ifindex -> endpoint.
pub struct EndpointsMap(pub(crate) HashMap<MapData, u32, EndpointInfo>);

impl EndpointsMap {
    const NAME: &'static str = septum_datapath_common::map_names::ENDPOINTS;

    pub fn insert(&mut self, ifindex: u32, ep: EndpointInfo) -> Result<(), crate::DatapathError> {
        self.0
            .insert(ifindex, ep, 0)
            .map_err(map_error!(Self::NAME))
    }

    pub fn remove(&mut self, ifindex: u32) -> Result<(), crate::DatapathError> {
        match self.0.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error!(Self::NAME)(e)),
        }
    }

    pub fn get(&self, ifindex: u32) -> Option<EndpointInfo> {
        self.0.get(&ifindex, 0).ok()
    }

    pub fn entries(&self) -> Result<BTreeMap<u32, EndpointInfo>, crate::DatapathError> {
        self.0
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error!(Self::NAME))
    }
}

macro_rules! lpm_map {
    ($(#[$doc:meta])* $name:ident, $k:ty, $v:ty, $map_name:expr) => {
        $(#[$doc])*
        pub struct $name(pub(crate) LpmTrie<MapData, $k, $v>);

        impl $name {
            const NAME: &'static str = $map_name;

            pub fn insert(&mut self, key: LpmKey<$k>, value: $v) -> Result<(), crate::DatapathError> {
                self.0
                    .insert(&Key::new(key.prefix_len(), key.data()), value, 0)
                    .map_err(map_error!(Self::NAME))
            }

            pub fn remove(&mut self, key: LpmKey<$k>) -> Result<(), crate::DatapathError> {
                match self.0.remove(&Key::new(key.prefix_len(), key.data())) {
                    Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                    Err(e) => Err(map_error!(Self::NAME)(e)),
                }
            }

            /// Every entry.
            pub fn entries(&self) -> Result<BTreeMap<LpmKey<$k>, $v>, crate::DatapathError> {
                let mut out = BTreeMap::new();
                for item in self.0.iter() {
                    let (k, v) = item.map_err(map_error!(Self::NAME))?;
                    out.insert(LpmKey::new(k.prefix_len(), k.data()), v);
                }
                Ok(out)
            }

            /// Applies `diff`: upserts first, then deletes.
            pub fn apply(&mut self, diff: &MapDiff<LpmKey<$k>, $v>) -> Result<DiffStats, crate::DatapathError> {
                for (k, v) in &diff.upserts {
                    self.insert(*k, *v)?;
                }
                for k in &diff.deletes {
                    self.remove(*k)?;
                }
                Ok(DiffStats { upserted: diff.upserts.len(), deleted: diff.deletes.len() })
            }

            /// Makes the map hold exactly `desired`, writing only what differs.
            pub fn sync(&mut self, desired: &BTreeMap<LpmKey<$k>, $v>) -> Result<DiffStats, crate::DatapathError> {
                let diff = MapDiff::between(&self.entries()?, desired);
                self.apply(&diff)
            }
        }
    };
}

lpm_map!(
    /// LPM {family, address/prefix} -> identity.
    IpCacheMap, IpPrefixData, IpCacheEntry, septum_datapath_common::map_names::IPCACHE
);
lpm_map!(
    /// LPM {subject, peer, direction, protocol, port/prefix} -> decision.
    PolicyMap, PolicyKeyData, PolicyEntry, septum_datapath_common::map_names::POLICY
);

/// Service VIPs whose egress check is deferred to the backend.
pub struct ServicesMap(pub(crate) HashMap<MapData, ServiceKey, ServiceEntry>);

impl ServicesMap {
    const NAME: &'static str = septum_datapath_common::map_names::SERVICES;

    pub fn insert(
        &mut self,
        key: ServiceKey,
        value: ServiceEntry,
    ) -> Result<(), crate::DatapathError> {
        self.0.insert(key, value, 0).map_err(map_error!(Self::NAME))
    }

    pub fn remove(&mut self, key: &ServiceKey) -> Result<(), crate::DatapathError> {
        match self.0.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error!(Self::NAME)(e)),
        }
    }

    pub fn entries(&self) -> Result<BTreeMap<ServiceKey, ServiceEntry>, crate::DatapathError> {
        self.0
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error!(Self::NAME))
    }

    /// Makes the map hold exactly `desired`, writing only what differs.
    pub fn sync(
        &mut self,
        desired: &BTreeMap<ServiceKey, ServiceEntry>,
    ) -> Result<DiffStats, crate::DatapathError> {
        let diff = MapDiff::between(&self.entries()?, desired);
        for (k, v) in &diff.upserts {
            self.insert(*k, *v)?;
        }
        for k in &diff.deletes {
            self.remove(k)?;
        }
        Ok(DiffStats {
            upserted: diff.upserts.len(),
            deleted: diff.deletes.len(),
        })
    }
}

/// This node's endpoints by address: {family, address} -> host ifindex.
pub struct LocalAddrsMap(pub(crate) HashMap<MapData, IpPrefixData, u32>);

impl LocalAddrsMap {
    const NAME: &'static str = septum_datapath_common::map_names::LOCAL_ADDRS;

    pub fn insert(&mut self, addr: IpPrefixData, ifindex: u32) -> Result<(), crate::DatapathError> {
        self.0
            .insert(addr, ifindex, 0)
            .map_err(map_error!(Self::NAME))
    }

    pub fn remove(&mut self, addr: &IpPrefixData) -> Result<(), crate::DatapathError> {
        match self.0.remove(addr) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error!(Self::NAME)(e)),
        }
    }

    pub fn entries(&self) -> Result<BTreeMap<IpPrefixData, u32>, crate::DatapathError> {
        self.0
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error!(Self::NAME))
    }
}

/// Conntrack: read-only from user space except for flushing.
pub struct ConntrackMap(pub(crate) HashMap<MapData, CtKey, CtEntry>);

impl ConntrackMap {
    const NAME: &'static str = septum_datapath_common::map_names::CONNTRACK;

    pub fn get(&self, key: &CtKey) -> Option<CtEntry> {
        self.0.get(key, 0).ok()
    }

    /// Every tracked flow direction.
    pub fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, crate::DatapathError> {
        self.0
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error!(Self::NAME))
    }

    /// Forgets every flow (the next packet of each is evaluated as new).
    pub fn flush(&mut self) -> Result<usize, crate::DatapathError> {
        let keys: Vec<CtKey> = self
            .0
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error!(Self::NAME))?;
        for k in &keys {
            let _ = self.0.remove(k);
        }
        Ok(keys.len())
    }
}

macro_rules! opaque_debug {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($t))
            }
        }
    )*};
}
opaque_debug!(
    EndpointsMap,
    IpCacheMap,
    PolicyMap,
    ServicesMap,
    ConntrackMap,
    LocalAddrsMap
);
