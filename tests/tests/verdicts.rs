//! BPF_PROG_TEST_RUN verdict tests: the real `from_pod`/`to_pod` programs on synthetic packets,
//! for every rule kind, both IP families and every protocol. Each test loads a private
//! (unpinned) datapath; the endpoint under test sits on ifindex 1 (`lo`), which the kernel
//! requires to exist for a test run.

use std::net::IpAddr;

use septum_datapath::{Datapath, DatapathOptions};
use septum_datapath_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, Counter, DIRECTION_EGRESS, DIRECTION_INGRESS,
    DatapathConfig, DropReason, ENDPOINT_F_EGRESS_POLICY, ENDPOINT_F_INGRESS_POLICY,
    EVENT_F_DENIED_BY_EGRESS, EVENT_F_DENIED_BY_INGRESS, FAMILY_IPV4, IDENTITY_ANY,
    IDENTITY_FIRST_CIDR, IDENTITY_HOST, IPCACHE_KIND_CIDR, IPCACHE_KIND_HOST, IPCACHE_KIND_POD,
    IpCacheEntry, MODE_AUDIT, POINT_FROM_POD, POINT_TO_POD, STATE_INIT_DENY, Verdict, proto,
};
use septum_tests::{
    packet::{ACK, Flow, Options, SYN, arp, build},
    reference::{MapContents, Reference as _, TC_ACT_OK, TC_ACT_SHOT},
    world::{Build as _, Rule},
};

const LO: u32 = 1;
const A: u32 = 1000;
const B: u32 = 1001;
const C: u32 = 1002;
const CIDR1: u32 = IDENTITY_FIRST_CIDR;
const CIDR2: u32 = IDENTITY_FIRST_CIDR + 1;
const BOTH: u8 = ENDPOINT_F_INGRESS_POLICY | ENDPOINT_F_EGRESS_POLICY;
const PROTOS: [u8; 3] = [proto::TCP, proto::UDP, proto::SCTP];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Addresses of the fixture, per family: A (under test), B, C, a world address, a node address.
struct Addrs {
    a: IpAddr,
    b: IpAddr,
    c: IpAddr,
    world: IpAddr,
    node: IpAddr,
    cidr_member: IpAddr,
    vip: IpAddr,
}

fn addrs(v6: bool) -> Addrs {
    if v6 {
        Addrs {
            a: ip("fd00::1"),
            b: ip("fd00::2"),
            c: ip("fd00::3"),
            world: ip("2001:db8::8"),
            node: ip("fd00::ffff"),
            cidr_member: ip("2001:db8:1::5"),
            vip: ip("fd00:96::10"),
        }
    } else {
        Addrs {
            a: ip("10.0.0.1"),
            b: ip("10.0.0.2"),
            c: ip("10.0.0.3"),
            world: ip("8.8.8.8"),
            node: ip("10.0.0.254"),
            cidr_member: ip("192.168.1.5"),
            vip: ip("10.96.0.10"),
        }
    }
}

struct Harness {
    dp: Datapath,
    maps: MapContents,
}

impl Harness {
    /// A at ifindex 1 with `flags`; B and C as pods elsewhere; the node; both families.
    fn new(flags: u8) -> Self {
        let mut dp = Datapath::load(&DatapathOptions::unpinned()).expect("load the datapath");
        dp.set_config(DatapathConfig {
            drop_event_interval_ns: 0,
            ..DatapathConfig::DEFAULT
        })
        .expect("config");
        let mut maps = MapContents::default();
        let (v4, v6) = (addrs(false), addrs(true));
        maps.add_pod(LO, 7, A, &[v4.a, v6.a], flags);
        for (id, ips) in [(B, [v4.b, v6.b]), (C, [v4.c, v6.c])] {
            for ipa in ips {
                maps.add_ip(ipa, if ipa.is_ipv4() { 32 } else { 128 }, pod(id));
            }
        }
        for n in [v4.node, v6.node] {
            maps.add_ip(
                n,
                if n.is_ipv4() { 32 } else { 128 },
                IpCacheEntry {
                    identity: IDENTITY_HOST,
                    cidr_identity: 0,
                    kind: IPCACHE_KIND_HOST,
                    _pad: [0; 3],
                },
            );
        }
        Self { dp, maps }
    }

