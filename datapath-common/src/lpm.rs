//! The one LPM key type and the one reading of the policy maps, shared by the compiler (which
//! writes keys), the loader and the agent (which store them), `explain` and the tests (which
//! read them the way the kernel does).
//!
//! An [`LpmKey`] is always canonical: bits past the prefix length are zero. The kernel's LPM
//! trie compares only the first `prefix_len` bits, so two keys that differ past their prefix are
//! the same trie node; keeping them canonical makes equal-as-values mean equal-in-the-kernel, and
//! lets [`longest_match`] find an entry by probing each prefix length instead of scanning.
//!
//! [`decide`] is the decision contract of the crate docs in code: three lookups (peer identity,
//! peer CIDR identity when it has a distinct one, any peer), highest precedence wins, deny beats
//! audit beats allow on ties ([`outranks`], which the eBPF program calls too), no match = not
//! policed.

use crate::{
    Direction, IDENTITY_ANY, Identity, IpCacheEntry, IpPrefixData, PolicyEntry, PolicyKeyData,
};

/// The data half of an LPM key: a fixed number of bits, maskable to a prefix.
pub trait LpmData: Copy {
    /// Bits of the data (the longest prefix).
    const BITS: u32;
    /// The data with every bit from `prefix_len` on cleared.
    #[must_use]
    fn masked(self, prefix_len: u32) -> Self;
    /// Whether the contract allows a key of this data with `prefix_len` bits (the writers
    /// produce no other; [`longest_match`] probes only these).
    fn valid_prefix(&self, prefix_len: u32) -> bool;
}

/// Clears every bit of `bytes` from bit `prefix_len` on (bit 0 = the first byte's top bit).
fn mask_bytes(bytes: &mut [u8], prefix_len: u32) {
    for (i, b) in bytes.iter_mut().enumerate() {
        let start = (i as u32) * 8;
        if prefix_len >= start + 8 {
            continue;
        }
        let keep = prefix_len.saturating_sub(start);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
}

impl LpmData for IpPrefixData {
    const BITS: u32 = 32 + 128;

    fn masked(self, prefix_len: u32) -> Self {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&self.family);
        b[4..].copy_from_slice(&self.addr);
        mask_bytes(&mut b, prefix_len);
        let mut out = self;
        out.family.copy_from_slice(&b[..4]);
        out.addr.copy_from_slice(&b[4..]);
        out
    }

    /// The family is always matched whole; then up to the family's address bits.
    fn valid_prefix(&self, prefix_len: u32) -> bool {
        (32..=IpPrefixData::full_prefix_len(self.family[3])).contains(&prefix_len)
    }
}

impl LpmData for PolicyKeyData {
    const BITS: u32 = crate::POLICY_PREFIX_FULL;

    fn masked(self, prefix_len: u32) -> Self {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.subject);
        b[4..8].copy_from_slice(&self.peer);
        b[8] = self.direction;
        b[9] = self.protocol;
        b[10..].copy_from_slice(&self.port);
        mask_bytes(&mut b, prefix_len);
        Self {
            subject: [b[0], b[1], b[2], b[3]],
            peer: [b[4], b[5], b[6], b[7]],
            direction: b[8],
            protocol: b[9],
            port: [b[10], b[11]],
        }
    }

    /// Subject, peer and direction are always matched whole; then the protocol whole, then any
    /// prefix of the port (the crate docs' policy map contract).
    fn valid_prefix(&self, prefix_len: u32) -> bool {
        prefix_len == crate::POLICY_PREFIX_ANY_PROTO
            || (crate::POLICY_PREFIX_ANY_PORT..=crate::POLICY_PREFIX_FULL).contains(&prefix_len)
    }
}

/// An LPM trie key as user space holds it: canonical data and its prefix length. Ordered by the
/// data first, so the entries of one policy subject are one range. (The kernel's
/// `bpf_lpm_trie_key` puts the prefix length first; the loader converts.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LpmKey<T> {
    data: T,
    prefix_len: u32,
}

/// A policy map key.
pub type PolicyKey = LpmKey<PolicyKeyData>;
/// An ipcache key.
pub type IpCacheKey = LpmKey<IpPrefixData>;

