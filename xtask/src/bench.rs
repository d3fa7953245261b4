//! ns/packet of the real programs via BPF_PROG_TEST_RUN, printed side by side with an empty
//! classifier measured in the same run: the established-flow fast path, a new-flow allow and a
//! new-flow deny, with 10, 1,000 and 100,000 policy entries, IPv4 and IPv6, through `from_pod`
//! to a pod of another node; then a node-local connection (both pods on this node) through both
//! programs it meets, the client's `from_pod` and the server's `to_pod`, as one figure per
//! packet beside two empty classifiers.
//!
//! Method. Repeatable packets (the established fast path, the empty classifier, a repeated
//! deny) run `repeat` times in the kernel and report the kernel's average. A new flow is new
//! only once, so new flows are measured one run per distinct packet (a fresh source port) and
//! averaged; the empty classifier is measured the same way beside them, so each row compares
//! like with like.

use std::net::IpAddr;

use anyhow::Context as _;
use rand::{Rng, SeedableRng, rngs::StdRng};
use septum_datapath::{Datapath, DatapathOptions};
use septum_datapath_common::{
    ACTION_ALLOW, ACTION_DENY, DIRECTION_EGRESS, DIRECTION_INGRESS, ENDPOINT_F_EGRESS_POLICY,
    ENDPOINT_F_INGRESS_POLICY, program_names, proto,
};
use septum_tests::{
    packet::{ACK, Flow},
    reference::{MapContents, Reference as _},
    world::{Build as _, Rule},
};

const LO: u32 = 1;
const A: u32 = 1000;
const B: u32 = 1001;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("benchmark address")
}

/// Pods A's and B's addresses in one family, and the family's name.
fn pod_pair(v6: bool) -> (IpAddr, IpAddr, &'static str) {
    if v6 {
        (ip("fd00::1"), ip("fd00::2"), "ipv6")
    } else {
        (ip("10.0.0.1"), ip("10.0.0.2"), "ipv4")
    }
}

fn maps(entries: usize) -> MapContents {
    let mut m = MapContents::default();
    m.add_pod(
        LO,
        1,
        A,
        &[ip("10.0.0.1"), ip("fd00::1")],
        ENDPOINT_F_EGRESS_POLICY | ENDPOINT_F_INGRESS_POLICY,
    );
    m.add_ip(
        ip("10.0.0.2"),
        32,
        septum_datapath_common::IpCacheEntry {
            identity: B,
            cidr_identity: 0,
            kind: septum_datapath_common::IPCACHE_KIND_POD,
            _pad: [0; 3],
        },
    );
    m.add_ip(
        ip("fd00::2"),
        128,
        septum_datapath_common::IpCacheEntry {
            identity: B,
            cidr_identity: 0,
            kind: septum_datapath_common::IPCACHE_KIND_POD,
            _pad: [0; 3],
        },
    );
    m.isolate(A, DIRECTION_EGRESS, 1);
    m.isolate(A, DIRECTION_INGRESS, 1);
    let rule = |peer, port: u16, action| Rule {
        subject: A,
        direction: DIRECTION_EGRESS,
        peer,
        protocol: Some(proto::TCP),
        ports: Some((port, port)),
        action,
        precedence: 100,
        cookie: 7,
    };
    m.add_rule(&rule(B, 80, ACTION_ALLOW));
    m.add_rule(&rule(B, 81, ACTION_DENY));
    // Filler: other identities' rules, so the trie holds `entries` entries in all.
    let mut rng = StdRng::seed_from_u64(7);
    while m.policy.len() < entries {
        let filler = Rule {
            subject: 2000 + rng.gen_range(0..(entries as u32 / 10).max(1)),
            direction: if rng.gen_bool(0.5) {
                DIRECTION_EGRESS
            } else {
                DIRECTION_INGRESS
            },
            peer: 2000 + rng.gen_range(0..10_000),
            protocol: Some(proto::TCP),
            ports: Some({
                let p = rng.r#gen::<u16>();
                (p, p)
            }),
            action: ACTION_ALLOW,
            precedence: 100,
            cookie: 9,
        };
        m.add_rule(&filler);
    }
    m
}