    fn sync(&mut self) {
        self.maps.write_to(&mut self.dp).expect("write maps");
    }

    fn run(&self, point: u8, flow: &Flow) -> i32 {
        self.run_raw(point, &flow.build())
    }

    fn run_raw(&self, point: u8, pkt: &[u8]) -> i32 {
        let prog = if point == POINT_FROM_POD {
            "from_pod"
        } else {
            "to_pod"
        };
        self.dp.test_run(prog, pkt, LO, 1).expect("test run").0
    }

    /// Runs `flow` and checks both the expected verdict and the reference's agreement.
    fn expect(&self, point: u8, flow: &Flow, want: i32, what: &str) {
        let got = self.run(point, flow);
        assert_eq!(got, want, "{what}: {flow:?} at point {point}");
    }
}

fn pod(identity: u32) -> IpCacheEntry {
    IpCacheEntry {
        identity,
        cidr_identity: 0,
        kind: IPCACHE_KIND_POD,
        _pad: [0; 3],
    }
}

fn allow(
    subject: u32,
    direction: u8,
    peer: u32,
    protocol: Option<u8>,
    ports: Option<(u16, u16)>,
) -> Rule {
    Rule {
        subject,
        direction,
        peer,
        protocol,
        ports,
        action: ACTION_ALLOW,
        precedence: 100,
        cookie: 0x100 + peer,
    }
}

fn flow(src: IpAddr, dst: IpAddr, protocol: u8, sport: u16, dport: u16) -> Flow {
    Flow::tcp(src, dst, sport, dport).with_protocol(protocol)
}

#[test]
fn unpoliced_endpoint_passes_everything() {
    let mut h = Harness::new(0);
    h.sync();
    for v6 in [false, true] {
        let x = addrs(v6);
        for p in PROTOS {
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.world, p, 1000, 80),
                TC_ACT_OK,
                "egress",
            );
            h.expect(
                POINT_TO_POD,
                &flow(x.c, x.a, p, 1000, 80),
                TC_ACT_OK,
                "ingress",
            );
        }
    }
}

#[test]
fn egress_allow_by_identity_port_and_protocol() {
    for v6 in [false, true] {
        for p in PROTOS {
            let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
            h.maps.isolate(A, DIRECTION_EGRESS, 1);
            h.maps
                .add_rule(&allow(A, DIRECTION_EGRESS, B, Some(p), Some((80, 80))));
            h.sync();
            let x = addrs(v6);
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.b, p, 40000, 80),
                TC_ACT_OK,
                "allowed peer+port",
            );
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.b, p, 40001, 81),
                TC_ACT_SHOT,
                "other port",
            );
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.c, p, 40002, 80),
                TC_ACT_SHOT,
                "other peer",
            );
            let other = if p == proto::UDP {
                proto::TCP
            } else {
                proto::UDP
            };
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.b, other, 40003, 80),
                TC_ACT_SHOT,
                "other protocol",
            );
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.world, p, 40004, 80),
                TC_ACT_SHOT,
                "world",
            );
        }
    }
}

#[test]
fn port_ranges_match_exactly_their_range() {
    for v6 in [false, true] {
        let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_rule(&allow(
            A,
            DIRECTION_EGRESS,
            B,
            Some(proto::TCP),
            Some((8000, 8100)),
        ));
        h.sync();
        let x = addrs(v6);
        for (port, want) in [
            (7999, TC_ACT_SHOT),
            (8000, TC_ACT_OK),
            (8050, TC_ACT_OK),
            (8064, TC_ACT_OK),
            (8100, TC_ACT_OK),
            (8101, TC_ACT_SHOT),
            (80, TC_ACT_SHOT),
        ] {
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.b, proto::TCP, 30000 + port, port),
                want,
                "range",
            );
        }
    }
}

