//! Differential property test: random identities, policies, CIDRs, services and packets; the
//! real eBPF program's verdict must equal the reference evaluation of the same map contents
//! (`septum_tests::reference`), for thousands of packets per run.
//!
//! Some of the other pods are endpoints of this node too (their addresses local), so flows from
//! A to them are node-local: decided whole at A's from_pod. A second property follows such
//! connections through both programs and both directions ([`node_local_connections`]): the
//! first packet's verdict and mark, the destination's to_pod passing it (marked, or with the
//! mark lost), a mark on a packet generated on the host ignored, the replies both ways, the
//! conntrack layout (two entries, both at from_pod, counting each way), and a connection
//! that predates enforcement picked up at both points and keeping its replies.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
};

use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use septum_datapath::{Datapath, DatapathOptions, TestSkb};
use septum_datapath_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, CT_F_LOCAL, Counter, CtKey, DIRECTION_EGRESS,
    DIRECTION_INGRESS, IDENTITY_ANY, IDENTITY_FIRST_CIDR, IDENTITY_HOST, IPCACHE_KIND_CIDR,
    IPCACHE_KIND_HOST, IPCACHE_KIND_POD, IpCacheEntry, MODE_AUDIT, MODE_ENFORCE, POINT_FROM_POD,
    POINT_TO_POD, SKB_MARK_MASK, SKB_MARK_NODE_LOCAL, STATE_INIT_DENY, STATE_READY, proto,
};
use septum_tests::{
    netns::{NetNs, unique_tag},
    packet::{ACK, Flow, Options, SYN, build},
    reference::{MapContents, Reference as _, TC_ACT_OK},
    world::{Build as _, Rule},
};

const LO: u32 = 1;
/// The ifindex of pod B (the world's second pod), a veth in the node-local test's
/// namespace; the other pods' endpoints sit on ifindexes that need not exist.
const B_IF: u32 = 50;
const PACKETS_PER_WORLD: usize = 64;

static DATAPATH: Mutex<Option<Datapath>> = Mutex::new(None);

fn v4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, i))
}

fn v6(i: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i as u16))
}

struct World {
    maps: MapContents,
    /// Candidate packet endpoints: pod IPs of A and others, CIDR members, world, node.
    addrs: Vec<IpAddr>,
    a_ips: Vec<IpAddr>,
}

/// An endpoint's mode (audit 15%) and state (not ready 10%), in that order of draws.
fn random_mode_and_state(ep: &mut septum_datapath_common::EndpointInfo, rng: &mut StdRng) {
    ep.mode = if rng.gen_bool(0.15) {
        MODE_AUDIT
    } else {
        MODE_ENFORCE
    };
    ep.state = if rng.gen_bool(0.1) {
        STATE_INIT_DENY
    } else {
        STATE_READY
    };
}