fn repeated(dp: &Datapath, prog: &'static str, pkt: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let (_, d) = dp.test_run(prog, pkt, LO, repeat)?;
    Ok(d.as_nanos() as f64)
}

/// Mean ns over one run per packet.
fn one_each(dp: &Datapath, prog: &'static str, pkts: &[Vec<u8>]) -> anyhow::Result<f64> {
    let mut total = 0u128;
    for p in pkts {
        total += dp.test_run(prog, p, LO, 1)?.1.as_nanos();
    }
    Ok(total as f64 / pkts.len() as f64)
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let repeat = if quick { 100_000 } else { 1_000_000 };
    let distinct = if quick { 5_000 } else { 20_000 };
    let mut dp = Datapath::load(&DatapathOptions {
        conntrack_entries: Some(1 << 20),
        ..DatapathOptions::unpinned()
    })
    .context("loading the datapath (run as root)")?;
    let mut events = dp.take_events().context("events")?;
    println!(
        "BPF_PROG_TEST_RUN, kernel-measured; repeat {repeat} for repeatable packets, {distinct} distinct packets for new flows"
    );
    println!(
        "{:<22} {:<6} {:>8} {:>10} {:>10} {:>9}",
        "case", "family", "entries", "ns/packet", "empty", "delta"
    );
    let mut rows = Vec::new();
    for entries in [10usize, 1_000, 100_000] {
        maps(entries).write_to(&mut dp)?;
        for v6 in [false, true] {
            let (a, b, family) = pod_pair(v6);
            dp.conntrack.flush()?;
            // Established: create the flow once, then replay a mid-connection ACK.
            let est = Flow::tcp(a, b, 40000, 80);
            dp.test_run(program_names::FROM_POD, &est.build(), LO, 1)?;
            let ack = est.with_flags(ACK).build();
            let empty_rep = repeated(&dp, program_names::BENCH_EMPTY, &ack, repeat)?;
            let established = repeated(&dp, program_names::FROM_POD, &ack, repeat)?;
            let repeated_deny = repeated(
                &dp,
                program_names::FROM_POD,
                &Flow::tcp(a, b, 40001, 81).build(),
                repeat,
            )?;
            // New flows: a fresh source port per packet.
            let allow: Vec<Vec<u8>> = (0..distinct)
                .map(|i| Flow::tcp(a, b, 1024 + (i % 60000) as u16, 80).build())
                .collect();
            let deny: Vec<Vec<u8>> = (0..distinct)
                .map(|i| Flow::tcp(a, b, 1024 + (i % 60000) as u16, 81).build())
                .collect();
            let empty_one = one_each(&dp, program_names::BENCH_EMPTY, &allow)?;
            dp.conntrack.flush()?;
            let new_allow = one_each(&dp, program_names::FROM_POD, &allow)?;
            events.drain();
            let new_deny = one_each(&dp, program_names::FROM_POD, &deny)?;
            events.drain();
            for (case, ns, base) in [
                ("established", established, empty_rep),
                ("repeated deny", repeated_deny, empty_rep),
                ("new flow, allow", new_allow, empty_one),
                ("new flow, deny", new_deny, empty_one),
            ] {
                println!(
                    "{case:<22} {family:<6} {entries:>8} {ns:>10.1} {base:>10.1} {:>+9.1}",
                    ns - base
                );
                rows.push((case, family, entries, ns, base));
            }
        }
    }
    println!("\nscaling (100,000 entries / 10 entries):");
    for case in ["established", "new flow, allow", "new flow, deny"] {
        for family in ["ipv4", "ipv6"] {
            let get = |n| {
                rows.iter()
                    .find(|r| r.0 == case && r.1 == family && r.2 == n)
                    .map(|r| r.3)
                    .unwrap_or(f64::NAN)
            };
            println!("  {case:<18} {family}: {:.2}x", get(100_000) / get(10));
        }
    }
    node_local_pair(&mut dp, &mut events, repeat, distinct)?;
    drop(events);
    drop(dp);
    ring_capacity(if quick { 1.0 } else { 2.0 })
}