#[test]
fn any_peer_and_any_protocol_rules() {
    for v6 in [false, true] {
        let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_rule(&allow(
            A,
            DIRECTION_EGRESS,
            IDENTITY_ANY,
            Some(proto::UDP),
            Some((53, 53)),
        ));
        h.maps.add_rule(&allow(A, DIRECTION_EGRESS, C, None, None));
        h.sync();
        let x = addrs(v6);
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.world, proto::UDP, 1, 53),
            TC_ACT_OK,
            "any peer dns",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.b, proto::UDP, 2, 53),
            TC_ACT_OK,
            "any peer dns to pod",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.world, proto::TCP, 3, 53),
            TC_ACT_SHOT,
            "tcp dns",
        );
        for p in PROTOS {
            h.expect(
                POINT_FROM_POD,
                &flow(x.a, x.c, p, 4, 9999),
                TC_ACT_OK,
                "any protocol to C",
            );
        }
        let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.c, icmp, 77, 0),
            TC_ACT_OK,
            "ping C",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.b, icmp, 78, 0),
            TC_ACT_SHOT,
            "ping B",
        );
    }
}

#[test]
fn deny_wins_at_equal_precedence_and_precedence_orders_tiers() {
    for v6 in [false, true] {
        let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_rule(&allow(A, DIRECTION_EGRESS, B, None, None));
        // Same precedence, any peer, TCP/22: deny beats the exact-peer allow.
        h.maps.add_rule(&Rule {
            action: ACTION_DENY,
            ..allow(
                A,
                DIRECTION_EGRESS,
                IDENTITY_ANY,
                Some(proto::TCP),
                Some((22, 22)),
            )
        });
        // An admin-tier deny for C on 443 beats a namespaced allow for C.
        h.maps
            .add_rule(&allow(A, DIRECTION_EGRESS, C, Some(proto::TCP), None));
        h.maps.add_rule(&Rule {
            action: ACTION_DENY,
            precedence: 1000,
            ..allow(A, DIRECTION_EGRESS, C, Some(proto::TCP), Some((443, 443)))
        });
        // ...and an admin-tier allow beats a baseline deny.
        h.maps.add_rule(&Rule {
            action: ACTION_DENY,
            precedence: 10,
            ..allow(A, DIRECTION_EGRESS, IDENTITY_ANY, Some(proto::UDP), None)
        });
        h.maps.add_rule(&Rule {
            precedence: 1000,
            ..allow(
                A,
                DIRECTION_EGRESS,
                IDENTITY_ANY,
                Some(proto::UDP),
                Some((123, 123)),
            )
        });
        h.sync();
        let x = addrs(v6);
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.b, proto::TCP, 1, 22),
            TC_ACT_SHOT,
            "deny wins",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.b, proto::TCP, 2, 80),
            TC_ACT_OK,
            "allow elsewhere",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.c, proto::TCP, 3, 443),
            TC_ACT_SHOT,
            "admin deny",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.c, proto::TCP, 4, 80),
            TC_ACT_OK,
            "namespaced allow",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.world, proto::UDP, 5, 123),
            TC_ACT_OK,
            "admin allow over baseline deny",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.world, proto::UDP, 6, 124),
            TC_ACT_SHOT,
            "baseline deny",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.b, proto::UDP, 7, 124),
            TC_ACT_OK,
            "namespaced allow over baseline deny",
        );
    }
}

#[test]
fn cidr_rules_match_pod_ips_and_honour_except() {
    for v6 in [false, true] {
        let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
        let x = addrs(v6);
        // ipBlock 10.0.0.0/24 except 10.0.0.3/32 (fd00::/64 except fd00::3/128): B's IP carries
        // CIDR1, C's carries CIDR2 (the except prefix), world addresses in the block CIDR1.
        let mut b = pod(B);
        b.cidr_identity = CIDR1;
        let mut c = pod(C);
        c.cidr_identity = CIDR2;
        let full = |a: IpAddr| if a.is_ipv4() { 32 } else { 128 };
        h.maps.add_ip(x.b, full(x.b), b);
        h.maps.add_ip(x.c, full(x.c), c);
        let cidr = |id| IpCacheEntry {
            identity: id,
            cidr_identity: id,
            kind: IPCACHE_KIND_CIDR,
            _pad: [0; 3],
        };
        let (block, bits) = if v6 {
            (ip("2001:db8:1::"), 48)
        } else {
            (ip("192.168.0.0"), 16)
        };
        h.maps.add_ip(block, bits, cidr(CIDR1));
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_rule(&allow(
            A,
            DIRECTION_EGRESS,
            CIDR1,
            Some(proto::TCP),
            Some((443, 443)),
        ));
        h.sync();
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.b, proto::TCP, 1, 443),
            TC_ACT_OK,
            "pod ip inside the block",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.c, proto::TCP, 2, 443),
            TC_ACT_SHOT,
            "pod ip in the except",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.cidr_member, proto::TCP, 3, 443),
            TC_ACT_OK,
            "world ip in the block",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.world, proto::TCP, 4, 443),
            TC_ACT_SHOT,
            "world ip outside",
        );
    }
}

