//! The controller against a scripted API server (kube's tower-test mock): initial sync, exact
//! per-node deltas for pod, namespace, policy, Service and EndpointSlice changes, FlowPolicy
//! status, identity
//! numbers across a restart, recovery from 410 Gone. Expected states are computed independently:
//! the objects in the fake server converted straight into the model and compiled from scratch
//! with the numbers the controller persisted.

mod fake_api;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fake_api::FakeApi;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use septum_controller::Context;
use septum_controller::node_state::{NodeDelta, NodeStateDiff};
use septum_crd::identity_allocation::IdentityAllocation;
use septum_crd::{ClusterNetworkPolicy, FlowPolicy};
use septum_policy::model::{self as m, Cluster, ObjectKey};
use septum_policy::node::{NodeState, node_state};
use septum_policy::{AllocationStore, InMemoryAllocations, compile};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const TIMEOUT: Duration = Duration::from_secs(15);

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> core::Namespace {
    core::Namespace {
        metadata: meta(None, name, labels),
        ..Default::default()
    }
}

fn node(name: &str, ip: &str) -> core::Node {
    core::Node {
        metadata: meta(None, name, &[]),
        status: Some(core::NodeStatus {
            addresses: Some(vec![core::NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(ns: &str, name: &str, app: &str, ip: &str, node: &str) -> core::Pod {
    core::Pod {
        metadata: meta(Some(ns), name, &[("app", app)]),
        spec: Some(core::PodSpec {
            node_name: Some(node.into()),
            containers: vec![core::Container {
                name: "c".into(),
                ports: Some(vec![core::ContainerPort {
                    container_port: 8080,
                    name: Some("http".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            pod_ip: Some(ip.into()),
            ..Default::default()
        }),
    }
}

fn selector(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    }
}

/// A NetworkPolicy of `ns` admitting ingress to `app` pods from `from` pods of the namespaces matching
/// `namespaces` (the policy's own namespace when `None`).
fn ingress_policy(
    ns: &str,
    name: &str,
    app: &str,
    from: &str,
    namespaces: Option<&[(&str, &str)]>,
) -> net::NetworkPolicy {
    net::NetworkPolicy {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(selector(&[("app", app)])),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![net::NetworkPolicyIngressRule {
                from: Some(vec![net::NetworkPolicyPeer {
                    pod_selector: Some(selector(&[("app", from)])),
                    namespace_selector: namespaces.map(selector),
                    ..Default::default()
                }]),
                ports: None,
            }]),
            ..Default::default()
        }),
    }
}

fn service(name: &str, app: &str, vip: &str, port: i32) -> core::Service {
    core::Service {
        metadata: meta(Some("shop"), name, &[]),
        spec: Some(core::ServiceSpec {
            selector: Some([("app".to_string(), app.to_string())].into()),
            cluster_ip: Some(vip.into()),
            ports: Some(vec![core::ServicePort {
                port,
                target_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        "http".into(),
                    ),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn flow_policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "septum.dev/v1alpha1", "kind": "FlowPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": 3}, "spec": spec})
}

/// Two nodes: web and client on node a, db on node b (namespace team), a policy admitting
/// client to web.
fn seed(api: &FakeApi) {
    api.put_silently("namespaces", namespace("shop", &[]));
    api.put_silently("namespaces", namespace("team", &[("tier", "data")]));
    api.put_silently("nodes", node("a", "192.168.0.1"));
    api.put_silently("nodes", node("b", "192.168.0.2"));
    api.put_silently("pods", pod("shop", "web", "web", "10.0.0.1", "a"));
    api.put_silently("pods", pod("shop", "client", "client", "10.0.0.2", "a"));
    api.put_silently("pods", pod("team", "db", "db", "10.0.1.1", "b"));
    api.put_silently(
        "networkpolicies",
        ingress_policy("shop", "web-in", "web", "client", None),
    );
    api.put_silently("services", service("web", "web", "10.96.0.10", 80));
}

/// The model of what the fake server holds, converted without the controller's feed.
fn reference_cluster(api: &FakeApi) -> Cluster {
    fn each<T: serde::de::DeserializeOwned>(api: &FakeApi, plural: &str) -> Vec<T> {
        api.objects(plural)
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("fake object parses"))
            .collect()
    }
    let mut c = Cluster::default();
    for o in each::<core::Namespace>(api, "namespaces") {
        c.apply(&m::Change::UpsertNamespace(
            m::Namespace::try_from(&o).expect("namespace"),
        ));
    }
    for o in each::<core::Node>(api, "nodes") {
        c.apply(&m::Change::UpsertNode(m::Node::try_from(&o).expect("node")));
    }
    for o in each::<core::Pod>(api, "pods") {
        c.apply(&m::Change::UpsertPod(m::Pod::try_from(&o).expect("pod")));
    }
    for o in each::<core::Service>(api, "services") {
        c.apply(&m::Change::UpsertService(
            m::Service::try_from(&o).expect("service"),
        ));
    }
    for o in each::<discovery::EndpointSlice>(api, "endpointslices") {
        c.apply(&m::Change::UpsertEndpointSlice(
            m::EndpointSlice::try_from(&o).expect("endpoint slice"),
        ));
    }
    for o in each::<net::NetworkPolicy>(api, "networkpolicies") {
        c.apply(&m::Change::UpsertNetworkPolicy(
            m::NetworkPolicy::try_from(&o).expect("network policy"),
        ));
    }
    for o in each::<FlowPolicy>(api, "flowpolicies") {
        if let Ok(p) = m::FlowPolicy::try_from(&o) {
            c.apply(&m::Change::UpsertFlowPolicy(p));
        }
    }
    for o in each::<ClusterNetworkPolicy>(api, "clusternetworkpolicies") {
        c.apply(&m::Change::UpsertClusterNetworkPolicy(
            m::ClusterNetworkPolicy::try_from(&o).expect("cluster network policy"),
        ));
    }
    c
}

/// The numbers the controller persisted.
fn persisted(api: &FakeApi) -> InMemoryAllocations {
    let object: IdentityAllocation =
        serde_json::from_value(api.identity().expect("identity object persisted"))
            .expect("identity object parses");
    InMemoryAllocations::from_entries(object.spec.to_entries().expect("valid records"))
}

/// Every node's state compiled from scratch from `cluster` with the persisted numbers.
fn reference_states(cluster: &Cluster, store: InMemoryAllocations) -> BTreeMap<String, NodeState> {
    let before = store.entries().count();
    let (state, store) = compile(cluster, store);
    assert_eq!(
        store.entries().count(),
        before,
        "every number the state uses was persisted"
    );
    ["a", "b"]
        .into_iter()
        .map(|n| (n.to_string(), node_state(cluster, &state, n)))
        .collect()
}

struct Running {
    ctx: Arc<Context>,
    deltas: broadcast::Receiver<Arc<Vec<NodeDelta>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(client: kube::Client) -> Self {
        let controller = septum_controller::Controller::new(client);
        let ctx = controller.context();
        let deltas = ctx.subscribe();
        let task = tokio::spawn(async move {
            if let Err(e) = controller.run().await {
                panic!("controller failed: {e}");
            }
        });
        Self { ctx, deltas, task }
    }

    /// The next published set of deltas, by node.
    async fn next(&mut self, what: &str) -> BTreeMap<String, NodeDelta> {
        let got = tokio::time::timeout(TIMEOUT, self.deltas.recv())
            .await
            .unwrap_or_else(|_| panic!("no deltas after {what}"))
            .expect("delta stream open");
        got.iter().map(|d| (d.node.clone(), d.clone())).collect()
    }

    /// Asserts that nothing more is published for a moment.
    async fn quiet(&mut self, what: &str) {
        if let Ok(Ok(extra)) =
            tokio::time::timeout(Duration::from_millis(400), self.deltas.recv()).await
        {
            panic!("unexpected deltas after {what}: {extra:?}");
        }
    }

    fn state(&self, node: &str) -> NodeState {
        self.ctx
            .node_state(node)
            .unwrap_or_else(|| panic!("node {node} has a state"))
            .state
    }
}

/// The deltas a change from `before` to the fake's current objects must give: exactly the
/// nodes whose state differs, each with the minimal diff.
fn expected_deltas(api: &FakeApi, before: &Cluster) -> BTreeMap<String, NodeStateDiff> {
    let store = persisted(api);
    let old = reference_states(before, store.clone());
    let new = reference_states(&reference_cluster(api), store);
    old.iter()
        .map(|(n, s)| (n.clone(), NodeStateDiff::between(s, &new[n])))
        .filter(|(_, d)| !d.is_empty())
        .collect()
}

fn diffs(deltas: &BTreeMap<String, NodeDelta>) -> BTreeMap<String, NodeStateDiff> {
    deltas
        .iter()
        .map(|(n, d)| (n.clone(), d.diff.clone()))
        .collect()
}

async fn synced(client: kube::Client) -> Running {
    let mut running = Running::start(client);
    let snapshot = running.next("the initial sync").await;
    assert_eq!(snapshot.keys().collect::<Vec<_>>(), ["a", "b"]);
    for d in snapshot.values() {
        assert_eq!((d.from_revision, d.revision), (0, 1), "a snapshot");
    }
    running
}

fn endpoint_names(s: &NodeState) -> Vec<String> {
    s.endpoints.keys().map(ToString::to_string).collect()
}

#[tokio::test]
async fn initial_sync_gives_each_node_its_state() {
    // ClusterNetworkPolicy's CRD is not installed: the controller syncs without it.
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let running = synced(client).await;
    // The numbers were persisted before the snapshot left.
    let expected = reference_states(&reference_cluster(&api), persisted(&api));
    for n in ["a", "b"] {
        assert_eq!(running.state(n), expected[n], "node {n}");
    }
    assert_eq!(
        endpoint_names(&running.state("a")),
        ["shop/client", "shop/web"]
    );
    assert_eq!(endpoint_names(&running.state("b")), ["team/db"]);
    let web = running.state("a").endpoints[&ObjectKey::new("shop", "web")].identity;
    assert!(running.state("a").policy.keys().any(|k| k.subject() == web));
    assert!(!running.state("b").policy.keys().any(|k| k.subject() == web));
    assert_eq!(
        running.state("b").services.len(),
        1,
        "every node has every VIP"
    );
    assert!(api.lists("clusternetworkpolicies") >= 1);
    running.task.abort();
}

#[tokio::test]
async fn each_change_gives_exactly_its_deltas_on_the_right_nodes() {
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let mut running = synced(client).await;

    // A pod relabel: a new identity for client, so its endpoint (node a) and its ipcache
    // entry (every node) change; web's ingress entries (node a) follow.
    let before = reference_cluster(&api);
    api.put("pods", pod("shop", "client", "intruder", "10.0.0.2", "a"));
    let got = running.next("a pod relabel").await;
    assert_eq!(diffs(&got), expected_deltas(&api, &before), "pod relabel");
    let a = &got["a"].diff;
    assert!(a.endpoints.upserts.iter().any(|(k, _)| k.name == "client"));
    assert!(
        got["b"].diff.endpoints.is_empty(),
        "no endpoint of node b changed"
    );
    running.quiet("the pod relabel").await;

    // A namespace relabel selected by a policy of db's namespace peers: only db's node.
    api.put(
        "networkpolicies",
        ingress_policy("team", "db-in", "db", "web", Some(&[("tier", "front")])),
    );
    let _ = running.next("a policy create").await;
    let before = reference_cluster(&api);
    api.put("namespaces", namespace("shop", &[("tier", "front")]));
    let got = running.next("a namespace relabel").await;
    assert_eq!(
        diffs(&got),
        expected_deltas(&api, &before),
        "namespace relabel"
    );
    assert_eq!(got.keys().collect::<Vec<_>>(), ["b"], "only db's node");
    running.quiet("the namespace relabel").await;

    // A policy create, update and delete on web (node a): node a only.
    for (what, change) in [
        (
            "create",
            Some(ingress_policy("shop", "web-more", "web", "db", Some(&[]))),
        ),
        (
            "update",
            Some(ingress_policy("shop", "web-more", "web", "intruder", None)),
        ),
        ("delete", None),
    ] {
        let before = reference_cluster(&api);
        match change {
            Some(p) => api.put("networkpolicies", p),
            None => api.delete("networkpolicies", "shop/web-more"),
        }
        let got = running.next(what).await;
        assert_eq!(diffs(&got), expected_deltas(&api, &before), "policy {what}");
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["a"],
            "policy {what}: node a only"
        );
        running.quiet(what).await;
    }

    // A Service change (new port): the VIP entry on every node, nothing else.
    let before = reference_cluster(&api);
    api.put("services", service("web", "web", "10.96.0.10", 8443));
    let got = running.next("a Service change").await;
    assert_eq!(
        diffs(&got),
        expected_deltas(&api, &before),
        "Service change"
    );
    assert_eq!(got.keys().collect::<Vec<_>>(), ["a", "b"]);
    for d in got.values() {
        assert_eq!(d.diff.services.len(), 2, "one VIP port replaced: {d:?}");
        assert_eq!(d.diff.len(), 2, "only the VIP: {d:?}");
    }
    // The revisions chain: each delta starts where the last ended.
    assert_eq!(got["a"].from_revision + 1, got["a"].revision);
    running.task.abort();
}

#[tokio::test]
async fn flow_policies_get_an_accepted_condition_with_a_readable_message() {
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let running = synced(client).await;
    api.put(
        "flowpolicies",
        flow_policy(
            "bad",
            json!({"subject": {"service": "web"}, "ingress": [{"from": [{"podSelector": {}}],
                "ports": [{"port": 80, "endPort": 70}]}]}),
        ),
    );
    api.put(
        "flowpolicies",
        flow_policy(
            "dangling",
            json!({"subject": {"service": "missing"}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        ),
    );
    api.put(
        "flowpolicies",
        flow_policy(
            "good",
            json!({"subject": {"service": "web"}, "ingress": [{"from": [{"service": {"name": "web"}}]}]}),
        ),
    );
    let path =
        |n: &str| format!("/apis/septum.dev/v1alpha1/namespaces/shop/flowpolicies/{n}/status");
    for n in ["bad", "dangling", "good"] {
        api.wait_for(&format!("status of {n}"), |a| {
            !a.patches(&path(n)).is_empty()
        })
        .await;
    }
    let accepted = |n: &str| -> Value {
        let patches = api.patches(&path(n));
        assert_eq!(
            patches.len(),
            1,
            "{n}: one patch, no rewrite loop: {patches:?}"
        );
        let conditions = patches[0]["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .clone();
        assert_eq!(conditions.len(), 2, "Accepted and Programmed");
        assert_eq!(patches[0]["status"]["observedGeneration"], 3);
        // No agent is connected in this test: nothing is programmed yet, and it says so.
        let programmed = conditions
            .iter()
            .find(|c| c["type"] == "Programmed")
            .expect("Programmed");
        assert_eq!(programmed["status"], "False");
        assert_eq!(patches[0]["status"]["programmedNodes"], 0);
        assert_eq!(patches[0]["status"]["nodes"], 2);
        if !n.starts_with("bad") {
            assert_eq!(programmed["reason"], "Pending");
            assert_eq!(
                programmed["message"],
                "enforced on 0 of 2 nodes; waiting for a, b"
            );
        }
        conditions
            .iter()
            .find(|c| c["type"] == "Accepted")
            .expect("Accepted")
            .clone()
    };
    let bad = accepted("bad");
    assert_eq!(bad["type"], "Accepted");
    assert_eq!(bad["status"], "False");
    assert_eq!(bad["reason"], "Invalid");
    assert_eq!(
        bad["message"],
        "spec.ingress[0].ports[0].endPort: endPort 70 is lower than port 80 (nothing of this policy is enforced)"
    );
    let dangling = accepted("dangling");
    assert_eq!(dangling["status"], "False");
    assert_eq!(dangling["reason"], "UnresolvedReferences");
    let message = dangling["message"].as_str().expect("message");
    assert!(
        message.starts_with("spec.subject.service: Service shop/missing does not exist"),
        "{message}"
    );
    let good = accepted("good");
    assert_eq!(
        (good["status"].clone(), good["reason"].clone()),
        (json!("True"), json!("Accepted"))
    );
    // The status writes came back as watch events; nothing was written again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = accepted("good");
    running.task.abort();
}

#[tokio::test]
async fn a_restarted_controller_keeps_every_identity_number() {
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let first = synced(client).await;
    let numbers = persisted(&api);
    let identity_of =
        |r: &Running, node: &str, pod: ObjectKey| r.state(node).endpoints[&pod].identity;
    let web = identity_of(&first, "a", ObjectKey::new("shop", "web"));
    let db = identity_of(&first, "b", ObjectKey::new("team", "db"));
    first.task.abort();

    // The second controller meets the same cluster plus a pod whose identity sorts first: a
    // fresh allocation would renumber everything after it.
    let (api2, client2) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api2);
    api2.put_silently("pods", pod("shop", "aardvark", "aardvark", "10.0.0.9", "b"));
    api2.set_identity(api.identity().expect("persisted object"));
    let fresh = {
        let cluster = reference_cluster(&api2);
        let (state, _) = compile(&cluster, InMemoryAllocations::new());
        state.endpoints[&ObjectKey::new("shop", "web")].identity
    };
    assert_ne!(
        fresh, web,
        "the scenario would renumber web without persistence"
    );

    let second = synced(client2).await;
    assert_eq!(
        identity_of(&second, "a", ObjectKey::new("shop", "web")),
        web
    );
    assert_eq!(identity_of(&second, "b", ObjectKey::new("team", "db")), db);
    let after = persisted(&api2);
    for (key, n) in numbers.entries() {
        assert_eq!(after.get(key), Some(n), "{key:?} kept its number");
    }
    assert!(
        after.entries().count() > numbers.entries().count(),
        "the new pod's identity was allocated and persisted"
    );
    second.task.abort();
}

#[tokio::test]
async fn a_watch_ending_in_410_gone_relists_and_converges() {
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let mut running = synced(client).await;
    // A bookmark moves the watch's resourceVersion forward.
    api.put("pods", pod("shop", "web", "web", "10.0.0.1", "a"));
    api.wait_for("a re-watch after the bookmark", |a| {
        a.watch_versions("pods").len() >= 2
    })
    .await;
    let bookmark = api.resource_version().to_string();
    assert_eq!(api.watch_versions("pods").last(), Some(&bookmark));

    // While the watch is down the cluster changes: client goes, db is relabelled.
    let before = reference_cluster(&api);
    api.delete_silently("pods", "shop/client");
    api.put_silently("pods", pod("team", "db", "db2", "10.0.1.1", "b"));
    api.gone("pods");
    let got = running.next("the relist after 410 Gone").await;
    assert_eq!(api.lists("pods"), 2, "410 Gone made the watcher relist");
    // The relist gives the changes the watch missed, at once.
    assert_eq!(diffs(&got), expected_deltas(&api, &before));
    let expected = reference_states(&reference_cluster(&api), persisted(&api));
    for n in ["a", "b"] {
        assert_eq!(running.state(n), expected[n], "node {n} converged");
    }
    assert_eq!(endpoint_names(&running.state("a")), ["shop/web"]);
    assert!(running.ctx.metrics.watch_errors.get() >= 1);
    running.task.abort();
}

/// An EndpointSlice of `service` in shop, managed by `manager`, with `addresses` and one port.
fn endpoint_slice(
    name: &str,
    service: &str,
    manager: &str,
    addresses: &[&str],
    port: (&str, i32),
) -> discovery::EndpointSlice {
    discovery::EndpointSlice {
        metadata: meta(
            Some("shop"),
            name,
            &[
                (m::SERVICE_NAME_LABEL, service),
                (m::MANAGED_BY_LABEL, manager),
            ],
        ),
        address_type: "IPv4".into(),
        endpoints: addresses
            .iter()
            .map(|a| discovery::Endpoint {
                addresses: vec![a.to_string()],
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![discovery::EndpointPort {
            name: Some(port.0.into()),
            port: Some(port.1),
            ..Default::default()
        }]),
    }
}

fn status_of(api: &FakeApi, name: &str) -> Option<Value> {
    let path = format!("/apis/septum.dev/v1alpha1/namespaces/shop/flowpolicies/{name}/status");
    let patches = api.patches(&path);
    let conditions = patches.last()?["status"]["conditions"].as_array()?.clone();
    conditions.into_iter().find(|c| c["type"] == "Accepted")
}

#[tokio::test]
async fn a_service_without_selector_gets_its_backends_from_manual_endpoint_slices() {
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    // A database outside the cluster behind a selector-less Service: port "pg" 5432 on the
    // VIP, 6432 on the backends its EndpointSlices name.
    let mut legacy = service("legacy", "-", "10.96.0.20", 5432);
    if let Some(spec) = legacy.spec.as_mut() {
        spec.selector = None;
        if let Some(p) = spec.ports.as_mut().and_then(|p| p.first_mut()) {
            p.name = Some("pg".into());
            p.target_port = None;
        }
    }
    api.put_silently("services", legacy);
    // A slice the EndpointSlice controller derived from web's selector: its churn must not
    // reach the controller at all.
    api.put_silently(
        "endpointslices",
        endpoint_slice(
            "web-x1",
            "web",
            m::ENDPOINTSLICE_CONTROLLER,
            &["10.0.0.1"],
            ("", 8080),
        ),
    );
    api.put_silently(
        "flowpolicies",
        flow_policy(
            "to-legacy",
            json!({"subject": {"podSelector": {"matchLabels": {"app": "client"}}},
                "egress": [{"to": [{"service": {"name": "legacy"}}], "ports": [{"port": "pg"}]}]}),
        ),
    );
    let mut running = synced(client).await;
    let requests: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/endpointslices"))
        .collect();
    assert!(
        !requests.is_empty(),
        "EndpointSlices are listed and watched"
    );
    for r in &requests {
        assert_eq!(
            r.query.get("labelSelector").map(String::as_str),
            Some("endpointslice.kubernetes.io/managed-by!=endpointslice-controller.k8s.io"),
            "{r:?}"
        );
    }
    api.wait_for("the status of to-legacy", |a| {
        status_of(a, "to-legacy").is_some()
    })
    .await;
    let accepted = status_of(&api, "to-legacy").expect("status");
    assert_eq!(accepted["reason"], "UnresolvedReferences", "{accepted}");
    assert_eq!(
        accepted["message"].as_str().unwrap_or(""),
        "spec.egress[0].to[0].service: Service shop/legacy has no selector and no EndpointSlice names endpoints for it, so it has no backends (enforced as written; what does not resolve matches nothing)"
    );

    // legacy's hand-managed slice, naming `addresses` for its port pg at 6432.
    let put_legacy_slice = |addresses: &[&str]| {
        api.put(
            "endpointslices",
            endpoint_slice("legacy-1", "legacy", "staff", addresses, ("pg", 6432)),
        );
    };

    // The hand-managed slice: its addresses become the Service's backends on every node (the
    // ipcache holds them), client's egress to them at the slice's port, on client's node.
    let before = reference_cluster(&api);
    put_legacy_slice(&["203.0.113.7", "10.0.1.1"]);
    let got = running.next("a manual EndpointSlice").await;
    assert_eq!(diffs(&got), expected_deltas(&api, &before), "slice create");
    let a = running.state("a");
    let host: septum_policy::cidr::Cidr = "203.0.113.7/32".parse().expect("cidr");
    assert!(a.ipcache.contains_key(&host), "{:?}", a.ipcache.keys());
    let client = a.endpoints[&ObjectKey::new("shop", "client")].identity;
    let egress: Vec<_> = a
        .policy
        .keys()
        .filter(|k| {
            k.subject() == client
                && k.direction() == Some(septum_datapath_common::Direction::Egress)
        })
        .map(|k| k.data().port())
        .collect();
    assert!(
        egress.contains(&6432),
        "client may reach the backends at 6432: {egress:?}"
    );
    assert!(
        !egress.contains(&5432),
        "the VIP port is not a backend port: {egress:?}"
    );
    api.wait_for("to-legacy accepted", |a| {
        status_of(a, "to-legacy").is_some_and(|c| c["status"] == "True")
    })
    .await;
    running.quiet("the slice create").await;

    // The slice moves its endpoint: exactly that delta.
    let before = reference_cluster(&api);
    put_legacy_slice(&["203.0.113.8"]);
    let got = running.next("a slice update").await;
    assert_eq!(diffs(&got), expected_deltas(&api, &before), "slice update");
    running.quiet("the slice update").await;

    // Slices derived from a selector never arrive, whatever they say.
    api.put(
        "endpointslices",
        endpoint_slice(
            "web-x1",
            "web",
            m::ENDPOINTSLICE_CONTROLLER,
            &["10.0.0.77"],
            ("", 8080),
        ),
    );
    running.quiet("a derived slice").await;

    // The slice goes: no backends again.
    let before = reference_cluster(&api);
    api.delete("endpointslices", "shop/legacy-1");
    let got = running.next("a slice delete").await;
    assert_eq!(diffs(&got), expected_deltas(&api, &before), "slice delete");
    api.wait_for("to-legacy unresolved again", |a| {
        status_of(a, "to-legacy").is_some_and(|c| c["status"] == "False")
    })
    .await;
    running.task.abort();
}