/// The ifindex of pod B in [`node_local_pair`]: a veth in the benchmark's own
/// network namespace (BPF_PROG_TEST_RUN needs the interface to exist).
const B_IF: u32 = 50;

/// A node-local connection A -> B, B an endpoint of this node too (isolated ingress, allowed
/// from A on port 80): every packet runs A's `from_pod` then B's `to_pod` (with the mark
/// `from_pod` left on it, received from A's interface), measured as the sum of the two runs
/// beside two runs of the empty classifier.
fn node_local_pair(
    dp: &mut Datapath,
    events: &mut septum_datapath::EventReader,
    repeat: u32,
    distinct: usize,
) -> anyhow::Result<()> {
    use septum_datapath::TestSkb;
    use septum_tests::netns::{NetNs, unique_tag};
    let ns = NetNs::new(&format!("sbench-{}", unique_tag()))?;
    ns.add_veth("b0", "b1", B_IF)
        .context("creating pod B's veth")?;
    println!(
        "\nnode-local connection (both pods on this node): client's from_pod + server's to_pod per packet"
    );
    println!(
        "(BPF_PROG_TEST_RUN cannot hand over tc_index, so to_pod checks the destination address \
         here, one lookup more than on real traffic: see --traffic for that)"
    );
    println!(
        "{:<22} {:<6} {:>8} {:>10} {:>10} {:>9}",
        "case", "family", "entries", "ns/packet", "2x empty", "delta"
    );
    for entries in [10usize, 100_000] {
        let mut m = maps(entries);
        m.add_pod(
            B_IF,
            2,
            B,
            &[ip("10.0.0.2"), ip("fd00::2")],
            ENDPOINT_F_INGRESS_POLICY,
        );
        m.isolate(B, DIRECTION_INGRESS, 2);
        m.add_rule(&Rule {
            subject: B,
            direction: DIRECTION_INGRESS,
            peer: A,
            protocol: Some(proto::TCP),
            ports: Some((80, 80)),
            action: ACTION_ALLOW,
            precedence: 100,
            cookie: 8,
        });
        for (addr, ifindex) in [
            ("10.0.0.1", LO),
            ("fd00::1", LO),
            ("10.0.0.2", B_IF),
            ("fd00::2", B_IF),
        ] {
            m.add_local_addr(ip(addr), ifindex);
        }
        m.write_to(dp)?;
        let (dp, events) = (&mut *dp, &mut *events);
        let result: anyhow::Result<()> = ns.run(move || {
            for v6 in [false, true] {
                let (a, b, family) = pod_pair(v6);
                let client = TestSkb {
                    ifindex: LO,
                    ..TestSkb::default()
                };
                let pair = |dp: &Datapath, pkt: &[u8], repeat: u32| -> anyhow::Result<(f64, i32)> {
                    let (v1, d1, mark) =
                        dp.test_run_skb(program_names::FROM_POD, pkt, client, repeat)?;
                    let server = TestSkb {
                        ifindex: B_IF,
                        ingress_ifindex: LO,
                        mark,
                    };
                    let (v2, d2, _) =
                        dp.test_run_skb(program_names::TO_POD, pkt, server, repeat)?;
                    Ok(((d1 + d2).as_nanos() as f64, v1.max(v2)))
                };
                let empty = |dp: &Datapath, pkt: &[u8], repeat: u32| -> anyhow::Result<f64> {
                    let (_, d, _) =
                        dp.test_run_skb(program_names::BENCH_EMPTY, pkt, client, repeat)?;
                    Ok(2.0 * d.as_nanos() as f64)
                };
                dp.conntrack.flush()?;
                let est = Flow::tcp(a, b, 40000, 80);
                let (_, verdict) = pair(dp, &est.build(), 1)?;
                anyhow::ensure!(verdict == 0, "the node-local benchmark flow is not allowed");
                let ack = est.with_flags(ACK).build();
                let established = pair(dp, &ack, repeat)?.0;
                let empty_rep = empty(dp, &ack, repeat)?;
                let allow: Vec<Vec<u8>> = (0..distinct)
                    .map(|i| Flow::tcp(a, b, 1024 + (i % 60000) as u16, 80).build())
                    .collect();
                let mut empty_one = 0.0;
                for p in &allow {
                    empty_one += empty(dp, p, 1)?;
                }
                empty_one /= allow.len() as f64;
                dp.conntrack.flush()?;
                let mut new_allow = 0.0;
                for p in &allow {
                    new_allow += pair(dp, p, 1)?.0;
                }
                new_allow /= allow.len() as f64;
                events.drain();
                for (case, ns, base) in [
                    ("established", established, empty_rep),
                    ("new flow, allow", new_allow, empty_one),
                ] {
                    println!(
                        "{case:<22} {family:<6} {entries:>8} {ns:>10.1} {base:>10.1} {:>+9.1}",
                        ns - base
                    );
                }
            }
            Ok(())
        });
        result?;
    }
    Ok(())
}