#[test]
fn ingress_and_source_egress_are_both_enforced_at_to_pod() {
    for v6 in [false, true] {
        for p in PROTOS {
            let mut h = Harness::new(ENDPOINT_F_INGRESS_POLICY);
            h.maps.isolate(A, DIRECTION_INGRESS, 1);
            h.maps
                .add_rule(&allow(A, DIRECTION_INGRESS, B, Some(p), Some((80, 80))));
            h.maps
                .add_rule(&allow(A, DIRECTION_INGRESS, C, Some(p), Some((80, 80))));
            // C's own egress is isolated and does not allow A: both sides must allow.
            h.maps.isolate(C, DIRECTION_EGRESS, 2);
            h.sync();
            let x = addrs(v6);
            h.expect(
                POINT_TO_POD,
                &flow(x.b, x.a, p, 1, 80),
                TC_ACT_OK,
                "ingress allowed",
            );
            h.expect(
                POINT_TO_POD,
                &flow(x.b, x.a, p, 2, 81),
                TC_ACT_SHOT,
                "ingress other port",
            );
            h.expect(
                POINT_TO_POD,
                &flow(x.world, x.a, p, 3, 80),
                TC_ACT_SHOT,
                "ingress from world",
            );
            h.expect(
                POINT_TO_POD,
                &flow(x.c, x.a, p, 4, 80),
                TC_ACT_SHOT,
                "source egress denies",
            );
            h.expect(
                POINT_TO_POD,
                &flow(x.node, x.a, p, 5, 9999),
                TC_ACT_OK,
                "the node always reaches its pods",
            );
        }
    }
}

#[test]
fn service_vip_egress_is_deferred_and_enforced_after_dnat() {
    for v6 in [false, true] {
        let mut h = Harness::new(BOTH);
        let x = addrs(v6);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_service(x.vip, 80, proto::TCP, 9);
        h.sync();
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.vip, proto::TCP, 1, 80),
            TC_ACT_OK,
            "deferred at from_pod",
        );
        h.expect(
            POINT_FROM_POD,
            &flow(x.a, x.vip, proto::TCP, 2, 81),
            TC_ACT_SHOT,
            "not a service port",
        );
        // After DNAT, the backend's to_pod sees the real backend; here the endpoint on lo plays
        // the backend (A) and B is the client whose egress is isolated.
        h.maps.isolate(B, DIRECTION_EGRESS, 3);
        h.maps.add_rule(&allow(
            B,
            DIRECTION_EGRESS,
            A,
            Some(proto::TCP),
            Some((8080, 8080)),
        ));
        h.sync();
        h.expect(
            POINT_TO_POD,
            &flow(x.b, x.a, proto::TCP, 3, 8080),
            TC_ACT_OK,
            "client egress allows the backend port",
        );
        h.expect(
            POINT_TO_POD,
            &flow(x.b, x.a, proto::TCP, 4, 8081),
            TC_ACT_SHOT,
            "client egress denies other backend ports",
        );
    }
}

