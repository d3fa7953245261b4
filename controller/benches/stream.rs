//! `cargo bench -p septum-controller --bench stream [-- PODS POLICIES NODES]` (default 10000 1000
//! 100): the real controller against the scripted API server of the tests, its node-state
//! stream over mutual TLS on loopback, and one acking stream client per node (decoding every
//! update as an agent does, without a kernel).
//!
//! Prints, for the full sync: time from the controller's start to every node's snapshot being
//! acked, the heap it grew by (a counting allocator; the API server's own objects excluded),
//! snapshot bytes per node; beside it, the baseline of compiling the same model from scratch
//! with `septum_policy::compile` alone. Then, per kind of change (pod relabel, policy edit,
//! namespace relabel): nodes reached, bytes per reached node, and latency from the API change to
//! the last ack; beside it, the baseline of sending every reached node its whole snapshot.
//!
//! Synthetic cluster: 100 pods per namespace, 10 apps of 10 replicas each, pods spread over the
//! nodes round-robin; each policy selects one app and admits another app of its namespace on
//! port 8080 and a team's namespaces on the named port `http`.

#[path = "../tests/fake_api/mod.rs"]
mod fake_api;
#[path = "../tests/pki/mod.rs"]
mod pki;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use pki::Pki;
use septum_controller::{Context, Controller};
use septum_proto::nodestate::v1 as pb;
use serde_json::{Value, json};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only adds counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn meta(ns: Option<&str>, name: &str, labels: Value) -> Value {
    let mut m =
        json!({"name": name, "labels": labels, "uid": format!("uid-{name}"), "generation": 1});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

fn pod(ns: usize, i: usize, app: usize, nodes: usize) -> Value {
    let n = ns * 100 + i;
    let ip = format!("10.{}.{}.{}", 64 + n / 65536, (n / 256) % 256, n % 256);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": meta(Some(&format!("ns{ns}")), &format!("p{i}"), json!({"app": format!("app{app}")})),
        "spec": {"nodeName": format!("node{}", n % nodes),
            "containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}})
}

fn policy(j: usize, port: u16) -> Value {
    let ns = format!("ns{}", j / 10);
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": meta(Some(&ns), &format!("np{j}"), json!({})),
        "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", j % 10)}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (j + 1) % 10)}}}],
                 "ports": [{"port": port}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 7)}}}],
                 "ports": [{"port": "http"}]}]}})
}

fn namespace(ns: usize, team: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": meta(None, &format!("ns{ns}"), json!({"team": format!("t{team}")}))})
}

fn seed(api: &FakeApi, pods: usize, policies: usize, nodes: usize) {
    let namespaces = (pods / 100).max(1);
    for ns in 0..namespaces {
        api.put_silently("namespaces", namespace(ns, ns % 7));
        for i in 0..100.min(pods) {
            api.put_silently("pods", pod(ns, i, i % 10, nodes));
        }
    }
    for n in 0..nodes {
        api.put_silently(
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": meta(None, &format!("node{n}"), json!({})),
                "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 256, n % 256)}]}}),
        );
    }
    for j in 0..policies {
        api.put_silently("networkpolicies", policy(j, 8080));
    }
}

/// Per node: the last revision received, and when.
type Seen = Arc<Mutex<BTreeMap<String, (u64, Instant)>>>;

async fn agent(addr: SocketAddr, pki: &Pki, node: String, seen: Seen) {
    let (cert, key) = pki.issue(&node);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca.pem()))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut client = pb::node_state_service_client::NodeStateServiceClient::new(channel)
        .max_decoding_message_size(256 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: node.clone(),
            ..pb::Hello::default()
        })),
    })
    .await
    .expect("hello");
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(u)) = stream.message().await {
            let decoded = septum_policy::wire::decode(&u).expect("a valid update");
            seen.lock()
                .expect("lock")
                .insert(node.clone(), (decoded.revision, Instant::now()));
            let _ = tx
                .send(pb::AgentMessage {
                    kind: Some(pb::agent_message::Kind::Ack(pb::Ack {
                        epoch: u.epoch,
                        revision: u.revision,
                        error: String::new(),
                    })),
                })
                .await;
        }
    });
}

fn revisions(ctx: &Context) -> BTreeMap<String, u64> {
    ctx.published()
        .nodes()
        .map(|(n, r)| (n.clone(), r))
        .collect()
}

