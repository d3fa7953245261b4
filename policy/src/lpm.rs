//! A reference reading of compiled state exactly as the datapath reads its maps: longest-prefix
//! match on the ipcache and on the policy trie, three policy lookups (peer identity, peer CIDR
//! identity, any peer) combined by precedence with deny > audit > allow on ties, no entry =
//! not policed = allowed. Tests use it to check the compiler against the semantics; the
//! datapath's own tests can use it as the expected answer.

use std::collections::BTreeMap;
use std::net::IpAddr;

use septum_datapath_common::{
    Action, Direction, Identity, IpCacheEntry, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_FULL, PolicyEntry,
};

use crate::cidr::Cidr;
use crate::state::{ClusterState, PolicyKey};

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
    for bits in (0..=16u32).rev() {
        let mask: u16 = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        let key = PolicyKey::new(
            subject,
            direction,
            peer,
            protocol,
            port & mask,
            POLICY_PREFIX_ANY_PORT + bits,
        );
        if let Some(e) = policy.get(&key) {
            return Some(*e);
        }
    }
    debug_assert_eq!(POLICY_PREFIX_ANY_PORT + 16, POLICY_PREFIX_FULL);
    policy
        .get(&PolicyKey::new(
            subject,
            direction,
            peer,
            0,
            0,
            POLICY_PREFIX_ANY_PROTO,
        ))
        .copied()
}

/// The tie-break rank of an entry's action (an unknown code ranks below every action).
fn rank(action: u8) -> u8 {
    Action::from_u8(action).map_or(0, Action::rank)
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
    let mut best: Option<PolicyEntry> = None;
    let mut peers = vec![peer];
    peers.extend(peer_cidr);
    peers.push(Identity::ANY);
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