#[test]
fn replies_and_related_icmp_pass_through_conntrack() {
    for v6 in [false, true] {
        let mut h = Harness::new(BOTH);
        h.maps.isolate(A, DIRECTION_INGRESS, 1);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_rule(&allow(A, DIRECTION_EGRESS, B, None, None));
        h.sync();
        let x = addrs(v6);
        for p in PROTOS {
            let f = flow(x.a, x.b, p, 5555, 80);
            h.expect(
                POINT_TO_POD,
                &f.reply(),
                TC_ACT_SHOT,
                "a reply before the request is a new denied flow",
            );
            h.expect(POINT_FROM_POD, &f, TC_ACT_OK, "request");
            h.expect(POINT_TO_POD, &f.reply(), TC_ACT_OK, "reply");
            h.expect(POINT_FROM_POD, &f.with_flags(ACK), TC_ACT_OK, "established");
        }
        let icmp = if v6 { proto::ICMPV6 } else { proto::ICMP };
        let ping = flow(x.a, x.b, icmp, 42, 0);
        h.expect(POINT_FROM_POD, &ping, TC_ACT_OK, "echo request");
        h.expect(POINT_TO_POD, &ping.reply(), TC_ACT_OK, "echo reply");
        // An ICMP error from the world quoting the tracked UDP flow is related; one quoting an
        // unknown flow is a new flow, denied by A's ingress isolation.
        let udp = flow(x.a, x.b, proto::UDP, 5555, 80);
        let err_type = if v6 { 1 } else { 3 };
        let mut err = flow(x.world, x.a, icmp, 0, 0);
        err.icmp_type = err_type;
        let related = build(
            &err,
            &Options {
                quoted: Some(udp),
                ..Options::default()
            },
        );
        assert_eq!(
            h.run_raw(POINT_TO_POD, &related),
            TC_ACT_OK,
            "related ICMP error"
        );
        let unknown = build(
            &err,
            &Options {
                quoted: Some(flow(x.a, x.c, proto::UDP, 1, 2)),
                ..Options::default()
            },
        );
        assert_eq!(
            h.run_raw(POINT_TO_POD, &unknown),
            TC_ACT_SHOT,
            "unrelated ICMP error"
        );
        assert!(h.dp.counter(Counter::IcmpRelated).expect("counter") >= 1);
    }
}

#[test]
fn fragments_take_the_verdict_of_their_first_fragment() {
    for v6 in [false, true] {
        let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_rule(&allow(
            A,
            DIRECTION_EGRESS,
            B,
            Some(proto::UDP),
            Some((53, 53)),
        ));
        h.sync();
        let x = addrs(v6);
        let ok = flow(x.a, x.b, proto::UDP, 1000, 53);
        let bad = flow(x.a, x.b, proto::UDP, 1001, 54);
        let frag = |f: &Flow, more: bool, off: u16, id: u32| {
            build(
                f,
                &Options {
                    fragment: Some((more, off, id)),
                    ..Options::default()
                },
            )
        };
        assert_eq!(
            h.run_raw(POINT_FROM_POD, &frag(&ok, true, 0, 7)),
            TC_ACT_OK,
            "first fragment, allowed"
        );
        assert_eq!(
            h.run_raw(POINT_FROM_POD, &frag(&ok, true, 1, 7)),
            TC_ACT_OK,
            "middle fragment"
        );
        assert_eq!(
            h.run_raw(POINT_FROM_POD, &frag(&ok, false, 2, 7)),
            TC_ACT_OK,
            "last fragment"
        );
        assert_eq!(
            h.run_raw(POINT_FROM_POD, &frag(&bad, true, 0, 8)),
            TC_ACT_SHOT,
            "first fragment, denied"
        );
        assert_eq!(
            h.run_raw(POINT_FROM_POD, &frag(&bad, false, 1, 8)),
            TC_ACT_SHOT,
            "its later fragment"
        );
        assert_eq!(
            h.run_raw(POINT_FROM_POD, &frag(&ok, false, 3, 9)),
            TC_ACT_SHOT,
            "orphan fragment"
        );
    }
}

