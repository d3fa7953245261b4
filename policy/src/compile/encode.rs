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
            PolicyKey::rule(subject, direction, peer, protocol, port, prefix_len),
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
        PolicyKey::rule(
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use septum_datapath_common::{Action, Cookie, POLICY_PREFIX_FULL, proto};

    use super::*;
    use crate::lpm;
    use crate::ports::PortSel;
    use crate::state::{PRECEDENCE_ANY_PEER, PRECEDENCE_PEER, PRECEDENCE_POD_IN_CIDR};

    const SUBJECT: Identity = Identity::new(300);
    const PEER: Identity = Identity::new(301);

    fn allow(c: u32) -> Decision {
        Decision::allow(Cookie::new(c))
    }

    fn deny(c: u32) -> Decision {
        Decision::deny(Cookie::new(c))
    }

    fn emitted(
        f: &Segmented<Decision>,
        fallback: &Segmented<Decision>,
    ) -> Vec<(PolicyKey, PolicyEntry)> {
        let mut out = Vec::new();
        emit(
            &mut out,
            SUBJECT,
            Direction::Egress,
            PEER,
            PRECEDENCE_PEER,
            f,
            fallback,
        );
        out
    }

    /// What the datapath's lookup of (SUBJECT, egress, PEER) yields over the emitted entries:
    /// the longest matching prefix, else whatever the layers below answer (`fallback`).
    fn read_back(
        map: &BTreeMap<PolicyKey, PolicyEntry>,
        fallback: &Segmented<Decision>,
        protocol: u8,
        port: u16,
    ) -> Decision {
        match lpm::policy_lookup(map, SUBJECT, Direction::Egress, PEER, protocol, port) {
            Some(e) => Decision {
                action: Action::from_u8(e.action).expect("emitted actions are valid codes"),
                cookie: Cookie::new(e.cookie),
            },
            None => fallback.get(protocol, port),
        }
    }

    /// `(first port, prefix bits of the port)` of every entry, for one protocol.
    fn blocks(entries: &[(PolicyKey, PolicyEntry)], protocol: u8) -> Vec<(u16, u32)> {
        entries
            .iter()
            .filter(|(k, _)| {
                k.data().protocol == protocol && k.prefix_len() >= POLICY_PREFIX_ANY_PORT
            })
            .map(|(k, _)| (k.data().port(), k.prefix_len() - POLICY_PREFIX_ANY_PORT))
            .collect()
    }

    #[test]
    fn a_port_range_becomes_aligned_blocks_that_cover_it_exactly() {
        let fallback = Segmented::constant(Decision::UNPOLICED);
        let mut f = fallback.clone();
        f.paint(PortSel::Range(Protocol::Tcp, 80, 90), allow(20));
        let out = emitted(&f, &fallback);
        // 80-87, 88-89, 90: the largest aligned power-of-two blocks inside the range.
        assert_eq!(blocks(&out, proto::TCP), vec![(80, 13), (88, 15), (90, 16)]);
        assert_eq!(out.len(), 3, "only TCP differs: {out:?}");
        let map: BTreeMap<_, _> = out.into_iter().collect();
        for port in 0..=u16::MAX {
            assert_eq!(
                read_back(&map, &fallback, proto::TCP, port),
                f.get(proto::TCP, port),
                "TCP port {port}"
            );
        }
        assert_eq!(
            read_back(&map, &fallback, proto::UDP, 80),
            Decision::UNPOLICED
        );
    }

    #[test]
    fn keys_carry_subject_peer_direction_and_the_layer_precedence() {
        let fallback = Segmented::constant(Decision::UNPOLICED);
        let mut f = fallback.clone();
        f.paint(PortSel::Range(Protocol::Udp, 53, 53), deny(21));
        let out = emitted(&f, &fallback);
        assert_eq!(out.len(), 1);
        let (k, e) = out[0];
        assert_eq!((k.subject(), k.peer()), (SUBJECT, PEER));
        assert_eq!(k.direction(), Some(Direction::Egress));
        assert_eq!((k.data().protocol, k.data().port()), (proto::UDP, 53));
        assert_eq!(k.prefix_len(), POLICY_PREFIX_FULL);
        assert_eq!(
            (e.action, e.cookie, e.precedence),
            (Action::Deny.code(), 21, PRECEDENCE_PEER)
        );
    }

    #[test]
    fn a_protocol_mostly_of_one_value_gets_one_entry_for_the_protocol() {
        let fallback = Segmented::constant(Decision::UNPOLICED);
        let mut f = fallback.clone();
        f.paint(PortSel::Protocol(Protocol::Tcp), deny(30));
        f.paint(PortSel::Range(Protocol::Tcp, 443, 443), allow(20));
        let out = emitted(&f, &fallback);
        // A whole-protocol deny and the one port over it, not dozens of deny blocks.
        assert_eq!(blocks(&out, proto::TCP), vec![(0, 0), (443, 16)]);
        let map: BTreeMap<_, _> = out.into_iter().collect();
        for port in [0, 442, 443, 444, u16::MAX] {
            assert_eq!(
                read_back(&map, &fallback, proto::TCP, port),
                f.get(proto::TCP, port)
            );
        }
    }

    #[test]
    fn a_difference_everywhere_is_one_any_protocol_entry() {
        let fallback = Segmented::constant(Decision::UNPOLICED);
        let f = Segmented::constant(deny(30));
        let out = emitted(&f, &fallback);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0.prefix_len(), POLICY_PREFIX_ANY_PROTO);
        let map: BTreeMap<_, _> = out.into_iter().collect();
        for protocol in [proto::ICMP, proto::TCP, proto::UDP, proto::SCTP] {
            assert_eq!(read_back(&map, &fallback, protocol, 8080), deny(30));
        }
    }

    #[test]
    fn nothing_is_written_where_the_layer_below_already_answers() {
        let mut fallback = Segmented::constant(deny(30));
        fallback.paint(PortSel::Range(Protocol::Tcp, 80, 80), allow(20));
        assert!(emitted(&fallback, &fallback).is_empty());
        let mut f = fallback.clone();
        f.paint(PortSel::Range(Protocol::Udp, 53, 53), allow(21));
        let out = emitted(&f, &fallback);
        assert_eq!(blocks(&out, proto::UDP), vec![(53, 16)]);
        assert_eq!(
            out.len(),
            1,
            "TCP and other protocols are left to the layer below"
        );
    }

    #[test]
    fn the_host_entry_lets_the_node_in_above_every_band() {
        let (k, e) = host_entry(SUBJECT);
        assert_eq!((k.subject(), k.peer()), (SUBJECT, Identity::HOST));
        assert_eq!(k.direction(), Some(Direction::Ingress));
        assert_eq!(k.prefix_len(), POLICY_PREFIX_ANY_PROTO);
        assert_eq!(
            (e.action, e.cookie),
            (Action::Allow.code(), COOKIE_HOST.get())
        );
        let bands = [PRECEDENCE_ANY_PEER, PRECEDENCE_PEER, PRECEDENCE_POD_IN_CIDR];
        assert!(bands.iter().all(|b| e.precedence > *b), "{e:?}");
    }

    fn entry(peer: Identity, precedence: u16, d: Decision) -> (PolicyKey, PolicyEntry) {
        (
            PolicyKey::rule(
                SUBJECT,
                Direction::Ingress,
                peer,
                0,
                0,
                POLICY_PREFIX_ANY_PROTO,
            ),
            policy_entry(d, precedence),
        )
    }

    fn decide(entries: &[(PolicyKey, PolicyEntry)], peer_cidr: Option<Identity>) -> (u8, u32) {
        let map: BTreeMap<_, _> = entries.iter().copied().collect();
        let e = lpm::policy_decision(
            &map,
            SUBJECT,
            Direction::Ingress,
            PEER,
            peer_cidr,
            proto::TCP,
            80,
        )
        .expect("an entry matches");
        (e.action, e.cookie)
    }

    #[test]
    fn across_lookups_the_higher_band_wins_and_deny_wins_ties() {
        let cidr = Identity::new(1 << 24);
        // A more specific layer overrides the default deny of the any-peer layer.
        let layered = [
            entry(Identity::ANY, PRECEDENCE_ANY_PEER, deny(30)),
            entry(PEER, PRECEDENCE_PEER, allow(20)),
        ];
        assert_eq!(decide(&layered, None), (Action::Allow.code(), 20));
        // The pod-in-CIDR layer overrides the pod identity's layer.
        let pod_in_cidr = [
            entry(PEER, PRECEDENCE_PEER, allow(20)),
            entry(cidr, PRECEDENCE_POD_IN_CIDR, deny(31)),
        ];
        assert_eq!(decide(&pod_in_cidr, Some(cidr)), (Action::Deny.code(), 31));
        // On equal precedence: deny beats audit beats allow, whichever lookup found it.
        let tie = |a: Decision, b: Decision| {
            decide(
                &[
                    entry(PEER, PRECEDENCE_PEER, a),
                    entry(cidr, PRECEDENCE_PEER, b),
                ],
                Some(cidr),
            )
        };
        assert_eq!(tie(allow(20), deny(31)), (Action::Deny.code(), 31));
        assert_eq!(tie(deny(31), allow(20)), (Action::Deny.code(), 31));
        assert_eq!(
            tie(Decision::audit(Cookie::new(32)), allow(20)),
            (Action::Audit.code(), 32)
        );
        assert_eq!(
            tie(Decision::audit(Cookie::new(32)), deny(31)),
            (Action::Deny.code(), 31)
        );
    }

    fn decision() -> impl Strategy<Value = Decision> {
        prop_oneof![
            Just(Decision::UNPOLICED),
            Just(allow(20)),
            Just(deny(21)),
            Just(Decision::audit(Cookie::new(22))),
            Just(allow(23)),
        ]
    }

    fn sel() -> impl Strategy<Value = PortSel> {
        let protocol = prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ];
        prop_oneof![
            1 => Just(PortSel::All),
            2 => protocol.clone().prop_map(PortSel::Protocol),
            8 => (protocol, any::<u16>(), any::<u16>())
                .prop_map(|(p, a, b)| PortSel::Range(p, a.min(b), a.max(b))),
        ]
    }

    fn function() -> impl Strategy<Value = Segmented<Decision>> {
        (decision(), prop::collection::vec((sel(), decision()), 0..8)).prop_map(|(base, paints)| {
            let mut f = Segmented::constant(base);
            for (s, d) in paints {
                f.paint(s, d);
            }
            f
        })
    }

    /// Ports where either function may change value, and their neighbours.
    fn probes(f: &Segmented<Decision>, g: &Segmented<Decision>, p: Protocol) -> Vec<u16> {
        let mut out = vec![0, u16::MAX];
        for (lo, hi, _) in f.segments(p).into_iter().chain(g.segments(p)) {
            out.extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)]);
        }
        out
    }

    proptest! {
        #[test]
        fn emitted_entries_over_the_fallback_reproduce_the_function(
            f in function(),
            fallback in function(),
        ) {
            let map: BTreeMap<_, _> = emitted(&f, &fallback).into_iter().collect();
            for p in Protocol::ALL {
                for port in probes(&f, &fallback, p) {
                    prop_assert_eq!(
                        read_back(&map, &fallback, p.number(), port),
                        f.get(p.number(), port),
                        "{} port {}", p, port
                    );
                }
            }
            prop_assert_eq!(read_back(&map, &fallback, proto::ICMP, 0), f.other);
        }
    }
}
