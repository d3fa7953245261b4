//! The flow store on a real SQLite file: every filter, connection updates, hostile input,
//! retention by age and by size, schema versioning, the aggregates, and kill -9 during ingest.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

use septum_flowlog::filter::{LabelMatch, Named, Prefix};
use septum_flowlog::store::{Retention, SCHEMA_VERSION, Store, StoreError};
use septum_flowlog::{FlowEnd, FlowFilter, FlowRecord, Point, Query, RuleRef, Verdict};

const T0: i64 = 1_800_000_000_000;

fn pod(ns: &str, name: &str, ip: &str, port: u16, app: &str) -> FlowEnd {
    FlowEnd {
        ip: Some(ip.parse().unwrap()),
        port,
        namespace: ns.into(),
        pod: name.into(),
        workload: format!("Deployment/{app}").into(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]).into(),
        identity: 1000,
        service: String::new().into(),
    }
}

fn outside(ip: &str, port: u16) -> FlowEnd {
    FlowEnd {
        ip: Some(ip.parse().unwrap()),
        port,
        identity: 2,
        ..FlowEnd::default()
    }
}

fn rule(kind: &str, ns: &str, name: &str, index: i32) -> Option<Arc<RuleRef>> {
    Some(Arc::new(RuleRef {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
        tier: String::new(),
        rule_index: index,
    }))
}

fn flow(t: i64, src: FlowEnd, dst: FlowEnd, verdict: Verdict) -> FlowRecord {
    FlowRecord {
        first_seen_ms: t,
        last_seen_ms: t,
        node: "node-1".into(),
        point: Point::ToPod,
        protocol: 6,
        src,
        dst,
        verdict,
        drop_reason: if verdict == Verdict::Dropped { 1 } else { 0 },
        egress_rule: None,
        ingress_rule: None,
        tcp_flags: 0x02,
        packets_forward: 1,
        bytes_forward: 60,
        packets_reverse: 0,
        bytes_reverse: 0,
        is_reply: false,
        count: 1,
    }
}

/// A small shop: web -> api allowed, web -> db refused by db's policy, outsider -> web refused
/// by isolation, api -> db allowed.
fn shop() -> Vec<FlowRecord> {
    let web = pod("shop", "web-0", "10.0.0.10", 40000, "web");
    let api = pod("shop", "api-0", "10.0.0.11", 8080, "api");
    let db = pod("shop", "db-0", "10.0.0.12", 5432, "db");
    let mut v = Vec::new();
    let mut a = flow(T0, web.clone(), api.clone(), Verdict::Forwarded);
    a.ingress_rule = rule("NetworkPolicy", "shop", "api-from-web", 0);
    a.bytes_forward = 1000;
    a.bytes_reverse = 5000;
    v.push(a);
    let mut b = flow(T0 + 1000, web.clone(), db.clone(), Verdict::Dropped);
    b.ingress_rule = rule("NetworkPolicy", "shop", "db-from-api", -1);
    b.count = 7;
    v.push(b);
    let mut c = flow(
        T0 + 2000,
        outside("192.0.2.7", 5555),
        web.clone(),
        Verdict::Dropped,
    );
    c.dst.port = 80;
    c.ingress_rule = rule("NetworkPolicy", "shop", "web-from-world", -1);
    v.push(c);
    let mut d = flow(T0 + 3000, api, db, Verdict::Forwarded);
    d.protocol = 17;
    d.dst.service = "shop/db".into();
    v.push(d);
    v
}

fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("flows.db"), Retention::default()).unwrap()
}

fn only(f: FlowFilter) -> Query {
    Query {
        include: vec![f],
        ..Query::default()
    }
}

fn pods(records: &[FlowRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let end = |e: &FlowEnd| {
                if e.pod.is_empty() {
                    e.ip.map(|i| i.to_string()).unwrap_or_default()
                } else {
                    e.pod.to_string()
                }
            };
            format!("{}>{}", end(&r.src), end(&r.dst))
        })
        .collect()
}

