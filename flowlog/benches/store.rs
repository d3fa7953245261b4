//! Flow store figures, each beside its baseline in the same run:
//! - write: records/s committed in batches of 1000 through `Store::write` (upsert, six indexes),
//!   beside plain SQLite inserts of the same number of rows into an unindexed table;
//! - queries over `SEPTUM_FLOWLOG_BENCH_ROWS` stored flows (default 1,000,000; the figure
//!   is 10,000,000): point lookup, filtered (pod + verdict + last hour), top-N talkers, each
//!   beside a full `count(*)` scan;
//! - bytes per stored flow.
//!
//! Run: `cargo bench -p septum-flowlog --bench store`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use septum_flowlog::filter::Named;
use septum_flowlog::{
    FlowEnd, FlowFilter, FlowRecord, Point, Query, Retention, RuleRef, Store, Verdict,
};

const T0: i64 = 1_800_000_000_000;
/// One day of flows, however many rows: the default retention's window.
const SPAN_MS: i64 = 24 * 3600 * 1000;
/// Pods on this node (the destinations), pods elsewhere in the cluster, addresses outside it.
const LOCAL_PODS: u64 = 100;
const REMOTE_PODS: u64 = 400;
const OUTSIDE: u64 = 2000;

fn mix(mut x: u64) -> u64 {
    // splitmix64: a deterministic spread of the row number.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn pod_end(n: u64, port: u16) -> FlowEnd {
    let app = n % 25;
    FlowEnd {
        ip: Some(std::net::IpAddr::from([10, 1 + (n >> 8) as u8, 0, n as u8])),
        port,
        namespace: format!("ns-{}", n % 10).into(),
        pod: format!("app-{app}-{n}").into(),
        workload: format!("Deployment/app-{app}").into(),
        labels: BTreeMap::from([
            ("app".to_string(), format!("app-{app}")),
            (
                "tier".to_string(),
                ["web", "api", "db"][(n % 3) as usize].to_string(),
            ),
        ])
        .into(),
        identity: 1000 + n as u32,
        service: String::new().into(),
    }
}

/// Flow `i` of a node: a client (a pod anywhere in the cluster, or one of 5% outside it) to
/// one of this node's pods on one of four ports; one in ten refused.
fn record(i: u64) -> FlowRecord {
    let r = mix(i);
    let dport = [80, 443, 5432, 8080][(r % 4) as usize];
    let sport = 32768 + ((r >> 8) % 28000) as u16;
    let src = if (r >> 40).is_multiple_of(20) {
        FlowEnd {
            ip: Some(std::net::IpAddr::from([
                100,
                64,
                ((r >> 16) % OUTSIDE / 256) as u8,
                ((r >> 16) % OUTSIDE) as u8,
            ])),
            port: sport,
            identity: 2,
            ..FlowEnd::default()
        }
    } else {
        pod_end((r >> 16) % (LOCAL_PODS + REMOTE_PODS), sport)
    };
    let dst = pod_end((r >> 24) % LOCAL_PODS, dport);
    let t =
        T0 + (i as i64) * SPAN_MS / ROWS.load(std::sync::atomic::Ordering::Relaxed).max(1) as i64;
    let dropped = (r >> 48).is_multiple_of(10);
    FlowRecord {
        first_seen_ms: t,
        last_seen_ms: t + 10,
        node: "node-1".into(),
        point: Point::ToPod,
        protocol: 6,
        src,
        dst,
        verdict: if dropped {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        },
        drop_reason: u8::from(dropped),
        egress_rule: None,
        ingress_rule: dropped.then(|| {
            Arc::new(RuleRef {
                kind: "NetworkPolicy".into(),
                namespace: "ns-0".into(),
                name: "default-deny".into(),
                tier: String::new(),
                rule_index: -1,
            })
        }),
        tcp_flags: 0x1b,
        packets_forward: 10,
        bytes_forward: 1200,
        packets_reverse: 8,
        bytes_reverse: 9000,
        is_reply: false,
        count: 1,
    }
}

static ROWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn open(path: &std::path::Path) -> Store {
    Store::open(
        path,
        Retention {
            max_age_ms: None,
            max_bytes: None,
        },
    )
    .expect("open")
}

/// Writes `rows` records in batches of `batch`; records/s (the time in `Store::write` only,
/// not in making the records).
fn fill(store: &mut Store, rows: u64, batch: u64) -> f64 {
    let mut spent = Duration::ZERO;
    let mut i = 0;
    while i < rows {
        let b: Vec<FlowRecord> = (i..(i + batch).min(rows)).map(record).collect();
        let t = Instant::now();
        store.write(&b).expect("write");
        spent += t.elapsed();
        i += batch;
    }
    rows as f64 / spent.as_secs_f64()
}

/// Plain inserts of `rows` five-column rows into an unindexed table, in batches of `batch`.
fn baseline_inserts(path: &std::path::Path, rows: u64, batch: u64) -> f64 {
    let mut conn = rusqlite::Connection::open(path).expect("baseline");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         CREATE TABLE t (a INTEGER, b INTEGER, c TEXT, d BLOB, e INTEGER)",
    )
    .expect("baseline schema");
    let t = Instant::now();
    let mut i = 0u64;
    while i < rows {
        let tx = conn.transaction().expect("tx");
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t VALUES (?, ?, ?, ?, ?)")
                .expect("prepare");
            for j in i..(i + batch).min(rows) {
                st.execute(rusqlite::params![
                    j as i64,
                    80,
                    "pod",
                    [10u8, 0, 0, 1],
                    1200
                ])
                .expect("insert");
            }
        }
        tx.commit().expect("commit");
        i += batch;
    }
    rows as f64 / t.elapsed().as_secs_f64()
}

