//! The flow pipeline end to end: datapath flow events (the ring buffer's records, byte for
//! byte the kernel's `FlowEvent`) -> enrichment -> aggregation -> the SQLite store's writer
//! thread, through the agent's own queues (`Ingest`, the code `pipeline::run` drives).
//!
//! Figures, each beside its baseline in the same run:
//! - offered load of distinct new flows (every event a new record, the store's worst case) at
//!   50k, 100k, 200k and 500k events/s, paced in the pipeline's 200 ms flushes: events
//!   accepted per second, records committed per second, and every loss counted;
//! - a drop storm (refused clients retrying, folded into few records) at the rate the feeder
//!   can offer;
//! - baseline: the same events through enrichment and aggregation alone (no store, no queues).
//!
//! Run: `cargo bench -p septum-agent --bench flows` (`SEPTUM_FLOW_BENCH_SECS`, default 5 s per
//! load). The kernel ring buffer itself is measured by `cargo xtask bench --traffic`.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use septum_agent::flows::Enricher;
use septum_agent::flows::pipeline::{FLUSH, FlowHub, FlowSettings, Ingest};
use septum_datapath_common::{FAMILY_IPV4, FlowEvent, POINT_TO_POD, proto};
use septum_flowlog::Retention;
use septum_flowlog::aggregate::{Aggregator, Settings as AggSettings};
use septum_policy::model::{Cluster, Pod};
use septum_policy::state::ClusterState;

const LOCAL_PODS: u32 = 100;
const REMOTE_PODS: u32 = 400;
/// Ring-buffer reads deliver events in batches about this size under load.
const READ_BATCH: usize = 1024;

fn pod_ip(n: u32) -> [u8; 4] {
    [10, 1 + (n >> 8) as u8, 0, n as u8]
}

fn enricher() -> Enricher {
    let mut c = Cluster::default();
    for n in 0..LOCAL_PODS + REMOTE_PODS {
        let app = n % 25;
        let pod = Pod {
            namespace: format!("ns-{}", n % 10),
            name: format!("app-{app}-{n}"),
            labels: [("app".to_string(), format!("app-{app}"))].into(),
            ips: vec![IpAddr::from(pod_ip(n))],
            service_account: "default".into(),
            workload: Some(format!("Deployment/app-{app}")),
            ..Pod::default()
        };
        c.pods.insert(pod.key(), pod);
    }
    Enricher::build("node-1", &c, &ClusterState::default(), None)
}

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Event `i`: a new connection from a pod (or, one in twenty, from outside the cluster) to one
/// of the node's pods, every 5-tuple distinct.
fn new_flow(i: u64, now_ns: u64) -> FlowEvent {
    let client = (i % u64::from(LOCAL_PODS + REMOTE_PODS + 25)) as u32;
    let saddr = if client >= LOCAL_PODS + REMOTE_PODS {
        [100, 64, (i >> 8) as u8, i as u8]
    } else {
        pod_ip(client)
    };
    let dst = ((i / 7) % u64::from(LOCAL_PODS)) as u32;
    let mut s = [0u8; 16];
    s[..4].copy_from_slice(&saddr);
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&pod_ip(dst));
    FlowEvent {
        timestamp_ns: now_ns,
        saddr: s,
        daddr: d,
        // Distinct per event: the source port walks, the destination port takes the rest.
        sport: 1024 + (i % 60_000) as u16,
        dport: [80, 443, 5432, 8080][((i / 60_000) % 4) as usize],
        family: FAMILY_IPV4,
        protocol: proto::TCP,
        point: POINT_TO_POD,
        verdict: 1,
        drop_reason: 0,
        src_identity: 1000 + client,
        dst_identity: 1000 + dst,
        ingress_cookie: 1 + dst % 7,
        packet_len: 60,
        tcp_flags: 0x02,
        ..FlowEvent::default()
    }
}

/// Event `i` of a drop storm: 50 clients retrying refused connections to 10 pods.
fn drop_event(i: u64, now_ns: u64) -> FlowEvent {
    let mut ev = new_flow(i, now_ns);
    let client = (i % 50) as u32;
    ev.saddr[..4].copy_from_slice(&pod_ip(LOCAL_PODS + client));
    ev.daddr[..4].copy_from_slice(&pod_ip((i / 50 % 10) as u32));
    ev.dport = 6379;
    ev.verdict = 2;
    ev.drop_reason = 2;
    ev.ingress_cookie = 9;
    ev
}

struct Run {
    offered: f64,
    accepted: f64,
    stored: f64,
    events: u64,
    records: u64,
    written: u64,
    lost: u64,
    behind: bool,
}