#[test]
fn records_come_back_whole_and_every_filter_selects() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    let written = shop();
    assert_eq!(s.write(&written).unwrap(), 4);
    let all = s.query(&Query::default()).unwrap();
    // Newest first, every field intact.
    let mut expect = written.clone();
    expect.reverse();
    assert_eq!(all, expect);

    let n = |s: &str| Named::parse("pod", s).unwrap();
    let cases: Vec<(FlowFilter, Vec<&str>)> = vec![
        (
            FlowFilter {
                from_pod: vec![n("shop/web-0")],
                ..Default::default()
            },
            vec!["web-0>db-0", "web-0>api-0"],
        ),
        (
            FlowFilter {
                to_pod: vec![n("db-0")],
                verdict: vec![Verdict::Dropped],
                ..Default::default()
            },
            vec!["web-0>db-0"],
        ),
        (
            FlowFilter {
                pod: vec![n("shop/api-0")],
                ..Default::default()
            },
            vec!["api-0>db-0", "web-0>api-0"],
        ),
        (
            FlowFilter {
                from_ip: vec![Prefix::parse("from-ip", "192.0.2.0/24").unwrap()],
                ..Default::default()
            },
            vec!["192.0.2.7>web-0"],
        ),
        (
            FlowFilter {
                ip: vec![Prefix::parse("ip", "10.0.0.12").unwrap()],
                ..Default::default()
            },
            vec!["api-0>db-0", "web-0>db-0"],
        ),
        (
            FlowFilter {
                to_label: vec![LabelMatch::parse("to-label", "app=web").unwrap()],
                ..Default::default()
            },
            vec!["192.0.2.7>web-0"],
        ),
        (
            FlowFilter {
                from_label: vec![LabelMatch::parse("from-label", "app").unwrap()],
                to_port: vec![5432],
                ..Default::default()
            },
            vec!["api-0>db-0", "web-0>db-0"],
        ),
        (
            FlowFilter {
                protocol: vec![17],
                ..Default::default()
            },
            vec!["api-0>db-0"],
        ),
        (
            FlowFilter {
                policy: vec![n("shop/db-from-api")],
                ..Default::default()
            },
            vec!["web-0>db-0"],
        ),
        (
            FlowFilter {
                to_service: vec![n("db")],
                ..Default::default()
            },
            vec!["api-0>db-0"],
        ),
        (
            FlowFilter {
                drop_reason: vec![1],
                to_namespace: vec!["shop".into()],
                ..Default::default()
            },
            vec!["192.0.2.7>web-0", "web-0>db-0"],
        ),
        (
            FlowFilter {
                node: vec!["node-2".into()],
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (f, want) in cases {
        let got = s.query(&only(f.clone())).unwrap();
        assert_eq!(pods(&got), want, "{f:?}");
    }
    // Excludes, time bounds, first/last N.
    let q = Query {
        exclude: vec![FlowFilter {
            verdict: vec![Verdict::Forwarded],
            ..Default::default()
        }],
        since_ms: Some(T0 + 1500),
        ..Query::default()
    };
    assert_eq!(pods(&s.query(&q).unwrap()), vec!["192.0.2.7>web-0"]);
    let q = Query {
        limit: Some(2),
        first: true,
        ..Query::default()
    };
    assert_eq!(
        pods(&s.query(&q).unwrap()),
        vec!["web-0>api-0", "web-0>db-0"]
    );
    let q = Query {
        include: vec![
            FlowFilter {
                protocol: vec![17],
                ..Default::default()
            },
            FlowFilter {
                from_ip: vec![Prefix::parse("from-ip", "192.0.2.7").unwrap()],
                ..Default::default()
            },
        ],
        until_ms: Some(T0 + 2500),
        ..Query::default()
    };
    assert_eq!(pods(&s.query(&q).unwrap()), vec!["192.0.2.7>web-0"]);
}

#[test]
fn a_connection_is_one_row_however_often_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    let mut r = shop().remove(0);
    s.write(std::slice::from_ref(&r)).unwrap();
    r.last_seen_ms += 30_000;
    r.packets_forward = 40;
    r.bytes_forward = 9000;
    r.tcp_flags = 0x10;
    s.write(std::slice::from_ref(&r)).unwrap();
    let all = s.query(&Query::default()).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].last_seen_ms, r.last_seen_ms);
    assert_eq!(all[0].packets_forward, 40);
    assert_eq!(all[0].tcp_flags, 0x12, "flags accumulate");
    // The same tuple opened again later is a new connection.
    r.first_seen_ms += 60_000;
    r.last_seen_ms = r.first_seen_ms;
    s.write(&[r]).unwrap();
    assert_eq!(s.len().unwrap(), 2);
}