fn random_world(rng: &mut StdRng) -> World {
    let mut maps = MapContents::default();
    let n_pods = rng.gen_range(2..6u32);
    let pods: Vec<u32> = (0..n_pods).map(|i| 1000 + i).collect();
    let a = pods[0];
    let mut addrs = Vec::new();
    let mut a_ips = Vec::new();
    // CIDR identities: 10.1.0.0/24 block members and some sub-prefixes.
    let cidrs = [
        (v4(0), 24u8, IDENTITY_FIRST_CIDR),
        (v4(128), 25, IDENTITY_FIRST_CIDR + 1),
        (v4(200), 30, IDENTITY_FIRST_CIDR + 2),
        (v6(0), 112, IDENTITY_FIRST_CIDR + 3),
        (v6(128), 121, IDENTITY_FIRST_CIDR + 4),
    ];
    let cidr_of = |ip: IpAddr| -> u32 {
        // The most specific configured prefix containing ip.
        let mut best = (0u8, 0u32);
        for (net, bits, id) in cidrs {
            let contains = match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(x)) => {
                    let m = if bits == 0 {
                        0
                    } else {
                        u32::MAX << (32 - bits)
                    };
                    u32::from(n) & m == u32::from(x) & m
                }
                (IpAddr::V6(n), IpAddr::V6(x)) => {
                    let m = if bits == 0 {
                        0
                    } else {
                        u128::MAX << (128 - bits)
                    };
                    u128::from(n) & m == u128::from(x) & m
                }
                _ => false,
            };
            if contains && bits >= best.0 {
                best = (bits, id);
            }
        }
        best.1
    };
    for (net, bits, id) in cidrs {
        if rng.gen_bool(0.7) {
            maps.add_ip(
                net,
                bits,
                IpCacheEntry {
                    identity: id,
                    cidr_identity: id,
                    kind: IPCACHE_KIND_CIDR,
                    _pad: [0; 3],
                },
            );
        }
    }
    for (i, id) in pods.iter().enumerate() {
        let octet = [1u8, 130, 201, 50, 140, 202][i % 6] + (i / 6) as u8;
        for ip in [v4(octet), v6(octet)] {
            let with_cidr = rng.gen_bool(0.6);
            maps.add_ip(
                ip,
                if ip.is_ipv4() { 32 } else { 128 },
                IpCacheEntry {
                    identity: *id,
                    cidr_identity: if with_cidr { cidr_of(ip) } else { 0 },
                    kind: IPCACHE_KIND_POD,
                    _pad: [0; 3],
                },
            );
            addrs.push(ip);
            if *id == a {
                a_ips.push(ip);
            }
        }
    }
    for node in [v4(254), v6(254)] {
        maps.add_ip(
            node,
            if node.is_ipv4() { 32 } else { 128 },
            IpCacheEntry {
                identity: IDENTITY_HOST,
                cidr_identity: 0,
                kind: IPCACHE_KIND_HOST,
                _pad: [0; 3],
            },
        );
        addrs.push(node);
    }
    addrs.extend([
        v4(129),
        v4(203),
        v6(129),
        v4(77),
        "8.8.8.8".parse().expect("ip"),
        "2001:db8::1".parse().expect("ip"),
    ]);
    // A on lo; some other pods are endpoints of this node too (B, the second, always).
    maps.add_pod(LO, 1, a, &[], rng.gen_range(0..4));
    for ip in &a_ips {
        maps.add_local_addr(*ip, LO);
    }
    for (i, id) in pods.iter().enumerate().skip(1) {
        if i > 1 && rng.gen_bool(0.5) {
            continue;
        }
        let ifindex = B_IF + i as u32 - 1;
        maps.add_pod(ifindex, 1 + i as u32, *id, &[], rng.gen_range(0..4));
        random_mode_and_state(maps.endpoints.get_mut(&ifindex).expect("endpoint"), rng);
        let octet = [1u8, 130, 201, 50, 140, 202][i % 6] + (i / 6) as u8;
        for ip in [v4(octet), v6(octet)] {
            if rng.gen_bool(0.9) {
                maps.add_local_addr(ip, ifindex);
            }
        }
    }
    random_mode_and_state(maps.endpoints.get_mut(&LO).expect("endpoint"), rng);
    // Services.
    for _ in 0..rng.gen_range(0..3) {
        let vip = *addrs.choose(rng).expect("addrs");
        maps.add_service(
            vip,
            [80u16, 443, 53][rng.gen_range(0..3)],
            [proto::TCP, proto::UDP][rng.gen_range(0..2)],
            1,
        );
    }
    // Rules.
    let mut peers: Vec<u32> = pods.clone();
    peers.extend(cidrs.iter().map(|c| c.2));
    peers.extend([IDENTITY_ANY, IDENTITY_ANY, IDENTITY_HOST]);
    for subject in &pods {
        for direction in [DIRECTION_INGRESS, DIRECTION_EGRESS] {
            if rng.gen_bool(0.5) {
                maps.isolate(*subject, direction, 1);
            }
            for _ in 0..rng.gen_range(0..6) {
                let protocol = match rng.gen_range(0..5) {
                    0 => None,
                    1 | 2 => Some(proto::TCP),
                    3 => Some(proto::UDP),
                    _ => Some(proto::SCTP),
                };
                let ports = if rng.gen_bool(0.25) {
                    None
                } else {
                    let lo = [53u16, 80, 443, 8000, 1][rng.gen_range(0..5)];
                    let hi = lo + [0u16, 0, 1, 7, 100][rng.gen_range(0..5)];
                    Some((lo, hi))
                };
                maps.add_rule(&Rule {
                    subject: *subject,
                    direction,
                    peer: *peers.choose(rng).expect("peers"),
                    protocol,
                    ports,
                    action: [ACTION_ALLOW, ACTION_ALLOW, ACTION_DENY, ACTION_AUDIT]
                        [rng.gen_range(0..4)],
                    precedence: [10u16, 100, 100, 1000][rng.gen_range(0..4)],
                    cookie: rng.r#gen(),
                });
            }
        }
    }
    World { maps, addrs, a_ips }
}

