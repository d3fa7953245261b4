//! Compiled state read exactly as the datapath reads its maps, through the one reader of
//! `septum_datapath_common::lpm` (longest-prefix match, the three policy lookups, precedence and
//! deny > audit > allow on ties, no entry = not policed). `explain` reports this reading beside
//! the semantic decision, and the tests check the compiler against the semantics with it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use septum_datapath_common::lpm::{decide, longest_match};
use septum_datapath_common::{
    Direction, Identity, IpCacheEntry, IpPrefixData, PolicyEntry, PolicyKeyData,
};

use crate::cidr::{Cidr, addr_bytes};
use crate::state::PolicyKey;

/// Longest-prefix match of one policy lookup. `protocol` is any IP protocol number, as the
/// datapath reads it from the packet.
pub fn policy_lookup(
    policy: &BTreeMap<PolicyKey, PolicyEntry>,
    subject: Identity,
    direction: Direction,
    peer: Identity,
    protocol: u8,
    port: u16,
) -> Option<PolicyEntry> {
    let key = PolicyKeyData::new(subject.get(), direction.code(), peer.get(), protocol, port);
    longest_match(key, |k| policy.get(k).copied()).map(|(_, e)| e)
}

/// The datapath's decision for one side: the three lookups combined (`peer_cidr`: the peer's
/// CIDR identity, if its address has one). `None`: not policed.
pub fn policy_decision(
    policy: &BTreeMap<PolicyKey, PolicyEntry>,
    subject: Identity,
    direction: Direction,
    peer: Identity,
    peer_cidr: Option<Identity>,
    protocol: u8,
    port: u16,
) -> Option<PolicyEntry> {
    let peer = IpCacheEntry {
        identity: peer.get(),
        cidr_identity: peer_cidr.map_or(0, Identity::get),
        kind: 0,
        _pad: [0; 3],
    };
    decide(
        subject.get(),
        direction.code(),
        &peer,
        protocol,
        port,
        |k| policy.get(k).copied(),
    )
}

/// Longest-prefix match on an ipcache (the cluster's or a node slice's).
pub fn ipcache_lookup(ipcache: &BTreeMap<Cidr, IpCacheEntry>, ip: IpAddr) -> Option<IpCacheEntry> {
    let family = if ip.is_ipv4() {
        septum_datapath_common::FAMILY_IPV4
    } else {
        septum_datapath_common::FAMILY_IPV6
    };
    longest_match(IpPrefixData::new(family, addr_bytes(ip)), |k| {
        Cidr::from_lpm_key(k).and_then(|c| ipcache.get(&c).copied())
    })
    .map(|(_, e)| e)
}