#[test]
fn hostile_values_are_data_and_hostile_filters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    let mut r = shop().remove(0);
    r.src.pod = "x'); DROP TABLE flows; --".into();
    r.src.labels.insert("k\"ey".into(), "v' OR 1=1 --".into());
    r.node = "\"; DELETE FROM flows; --".into();
    s.write(std::slice::from_ref(&r)).unwrap();
    let back = s.query(&Query::default()).unwrap();
    assert_eq!(back, vec![r]);
    for bad in [
        "shop/x'); DROP TABLE flows; --",
        "' OR '1'='1",
        "a/b/c",
        "%",
        "_",
    ] {
        assert!(Named::parse("from-pod", bad).is_err(), "{bad:?}");
    }
    assert!(LabelMatch::parse("from-label", "app=web' OR 1=1").is_err());
    assert!(LabelMatch::parse("from-label", "$.\"app\"=x").is_err());
    assert!(Prefix::parse("from-ip", "10.0.0.0/8 OR 1=1").is_err());
    let huge = Query {
        include: vec![FlowFilter::default(); 1000],
        ..Query::default()
    };
    assert!(matches!(s.query(&huge), Err(StoreError::Filter(_))));
    let backwards = Query {
        since_ms: Some(10),
        until_ms: Some(5),
        ..Query::default()
    };
    assert!(s.query(&backwards).is_err());
    // A node filter with SQL in it is only a value.
    let q = only(FlowFilter {
        node: vec!["x' OR '1'='1".into()],
        ..Default::default()
    });
    assert!(s.query(&q).unwrap().is_empty());
    assert_eq!(s.len().unwrap(), 1, "nothing was deleted");
}