#[test]
fn ipv6_extension_headers_are_walked_and_malformed_packets_dropped() {
    let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
    h.maps.isolate(A, DIRECTION_EGRESS, 1);
    h.maps.add_rule(&allow(
        A,
        DIRECTION_EGRESS,
        B,
        Some(proto::TCP),
        Some((80, 80)),
    ));
    h.sync();
    let x = addrs(true);
    let with_ext = |f: &Flow, ext: Vec<u8>| {
        build(
            f,
            &Options {
                ipv6_ext: ext,
                ..Options::default()
            },
        )
    };
    assert_eq!(
        h.run_raw(
            POINT_FROM_POD,
            &with_ext(&flow(x.a, x.b, proto::TCP, 1, 80), vec![0, 60])
        ),
        TC_ACT_OK,
        "hop-by-hop + dstopts, allowed port"
    );
    assert_eq!(
        h.run_raw(
            POINT_FROM_POD,
            &with_ext(&flow(x.a, x.b, proto::TCP, 2, 81), vec![0, 60])
        ),
        TC_ACT_SHOT,
        "hop-by-hop + dstopts, denied port"
    );
    assert_eq!(
        h.run_raw(
            POINT_FROM_POD,
            &with_ext(&flow(x.a, x.b, proto::TCP, 3, 80), vec![60; 7])
        ),
        TC_ACT_SHOT,
        "too many extension headers"
    );
    let truncated = build(
        &flow(x.a, x.b, proto::TCP, 4, 80),
        &Options {
            truncate: Some(14 + 40 + 2),
            ..Options::default()
        },
    );
    assert_eq!(
        h.run_raw(POINT_FROM_POD, &truncated),
        TC_ACT_SHOT,
        "truncated TCP header"
    );
    let v4 = addrs(false);
    let options = build(
        &flow(v4.a, v4.b, proto::TCP, 5, 80),
        &Options {
            ipv4_options: 8,
            ..Options::default()
        },
    );
    assert_eq!(
        h.run_raw(POINT_FROM_POD, &options),
        TC_ACT_OK,
        "IPv4 options"
    );
    assert_eq!(h.run_raw(POINT_FROM_POD, &arp()), TC_ACT_OK, "ARP passes");
    // Unpoliced endpoint: unparseable traffic is its own business.
    let mut open = Harness::new(0);
    open.sync();
    assert_eq!(
        open.run_raw(POINT_FROM_POD, &truncated),
        TC_ACT_OK,
        "truncated, unpoliced"
    );
}

#[test]
fn init_deny_unknown_endpoints_and_audit_mode() {
    let x = addrs(false);
    let mut h = Harness::new(BOTH);
    h.maps.endpoints.get_mut(&LO).expect("endpoint").state = STATE_INIT_DENY;
    h.sync();
    h.expect(
        POINT_FROM_POD,
        &flow(x.a, x.b, proto::TCP, 1, 80),
        TC_ACT_SHOT,
        "init-deny egress",
    );
    h.expect(
        POINT_TO_POD,
        &flow(x.b, x.a, proto::TCP, 2, 80),
        TC_ACT_SHOT,
        "init-deny ingress",
    );
    h.expect(
        POINT_TO_POD,
        &flow(x.node, x.a, proto::TCP, 3, 80),
        TC_ACT_OK,
        "init-deny, host",
    );
    h.maps.endpoints.clear();
    h.sync();
    h.expect(
        POINT_FROM_POD,
        &flow(x.a, x.b, proto::TCP, 4, 80),
        TC_ACT_SHOT,
        "unknown endpoint",
    );

    let mut h = Harness::new(BOTH);
    h.maps.endpoints.get_mut(&LO).expect("endpoint").mode = MODE_AUDIT;
    h.maps.isolate(A, DIRECTION_EGRESS, 1);
    h.maps.isolate(A, DIRECTION_INGRESS, 1);
    h.sync();
    h.expect(
        POINT_FROM_POD,
        &flow(x.a, x.b, proto::TCP, 5, 80),
        TC_ACT_OK,
        "audit mode egress",
    );
    h.expect(
        POINT_TO_POD,
        &flow(x.c, x.a, proto::TCP, 6, 80),
        TC_ACT_OK,
        "audit mode ingress",
    );
    assert_eq!(h.dp.counter(Counter::Audit).expect("counter"), 2);

    let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
    h.maps.isolate(A, DIRECTION_EGRESS, 1);
    h.maps.add_rule(&Rule {
        action: ACTION_AUDIT,
        ..allow(A, DIRECTION_EGRESS, B, Some(proto::TCP), Some((80, 80)))
    });
    h.sync();
    h.expect(
        POINT_FROM_POD,
        &flow(x.a, x.b, proto::TCP, 7, 80),
        TC_ACT_OK,
        "audit rule",
    );
}