impl<T: LpmData> LpmKey<T> {
    /// The key for the first `prefix_len` bits of `data` (capped at [`LpmData::BITS`]; the rest
    /// is cleared). Writers use only prefix lengths the contract allows
    /// ([`LpmData::valid_prefix`]); the kernel would honour any other, [`longest_match`] would
    /// not see it, and the end-to-end differential test would report the difference.
    pub fn new(prefix_len: u32, data: T) -> Self {
        let prefix_len = prefix_len.min(T::BITS);
        Self {
            data: data.masked(prefix_len),
            prefix_len,
        }
    }

    /// The full-length key of `data` (what the datapath looks up).
    pub fn full(data: T) -> Self {
        Self::new(T::BITS, data)
    }
}

impl<T: Copy> LpmKey<T> {
    /// The (canonical) data.
    pub const fn data(&self) -> T {
        self.data
    }

    /// Significant bits.
    pub const fn prefix_len(&self) -> u32 {
        self.prefix_len
    }
}

impl PolicyKey {
    /// The key of a rule from its typed parts: the first `prefix_len` bits of (`subject`,
    /// `peer`, `direction`, `protocol` (an IP protocol number), `port`).
    pub fn rule(
        subject: Identity,
        direction: Direction,
        peer: Identity,
        protocol: u8,
        port: u16,
        prefix_len: u32,
    ) -> Self {
        Self::new(
            prefix_len,
            PolicyKeyData::new(subject.get(), direction.code(), peer.get(), protocol, port),
        )
    }

    /// A range-scan bound sorting before every stored key of `subject` toward `peer` (direction
    /// 0 sorts before both directions). Not canonical: never store it.
    pub const fn peer_start(subject: Identity, peer: Identity) -> Self {
        Self {
            data: PolicyKeyData::new(subject.get(), 0, peer.get(), 0, 0),
            prefix_len: 0,
        }
    }

    /// A range-scan bound sorting before every stored key of `subject`.
    pub const fn subject_start(subject: Identity) -> Self {
        Self::peer_start(subject, Identity::ANY)
    }

    /// The subject identity.
    pub const fn subject(&self) -> Identity {
        Identity::new(self.data.subject())
    }

    /// The peer identity.
    pub const fn peer(&self) -> Identity {
        Identity::new(self.data.peer())
    }

    /// The direction (`None` only for a range-scan bound).
    pub const fn direction(&self) -> Option<Direction> {
        Direction::from_u8(self.data.direction)
    }
}

/// The longest-prefix match of `key`, as the kernel's trie answers it: the stored key with the
/// most significant bits that `key` starts with, among the prefix lengths the contract allows
/// (the only ones stored). `get` reads the store (any map keyed by [`LpmKey`], or by something
/// convertible).
pub fn longest_match<T: LpmData, V>(
    key: T,
    mut get: impl FnMut(&LpmKey<T>) -> Option<V>,
) -> Option<(LpmKey<T>, V)> {
    (0..=T::BITS)
        .rev()
        .filter(|bits| key.valid_prefix(*bits))
        .find_map(|bits| {
            let k = LpmKey::new(bits, key);
            get(&k).map(|v| (k, v))
        })
}

/// The tie-break rank of an action code: deny beats audit beats allow. The datapath drops only
/// on `ACTION_DENY`, so an unknown code ranks (and acts) as allow.
pub const fn action_rank(action: u8) -> u8 {
    match action {
        crate::ACTION_DENY => 3,
        crate::ACTION_AUDIT => 2,
        _ => 1,
    }
}

/// Whether an entry (`precedence`, `action`) decides over the best one found so far.
pub const fn outranks(precedence: u16, action: u8, best_precedence: u16, best_action: u8) -> bool {
    precedence > best_precedence
        || (precedence == best_precedence && action_rank(action) > action_rank(best_action))
}

/// The identities a decision looks up for a peer, in order: its identity, its CIDR identity
/// (when it has one distinct from the identity), and any peer.
pub const fn peer_lookups(peer: &IpCacheEntry) -> [Option<u32>; 3] {
    let cidr = if peer.cidr_identity != 0 && peer.cidr_identity != peer.identity {
        Some(peer.cidr_identity)
    } else {
        None
    };
    [Some(peer.identity), cidr, Some(IDENTITY_ANY)]
}

