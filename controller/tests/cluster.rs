//! The cluster path end to end: the controller, fed by the scripted API server, streams node
//! states over mutual TLS to real agents, each enforcing real pods (network namespaces, veth
//! pairs, the eBPF datapath loaded into this kernel, its own pinned maps) on its own node
//! namespace. Checked: both kernels hold exactly what the controller computed for their node;
//! a policy change in the API reaches both kernels and real TCP traffic obeys it; FlowPolicy
//! status counts the nodes whose agent acked; the agents keep enforcing while the controller is
//! down and a restarted controller (new epoch) rewrites nothing; agents without a valid client
//! certificate, or claiming another node, are refused.
//!
//! Needs root (BPF, netns). The two "nodes" are two node namespaces in one kernel, each with its
//! own agent, pins and pods; they are not joined by a link here, so traffic is checked within a
//! node and cross-node policy through the maps.

mod fake_api;
mod pki;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use pki::Pki;
use septum_agent::cluster::{ClientSettings, run_client};
use septum_agent::reconcile::{MapContents, map_contents};
use septum_agent::{Agent, AgentConfig};
use septum_controller::{Context, Controller};
use septum_datapath::AttachMode;
use septum_proto::agent::v1 as apb;
use septum_proto::nodestate::v1 as pb;
use septum_tests::netns::Topology;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The controller and its stream server, on a fixed address so a restart reuses it. It runs on
/// its own runtime, so stopping it ends every task and connection it has, as a process exit
/// would.
struct RunningController {
    ctx: Arc<Context>,
    runtime: tokio::runtime::Runtime,
}

impl RunningController {
    async fn start(client: kube::Client, addr: SocketAddr, pki: &Pki) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("controller runtime");
        let controller = Controller::new(client);
        let ctx = controller.context();
        runtime.spawn(async move {
            if let Err(e) = controller.run().await {
                panic!("controller failed: {e}");
            }
        });
        let listener = bind_retrying(addr).await.into_std().expect("std listener");
        let tls = pki.server_tls();
        let server_ctx = ctx.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            septum_controller::stream::serve(server_ctx, listener, tls)
                .await
                .expect("stream server");
        });
        Self { ctx, runtime }
    }

    fn stop(self) {
        self.runtime.shutdown_background();
    }
}

async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    }
}

/// One node: its namespace with pods, an agent in cluster mode, its pins and state.
struct NodeWorld {
    name: String,
    topo: Topology,
    pins: PathBuf,
    _state: tempfile::TempDir,
    agent: Arc<Mutex<Agent>>,
    client: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for NodeWorld {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            c.abort();
        }
        let _ = septum_datapath::remove_pins(&self.pins);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn agent_config(
    node: &str,
    pins: &std::path::Path,
    state: &std::path::Path,
    url: &str,
    pki: &Pki,
) -> AgentConfig {
    let (cert, key) = pki.client_files(node);
    AgentConfig {
        manifests: Vec::new(),
        controller: Some(url.to_string()),
        controller_ca: Some(pki.ca_path()),
        controller_tls_cert: Some(cert),
        controller_tls_key: Some(key),
        controller_server_name: Some("localhost".into()),
        node_name: node.into(),
        state_dir: state.join("state"),
        socket: state.join("agent.sock"),
        pin_root: pins.to_path_buf(),
        attach_mode: AttachMode::detect(),
        health_addr: String::new(),
        migrate: false,
        flow_store: None,
        flow_retention: "24h".into(),
        flow_store_max_bytes: 1 << 30,
        flow_jsonl: None,
        flow_jsonl_max_bytes: 100 << 20,
        flow_jsonl_keep: 5,
        flow_otlp: None,
        flows_addr: None,
        flows_tls_cert: None,
        flows_tls_key: None,
        flows_tls_client_ca: None,
        flows_advertise: None,
        cni_conf_dir: None,
        cni_bin_dir: "/opt/cni/bin".into(),
        cni_plugin_binary: None,
    }
}

fn add_request(
    container: &str,
    pod: &septum_tests::netns::Pod,
    name: (&str, &str),
) -> apb::AddRequest {
    apb::AddRequest {
        attachment: Some(apb::Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
        }),
        network: "net".into(),
        netns: format!("/run/netns/{}", pod.ns.name),
        pod: Some(apb::PodRef {
            namespace: name.0.into(),
            name: name.1.into(),
            uid: String::new(),
        }),
        host_interface: Some(apb::HostInterface {
            ifindex: pod.host_ifindex,
            name: pod.host_if.clone(),
        }),
        container_interface: Some(apb::ContainerInterface {
            ifindex: 2,
            mac: vec![],
        }),
        ips: vec![pod.ip4.to_string()],
        timeout_ms: 5000,
    }
}