#[test]
fn midstream_tcp_is_picked_up_as_a_reply_when_the_other_side_allows_it() {
    for v6 in [false, true] {
        let mut h = Harness::new(BOTH);
        h.maps.isolate(A, DIRECTION_INGRESS, 1);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.add_rule(&allow(
            A,
            DIRECTION_EGRESS,
            B,
            Some(proto::TCP),
            Some((443, 443)),
        ));
        h.maps.add_rule(&allow(
            A,
            DIRECTION_INGRESS,
            C,
            Some(proto::TCP),
            Some((8080, 8080)),
        ));
        h.sync();
        let x = addrs(v6);
        // A opened A->B:443 before enforcement; B's data arrives first.
        let b_reply = flow(x.b, x.a, proto::TCP, 443, 50000).with_flags(ACK);
        h.expect(
            POINT_TO_POD,
            &b_reply,
            TC_ACT_OK,
            "reply of a pre-existing egress connection",
        );
        h.expect(
            POINT_FROM_POD,
            &b_reply.reply(),
            TC_ACT_OK,
            "and A's side of it",
        );
        // C opened C->A:8080 before enforcement; A's reply leaves first.
        let a_reply = flow(x.a, x.c, proto::TCP, 8080, 50001).with_flags(ACK);
        h.expect(
            POINT_FROM_POD,
            &a_reply,
            TC_ACT_OK,
            "reply of a pre-existing ingress connection",
        );
        // Nothing allows B->A:443 as a connection B opened, nor a SYN.
        h.expect(
            POINT_TO_POD,
            &flow(x.b, x.a, proto::TCP, 443, 50002).with_flags(SYN),
            TC_ACT_SHOT,
            "SYN is never picked up",
        );
        h.expect(
            POINT_TO_POD,
            &flow(x.b, x.a, proto::TCP, 444, 50003).with_flags(ACK),
            TC_ACT_SHOT,
            "not allowed either way",
        );
        assert!(h.dp.counter(Counter::ConntrackPickup).expect("counter") >= 2);
    }
}

#[test]
fn a_new_syn_on_a_known_tuple_is_evaluated_against_current_policy() {
    let x = addrs(false);
    let mut h = Harness::new(ENDPOINT_F_EGRESS_POLICY);
    h.maps.isolate(A, DIRECTION_EGRESS, 1);
    h.maps.add_rule(&allow(
        A,
        DIRECTION_EGRESS,
        B,
        Some(proto::TCP),
        Some((80, 80)),
    ));
    h.sync();
    let f = flow(x.a, x.b, proto::TCP, 7000, 80);
    h.expect(POINT_FROM_POD, &f, TC_ACT_OK, "allowed");
    h.maps.policy.clear();
    h.maps.isolate(A, DIRECTION_EGRESS, 1);
    h.sync();
    h.expect(
        POINT_FROM_POD,
        &f.with_flags(ACK),
        TC_ACT_OK,
        "established flow survives",
    );
    h.expect(
        POINT_FROM_POD,
        &f,
        TC_ACT_SHOT,
        "a new connection on the same tuple does not",
    );
}

#[test]
fn drop_and_flow_events_carry_the_decision() {
    let x = addrs(false);
    let mut h = Harness::new(BOTH);
    h.maps.isolate(A, DIRECTION_INGRESS, 11);
    h.maps.isolate(A, DIRECTION_EGRESS, 12);
    h.maps.add_rule(&Rule {
        cookie: 77,
        ..allow(A, DIRECTION_EGRESS, B, Some(proto::TCP), Some((80, 80)))
    });
    h.maps.add_rule(&Rule {
        cookie: 99,
        action: ACTION_DENY,
        ..allow(A, DIRECTION_INGRESS, C, Some(proto::UDP), None)
    });
    h.sync();
    let mut events = h.dp.take_events().expect("event reader");
    events.drain();
    h.expect(
        POINT_FROM_POD,
        &flow(x.a, x.b, proto::TCP, 1234, 80),
        TC_ACT_OK,
        "allowed",
    );
    h.expect(
        POINT_TO_POD,
        &flow(x.c, x.a, proto::UDP, 4321, 53),
        TC_ACT_SHOT,
        "explicit deny",
    );
    h.expect(
        POINT_TO_POD,
        &flow(x.b, x.a, proto::TCP, 4322, 22),
        TC_ACT_SHOT,
        "default deny",
    );
    let ev = events.drain();
    assert_eq!(ev.len(), 3, "{ev:#?}");
    let (fwd, deny, default) = (&ev[0], &ev[1], &ev[2]);
    assert_eq!(Verdict::from_u8(fwd.verdict), Some(Verdict::Forwarded));
    assert_eq!(
        (fwd.src_identity, fwd.dst_identity, fwd.egress_cookie),
        (A, B, 77)
    );
    assert_eq!(
        (fwd.sport, fwd.dport, fwd.protocol, fwd.point),
        (1234, 80, proto::TCP, POINT_FROM_POD)
    );
    // Whole addresses, as the event is written word by word.
    let v4 = |a: [u8; 4]| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    };
    assert_eq!(
        (fwd.saddr, fwd.daddr, fwd.family),
        (v4([10, 0, 0, 1]), v4([10, 0, 0, 2]), FAMILY_IPV4)
    );
    assert_eq!(fwd.endpoint_id, 7);
    assert_eq!(Verdict::from_u8(deny.verdict), Some(Verdict::Dropped));
    assert_eq!(
        DropReason::from_u8(deny.drop_reason),
        Some(DropReason::PolicyDeny)
    );
    assert_eq!(
        (deny.src_identity, deny.dst_identity, deny.ingress_cookie),
        (C, A, 99)
    );
    assert_ne!(deny.flags & EVENT_F_DENIED_BY_INGRESS, 0);
    assert_eq!(deny.flags & EVENT_F_DENIED_BY_EGRESS, 0);
    assert_eq!(
        DropReason::from_u8(default.drop_reason),
        Some(DropReason::PolicyDefaultDeny)
    );
    assert_eq!(default.ingress_cookie, 11);

    // Rate limit: repeated drops of one flow within the interval report once.
    h.dp.set_config(DatapathConfig::DEFAULT).expect("config");
    for _ in 0..5 {
        h.expect(
            POINT_TO_POD,
            &flow(x.c, x.a, proto::UDP, 999, 53),
            TC_ACT_SHOT,
            "repeat",
        );
    }
    assert_eq!(
        events.drain().len(),
        1,
        "one drop event per flow per interval"
    );
    assert_eq!(
        h.dp.counter(Counter::DropEventsSuppressed)
            .expect("counter"),
        4
    );
}