fn random_flow(rng: &mut StdRng, w: &World, point: u8) -> Flow {
    let v6 = rng.gen_bool(0.5);
    let pick = |rng: &mut StdRng, list: &[IpAddr]| -> IpAddr {
        *list
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .collect::<Vec<_>>()
            .choose(rng)
            .copied()
            .expect("addr")
    };
    let me = pick(rng, &w.a_ips);
    let other = pick(rng, &w.addrs);
    let (src, dst) = if point == POINT_FROM_POD {
        (me, other)
    } else {
        (other, me)
    };
    let protocol = match rng.gen_range(0..7) {
        0..=2 => proto::TCP,
        3 | 4 => proto::UDP,
        5 => proto::SCTP,
        _ => {
            if v6 {
                proto::ICMPV6
            } else {
                proto::ICMP
            }
        }
    };
    let ports = [
        53u16, 80, 81, 443, 444, 8000, 8003, 8007, 8008, 1, 100, 101, 40000,
    ];
    let mut f = Flow::tcp(
        src,
        dst,
        *ports.choose(rng).expect("p"),
        *ports.choose(rng).expect("p"),
    )
    .with_protocol(protocol);
    if protocol == proto::TCP && rng.gen_bool(0.3) {
        f.tcp_flags = ACK;
    } else {
        f.tcp_flags = SYN;
    }
    f
}