/// Waits until every node whose revision moved past `before` has acked its current revision.
async fn acked(
    ctx: &Context,
    before: &BTreeMap<String, u64>,
    started: Instant,
) -> (Duration, usize) {
    loop {
        let now = revisions(ctx);
        let moved: Vec<_> = now
            .iter()
            .filter(|(n, r)| before.get(*n) != Some(r))
            .collect();
        if !moved.is_empty() && moved.iter().all(|(n, r)| ctx.published().acked(n) >= **r) {
            return (started.elapsed(), moved.len());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no acks after the change"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn snapshot_bytes(ctx: &Context, node: &str) -> usize {
    use prost::Message as _;
    let r = ctx.node_state(node).expect("a published node");
    septum_policy::wire::encode(&septum_policy::wire::Update::snapshot(
        1, r.revision, &r.state,
    ))
    .encoded_len()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (pods, policies, nodes) = match args.as_slice() {
        [p, q, n, ..] => (*p, *q, *n),
        _ => (10_000, 1_000, 100),
    };
    println!("controller stream bench: {pods} pods, {policies} policies, {nodes} nodes");
    let pki = Pki::new();
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api, pods, policies, nodes);
    let heap_before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(heap_before, Ordering::Relaxed);

    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    let controller = Controller::new(client);
    let ctx = controller.context();
    tokio::spawn(async move { controller.run().await.expect("controller") });
    tokio::spawn(septum_controller::stream::serve(
        ctx.clone(),
        listener,
        pki.server_tls(),
    ));
    let seen: Seen = Arc::default();
    for n in 0..nodes {
        agent(addr, &pki, format!("node{n}"), seen.clone()).await;
    }
    let connected = started.elapsed();
    while !ctx.is_synced() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let compiled = started.elapsed();
    loop {
        let all = (0..nodes).all(|n| {
            let name = format!("node{n}");
            let r = ctx.published().revision(&name);
            r > 0 && ctx.published().acked(&name) >= r
        });
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sync = started.elapsed();
    let heap_peak = PEAK.load(Ordering::Relaxed) - heap_before;
    let heap_after = CURRENT.load(Ordering::Relaxed).saturating_sub(heap_before);
    let bytes = ctx.metrics.stream_update_bytes.get() as usize;
    let model = ctx
        .with_compiler(|c| c.engine().map(|e| e.cluster().clone()))
        .flatten()
        .expect("compiled model");
    let t = Instant::now();
    let (state, _) = septum_policy::compile(&model, septum_policy::InMemoryAllocations::new());
    let compile_only = t.elapsed();
    println!(
        "full sync: {:>8.1} ms to every node's ack ({:.1} ms to listed + compiled + node states; the {nodes} agents' TLS connects done at {:.1} ms); heap +{:.1} MiB peak, +{:.1} MiB held; {} policy entries cluster-wide",
        sync.as_secs_f64() * 1e3,
        compiled.as_secs_f64() * 1e3,
        connected.as_secs_f64() * 1e3,
        mib(heap_peak),
        mib(heap_after),
        state.policy.len()
    );
    println!(
        "  baseline: septum_policy::compile of the same model alone: {:.1} ms",
        compile_only.as_secs_f64() * 1e3
    );
    println!(
        "  snapshots: {:.1} KiB per node on the wire ({:.1} MiB for all nodes)",
        bytes as f64 / nodes as f64 / 1024.0,
        mib(bytes)
    );

    type Change = Box<dyn Fn(&FakeApi, usize)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "pod relabel",
            Box::new(move |api: &FakeApi, round| {
                let app = if round % 2 == 0 { 5 } else { 0 };
                api.put("pods", pod(0, 0, app, nodes));
            }),
        ),
        (
            "policy edit (port)",
            Box::new(|api: &FakeApi, round| {
                api.put("networkpolicies", policy(3, 9000 + round as u16));
            }),
        ),
        (
            "namespace relabel",
            Box::new(|api: &FakeApi, round| {
                api.put(
                    "namespaces",
                    namespace(1, if round % 2 == 0 { 6 } else { 1 }),
                );
            }),
        ),
    ];
    println!(
        "{:<20} {:>6} {:>14} {:>14} {:>16}",
        "change", "nodes", "bytes/node", "snapshot/node", "latency to ack"
    );
    for (name, change) in &changes {
        let mut lat = Vec::new();
        let mut per_node = Vec::new();
        let mut snap = Vec::new();
        let mut reached = 0;
        for round in 0..7 {
            let before = revisions(&ctx);
            let bytes0 = ctx.metrics.stream_update_bytes.get();
            let t = Instant::now();
            change(&api, round);
            let (d, n) = acked(&ctx, &before, t).await;
            let bytes = ctx.metrics.stream_update_bytes.get() - bytes0;
            lat.push(d);
            per_node.push(bytes as usize / n);
            let moved: Vec<String> = revisions(&ctx)
                .into_iter()
                .filter(|(k, r)| before.get(k) != Some(r))
                .map(|(k, _)| k)
                .collect();
            snap.push(moved.iter().map(|m| snapshot_bytes(&ctx, m)).sum::<usize>() / n);
            reached = n;
        }
        lat.sort();
        per_node.sort();
        snap.sort();
        println!(
            "{:<20} {:>6} {:>12} B {:>12} B {:>13.2} ms",
            name,
            reached,
            per_node[per_node.len() / 2],
            snap[snap.len() / 2],
            lat[lat.len() / 2].as_secs_f64() * 1e3
        );
    }
    let _ = seen;
}
