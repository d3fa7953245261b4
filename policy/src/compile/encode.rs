//! The policy LPM encoding: a decision function over (protocol, port) written as entries of the
//! datapath's policy trie (`subject | peer | direction | protocol | port` keys, port ranges split
//! into aligned power-of-two blocks), only where it differs from what the lookup falls back to,
//! at the precedence band of its layer.

use std::collections::BTreeMap;

use septum_datapath_common::{
    Identity, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyEntry,
};

use super::Decision;
use crate::model::Protocol;
use crate::ports::{Segmented, range_to_prefixes};
use crate::rules::{COOKIE_HOST, Direction};
use crate::state::{PRECEDENCE_HOST, PolicyKey};

/// Writes entries so that the lookup of (subject, direction, peer) yields `f` where it differs
/// from `fallback` (what the layers below yield).
pub(super) fn emit(
    out: &mut Vec<(PolicyKey, PolicyEntry)>,
    subject: Identity,
    direction: Direction,
    peer: Identity,
    precedence: u16,
    f: &Segmented<Decision>,
    fallback: &Segmented<Decision>,
) {
    if f == fallback {
        return;
    }
    let mut push = |protocol: u8, port: u16, prefix_len: u32, d: Decision| {
        out.push((
            PolicyKey::new(subject, direction, peer, protocol, port, prefix_len),
            policy_entry(d, precedence),
        ));
    };
    let cover_all = f.other != fallback.other;
    if cover_all {
        push(0, 0, POLICY_PREFIX_ANY_PROTO, f.other);
    }
    let covered;
    let base = if cover_all {
        covered = Segmented::constant(f.other);
        &covered
    } else {
        fallback
    };
    for p in Protocol::ALL {
        // Both are normalized, so equal segment lists are equal functions.
        if f.protos[p.index()] == base.protos[p.index()] {
            continue;
        }
        // Option A: blocks where f differs from what the lookup falls back to.
        let diff_a = blocks_where_differs(f, base, p);
        // Option B: a whole-protocol entry with f's most common value, then blocks.
        let majority = majority_value(&f.segments(p));
        let diff_b = blocks_where_differs(f, &Segmented::constant(majority), p);
        if diff_a.len() <= diff_b.len() + 1 {
            for (port, bits, d) in diff_a {
                push(
                    p.number(),
                    port,
                    POLICY_PREFIX_ANY_PORT + u32::from(bits),
                    d,
                );
            }
        } else {
            push(p.number(), 0, POLICY_PREFIX_ANY_PORT, majority);
            for (port, bits, d) in diff_b {
                push(
                    p.number(),
                    port,
                    POLICY_PREFIX_ANY_PORT + u32::from(bits),
                    d,
                );
            }
        }
    }
}

fn majority_value(segs: &[(u16, u16, Decision)]) -> Decision {
    let mut count: BTreeMap<Decision, u32> = BTreeMap::new();
    for (lo, hi, d) in segs {
        *count.entry(*d).or_default() += u32::from(*hi) - u32::from(*lo) + 1;
    }
    count
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|x| x.0)
        .unwrap_or(Decision::UNPOLICED)
}

fn blocks_where_differs(
    f: &Segmented<Decision>,
    base: &Segmented<Decision>,
    p: Protocol,
) -> Vec<(u16, u8, Decision)> {
    let z = f.zip(base, |a, b| if a != b { Some(a) } else { None });
    let mut out = Vec::new();
    for (lo, hi, v) in z.segments(p) {
        if let Some(d) = v {
            for (port, bits) in range_to_prefixes(lo, hi) {
                out.push((port, bits, d));
            }
        }
    }
    out
}

/// The map value of a decision at a precedence band.
fn policy_entry(d: Decision, precedence: u16) -> PolicyEntry {
    PolicyEntry {
        action: d.action.code(),
        _pad: 0,
        precedence,
        cookie: d.cookie.get(),
    }
}

/// The entry that lets the node reach subject `s` whatever its ingress policy says.
pub(super) fn host_entry(s: Identity) -> (PolicyKey, PolicyEntry) {
    (
        PolicyKey::new(
            s,
            Direction::Ingress,
            Identity::HOST,
            0,
            0,
            POLICY_PREFIX_ANY_PROTO,
        ),
        policy_entry(Decision::allow(COOKIE_HOST), PRECEDENCE_HOST),
    )
}