fn pod_filter(field: &'static str, end: &FlowEnd) -> Named {
    Named::parse(field, &format!("{}/{}", end.namespace, end.pod)).expect("name")
}

fn main() {
    let rows: u64 = std::env::var("SEPTUM_FLOWLOG_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    ROWS.store(rows, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flows.db");

    println!(
        "flow store: {rows} flows over 24 h ({LOCAL_PODS} pods on the node, {REMOTE_PODS} elsewhere, \
         {OUTSIDE} outside addresses; 10% refused)"
    );
    // Write throughput at two batch sizes (the pipeline flushes every 200 ms, so 50k new
    // flows/s is 10,000 a batch), each beside plain unindexed inserts of the same count.
    let small = rows.min(200_000);
    let mut s1 = open(&dir.path().join("small.db"));
    let r1 = fill(&mut s1, small, 1000);
    drop(s1);
    let b1 = baseline_inserts(&dir.path().join("base1.db"), small, 1000);
    println!(
        "write, 1,000 a batch ({small} flows)   {r1:>10.0} records/s   baseline plain insert {b1:>10.0} rows/s"
    );
    let mut store = open(&path);
    let r10 = fill(&mut store, rows, 10_000);
    let b10 = baseline_inserts(&dir.path().join("base10.db"), rows, 10_000);
    println!(
        "write, 10,000 a batch ({rows} flows) {r10:>10.0} records/s   baseline plain insert {b10:>10.0} rows/s"
    );

    let probe = record(rows - 1 - rows / 100);
    let end_ms = T0 + SPAN_MS;
    let since = end_ms - 3_600_000;
    let point = Query {
        include: vec![FlowFilter {
            from_pod: vec![pod_filter("from-pod", &probe.src)],
            to_pod: vec![pod_filter("to-pod", &probe.dst)],
            ..FlowFilter::default()
        }],
        limit: Some(1),
        ..Query::default()
    };
    let filtered = Query {
        include: vec![FlowFilter {
            to_pod: vec![pod_filter("to-pod", &probe.dst)],
            verdict: vec![Verdict::Dropped],
            ..FlowFilter::default()
        }],
        since_ms: Some(since),
        ..Query::default()
    };
    let last_hour = Query {
        since_ms: Some(since),
        ..Query::default()
    };
    // Baselines on the same file: reading the last hour's rows once (the floor of anything
    // that looks at all of them), and the rows of one pod in it by its index.
    let raw = rusqlite::Connection::open(&path).expect("raw");
    let in_hour: i64 = raw
        .query_row(
            "SELECT count(*) FROM flows WHERE last_ms >= ?",
            [since],
            |r| r.get(0),
        )
        .expect("count");
    let scan = time(5, || {
        raw.query_row(
            "SELECT sum(bytes_fwd + bytes_rev) FROM flows WHERE last_ms >= ?",
            [since],
            |r| r.get::<_, i64>(0),
        )
        .expect("scan")
    });
    let pod_rows = time(11, || {
        raw.query_row(
            "SELECT count(*) FROM flows WHERE dst_ep IN (SELECT id FROM endpoints WHERE ns = ? AND pod = ?) \
             AND last_ms >= ?",
            rusqlite::params![probe.dst.namespace, probe.dst.pod, since],
            |r| r.get::<_, i64>(0),
        )
        .expect("pod rows")
    });
    let p = time(21, || store.query(&point).expect("point").len());
    let found = store.query(&filtered).expect("filtered").len();
    let f = time(11, || store.query(&filtered).expect("filtered").len());
    let top = time(3, || store.top_talkers(&last_hour, 10).expect("top").len());
    let denied = time(3, || {
        store.denied_by_policy(&last_hour).expect("denied").len()
    });
    let map = time(3, || store.edges(&last_hour).expect("edges").len());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("last hour: {in_hour} flows");
    println!(
        "point lookup (newest flow pod -> pod)       {:>9.3} ms   baseline one pod's rows by index {:>8.3} ms",
        ms(p),
        ms(pod_rows)
    );
    println!(
        "filtered (to-pod + dropped + last hour)     {:>9.3} ms ({found} flows)   baseline {:>8.3} ms",
        ms(f),
        ms(pod_rows)
    );
    println!(
        "top-10 talkers, last hour                   {:>9.3} ms   baseline reading the hour once {:>8.3} ms",
        ms(top),
        ms(scan)
    );
    println!(
        "denied by policy, last hour                 {:>9.3} ms   baseline {:>8.3} ms",
        ms(denied),
        ms(scan)
    );
    println!(
        "service map, last hour                      {:>9.3} ms   baseline {:>8.3} ms",
        ms(map),
        ms(scan)
    );
    drop(store);
    drop(raw);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.path().join("flows.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    let base_bytes = std::fs::metadata(dir.path().join("base10.db"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(dir.path().join("base10.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "bytes per flow {:>8.1}   baseline (five-column row) {:>6.1}",
        bytes as f64 / rows as f64,
        base_bytes as f64 / rows as f64
    );
}
