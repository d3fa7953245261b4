//! Live subscribers filter in memory (`Query::matches`), stored queries in SQL (`Query::to_sql`):
//! for any records and any query the two must select exactly the same flows, or `--follow` and a
//! query over the same window would disagree. Property-tested against a real SQLite store, so a
//! disagreement shrinks to one record and one filter.

use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;
use septum_flowlog::filter::{LabelMatch, Named, Prefix};
use septum_flowlog::store::{Retention, Store};
use septum_flowlog::{
    FlowEnd, FlowFilter, FlowRecord, Labels, Name, Point, Query, RuleRef, Verdict,
};

const NAMESPACES: [&str; 3] = ["shop", "ops", "kube-system"];
const PODS: [&str; 3] = ["web-0", "api-0", "db-0"];
const APPS: [&str; 3] = ["web", "api", "db"];
const IPS: [&str; 4] = ["10.0.0.10", "10.0.1.20", "192.168.5.5", "fd00::7"];
const PREFIXES: [&str; 5] = [
    "10.0.0.0/8",
    "10.0.0.0/24",
    "192.168.5.5",
    "fd00::/64",
    "::/0",
];
const PORTS: [u16; 3] = [80, 5432, 40000];
const SERVICES: [&str; 3] = ["", "shop/api", "ops/api"];
const NODES: [&str; 2] = ["node-a", "node-b"];

fn end() -> impl Strategy<Value = FlowEnd> {
    (
        proptest::option::of(0..IPS.len()),
        0..PORTS.len(),
        proptest::option::of((0..NAMESPACES.len(), 0..PODS.len())),
        proptest::collection::btree_map(
            prop_oneof![Just("app".to_string()), Just("tier".to_string())],
            prop_oneof![
                (0..APPS.len()).prop_map(|i| APPS[i].to_string()),
                Just(String::new())
            ],
            0..3,
        ),
        0..SERVICES.len(),
    )
        .prop_map(|(ip, port, pod, labels, service)| FlowEnd {
            ip: ip.map(|i| IPS[i].parse::<IpAddr>().unwrap()),
            port: PORTS[port],
            namespace: pod.map_or(Name::EMPTY, |(n, _)| NAMESPACES[n].into()),
            pod: pod.map_or(Name::EMPTY, |(_, p)| PODS[p].into()),
            workload: Name::EMPTY,
            labels: if pod.is_some() {
                labels.into()
            } else {
                Labels::default()
            },
            identity: 1000,
            service: SERVICES[service].into(),
        })
}

fn rule() -> impl Strategy<Value = Option<RuleRef>> {
    proptest::option::of(
        (0..2usize, 0..NAMESPACES.len()).prop_map(|(name, ns)| RuleRef {
            kind: "NetworkPolicy".into(),
            namespace: if name == 0 {
                NAMESPACES[ns].into()
            } else {
                String::new()
            },
            name: ["allow-web", "deny-all"][name].into(),
            tier: String::new(),
            rule_index: 0,
        }),
    )
}

fn record() -> impl Strategy<Value = FlowRecord> {
    (
        (0i64..10, 0..NODES.len(), prop_oneof![Just(6u8), Just(17u8)]),
        end(),
        end(),
        prop_oneof![
            Just(Verdict::Forwarded),
            Just(Verdict::Dropped),
            Just(Verdict::Audit)
        ],
        (0u8..3, rule(), rule()),
    )
        .prop_map(
            |((t, node, protocol), src, dst, verdict, (drop_reason, eg, ing))| FlowRecord {
                first_seen_ms: 1_000 + t,
                last_seen_ms: 1_000 + t,
                node: NODES[node].into(),
                point: Point::ToPod,
                protocol,
                src,
                dst,
                verdict,
                drop_reason,
                egress_rule: eg.map(Arc::new),
                ingress_rule: ing.map(Arc::new),
                tcp_flags: 0,
                packets_forward: 1,
                bytes_forward: 60,
                packets_reverse: 0,
                bytes_reverse: 0,
                is_reply: false,
                count: 1,
            },
        )
}

fn named(field: &'static str) -> impl Strategy<Value = Named> {
    (proptest::option::of(0..NAMESPACES.len()), 0..PODS.len()).prop_map(move |(ns, p)| {
        let text = match ns {
            Some(n) => format!("{}/{}", NAMESPACES[n], PODS[p]),
            None => PODS[p].to_string(),
        };
        Named::parse(field, &text).unwrap()
    })
}