#[test]
fn conntrack_counts_every_packet_and_byte_each_way_even_from_two_cpus_at_once() {
    // Per-flow statistics feed the flow log's packets/bytes columns: each direction's entry
    // counts exactly the packets that matched it, and two CPUs sending one flow at the same
    // instant (atomic adds in the program) lose nothing.
    for v6 in [false, true] {
        let x = addrs(v6);
        let mut h = Harness::new(BOTH);
        h.maps.isolate(A, DIRECTION_EGRESS, 1);
        h.maps.isolate(A, DIRECTION_INGRESS, 1);
        h.maps.add_rule(&allow(A, DIRECTION_EGRESS, B, None, None));
        h.sync();
        let f = flow(x.a, x.b, proto::TCP, 40000, 80);
        h.expect(POINT_FROM_POD, &f.with_flags(SYN), TC_ACT_OK, "syn");
        let data = f.with_flags(ACK).build();
        let reply = f.reply().with_flags(ACK).build();
        const PER_THREAD: u32 = 50_000;
        const REPLIES: u32 = 777;
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    let (rc, _) =
                        h.dp.test_run("from_pod", &data, LO, PER_THREAD)
                            .expect("test run");
                    assert_eq!(rc, TC_ACT_OK);
                });
            }
        });
        let (rc, _) =
            h.dp.test_run("to_pod", &reply, LO, REPLIES)
                .expect("test run");
        assert_eq!(rc, TC_ACT_OK);

        let obs = h.dp.observer().expect("observer");
        let entries = obs.conntrack.entries().expect("conntrack");
        let at = |point: u8, src: IpAddr| {
            entries
                .iter()
                .find(|(k, _)| {
                    k.point == point
                        && septum_tests::reference::addr16(src).1 == k.saddr
                        && k.protocol == proto::TCP
                })
                .map(|(_, e)| *e)
                .unwrap_or_else(|| panic!("no entry at point {point} from {src}: {entries:?}"))
        };
        let fwd = at(POINT_FROM_POD, x.a);
        let rep = at(POINT_TO_POD, x.b);
        let sent = 1 + 2 * u64::from(PER_THREAD);
        assert_eq!(fwd.packets, sent, "forward packets (v6={v6})");
        assert_eq!(fwd.bytes, sent * data.len() as u64, "forward bytes");
        assert_eq!(rep.packets, u64::from(REPLIES), "reply packets (v6={v6})");
        assert_eq!(rep.bytes, u64::from(REPLIES) * reply.len() as u64);
    }
}
