//! Differential property test: random identities, policies, CIDRs, services and packets; the
//! real eBPF program's verdict must equal the reference evaluation of the same map contents
//! (`septum_tests::reference`), for thousands of packets per run.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
};

use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use septum_datapath::{Datapath, DatapathOptions};
use septum_datapath_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, DIRECTION_EGRESS, DIRECTION_INGRESS, IDENTITY_ANY,
    IDENTITY_FIRST_CIDR, IDENTITY_HOST, IPCACHE_KIND_CIDR, IPCACHE_KIND_HOST, IPCACHE_KIND_POD,
    IpCacheEntry, MODE_AUDIT, MODE_ENFORCE, POINT_FROM_POD, POINT_TO_POD, STATE_INIT_DENY,
    STATE_READY, proto,
};
use septum_tests::{
    packet::{ACK, Flow, SYN},
    reference::{MapContents, Reference as _},
    world::{Build as _, Rule},
};

const LO: u32 = 1;
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
    // A on lo.
    maps.add_pod(LO, 1, a, &[], rng.gen_range(0..4));
    let ep = maps.endpoints.get_mut(&LO).expect("endpoint");
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn ebpf_verdict_equals_reference(seed in any::<u64>()) {
        check_world(seed)?;
    }
}
