//! A reference reading of compiled state exactly as the datapath reads its maps: longest-prefix
//! match on the ipcache and on the policy trie, three policy lookups (peer identity, peer CIDR
//! identity, any peer) combined by precedence with deny > audit > allow on ties, no entry =
//! not policed = allowed. Tests use it to check the compiler against the semantics; the
//! datapath's own tests can use it as the expected answer.

use std::collections::BTreeMap;
use std::net::IpAddr;

use septum_datapath_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, IDENTITY_ANY, IpCacheEntry, POLICY_PREFIX_ANY_PORT,
    POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, PolicyEntry, PolicyKeyData,
};

use crate::cidr::Cidr;
use crate::state::{ClusterState, PolicyKey};

/// Longest-prefix match of one policy lookup.
pub fn policy_lookup(
    policy: &BTreeMap<PolicyKey, PolicyEntry>,
    subject: u32,
    direction: u8,
    peer: u32,
    protocol: u8,
    port: u16,
) -> Option<PolicyEntry> {
    for bits in (0..=16u32).rev() {
        let mask: u16 = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        let key = PolicyKey {
            data: PolicyKeyData::new(subject, direction, peer, protocol, port & mask),
            prefix_len: POLICY_PREFIX_ANY_PORT + bits,
        };
        if let Some(e) = policy.get(&key) {
            return Some(*e);
        }
    }
    debug_assert_eq!(POLICY_PREFIX_ANY_PORT + 16, POLICY_PREFIX_FULL);
    policy
        .get(&PolicyKey {
            data: PolicyKeyData::new(subject, direction, peer, 0, 0),
            prefix_len: POLICY_PREFIX_ANY_PROTO,
        })
        .copied()
}

fn rank(action: u8) -> u8 {
    match action {
        ACTION_DENY => 3,
        ACTION_AUDIT => 2,
        ACTION_ALLOW => 1,
        _ => 0,
    }
}

/// The datapath's decision for one side: the three lookups combined. `None`: not policed.
pub fn policy_decision(
    policy: &BTreeMap<PolicyKey, PolicyEntry>,
    subject: u32,
    direction: u8,
    peer: u32,
    peer_cidr: u32,
    protocol: u8,
    port: u16,
) -> Option<PolicyEntry> {
    let mut best: Option<PolicyEntry> = None;
    let mut peers = vec![peer];
    if peer_cidr != 0 {
        peers.push(peer_cidr);
    }
    peers.push(IDENTITY_ANY);
    for p in peers {
        if let Some(e) = policy_lookup(policy, subject, direction, p, protocol, port) {
            let better = best
                .is_none_or(|b| (e.precedence, rank(e.action)) > (b.precedence, rank(b.action)));
            if better {
                best = Some(e);
            }
        }
    }
    best
}

/// Longest-prefix match on the ipcache.
pub fn ipcache_lookup(state: &ClusterState, ip: IpAddr) -> Option<IpCacheEntry> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    for len in (0..=max).rev() {
        let c = Cidr::new(ip, len).ok()?;
        if let Some(e) = state.ipcache.get(&c) {
            return Some(*e);
        }
    }
    None
}