#[test]
fn retention_keeps_the_store_under_its_age_and_size_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    let max_bytes = 2 << 20;
    let mut s = Store::open(
        &path,
        Retention {
            max_age_ms: Some(3_600_000),
            max_bytes: Some(max_bytes),
        },
    )
    .unwrap();
    let base = shop().remove(0);
    let mut batch = Vec::new();
    for i in 0..20_000i64 {
        let mut r = base.clone();
        r.first_seen_ms = T0 + i;
        r.last_seen_ms = T0 + i;
        r.src.port = (i % 60_000) as u16;
        r.src.labels.insert("pad".into(), "x".repeat(60));
        batch.push(r);
        if batch.len() == 1000 {
            s.write(&batch).unwrap();
            batch.clear();
        }
    }
    assert!(
        s.size_bytes().unwrap() > max_bytes,
        "the test must overflow the bound"
    );
    let pruned = s.prune(T0 + 20_000).unwrap();
    assert!(pruned.by_size > 0);
    assert!(s.size_bytes().unwrap() <= max_bytes);
    let oldest = s
        .query(&Query {
            limit: Some(1),
            first: true,
            ..Query::default()
        })
        .unwrap();
    let newest = s
        .query(&Query {
            limit: Some(1),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(newest[0].last_seen_ms, T0 + 19_999, "the newest are kept");
    assert!(oldest[0].last_seen_ms > T0, "the oldest went first");
    // An hour later everything is past the age bound.
    let pruned = s.prune(T0 + 20_000 + 3_600_000).unwrap();
    assert!(pruned.by_age > 0);
    assert!(s.is_empty().unwrap());
    drop(s);
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(
        file <= max_bytes + (1 << 20),
        "freed pages go back: {file} bytes"
    );
}

#[test]
fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    {
        let mut s = Store::open(&path, Retention::default()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        s.write(&shop()).unwrap();
    }
    let s = Store::open(&path, Retention::default()).unwrap();
    assert_eq!(
        s.len().unwrap(),
        4,
        "reopening migrates nothing and loses nothing"
    );
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let err = Store::open(&path, Retention::default()).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
}

/// Schema version 1 as septum 0.1 wrote it (frozen here: the migration must keep reading it).
const SCHEMA_V1: &str = r"
CREATE TABLE flows (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    point INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    src_ip BLOB, src_port INTEGER NOT NULL,
    src_ns TEXT NOT NULL, src_pod TEXT NOT NULL, src_workload TEXT NOT NULL,
    src_labels TEXT NOT NULL, src_identity INTEGER NOT NULL, src_service TEXT NOT NULL,
    dst_ip BLOB, dst_port INTEGER NOT NULL,
    dst_ns TEXT NOT NULL, dst_pod TEXT NOT NULL, dst_workload TEXT NOT NULL,
    dst_labels TEXT NOT NULL, dst_identity INTEGER NOT NULL, dst_service TEXT NOT NULL,
    verdict INTEGER NOT NULL,
    drop_reason INTEGER NOT NULL,
    eg_kind TEXT NOT NULL, eg_ns TEXT NOT NULL, eg_name TEXT NOT NULL, eg_tier TEXT NOT NULL,
    eg_rule INTEGER NOT NULL,
    in_kind TEXT NOT NULL, in_ns TEXT NOT NULL, in_name TEXT NOT NULL, in_tier TEXT NOT NULL,
    in_rule INTEGER NOT NULL,
    tcp_flags INTEGER NOT NULL,
    packets_fwd INTEGER NOT NULL, bytes_fwd INTEGER NOT NULL,
    packets_rev INTEGER NOT NULL, bytes_rev INTEGER NOT NULL,
    is_reply INTEGER NOT NULL,
    count INTEGER NOT NULL,
    UNIQUE (node, point, protocol, src_ip, src_port, dst_ip, dst_port, first_ms)
);
CREATE INDEX flows_last ON flows (last_ms);
CREATE INDEX flows_src_pod ON flows (src_ns, src_pod, last_ms);
CREATE INDEX flows_dst_pod ON flows (dst_ns, dst_pod, last_ms);
CREATE INDEX flows_verdict ON flows (verdict, last_ms);
CREATE INDEX flows_eg_policy ON flows (eg_ns, eg_name) WHERE eg_name != '';
CREATE INDEX flows_in_policy ON flows (in_ns, in_name) WHERE in_name != '';
";

#[test]
fn a_version_1_store_is_migrated_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch("PRAGMA user_version = 1").unwrap();
        let mapped = |v4: [u8; 4]| {
            let mut b = vec![0u8; 10];
            b.extend([0xff, 0xff]);
            b.extend(v4);
            b
        };
        let v6: Vec<u8> = "fd00::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        let insert = "INSERT INTO flows (node, point, protocol, first_ms, last_ms, \
            src_ip, src_port, src_ns, src_pod, src_workload, src_labels, src_identity, src_service, \
            dst_ip, dst_port, dst_ns, dst_pod, dst_workload, dst_labels, dst_identity, dst_service, \
            verdict, drop_reason, eg_kind, eg_ns, eg_name, eg_tier, eg_rule, \
            in_kind, in_ns, in_name, in_tier, in_rule, tcp_flags, packets_fwd, bytes_fwd, \
            packets_rev, bytes_rev, is_reply, count) VALUES (?1, ?2, 6, ?3, ?4, ?5, ?6, ?7, ?8, \
            ?9, ?10, ?11, '', ?12, ?13, 'shop', 'api-1', 'Deployment/api', '{\"app\":\"api\"}', \
            1001, ?14, ?15, ?16, ?17, ?18, ?19, '', ?20, ?21, ?22, ?23, 'Admin', ?24, 2, 3, 180, \
            2, 120, 0, ?25)";
        conn.execute(
            insert,
            rusqlite::params![
                "node-1",
                2,
                1_000,
                1_500,
                mapped([10, 0, 0, 1]),
                40000,
                "shop",
                "web-1",
                "Deployment/web",
                r#"{"app":"web","tier":"front"}"#,
                1000,
                mapped([10, 0, 0, 2]),
                8080,
                "shop/api",
                1,
                0,
                "",
                "",
                "",
                0,
                "NetworkPolicy",
                "shop",
                "api-allow",
                0,
                1
            ],
        )
        .unwrap();
        conn.execute(
            insert,
            rusqlite::params![
                "node-1",
                2,
                2_000,
                9_000,
                v6,
                0,
                "",
                "",
                "world",
                "{}",
                2,
                mapped([10, 0, 0, 2]),
                5432,
                "",
                2,
                1,
                "FlowPolicy",
                "shop",
                "deny-db",
                3,
                "ClusterNetworkPolicy",
                "",
                "baseline",
                -1,
                17
            ],
        )
        .unwrap();
    }
    let s = Store::open(&path, Retention::default()).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    let mut got = s.query(&Query::default()).unwrap();
    got.sort_by_key(|r| r.first_seen_ms);
    assert_eq!(got.len(), 2, "{got:#?}");
    let (a, b) = (&got[0], &got[1]);
    assert_eq!(
        a.src.ip,
        Some("10.0.0.1".parse().unwrap()),
        "v4-mapped becomes IPv4"
    );
    assert_eq!(
        (a.src.namespace.as_str(), a.src.pod.as_str()),
        ("shop", "web-1")
    );
    assert_eq!(a.src.labels.get("tier").map(String::as_str), Some("front"));
    assert_eq!(a.dst.pod, "api-1");
    assert_eq!(a.dst.service, "shop/api");
    assert_eq!(a.verdict, Verdict::Forwarded);
    assert_eq!(a.egress_rule, None);
    let ing = a.ingress_rule.as_ref().unwrap();
    assert_eq!(
        (ing.kind.as_str(), ing.name.as_str(), ing.tier.as_str()),
        ("NetworkPolicy", "api-allow", "Admin")
    );
    assert_eq!(
        (a.packets_forward, a.bytes_forward, a.packets_reverse),
        (3, 180, 2)
    );
    assert_eq!(b.src.ip, Some("fd00::7".parse().unwrap()));
    assert_eq!(b.src.workload, "world");
    assert_eq!(
        (b.verdict, b.drop_reason, b.count),
        (Verdict::Dropped, 1, 17)
    );
    assert_eq!(b.egress_rule.as_ref().unwrap().rule_index, 3);
    assert_eq!(b.ingress_rule.as_ref().unwrap().rule_index, -1);
    // The migrated store takes new records and answers filtered queries on the new schema.
    drop(s);
    let mut s = Store::open(&path, Retention::default()).unwrap();
    s.write(&shop()).unwrap();
    assert_eq!(s.len().unwrap(), 6);
    let q = only(FlowFilter {
        to_pod: vec![Named::parse("to-pod", "shop/api-1").unwrap()],
        ..FlowFilter::default()
    });
    assert_eq!(
        {
            let mut p = pods(&s.query(&q).unwrap());
            p.sort();
            p
        },
        ["fd00::7>api-1", "web-1>api-1"]
    );
}