impl NodeWorld {
    /// A node namespace with `pods` pods (pod i at 10.200.i.2) of which `used` are registered
    /// with the agent as (pod index, namespace, name).
    fn new(node: &str, pods: usize, used: &[(usize, &str, &str)], url: &str, pki: &Pki) -> Self {
        let topo = Topology::new(pods).expect("node topology");
        let pins = PathBuf::from(format!("/sys/fs/bpf/sct-{}", topo.tag));
        let state = tempfile::tempdir().expect("state dir");
        let cfg = agent_config(node, &pins, state.path(), url, pki);
        let agent = topo.node.run(|| {
            let mut agent = Agent::start(cfg).expect("starting the agent");
            for (i, ns, name) in used {
                agent
                    .add(add_request(name, &topo.pods[*i], (ns, name)))
                    .expect("ADD");
            }
            agent
        });
        Self {
            name: node.into(),
            topo,
            pins,
            _state: state,
            agent: Arc::new(Mutex::new(agent)),
            client: None,
        }
    }

    fn connect(&mut self, url: &str, pki: &Pki) {
        let cfg = agent_config(&self.name, &self.pins, self._state.path(), url, pki);
        let settings = ClientSettings::from_config(&cfg)
            .expect("client settings")
            .expect("cluster mode");
        self.client = Some(tokio::spawn(run_client(self.agent.clone(), settings)));
    }

    /// What the kernel's pinned maps hold.
    fn kernel(&self) -> MapContents {
        let dp = septum_datapath::Datapath::load(&septum_datapath::DatapathOptions {
            pin_root: Some(self.pins.clone()),
            ..septum_datapath::DatapathOptions::default()
        })
        .expect("adopting the pins");
        MapContents::read(&dp).expect("reading the maps")
    }
}

fn meta(ns: Option<&str>, name: &str, labels: Value) -> Value {
    let mut m =
        json!({"name": name, "labels": labels, "uid": format!("uid-{name}"), "generation": 1});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

fn pod(ns: &str, name: &str, app: &str, ip: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta(Some(ns), name, json!({"app": app})),
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}})
}

fn seed(api: &FakeApi) {
    for ns in ["shop", "team"] {
        api.put_silently(
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(None, ns, json!({"kubernetes.io/metadata.name": ns}))}),
        );
    }
    for (n, ip) in [("node-a", "192.168.50.1"), ("node-b", "192.168.50.2")] {
        api.put_silently(
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": meta(None, n, json!({})),
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
    }
    api.put_silently("pods", pod("shop", "web", "web", "10.200.0.2", "node-a"));
    api.put_silently(
        "pods",
        pod("shop", "client", "client", "10.200.1.2", "node-a"),
    );
    api.put_silently(
        "pods",
        pod("shop", "cache", "cache", "10.200.2.2", "node-b"),
    );
    api.put_silently("pods", pod("team", "db", "db", "10.200.3.2", "node-b"));
    api.put_silently("networkpolicies", web_in());
}

/// web admits client only.
fn web_in() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": meta(Some("shop"), "web-in", json!({})),
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}})
}

/// Every pod of shop (on both nodes) admits nothing.
fn deny_shop() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": meta(Some("shop"), "deny-all", json!({})),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

/// What the kernel of `w` must hold: the controller's published state for the node, through
/// the same conversion the agent uses.
async fn expected(ctx: &Context, w: &NodeWorld) -> Option<(u64, MapContents)> {
    let r = ctx.node_state(&w.name)?;
    let agent = w.agent.lock().await;
    Some((r.revision, map_contents(&r.state, agent.registry())))
}

