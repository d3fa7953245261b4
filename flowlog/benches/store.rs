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
use std::time::{Duration, Instant};

use septum_flowlog::filter::Named;
use septum_flowlog::{FlowEnd, FlowFilter, FlowRecord, Point, Query, Retention, Store, Verdict};

const T0: i64 = 1_800_000_000_000;

fn record(i: u64) -> FlowRecord {
    let pod = |n: u64| format!("pod-{}", n % 500);
    let ns = |n: u64| format!("ns-{}", n % 20);
    let end = |n: u64, port: u16| FlowEnd {
        ip: Some(std::net::IpAddr::from([
            10,
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
        ])),
        port,
        namespace: ns(n),
        pod: pod(n),
        workload: format!("Deployment/app-{}", n % 50),
        labels: BTreeMap::from([("app".to_string(), format!("app-{}", n % 50))]),
        identity: 1000 + (n % 300) as u32,
        service: String::new(),
    };
    FlowRecord {
        first_seen_ms: T0 + (i as i64) * 3,
        last_seen_ms: T0 + (i as i64) * 3 + 10,
        node: "node-1".into(),
        point: Point::ToPod,
        protocol: 6,
        src: end(i % 7919, (i % 28000) as u16 + 32768),
        dst: end(i % 104_729, 80),
        verdict: if i.is_multiple_of(10) {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        },
        drop_reason: if i.is_multiple_of(10) { 1 } else { 0 },
        egress_rule: None,
        ingress_rule: None,
        tcp_flags: 0x1b,
        packets_forward: 10,
        bytes_forward: 1200,
        packets_reverse: 8,
        bytes_reverse: 9000,
        is_reply: false,
        count: 1,
    }
}

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

fn main() {
    let rows: u64 = std::env::var("SEPTUM_FLOWLOG_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flows.db");
    let mut store = Store::open(
        &path,
        Retention {
            max_age_ms: None,
            max_bytes: None,
        },
    )
    .expect("open");

    // Write throughput, and its baseline.
    let t = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..rows {
        batch.push(record(i));
        if batch.len() == 1000 {
            store.write(&batch).expect("write");
            batch.clear();
        }
    }
    store.write(&batch).expect("write");
    let store_rate = rows as f64 / t.elapsed().as_secs_f64();

    let base = rusqlite::Connection::open(dir.path().join("baseline.db")).expect("baseline");
    base.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         CREATE TABLE t (a INTEGER, b INTEGER, c TEXT, d BLOB, e INTEGER)",
    )
    .expect("baseline schema");
    let t = Instant::now();
    let mut conn = base;
    let mut i = 0u64;
    while i < rows {
        let tx = conn.transaction().expect("tx");
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t VALUES (?, ?, ?, ?, ?)")
                .expect("prepare");
            for j in i..(i + 1000).min(rows) {
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
        i += 1000;
    }
    let base_rate = rows as f64 / t.elapsed().as_secs_f64();

    println!("flow store, {rows} flows");
    println!(
        "write              {:>10.0} records/s   baseline (plain unindexed insert) {:>10.0} rows/s   ratio {:.2}",
        store_rate,
        base_rate,
        store_rate / base_rate
    );

    let probe = record(rows / 2);
    let point = Query {
        include: vec![FlowFilter {
            from_pod: vec![
                Named::parse(
                    "from-pod",
                    &format!("{}/{}", probe.src.namespace, probe.src.pod),
                )
                .expect("name"),
            ],
            to_pod: vec![
                Named::parse(
                    "to-pod",
                    &format!("{}/{}", probe.dst.namespace, probe.dst.pod),
                )
                .expect("name"),
            ],
            ..FlowFilter::default()
        }],
        limit: Some(1),
        ..Query::default()
    };
    let end_ms = T0 + (rows as i64) * 3;
    let filtered = Query {
        include: vec![FlowFilter {
            to_pod: vec![
                Named::parse(
                    "to-pod",
                    &format!("{}/{}", probe.dst.namespace, probe.dst.pod),
                )
                .expect("name"),
            ],
            verdict: vec![Verdict::Dropped],
            ..FlowFilter::default()
        }],
        since_ms: Some(end_ms - 3_600_000),
        ..Query::default()
    };
    let last_hour = Query {
        since_ms: Some(end_ms - 3_600_000),
        ..Query::default()
    };
    let scan = time(5, || store.len().expect("count"));
    let p = time(21, || store.query(&point).expect("point").len());
    let f = time(11, || store.query(&filtered).expect("filtered").len());
    let top = time(3, || store.top_talkers(&last_hour, 10).expect("top").len());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "point lookup       {:>10.3} ms (median)   baseline count(*) scan {:>8.3} ms",
        ms(p),
        ms(scan)
    );
    println!(
        "filtered (pod+verdict+last hour) {:>8.3} ms   baseline {:>8.3} ms",
        ms(f),
        ms(scan)
    );
    println!(
        "top-10 talkers, last hour        {:>8.3} ms   baseline {:>8.3} ms",
        ms(top),
        ms(scan)
    );
    drop(store);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("bytes per flow     {:>10.1}", bytes as f64 / rows as f64);
}