#[test]
fn aggregates_answer_who_talks_and_what_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    s.write(&shop()).unwrap();
    let top = s.top_talkers(&Query::default(), 2).unwrap();
    assert_eq!(top[0].from, "shop/web-0");
    assert_eq!(top[0].to, "shop/api-0");
    assert_eq!(top[0].bytes, 6000);
    assert_eq!(top.len(), 2);
    let denied = s.denied_by_policy(&Query::default()).unwrap();
    let by: BTreeMap<_, _> = denied
        .iter()
        .map(|d| (d.policy.as_str(), (d.flows, d.events)))
        .collect();
    assert_eq!(
        by["default deny NetworkPolicy shop/db-from-api"],
        (1, 7),
        "{denied:?}"
    );
    assert_eq!(by["default deny NetworkPolicy shop/web-from-world"], (1, 1));
    let edges = s.edges(&Query::default()).unwrap();
    let e: Vec<(String, String, u16, u64, u64)> = edges
        .iter()
        .map(|e| (e.from.clone(), e.to.clone(), e.port, e.forwarded, e.dropped))
        .collect();
    assert_eq!(
        e,
        vec![
            ("192.0.2.7".into(), "shop/Deployment/web".into(), 80, 0, 1),
            ("shop/Deployment/api".into(), "shop/db".into(), 5432, 1, 0),
            (
                "shop/Deployment/web".into(),
                "shop/Deployment/api".into(),
                8080,
                1,
                0
            ),
            (
                "shop/Deployment/web".into(),
                "shop/Deployment/db".into(),
                5432,
                0,
                1
            ),
        ]
    );
}

