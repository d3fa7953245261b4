//! Nodes of the flow side of the agent for the relay's test and bench: each runs the agent's
//! real pipeline (flow events -> enrichment -> aggregation -> a SQLite store) and its
//! `FlowService` over TLS with the node's certificate, on its own runtime; and node-state stream
//! sessions that advertise a flow API in their Hello, as a cluster-mode agent does.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use septum_agent::flows::Enricher;
use septum_agent::flows::pipeline::{FlowHub, FlowSettings, Ingest, mono_ns};
use septum_agent::flows::service::FlowApi;
use septum_datapath_common::{FAMILY_IPV4, FlowEvent, proto};
use septum_flowlog::Retention;
use septum_policy::model::{Cluster, Pod};
use septum_policy::state::ClusterState;
use septum_proto::flow::v1 as fpb;
use septum_proto::nodestate::v1 as pb;
use tokio_stream::StreamExt as _;

use septum_controller::relay::{Relay, RelaySettings};
use septum_controller::{Context, Controller};

use super::pki::Pki;

/// client on node-a; web and db on node-b; cache on node-c (whose agent never connects).
pub const PODS: [(&str, &str, &str, &str); 4] = [
    ("shop", "client", "10.200.1.2", "node-a"),
    ("shop", "web", "10.200.0.2", "node-b"),
    ("team", "db", "10.200.3.2", "node-b"),
    ("shop", "cache", "10.200.2.2", "node-c"),
];

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn free_port() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("address")
}

pub fn ip4(s: &str) -> [u8; 16] {
    let a: std::net::Ipv4Addr = s.parse().expect("address");
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

/// A flow event `ms_ago` milliseconds ago from pod `from` to pod `to` on `port`.
pub fn event(point: u8, from: &str, to: &str, port: u16, dropped: bool, ms_ago: u64) -> FlowEvent {
    let ip = |name: &str| {
        PODS.iter()
            .find(|p| p.1 == name)
            .map(|p| ip4(p.2))
            .expect("a pod of PODS")
    };
    FlowEvent {
        timestamp_ns: mono_ns() - ms_ago * 1_000_000,
        saddr: ip(from),
        daddr: ip(to),
        sport: 40_000 + port,
        dport: port,
        family: FAMILY_IPV4,
        protocol: proto::TCP,
        point,
        verdict: if dropped { 2 } else { 1 },
        drop_reason: u8::from(dropped),
        packet_len: 100,
        tcp_flags: 0x02,
        ..FlowEvent::default()
    }
}

/// One node's flow side: the pipeline into its store, and its TLS flow API.
pub struct FlowNode {
    pub name: String,
    pub hub: Arc<FlowHub>,
    ingest: Option<Ingest>,
    pub url: String,
    /// The flow API's own runtime: shutting it down ends the server and every connection, as
    /// the agent's exit would.
    server: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl FlowNode {
    pub async fn start(name: &str, pki: &Pki) -> Self {
        let mut cluster = Cluster::default();
        for (ns, pod, ip, _) in PODS {
            let p = Pod {
                namespace: ns.into(),
                name: pod.into(),
                labels: [("app".to_string(), pod.to_string())].into(),
                ips: vec![ip.parse().expect("address")],
                service_account: "default".into(),
                workload: Some(format!("Deployment/{pod}")),
                ..Pod::default()
            };
            cluster.pods.insert(p.key(), p);
        }
        let enricher = Enricher::build(name, &cluster, &ClusterState::default(), None);
        let dir = tempfile::tempdir().expect("store dir");
        let store = dir.path().join("flows.db");
        let retention = Retention {
            max_age_ms: None,
            max_bytes: None,
        };
        let hub = Arc::new(FlowHub::new(
            name,
            store.clone(),
            retention,
            Arc::new(RwLock::new(Arc::new(enricher))),
        ));
        let settings = FlowSettings {
            store,
            retention,
            jsonl: None,
            otlp: None,
            aggregation: Default::default(),
        };
        let ingest = Ingest::start(hub.clone(), &settings, None).expect("pipeline");
        let addr = free_port();
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("flow API runtime");
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let server = tonic::transport::Server::builder()
            .tls_config(pki.server_tls_for(name))
            .expect("TLS")
            .add_service(fpb::flow_service_server::FlowServiceServer::new(
                FlowApi::new(hub.clone()),
            ))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            );
        runtime.spawn(async move {
            let _ = server.await;
        });
        drop(_guard);
        Self {
            name: name.into(),
            hub,
            ingest: Some(ingest),
            url: format!("https://{addr}"),
            server: Some(runtime),
            _dir: dir,
        }
    }

    /// Feeds events through the pipeline and waits until the store holds `stored` records.
    pub async fn record(&mut self, events: &[FlowEvent], stored: u64) {
        let ingest = self.ingest.as_mut().expect("running");
        ingest.take(events);
        ingest.flush();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let hub = self.hub.clone();
            let n = tokio::task::spawn_blocking(move || hub.with_reader(|s| s.len()))
                .await
                .expect("store task")
                .unwrap_or(0);
            if n == stored {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {n} records stored, want {stored}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl FlowNode {
    /// Ends the flow API and its connections.
    pub fn stop(&mut self) {
        if let Some(r) = self.server.take() {
            r.shutdown_background();
        }
    }
}

impl Drop for FlowNode {
    fn drop(&mut self) {
        self.stop();
        if let Some(i) = self.ingest.take() {
            i.finish();
        }
    }
}

/// A node-state stream session with `node`'s certificate, advertising `flow_api`. It runs on
/// its own runtime: dropping the session closes its connection, as the agent's exit would.
pub fn connect_agent(stream: SocketAddr, pki: &Pki, node: &str, flow_api: &str) -> Session {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("session runtime");
    let tls = pki.client_tls(Some(node), "localhost");
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: node.into(),
            flow_api_url: flow_api.into(),
            ..pb::Hello::default()
        })),
    };
    runtime.spawn(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{stream}"))
            .expect("URL")
            .tls_config(tls)
            .expect("TLS")
            .connect()
            .await
            .expect("connecting to the stream");
        let mut client = pb::node_state_service_client::NodeStateServiceClient::new(channel);
        let mut updates = client
            .subscribe(tokio_stream::iter(vec![hello]).chain(tokio_stream::pending()))
            .await
            .expect("subscribed")
            .into_inner();
        while let Ok(Some(_)) = updates.message().await {}
    });
    Session(Some(runtime))
}