fn label() -> impl Strategy<Value = LabelMatch> {
    (
        prop_oneof![Just("app"), Just("tier")],
        proptest::option::of(prop_oneof![Just("web"), Just("db"), Just("")]),
    )
        .prop_map(|(k, v)| {
            let text = match v {
                Some(v) => format!("{k}={v}"),
                None => k.to_string(),
            };
            LabelMatch::parse("from-label", &text).unwrap()
        })
}

fn few<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    // Mostly empty, so that filters combine a few fields rather than all of them.
    prop_oneof![
        3 => Just(Vec::new()),
        1 => proptest::collection::vec(s, 1..3),
    ]
}

fn filter() -> impl Strategy<Value = FlowFilter> {
    let ns = || (0..NAMESPACES.len()).prop_map(|i| NAMESPACES[i].to_string());
    let prefix = || (0..PREFIXES.len()).prop_map(|i| Prefix::parse("ip", PREFIXES[i]).unwrap());
    let port = || (0..PORTS.len()).prop_map(|i| PORTS[i]);
    (
        (
            few(named("from-pod")),
            few(named("to-pod")),
            few(named("pod")),
        ),
        (few(ns()), few(ns()), few(ns())),
        (few(prefix()), few(prefix()), few(prefix())),
        (few(label()), few(label())),
        (
            few(prop_oneof![
                named("to-service"),
                Just(Named::parse("to-service", "shop/api").unwrap()),
                Just(Named::parse("to-service", "api").unwrap()),
            ]),
            few(port()),
            few(port()),
            few(prop_oneof![Just(6u8), Just(17u8), Just(1u8)]),
        ),
        (
            few(prop_oneof![
                Just(Verdict::Forwarded),
                Just(Verdict::Dropped),
                Just(Verdict::Audit)
            ]),
            few(0u8..3),
            few(prop_oneof![
                Just(Named::parse("policy", "shop/allow-web").unwrap()),
                Just(Named::parse("policy", "deny-all").unwrap()),
                Just(Named::parse("policy", "allow-web").unwrap()),
            ]),
            few((0..NODES.len()).prop_map(|i| NODES[i].to_string())),
        ),
    )
        .prop_map(
            |(
                (from_pod, to_pod, pod),
                (from_namespace, to_namespace, namespace),
                (from_ip, to_ip, ip),
                (from_label, to_label),
                (to_service, port, to_port, protocol),
                (verdict, drop_reason, policy, node),
            )| FlowFilter {
                from_pod,
                to_pod,
                pod,
                from_namespace,
                to_namespace,
                namespace,
                from_ip,
                to_ip,
                ip,
                from_label,
                to_label,
                to_service,
                port,
                to_port,
                protocol,
                verdict,
                drop_reason,
                policy,
                node,
            },
        )
}

fn query() -> impl Strategy<Value = Query> {
    (
        proptest::collection::vec(filter(), 0..3),
        proptest::collection::vec(filter(), 0..2),
        proptest::option::of(1_000i64..1_010),
        proptest::option::of(1_005i64..1_012),
    )
        .prop_filter("since <= until", |(_, _, s, u)| match (s, u) {
            (Some(s), Some(u)) => s <= u,
            _ => true,
        })
        .prop_map(|(include, exclude, since_ms, until_ms)| Query {
            include,
            exclude,
            since_ms,
            until_ms,
            ..Query::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn live_matching_selects_what_the_store_selects(
        records in proptest::collection::vec(record(), 1..24),
        q in query(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("flows.db"), Retention::default()).unwrap();
        // Distinct start times: the store keeps one row per connection (tuple + first seen).
        let records: Vec<FlowRecord> = records
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.first_seen_ms = i as i64;
                r
            })
            .collect();
        store.write(&records).unwrap();
        let mut from_store = store.query(&Query { first: true, ..q.clone() }).unwrap();
        from_store.sort_by_key(|r| r.first_seen_ms);
        let live: Vec<FlowRecord> = records.iter().filter(|r| q.matches(r)).cloned().collect();
        let ids = |v: &[FlowRecord]| v.iter().map(|r| r.first_seen_ms).collect::<Vec<_>>();
        prop_assert_eq!(ids(&from_store), ids(&live));
    }
}