/// The child of [`kill_9_during_ingest_loses_no_committed_flow`]: writes batches forever,
/// printing the count committed after each.
#[test]
fn child_writer() {
    let Ok(path) = std::env::var("SEPTUM_FLOWLOG_CHILD_STORE") else {
        return;
    };
    let start: i64 = std::env::var("SEPTUM_FLOWLOG_CHILD_START")
        .unwrap()
        .parse()
        .unwrap();
    let mut s = Store::open(path.as_ref(), Retention::default()).unwrap();
    let base = shop().remove(0);
    let mut n = start;
    loop {
        let batch: Vec<FlowRecord> = (0..200)
            .map(|i| {
                let mut r = base.clone();
                r.first_seen_ms = T0 + n + i;
                r.last_seen_ms = T0 + n + i;
                r
            })
            .collect();
        s.write(&batch).unwrap();
        n += 200;
        println!("committed {n}");
    }
}

#[test]
fn kill_9_during_ingest_loses_no_committed_flow() {
    let kills: usize = std::env::var("SEPTUM_FLOWLOG_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    let mut committed = 0i64;
    for round in 0..kills {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("SEPTUM_FLOWLOG_CHILD_STORE", &path)
            .env("SEPTUM_FLOWLOG_CHILD_START", committed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it commit a few batches (a different number each round), then kill it mid-write.
        let mut seen = committed;
        for _ in 0..(3 + round % 5) {
            let line = lines.next().expect("the writer runs").unwrap();
            if let Some(n) = line.strip_prefix("committed ") {
                seen = n.parse().unwrap();
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let s = Store::open(&path, Retention::default())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        let n = s.len().unwrap() as i64;
        assert!(
            n >= seen,
            "round {round}: {seen} reported committed, {n} in the store"
        );
        // Every committed record is there: one per millisecond below the reported count.
        let below = Query {
            until_ms: Some(T0 + seen),
            ..Query::default()
        };
        assert_eq!(
            s.query(&below).unwrap().len() as i64,
            seen,
            "round {round}: committed records missing"
        );
        committed = n;
    }
    assert!(committed > 0);
    eprintln!("{kills} kills, {committed} records committed, none lost");
}