pub struct Session(Option<tokio::runtime::Runtime>);

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.shutdown_background();
        }
    }
}

/// The controller (fed by `client`) with its node-state stream and its relay, each on a free
/// loopback port; everything stops when this is dropped.
pub struct RelayController {
    pub ctx: Arc<Context>,
    pub stream_addr: SocketAddr,
    pub relay_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RelayController {
    pub async fn start(client: kube::Client, pki: &Pki, timeout: Duration) -> Self {
        let controller = Controller::new(client);
        let ctx = controller.context();
        let mut tasks = vec![tokio::spawn(async move {
            let _ = controller.run().await;
        })];
        let stream_addr = free_port();
        let listener = tokio::net::TcpListener::bind(stream_addr)
            .await
            .expect("bind");
        let stream = septum_controller::stream::serve(ctx.clone(), listener, pki.server_tls());
        tasks.push(tokio::spawn(async move {
            let _ = stream.await;
        }));
        let relay_addr = free_port();
        let listener = tokio::net::TcpListener::bind(relay_addr)
            .await
            .expect("bind");
        let relay = Relay::new(
            ctx.clone(),
            RelaySettings {
                tls: pki.client_tls(Some("septum-controller"), "unused"),
                timeout,
            },
        );
        let served = septum_controller::relay::serve(relay, listener, pki.server_tls());
        tasks.push(tokio::spawn(async move {
            let _ = served.await;
        }));
        Self {
            ctx,
            stream_addr,
            relay_addr,
            tasks,
        }
    }
}

impl Drop for RelayController {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