/// Waits until the node's agent has applied the controller's current revision and its kernel
/// holds exactly that state; returns the revision.
async fn converged(ctx: &Context, w: &NodeWorld, what: &str) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some((revision, want)) = expected(ctx, w).await {
            let held = w.agent.lock().await.held_revision();
            if held == (ctx.epoch(), revision) && w.kernel() == want {
                return revision;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: the kernel never matched the controller after {what}; agent status: {}",
            w.name,
            serde_json::to_string(&w.agent.lock().await.status()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a TCP connection from pod `from` to `to`:8080 is established within a short time
/// (a policy drop is silent: it times out).
fn connects(from: &septum_tests::netns::Pod, to: &septum_tests::netns::Pod) -> bool {
    let target = SocketAddr::new(to.ip(false), 8080);
    from.ns
        .run(|| TcpStream::connect_timeout(&target, Duration::from_millis(700)).is_ok())
}

fn listen(pod: &septum_tests::netns::Pod) -> std::thread::JoinHandle<()> {
    let listener = pod
        .ns
        .run(|| StdListener::bind("0.0.0.0:8080").expect("listening in the pod"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    })
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_streams_to_real_agents_and_policy_changes_reach_both_kernels() {
    let pki = Pki::new();
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let addr = free_port();
    let url = format!("https://{addr}");
    let controller = RunningController::start(client.clone(), addr, &pki).await;
    let ctx = controller.ctx.clone();

    // node-a: web (pod 0) and client (pod 1); node-b: cache (pod 2) and db (pod 3).
    let mut a = NodeWorld::new(
        "node-a",
        2,
        &[(0, "shop", "web"), (1, "shop", "client")],
        &url,
        &pki,
    );
    let mut b = NodeWorld::new(
        "node-b",
        4,
        &[(2, "shop", "cache"), (3, "team", "db")],
        &url,
        &pki,
    );
    // Before any state arrives the pods are in init-deny: isolated from the first packet.
    for w in [&a, &b] {
        let k = w.kernel();
        assert!(
            k.endpoints
                .values()
                .all(|e| e.state == septum_datapath_common::STATE_INIT_DENY)
        );
        assert!(k.policy.is_empty());
    }
    a.connect(&url, &pki);
    b.connect(&url, &pki);
    let ra = converged(&ctx, &a, "the initial snapshot").await;
    let rb = converged(&ctx, &b, "the initial snapshot").await;
    let web_identity = ctx.node_state("node-a").expect("a").state.endpoints
        [&septum_policy::model::ObjectKey::new("shop", "web")]
        .identity;
    assert!(
        a.kernel()
            .endpoints
            .values()
            .all(|e| e.state == septum_datapath_common::STATE_READY)
    );
    // web's policy lives on node-a only.
    assert!(
        a.kernel()
            .policy
            .keys()
            .any(|k| k.subject() == web_identity)
    );
    assert!(
        !b.kernel()
            .policy
            .keys()
            .any(|k| k.subject() == web_identity)
    );

    // Real traffic on node-a: client may reach web; web's policy admits nobody else.
    let _server = listen(&a.topo.pods[0]);
    assert!(
        connects(&a.topo.pods[1], &a.topo.pods[0]),
        "client -> web is allowed"
    );

    // One policy, pods on both nodes: both kernels change, and the traffic stops.
    let before_b = b.kernel();
    api.put("networkpolicies", deny_shop());
    api.delete("networkpolicies", "shop/web-in");
    let deadline = Instant::now() + TIMEOUT;
    while ctx.node_state("node-a").map(|r| r.revision) == Some(ra)
        || ctx.node_state("node-b").map(|r| r.revision) == Some(rb)
    {
        assert!(
            Instant::now() < deadline,
            "the policy change gave no deltas"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    converged(&ctx, &a, "the policy change").await;
    converged(&ctx, &b, "the policy change").await;
    assert_ne!(
        b.kernel().policy,
        before_b.policy,
        "node-b's kernel changed too"
    );
    wait_until("client -> web to be dropped", || {
        !connects(&a.topo.pods[1], &a.topo.pods[0])
    })
    .await;

    // A FlowPolicy's status counts the nodes that acked its revision.
    api.put(
        "flowpolicies",
        json!({"apiVersion": "septum.dev/v1alpha1", "kind": "FlowPolicy",
            "metadata": meta(Some("shop"), "web-from-client", json!({})),
            "spec": {"subject": {"podSelector": {"matchLabels": {"app": "web"}}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}}),
    );
    let path = "/apis/septum.dev/v1alpha1/namespaces/shop/flowpolicies/web-from-client/status";
    api.wait_for("Programmed=True on both nodes", |api| {
        api.patches(path).iter().any(|p| {
            p["status"]["programmedNodes"] == 2
                && p["status"]["nodes"] == 2
                && p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Programmed" && c["status"] == "True")
                })
        })
    })
    .await;
    converged(&ctx, &a, "the FlowPolicy").await;
    wait_until("client -> web allowed by the FlowPolicy", || {
        connects(&a.topo.pods[1], &a.topo.pods[0])
    })
    .await;

    // The controller goes away: the agents keep enforcing exactly what they had.
    let held_a = a.agent.lock().await.held_revision();
    let kernel_a = a.kernel();
    let kernel_b = b.kernel();
    let old_epoch = ctx.epoch();
    controller.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.kernel(), kernel_a);
    assert_eq!(b.kernel(), kernel_b);
    assert_eq!(a.agent.lock().await.held_revision(), held_a);
    assert!(
        connects(&a.topo.pods[1], &a.topo.pods[0]),
        "still enforced as before"
    );

    // A new controller (new epoch, same persisted identity numbers): the agents reconnect, get a
    // snapshot, and their kernels do not change.
    let controller = RunningController::start(client, addr, &pki).await;
    let ctx = controller.ctx.clone();
    assert_ne!(ctx.epoch(), old_epoch);
    converged(&ctx, &a, "the controller restart").await;
    converged(&ctx, &b, "the controller restart").await;
    assert_eq!(a.kernel(), kernel_a, "a restart rewrote nothing on node-a");
    assert_eq!(b.kernel(), kernel_b, "a restart rewrote nothing on node-b");
    for w in [&a, &b] {
        let status = w.agent.lock().await.status();
        let last = status.last_sync.expect("a sync");
        assert_eq!(
            (last.writes.upserted, last.writes.deleted),
            (0, 0),
            "{}: the snapshot after the restart wrote nothing",
            w.name
        );
    }
    controller.stop();
}

/// A raw stream client with an optional client identity.
async fn raw_client(
    addr: SocketAddr,
    ca: &Pki,
    identity: Option<(String, String)>,
) -> Result<pb::node_state_service_client::NodeStateServiceClient<tonic::transport::Channel>, String>
{
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.ca.pem()))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(c, k));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(pb::node_state_service_client::NodeStateServiceClient::new(
        channel,
    ))
}

async fn subscribe(
    client: Result<
        pb::node_state_service_client::NodeStateServiceClient<tonic::transport::Channel>,
        String,
    >,
    node: &str,
) -> Result<pb::Update, String> {
    let mut client = client?;
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: node.into(),
            ..pb::Hello::default()
        })),
    };
    let mut stream = client
        .subscribe(tokio_stream::iter(vec![hello]).chain(tokio_stream::pending()))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match tokio::time::timeout(TIMEOUT, stream.message()).await {
        Ok(Ok(Some(u))) => Ok(u),
        Ok(Ok(None)) => Err("stream ended".into()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("no update".into()),
    }
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_with_a_valid_certificate_for_their_node_get_its_state() {
    let pki = Pki::new();
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let addr = free_port();
    let controller = RunningController::start(client, addr, &pki).await;

    // A certificate for node-a gets node-a's state, and only it.
    let update = subscribe(raw_client(addr, &pki, Some(pki.issue("node-a"))).await, "")
        .await
        .expect("node-a's snapshot");
    assert!(update.snapshot);
    assert_eq!(update.node, "node-a");
    let names: Vec<String> = update
        .endpoint_upserts
        .iter()
        .filter_map(|e| e.pod.as_ref().map(|p| p.name.clone()))
        .collect();
    assert_eq!(names, ["client", "web"]);

    // No client certificate: the TLS handshake or the call fails; nothing is sent.
    let e = subscribe(raw_client(addr, &pki, None).await, "node-a")
        .await
        .expect_err("no certificate");
    assert!(!e.is_empty());

    // A certificate from another CA: refused.
    let rogue = Pki::new();
    let e = subscribe(
        raw_client(addr, &pki, Some(rogue.issue("node-a"))).await,
        "node-a",
    )
    .await
    .expect_err("a certificate of another CA");
    assert!(!e.contains("snapshot"), "{e}");

    // A valid certificate for node-b asking for node-a: refused with a clear reason.
    let e = subscribe(
        raw_client(addr, &pki, Some(pki.issue("node-b"))).await,
        "node-a",
    )
    .await
    .expect_err("another node's state");
    assert!(e.contains("PermissionDenied"), "{e}");
    assert!(e.contains("node \"node-b\""), "{e}");
    assert!(controller.ctx.metrics.stream_refused.get() >= 1);
    controller.stop();
}