/// Feeds `rate` events/s (0: as fast as the feeder can) for `secs`, flushing every 200 ms as
/// the pipeline does, then waits for the store to commit everything.
fn run(rate: u64, secs: u64, make: fn(u64, u64) -> FlowEvent) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Arc::new(FlowHub::new(
        "node-1",
        dir.path().join("flows.db"),
        Retention {
            max_age_ms: None,
            max_bytes: None,
        },
        Arc::new(RwLock::new(Arc::new(enricher()))),
    ));
    let settings = FlowSettings {
        store: dir.path().join("flows.db"),
        retention: hub.retention,
        jsonl: None,
        otlp: None,
        aggregation: AggSettings::default(),
    };
    let mut ingest = Ingest::start(hub.clone(), &settings, None).expect("ingest");
    let ticks = secs * 1000 / FLUSH.as_millis() as u64;
    let per_tick = rate * FLUSH.as_millis() as u64 / 1000;
    let start = Instant::now();
    let mut i = 0u64;
    let mut behind = false;
    let mut feeding = Duration::ZERO;
    for tick in 0..ticks {
        let t = Instant::now();
        let deadline = start + FLUSH * (tick as u32 + 1);
        let now = monotonic_ns();
        let mut fed = 0;
        while if rate == 0 {
            Instant::now() < deadline
        } else {
            fed < per_tick
        } {
            let n = if rate == 0 {
                READ_BATCH as u64
            } else {
                (per_tick - fed).min(READ_BATCH as u64)
            };
            let batch: Vec<FlowEvent> = (i..i + n).map(|j| make(j, now)).collect();
            ingest.take(&batch);
            i += n;
            fed += n;
        }
        ingest.flush();
        feeding += t.elapsed();
        match deadline.checked_duration_since(Instant::now()) {
            Some(rest) => std::thread::sleep(rest),
            None => behind |= rate != 0,
        }
    }
    let fed_for = start.elapsed();
    ingest.finish();
    let total = start.elapsed();
    let s = &hub.stats;
    let lost = s.store_queue_full.load(Relaxed) + s.store_errors.load(Relaxed);
    let written = s.written.load(Relaxed);
    Run {
        offered: if rate == 0 {
            i as f64 / fed_for.as_secs_f64()
        } else {
            rate as f64
        },
        accepted: i as f64 / feeding.as_secs_f64().max(fed_for.as_secs_f64()),
        stored: written as f64 / total.as_secs_f64(),
        events: i,
        records: s.records.load(Relaxed),
        written,
        lost,
        behind,
    }
}

/// Enrichment and aggregation alone, as fast as they go: events/s.
fn baseline(n: u64, make: fn(u64, u64) -> FlowEvent) -> f64 {
    let e = enricher();
    let mut agg = Aggregator::new(AggSettings::default());
    let now = monotonic_ns();
    let mut spent = Duration::ZERO;
    let mut i = 0;
    while i < n {
        let batch: Vec<FlowEvent> = (i..(i + READ_BATCH as u64).min(n))
            .map(|j| make(j, now))
            .collect();
        let t = Instant::now();
        for ev in &batch {
            if let Some(o) = e.observe(ev, 1_800_000_000_000) {
                agg.observe(o);
            }
        }
        if i % 10_240 == 0 {
            std::hint::black_box(agg.flush(1_800_000_000_000));
        }
        spent += t.elapsed();
        i += batch.len() as u64;
    }
    n as f64 / spent.as_secs_f64()
}

fn print(name: &str, r: &Run) {
    println!(
        "{name:<28} offered {:>8.0}/s  accepted {:>8.0} events/s  stored {:>8.0} records/s  \
         ({} events, {} records, {} committed, {} lost{})",
        r.offered,
        r.accepted,
        r.stored,
        r.events,
        r.records,
        r.written,
        r.lost,
        if r.behind { "; feeder fell behind" } else { "" }
    );
}

fn main() {
    let secs: u64 = std::env::var("SEPTUM_FLOW_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("flow pipeline, events -> stored records, {secs} s per load, 200 ms flushes");
    let base_new = baseline(1_000_000, new_flow);
    let base_drop = baseline(1_000_000, drop_event);
    println!(
        "baseline: enrichment + aggregation alone: new flows {base_new:>9.0} events/s, drops {base_drop:>9.0} events/s"
    );
    for rate in [50_000, 100_000, 200_000, 500_000] {
        let r = run(rate, secs, new_flow);
        print(&format!("new flows at {}k/s", rate / 1000), &r);
    }
    let r = run(0, secs, drop_event);
    print("drop storm, flat out", &r);
}