/// The decision of `subject` in `direction` toward `peer` on (`protocol`, `port`): the winning
/// entry of the three lookups, `None` when nothing matches (the direction is not policed).
/// `get` reads the policy store.
pub fn decide(
    subject: u32,
    direction: u8,
    peer: &IpCacheEntry,
    protocol: u8,
    port: u16,
    mut get: impl FnMut(&PolicyKey) -> Option<PolicyEntry>,
) -> Option<PolicyEntry> {
    let mut best: Option<PolicyEntry> = None;
    for p in peer_lookups(peer).into_iter().flatten() {
        let key = PolicyKeyData::new(subject, direction, p, protocol, port);
        if let Some((_, e)) = longest_match(key, &mut get)
            && best.is_none_or(|b| outranks(e.precedence, e.action, b.precedence, b.action))
        {
            best = Some(e);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ACTION_ALLOW, ACTION_DENY, FAMILY_IPV4, POLICY_PREFIX_ANY_PORT};

    #[test]
    fn keys_are_canonical() {
        let k = LpmKey::new(
            POLICY_PREFIX_ANY_PORT + 14,
            PolicyKeyData::new(7, 1, 9, 6, 8083),
        );
        assert_eq!(k.data(), PolicyKeyData::new(7, 1, 9, 6, 8080));
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 1, 2, 3]);
        let k = LpmKey::new(
            IpPrefixData::prefix_len(8),
            IpPrefixData::new(FAMILY_IPV4, a),
        );
        assert_eq!(k.data().addr[..4], [10, 0, 0, 0]);
        assert_eq!(k.data().family, [0, 0, 0, FAMILY_IPV4]);
        assert!(!PolicyKeyData::default().valid_prefix(75));
        assert!(k.data().valid_prefix(32 + 32) && !k.data().valid_prefix(32 + 33));
    }

    #[test]
    fn longest_prefix_wins_and_ties_go_to_deny() {
        let entry = |action, precedence| PolicyEntry {
            action,
            _pad: 0,
            precedence,
            cookie: u32::from(action),
        };
        let store = [
            (
                LpmKey::new(72, PolicyKeyData::new(1, 1, IDENTITY_ANY, 0, 0)),
                entry(ACTION_DENY, 0),
            ),
            (
                LpmKey::new(96, PolicyKeyData::new(1, 1, 5, 6, 80)),
                entry(ACTION_ALLOW, 1),
            ),
            (
                LpmKey::new(92, PolicyKeyData::new(1, 1, 6, 6, 80)),
                entry(ACTION_ALLOW, 1),
            ),
            (
                LpmKey::new(80, PolicyKeyData::new(1, 1, 6, 6, 0)),
                entry(ACTION_DENY, 1),
            ),
        ];
        let get = |k: &PolicyKey| store.iter().find(|(s, _)| s == k).map(|(_, e)| *e);
        let peer = |identity, cidr_identity| IpCacheEntry {
            identity,
            cidr_identity,
            kind: 0,
            _pad: [0; 3],
        };
        // Peer 5 on 80: its allow outranks the any-peer default deny.
        assert_eq!(
            decide(1, 1, &peer(5, 0), 6, 80, get).map(|e| e.action),
            Some(ACTION_ALLOW)
        );
        // Peer 5 on 81: only the default deny matches.
        assert_eq!(
            decide(1, 1, &peer(5, 0), 6, 81, get).map(|e| e.action),
            Some(ACTION_DENY)
        );
        // Peer 6 on 80..=95 (the /92 block) is allowed; 96 falls to the broader deny.
        assert_eq!(
            decide(1, 1, &peer(6, 0), 6, 95, get).map(|e| e.action),
            Some(ACTION_ALLOW)
        );
        assert_eq!(
            decide(1, 1, &peer(6, 0), 6, 96, get).map(|e| e.action),
            Some(ACTION_DENY)
        );
        // Pod 5 whose address lies in CIDR identity 6: the CIDR's deny on 96 ties with nothing
        // better from the pod's own lookup, so it decides.
        assert_eq!(
            decide(1, 1, &peer(5, 6), 6, 96, get).map(|e| e.action),
            Some(ACTION_DENY)
        );
        // Another subject is not policed.
        assert_eq!(decide(2, 1, &peer(5, 0), 6, 80, get), None);
    }
}