fn check_world(seed: u64) -> Result<(), TestCaseError> {
    let mut guard = DATAPATH.lock().unwrap_or_else(|p| p.into_inner());
    let dp = guard.get_or_insert_with(|| {
        Datapath::load(&DatapathOptions::unpinned()).expect("load the datapath")
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let w = random_world(&mut rng);
    w.maps.write_to(dp).expect("write maps");
    for _ in 0..PACKETS_PER_WORLD {
        let point = if rng.gen_bool(0.5) {
            POINT_FROM_POD
        } else {
            POINT_TO_POD
        };
        let f = random_flow(&mut rng, &w, point);
        dp.conntrack.flush().expect("flush conntrack");
        let prog = if point == POINT_FROM_POD {
            "from_pod"
        } else {
            "to_pod"
        };
        let got = dp.test_run(prog, &f.build(), LO, 1).expect("test run").0;
        let want = w.maps.expected_verdict(point, LO, &f);
        prop_assert_eq!(
            got,
            want,
            "seed {} point {} flow {:?}\nmaps:\n{}",
            seed,
            point,
            f,
            w.maps.describe()
        );
    }
    Ok(())
}

/// The pods' addresses (B's: the second pod's) of one family, for the node-local test.
fn b_ips(w: &World, v6: bool) -> Option<IpAddr> {
    let b_if = B_IF;
    w.maps
        .local_addrs
        .iter()
        .filter(|(_, i)| **i == b_if)
        .map(|(k, _)| {
            if k.family[3] == septum_datapath_common::FAMILY_IPV4 {
                IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
            } else {
                IpAddr::from(k.addr)
            }
        })
        .find(|ip| ip.is_ipv6() == v6)
}

/// One node-local connection from A (on lo) to B (on [`B_IF`]) through both programs.
fn check_node_local(dp: &mut Datapath, w: &World, rng: &mut StdRng) -> Result<(), TestCaseError> {
    let v6 = rng.gen_bool(0.5);
    let (Some(b), Some(a)) = (
        b_ips(w, v6),
        w.a_ips.iter().copied().find(|ip| ip.is_ipv6() == v6),
    ) else {
        return Ok(());
    };
    let protocol = [proto::TCP, proto::TCP, proto::UDP, proto::SCTP][rng.gen_range(0..4)];
    let ports = [53u16, 80, 443, 8000, 8003, 40000];
    let f = Flow::tcp(
        a,
        b,
        40000 + rng.gen_range(0..1000),
        *ports.choose(rng).expect("p"),
    )
    .with_protocol(protocol);
    let at = |ifindex: u32, ingress: u32, mark: u32| TestSkb {
        ifindex,
        ingress_ifindex: ingress,
        mark,
    };
    let run = |dp: &Datapath, prog: &'static str, f: &Flow, skb: TestSkb| {
        dp.test_run_skb(prog, &f.build(), skb, 1).expect("test run")
    };
    let marked = |m: u32| m & SKB_MARK_MASK == SKB_MARK_NODE_LOCAL;
    let ctx = format!("flow {f:?}\nmaps:\n{}", w.maps.describe());

    // The first packet: decided whole at from_pod when B is ready and its address local.
    dp.conntrack.flush().expect("flush");
    let want = w.maps.expected_verdict(POINT_FROM_POD, LO, &f);
    let local = w.maps.local_destination(&f).is_some();
    let (got, _, mark) = run(dp, "from_pod", &f, at(LO, 0, 0));
    prop_assert_eq!(got, want, "first packet at from_pod, {}", ctx);
    prop_assert_eq!(
        marked(mark),
        local && got == TC_ACT_OK,
        "mark {:#x}, {}",
        mark,
        ctx
    );
    if local && got == TC_ACT_OK {
        // Two entries, both at from_pod, flagged local.
        let entries = dp.conntrack.entries().expect("conntrack");
        prop_assert_eq!(entries.len(), 2, "{:?}", entries);
        prop_assert!(
            entries
                .iter()
                .all(|(k, e)| k.point == POINT_FROM_POD && e.flags & CT_F_LOCAL != 0)
        );
        let passed = dp.counter(Counter::NodeLocalPassed).expect("counter");
        // B's to_pod: marked, passed at once; with the mark lost, passed on the local entry.
        prop_assert_eq!(
            run(dp, "to_pod", &f, at(B_IF, LO, mark)).0,
            TC_ACT_OK,
            "{}",
            ctx
        );
        prop_assert_eq!(
            run(dp, "to_pod", &f, at(B_IF, LO, 0)).0,
            TC_ACT_OK,
            "{}",
            ctx
        );
        prop_assert_eq!(
            dp.counter(Counter::NodeLocalPassed).expect("counter"),
            passed + 2
        );
        // The replies: B's from_pod knows the flow and marks them; A's to_pod passes them.
        let r = f.reply();
        let (got, _, rmark) = run(dp, "from_pod", &r, at(B_IF, 0, 0));
        prop_assert_eq!(got, TC_ACT_OK, "reply at from_pod, {}", ctx);
        prop_assert!(marked(rmark));
        prop_assert_eq!(run(dp, "to_pod", &r, at(LO, B_IF, rmark)).0, TC_ACT_OK);
        prop_assert_eq!(run(dp, "to_pod", &r, at(LO, B_IF, 0)).0, TC_ACT_OK);
        // Later packets both ways, counted each way on the two entries.
        let later = f.with_flags(ACK);
        prop_assert!(marked(run(dp, "from_pod", &later, at(LO, 0, 0)).2));
        let fwd = dp.conntrack.get(&key_of(&f)).expect("forward entry");
        let rev = dp
            .conntrack
            .get(&key_of(&f).reply_key(fwd.flags))
            .expect("reply entry");
        prop_assert_eq!((fwd.packets, rev.packets), (2, 1));
        prop_assert_eq!(dp.conntrack.entries().expect("conntrack").len(), 2);
        // An ICMP error B sends about A's packet is related, at B's from_pod and at A's to_pod.
        let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
        let mut err = Flow::tcp(b, a, 0, 0).with_protocol(icmp);
        err.icmp_type = if v6 { 1 } else { 3 };
        let related = build(
            &err,
            &Options {
                quoted: Some(f),
                ..Options::default()
            },
        );
        let before = dp.counter(Counter::IcmpRelated).expect("counter");
        let skb = at(B_IF, 0, 0);
        prop_assert_eq!(
            dp.test_run_skb("from_pod", &related, skb, 1)
                .expect("run")
                .0,
            TC_ACT_OK
        );
        let skb = at(LO, B_IF, 0);
        prop_assert_eq!(
            dp.test_run_skb("to_pod", &related, skb, 1).expect("run").0,
            TC_ACT_OK
        );
        prop_assert_eq!(
            dp.counter(Counter::IcmpRelated).expect("counter"),
            before + 2
        );

        // The host rewrote the source port on the way (netfilter's NAT clash resolution, when
        // A also reaches B through a ClusterIP from the same port): B's to_pod decides the
        // marked packet as it would unmarked, and tracks the tuple it sees, so B's replies to
        // the rewritten port pass its from_pod and, un-NATed, A's to_pod.
        if protocol != proto::TCP || f.tcp_flags & SYN != 0 {
            let mut moved = f;
            moved.sport = f.sport.wrapping_add(5000);
            let want = w.maps.expected_verdict(POINT_TO_POD, B_IF, &moved);
            let got = run(dp, "to_pod", &moved, at(B_IF, LO, mark)).0;
            prop_assert_eq!(got, want, "source port rewritten before to_pod, {}", ctx);
            if got == TC_ACT_OK {
                let (got, _, rmark) = run(dp, "from_pod", &moved.reply(), at(B_IF, 0, 0));
                prop_assert_eq!(got, TC_ACT_OK, "reply to the rewritten port, {}", ctx);
                prop_assert!(!marked(rmark), "{}", ctx);
                // The next packet on the rewritten tuple, marked: known now (a UDP or SCTP
                // one by the entries to_pod made; TCP without SYN needs no lookup).
                let next = if protocol == proto::TCP {
                    moved.with_flags(ACK)
                } else {
                    moved
                };
                let passed = dp.counter(Counter::NodeLocalPassed).expect("counter");
                prop_assert_eq!(run(dp, "to_pod", &next, at(B_IF, LO, mark)).0, TC_ACT_OK);
                prop_assert_eq!(
                    dp.counter(Counter::NodeLocalPassed).expect("counter"),
                    passed + 1,
                    "the next packet on the rewritten tuple was decided again, {}",
                    ctx
                );
            }
        }
    }

    // A packet generated on the host with the mark (a host process's SO_MARK) is not taken for
    // one from_pod decided: B's to_pod decides it as it would unmarked.
    dp.conntrack.flush().expect("flush");
    let want = w.maps.expected_verdict(POINT_TO_POD, B_IF, &f);
    let got = run(dp, "to_pod", &f, at(B_IF, 0, SKB_MARK_NODE_LOCAL)).0;
    prop_assert_eq!(got, want, "host-generated marked packet at to_pod, {}", ctx);

    // A connection that predates enforcement (mid-stream TCP, no entries): picked up at each
    // point as it would be between nodes, unmarked, and its replies pass both ways.
    if protocol == proto::TCP {
        dp.conntrack.flush().expect("flush");
        let ack = f.with_flags(ACK);
        let (got_a, _, mark_a) = run(dp, "from_pod", &ack, at(LO, 0, 0));
        prop_assert_eq!(
            got_a,
            w.maps.expected_verdict(POINT_FROM_POD, LO, &ack),
            "{}",
            ctx
        );
        prop_assert!(!marked(mark_a));
        if got_a == TC_ACT_OK {
            let (got_b, _, _) = run(dp, "to_pod", &ack, at(B_IF, LO, mark_a));
            if got_b == TC_ACT_OK {
                let r = ack.reply();
                prop_assert_eq!(
                    run(dp, "from_pod", &r, at(B_IF, 0, 0)).0,
                    TC_ACT_OK,
                    "{}",
                    ctx
                );
                prop_assert_eq!(
                    run(dp, "to_pod", &r, at(LO, B_IF, 0)).0,
                    TC_ACT_OK,
                    "{}",
                    ctx
                );
                prop_assert_eq!(run(dp, "from_pod", &ack, at(LO, 0, 0)).0, TC_ACT_OK);
                prop_assert_eq!(run(dp, "to_pod", &ack, at(B_IF, LO, 0)).0, TC_ACT_OK);
            }
        }
    }
    Ok(())
}

/// The conntrack key of `f` as from_pod sees it.
fn key_of(f: &Flow) -> CtKey {
    let (family, saddr) = septum_tests::reference::addr16(f.src);
    let (_, daddr) = septum_tests::reference::addr16(f.dst);
    CtKey {
        saddr,
        daddr,
        sport: f.sport,
        dport: f.dport,
        protocol: f.protocol,
        family,
        point: POINT_FROM_POD,
        _pad: 0,
    }
}

static LOCAL_NS: Mutex<Option<(NetNs, Datapath)>> = Mutex::new(None);

fn check_node_local_world(seed: u64) -> Result<(), TestCaseError> {
    let mut guard = LOCAL_NS.lock().unwrap_or_else(|p| p.into_inner());
    let (ns, dp) = guard.get_or_insert_with(|| {
        let ns = NetNs::new(&format!("sdiff-{}", unique_tag())).expect("netns");
        ns.add_veth("b0", "b1", B_IF).expect("veth b0");
        let dp = Datapath::load(&DatapathOptions::unpinned()).expect("load the datapath");
        (ns, dp)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let w = random_world(&mut rng);
    w.maps.write_to(dp).expect("write maps");
    ns.run(|| {
        for _ in 0..8 {
            check_node_local(dp, &w, &mut rng)?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn ebpf_verdict_equals_reference(seed in any::<u64>()) {
        check_world(seed)?;
    }

    #[test]
    fn node_local_connections(seed in any::<u64>()) {
        check_node_local_world(seed)?;
    }
}
