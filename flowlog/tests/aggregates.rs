//! The aggregates (`top_talkers`, `edges`) sum rows in memory; this checks them, on random
//! stores (proptest, shrinking to a minimal set of records), against the same aggregates
//! written as plain SQL GROUP BY queries over the same file.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use septum_flowlog::store::{Retention, Store};
use septum_flowlog::{FlowEnd, FlowFilter, FlowRecord, Point, Query, Verdict};

const T0: i64 = 1_800_000_000_000;

/// A few pods (some with a workload, one with a Service), and outside addresses of both
/// families, so that groups collide.
fn end() -> impl Strategy<Value = FlowEnd> {
    prop_oneof![
        (0usize..4, 0usize..3, any::<bool>(), 0u16..3).prop_map(|(p, w, svc, port)| {
            let ns = if p == 3 { "other" } else { "shop" };
            FlowEnd {
                ip: Some(format!("10.0.0.{}", p + 1).parse().unwrap()),
                port: 8000 + port,
                namespace: ns.into(),
                pod: format!("pod-{p}").into(),
                workload: if w == 0 {
                    String::new().into()
                } else {
                    format!("Deployment/app-{w}").into()
                },
                labels: BTreeMap::from([("app".to_string(), format!("a{w}"))]).into(),
                identity: 1000 + p as u32,
                service: if svc && p == 0 {
                    "shop/api".to_string().into()
                } else {
                    String::new().into()
                },
            }
        }),
        (
            prop_oneof![Just("192.0.2.7"), Just("192.0.2.8"), Just("2001:db8::1")],
            0u16..2
        )
            .prop_map(|(ip, port)| FlowEnd {
                ip: Some(ip.parse().unwrap()),
                port: 443 + port,
                identity: 2,
                ..FlowEnd::default()
            }),
    ]
}

fn record() -> impl Strategy<Value = FlowRecord> {
    (
        end(),
        end(),
        0i64..10,
        prop_oneof![
            Just(Verdict::Forwarded),
            Just(Verdict::Dropped),
            Just(Verdict::Audit)
        ],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0u64), Just(100), Just(1000)],
        prop_oneof![Just(6u8), Just(17u8)],
    )
        .prop_map(
            |(src, dst, t, verdict, from_pod, is_reply, bytes, protocol)| FlowRecord {
                first_seen_ms: T0 + t,
                last_seen_ms: T0 + t,
                node: "node-1".into(),
                point: if from_pod {
                    Point::FromPod
                } else {
                    Point::ToPod
                },
                protocol,
                src,
                dst,
                verdict,
                drop_reason: u8::from(verdict == Verdict::Dropped),
                egress_rule: None,
                ingress_rule: None,
                tcp_flags: 0,
                packets_forward: 1,
                bytes_forward: bytes,
                packets_reverse: 0,
                bytes_reverse: bytes / 2,
                is_reply,
                count: 1,
            },
        )
}

fn hex_to_ip(s: String) -> String {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    match bytes {
        Some(b) if b.len() == 4 => IpAddr::from(<[u8; 4]>::try_from(b).unwrap()).to_string(),
        Some(b) if b.len() == 16 => IpAddr::from(<[u8; 16]>::try_from(b).unwrap()).to_string(),
        _ => s,
    }
}

const TOP_SQL: &str = "SELECT CASE WHEN s.pod != '' THEN s.ns || '/' || s.pod ELSE hex(f.src_ip) END AS fr, \
       CASE WHEN d.pod != '' THEN d.ns || '/' || d.pod ELSE hex(f.dst_ip) END AS t, \
       count(*), sum(f.bytes_fwd + f.bytes_rev) AS bytes \
     FROM flows f JOIN endpoints s ON s.id = f.src_ep JOIN endpoints d ON d.id = f.dst_ep \
     WHERE f.last_ms >= ? GROUP BY fr, t ORDER BY bytes DESC, fr, t LIMIT ?";

const EDGES_SQL: &str = "SELECT \
       CASE WHEN s.workload != '' AND s.ns != '' THEN s.ns || '/' || s.workload \
            WHEN s.workload != '' THEN s.workload \
            WHEN s.pod != '' THEN s.ns || '/' || s.pod ELSE hex(f.src_ip) END AS fr, \
       CASE WHEN d.service != '' THEN d.service \
            WHEN d.workload != '' AND d.ns != '' THEN d.ns || '/' || d.workload \
            WHEN d.workload != '' THEN d.workload \
            WHEN d.pod != '' THEN d.ns || '/' || d.pod ELSE hex(f.dst_ip) END AS t, \
       f.dst_port, f.protocol, sum(f.verdict = 1), sum(f.verdict = 2), sum(f.verdict = 3), \
       sum(f.bytes_fwd + f.bytes_rev) \
     FROM flows f JOIN endpoints s ON s.id = f.src_ep JOIN endpoints d ON d.id = f.dst_ep \
     WHERE f.last_ms >= ? AND f.is_reply = 0 AND NOT (f.point = 1 AND f.verdict != 2 AND d.pod != '') \
     GROUP BY fr, t, f.dst_port, f.protocol ORDER BY fr, t, f.dst_port, f.protocol";

type TopRow = (String, String, u64, u64);
type EdgeRow = (String, String, u16, u8, u64, u64, u64, u64);

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn in_memory_aggregates_equal_sql_group_by(
        records in proptest::collection::vec(record(), 0..60),
        since in 0i64..6,
        n in 1u32..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let mut store = Store::open(&path, Retention::default()).unwrap();
        store.write(&records).unwrap();
        let q = Query { since_ms: Some(T0 + since), ..Query::default() };
        // The same question through a filter the store turns into SQL, too.
        let q_filtered = Query {
            exclude: vec![FlowFilter { verdict: vec![Verdict::Audit], ..FlowFilter::default() }],
            ..q.clone()
        };
        let raw = rusqlite::Connection::open(&path).unwrap();

        let top: Vec<TopRow> = store.top_talkers(&q, n).unwrap().into_iter()
            .map(|t| (t.from, t.to, t.flows, t.bytes)).collect();
        let want: Vec<TopRow> = raw.prepare(TOP_SQL).unwrap()
            .query_map(rusqlite::params![T0 + since, n], |r| Ok((
                hex_to_ip(r.get(0)?), hex_to_ip(r.get(1)?),
                r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64,
            ))).unwrap().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(top, want);

        let edges: Vec<EdgeRow> = store.edges(&q).unwrap().into_iter()
            .map(|e| (e.from, e.to, e.port, e.protocol, e.forwarded, e.dropped, e.audit, e.bytes))
            .collect();
        let want: Vec<EdgeRow> = raw.prepare(EDGES_SQL).unwrap()
            .query_map([T0 + since], |r| Ok((
                hex_to_ip(r.get(0)?), hex_to_ip(r.get(1)?),
                r.get::<_, i64>(2)? as u16, r.get::<_, i64>(3)? as u8,
                r.get::<_, i64>(4)? as u64, r.get::<_, i64>(5)? as u64,
                r.get::<_, i64>(6)? as u64, r.get::<_, i64>(7)? as u64,
            ))).unwrap().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(edges, want);

        // With a filter: no audit rows in either aggregate.
        let filtered = store.edges(&q_filtered).unwrap();
        prop_assert!(filtered.iter().all(|e| e.audit == 0), "{:?}", filtered);
    }
}