/// The event ring under a paced new-flow load with a reader attached, as the agent reads it
/// (woken by epoll, draining everything available): events sent, read and lost (ring full).
/// Each new flow is a distinct allowed packet run once through `from_pod`; the pacing is the
/// caller's, so the achieved rate is printed beside the offered one.
fn ring_capacity(secs: f64) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::time::{Duration, Instant};

    use septum_datapath_common::{Counter, IPCACHE_KIND_POD, IpCacheEntry};
    println!(
        "\nflow-event ring ({} KiB) with a reader attached, distinct new flows through from_pod:",
        septum_datapath_common::map_sizes::EVENTS_BYTES / 1024
    );
    println!(
        "  {:>10} {:>10} {:>10} {:>10} {:>10}",
        "offered/s", "achieved/s", "sent", "read", "lost"
    );
    for rate in [50_000u64, 200_000] {
        let mut dp = Datapath::load(&DatapathOptions {
            conntrack_entries: Some(1 << 21),
            ..DatapathOptions::unpinned()
        })
        .context("loading the datapath (run as root)")?;
        let mut m = maps(10);
        // Destinations 10.1.0.0/16 are pod B too, so every packet can be a distinct allowed flow.
        m.add_ip(
            ip("10.1.0.0"),
            16,
            IpCacheEntry {
                identity: B,
                cidr_identity: 0,
                kind: IPCACHE_KIND_POD,
                _pad: [0; 3],
            },
        );
        m.write_to(&mut dp)?;
        let n = (rate as f64 * secs) as u64;
        let packets: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let d = IpAddr::from([10, 1, (i >> 16) as u8, (i >> 8) as u8]);
                Flow::tcp(ip("10.0.0.1"), d, 1024 + (i & 0xff) as u16, 80).build()
            })
            .collect();
        let events = dp.take_events().context("events")?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut r = events.into_async()?;
                    let mut read = 0u64;
                    while !stop.load(Relaxed) {
                        if let Ok(batch) =
                            tokio::time::timeout(Duration::from_millis(20), r.next_batch()).await
                        {
                            read += batch?.len() as u64;
                        }
                    }
                    Ok(read)
                })
            })
        };
        let start = Instant::now();
        for (i, p) in packets.iter().enumerate() {
            if i % 256 == 0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            dp.test_run(program_names::FROM_POD, p, LO, 1)?;
        }
        let achieved = n as f64 / start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Relaxed);
        let read = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the event reader panicked"))??;
        println!(
            "  {rate:>10} {achieved:>10.0} {:>10} {read:>10} {:>10}",
            dp.counter(Counter::EventsSent)?,
            dp.counter(Counter::EventsLost)?
        );
    }
    Ok(())
}
