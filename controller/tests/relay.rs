//! The flow relay end to end: the controller (fed by the scripted API server) serves
//! `FlowService` for the cluster and answers it by asking each node's agent. Each "agent" here
//! is the agent's real flow side (its pipeline from flow events to a SQLite store, and its
//! `FlowService` over TLS with the node's certificate); each is connected to the real
//! node-state stream and advertises its flow API in the Hello, as a cluster-mode agent does.
//!
//! Checked: records of every node merged by time (newest or oldest `number`), aggregates summed
//! over nodes, queries naming nodes sent to those only, following (stored, `CaughtUp`, live),
//! and every node that cannot answer reported by name and reason (not connected, no flow API,
//! a certificate that is not the node's, a stopped agent), never hidden.

mod fake_api;
mod flow_nodes;
mod pki;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use flow_nodes::{FlowNode, PODS, RelayController, TIMEOUT, connect_agent, event};
use pki::Pki;
use septum_controller::Context;
use septum_datapath_common::{POINT_FROM_POD, POINT_TO_POD};
use septum_proto::flow::v1 as fpb;
use septum_proto::flow::v1::flow_service_client::FlowServiceClient;
use septum_proto::flow::v1::get_flows_response::Response as Msg;
use serde_json::{Value, json};

fn meta(ns: Option<&str>, name: &str, labels: Value) -> Value {
    let mut m = json!({"name": name, "labels": labels, "uid": format!("uid-{name}")});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

fn seed(api: &FakeApi) {
    for ns in ["shop", "team"] {
        api.put_silently(
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": meta(None, ns, json!({"kubernetes.io/metadata.name": ns}))}),
        );
    }
    for (ns, name, ip, node) in PODS {
        api.put_silently(
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta(Some(ns), name, json!({"app": name})),
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}}),
        );
    }
}

async fn wait_connected(ctx: &Context, nodes: &[&str]) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = ctx.agents.snapshot();
        if nodes.iter().all(|n| now.contains_key(*n)) && now.len() == nodes.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connected: {now:?}, want {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn relay_client(
    addr: SocketAddr,
    pki: &Pki,
    cn: Option<&str>,
) -> FlowServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("URL")
        .tls_config(pki.client_tls(cn, "localhost"))
        .expect("TLS")
        .connect_lazy();
    FlowServiceClient::new(channel)
}

fn query_nodes(nodes: &[&str]) -> fpb::Query {
    fpb::Query {
        include: vec![fpb::FlowFilter {
            node: nodes.iter().map(|n| n.to_string()).collect(),
            ..fpb::FlowFilter::default()
        }],
        ..fpb::Query::default()
    }
}

/// (node, source pod, destination pod, destination port) of every record, in order, and the
/// node errors as (node, code).
type Seen = (Vec<(String, String, String, u32)>, Vec<(String, String)>);

async fn get_flows(
    c: &mut FlowServiceClient<tonic::transport::Channel>,
    req: fpb::GetFlowsRequest,
) -> Seen {
    let mut stream = c.get_flows(req).await.expect("GetFlows").into_inner();
    let mut seen: Seen = Default::default();
    while let Some(m) = stream.message().await.expect("relay stream") {
        match m.response {
            Some(Msg::Flow(f)) => {
                assert_eq!(m.node, f.node, "a record is labelled with its node");
                let end = |e: &Option<fpb::Endpoint>| {
                    e.as_ref().map(|e| e.pod.clone()).unwrap_or_default()
                };
                let port = f.destination.as_ref().map_or(0, |e| e.port);
                seen.0
                    .push((f.node.clone(), end(&f.source), end(&f.destination), port));
            }
            Some(Msg::NodeError(e)) => seen.1.push((e.node, e.code)),
            other => panic!("unexpected response without follow: {other:?}"),
        }
    }
    seen
}

fn rec(node: &str, from: &str, to: &str, port: u32) -> (String, String, String, u32) {
    (node.into(), from.into(), to.into(), port)
}

fn errs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_merges_every_nodes_flows_and_reports_the_nodes_that_cannot_answer() {
    let pki = Pki::new();
    let (api, client) = FakeApi::start(&["clusternetworkpolicies"]);
    seed(&api);
    let controller = RelayController::start(client, &pki, Duration::from_secs(2)).await;
    let (ctx, stream_addr, relay_addr) = (
        controller.ctx.clone(),
        controller.stream_addr,
        controller.relay_addr,
    );

    // node-a and node-b serve flows; node-d is connected but serves no flow API; node-c has a
    // pod but its agent never connects.
    let mut a = FlowNode::start("node-a", &pki).await;
    let mut b = FlowNode::start("node-b", &pki).await;
    let _sa = connect_agent(stream_addr, &pki, "node-a", &a.url);
    let sb = connect_agent(stream_addr, &pki, "node-b", &b.url);
    let _sd = connect_agent(stream_addr, &pki, "node-d", "");
    wait_connected(&ctx, &["node-a", "node-b", "node-d"]).await;

    // client -> web:80 is seen leaving client (node-a) and arriving at web (node-b); client ->
    // db:5432 is refused leaving client.
    a.record(
        &[
            event(POINT_FROM_POD, "client", "web", 80, false, 300),
            event(POINT_FROM_POD, "client", "db", 5432, true, 100),
        ],
        2,
    )
    .await;
    b.record(&[event(POINT_TO_POD, "client", "web", 80, false, 200)], 1)
        .await;

    let mut c = relay_client(relay_addr, &pki, Some("operator")).await;
    let unanswered = errs(&[("node-c", "NotConnected"), ("node-d", "NoFlowApi")]);
    let all = get_flows(&mut c, fpb::GetFlowsRequest::default()).await;
    assert_eq!(
        all.0,
        [
            rec("node-a", "client", "web", 80),
            rec("node-b", "client", "web", 80),
            rec("node-a", "client", "db", 5432),
        ],
        "every node's records, oldest first"
    );
    assert_eq!(all.1, unanswered);
    let newest = get_flows(
        &mut c,
        fpb::GetFlowsRequest {
            number: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        newest.0,
        [
            rec("node-b", "client", "web", 80),
            rec("node-a", "client", "db", 5432)
        ]
    );
    let oldest = get_flows(
        &mut c,
        fpb::GetFlowsRequest {
            number: 2,
            first: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        oldest.0,
        [
            rec("node-a", "client", "web", 80),
            rec("node-b", "client", "web", 80)
        ]
    );
    // A query naming nodes asks those only (and names an unknown one rather than hiding it).
    let scoped = get_flows(
        &mut c,
        fpb::GetFlowsRequest {
            query: Some(query_nodes(&["node-b", "node-x"])),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(scoped.0, [rec("node-b", "client", "web", 80)]);
    assert_eq!(scoped.1, errs(&[("node-x", "NotConnected")]));

    // Aggregates are the sums of the nodes'.
    let top = c
        .top_talkers(fpb::TopTalkersRequest::default())
        .await
        .expect("TopTalkers")
        .into_inner();
    let pair = |t: &fpb::Talker| (t.source.clone(), t.destination.clone(), t.flows);
    assert_eq!(
        top.talkers.iter().map(pair).collect::<Vec<_>>(),
        [
            ("shop/client".to_string(), "shop/web".to_string(), 2),
            ("shop/client".to_string(), "team/db".to_string(), 1),
        ]
    );
    assert_eq!(top.talkers[0].bytes, 200, "both nodes' bytes");
    let names = |v: &[fpb::NodeError]| {
        v.iter()
            .map(|e| (e.node.clone(), e.code.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&top.node_errors), unanswered);
    let map = c
        .service_map(fpb::ServiceMapRequest::default())
        .await
        .expect("ServiceMap")
        .into_inner();
    let edge = |e: &fpb::Edge| {
        (
            e.source.clone(),
            e.destination.clone(),
            e.port,
            e.forwarded,
            e.dropped,
        )
    };
    assert_eq!(
        map.edges.iter().map(edge).collect::<Vec<_>>(),
        [
            (
                "shop/Deployment/client".to_string(),
                "shop/Deployment/web".to_string(),
                80,
                1,
                0
            ),
            (
                "shop/Deployment/client".to_string(),
                "team/Deployment/db".to_string(),
                5432,
                0,
                1
            ),
        ],
        "a connection between pods on two nodes is one edge, counted at its destination"
    );
    let denied = c
        .denied_by_policy(fpb::DeniedByPolicyRequest::default())
        .await
        .expect("DeniedByPolicy")
        .into_inner();
    assert_eq!(denied.policies.iter().map(|p| p.flows).sum::<u64>(), 1);
    assert_eq!(names(&denied.node_errors), unanswered);
    let status = c
        .server_status(fpb::ServerStatusRequest {})
        .await
        .expect("ServerStatus")
        .into_inner();
    assert_eq!(
        status
            .nodes
            .iter()
            .map(|n| (n.node.clone(), n.stored_flows))
            .collect::<Vec<_>>(),
        [("node-a".to_string(), 2), ("node-b".to_string(), 1)]
    );
    assert_eq!(status.stored_flows, 3);
    assert_eq!(names(&status.node_errors), unanswered);

    // Following: the stored records, CaughtUp, then live records from any node.
    let mut follow = c
        .get_flows(fpb::GetFlowsRequest {
            follow: true,
            query: Some(query_nodes(&["node-a", "node-b"])),
            ..Default::default()
        })
        .await
        .expect("GetFlows follow")
        .into_inner();
    let mut stored = 0;
    loop {
        let m = tokio::time::timeout(TIMEOUT, follow.message())
            .await
            .expect("caught up in time")
            .expect("stream")
            .expect("open");
        match m.response {
            Some(Msg::Flow(_)) => stored += 1,
            Some(Msg::CaughtUp(_)) => break,
            other => panic!("before CaughtUp: {other:?}"),
        }
    }
    assert_eq!(stored, 3);
    b.record(&[event(POINT_TO_POD, "client", "db", 5432, false, 0)], 2)
        .await;
    let live = loop {
        let m = tokio::time::timeout(TIMEOUT, follow.message())
            .await
            .expect("a live record in time")
            .expect("stream")
            .expect("open");
        if let Some(Msg::Flow(f)) = m.response {
            break f;
        }
    };
    assert_eq!(live.node, "node-b");
    assert_eq!(live.destination.map(|d| d.pod).as_deref(), Some("db"));

    // node-b stops answering (its agent is gone but still registered): reported, and node-a
    // still answers. Its stream session ends too: it is then not connected.
    b.stop();
    let down = get_flows(&mut c, fpb::GetFlowsRequest::default()).await;
    assert!(down.0.iter().all(|r| r.0 == "node-a"), "{:?}", down.0);
    assert_eq!(down.0.len(), 2);
    assert!(
        down.1
            .contains(&("node-b".to_string(), "Unavailable".to_string())),
        "{:?}",
        down.1
    );
    drop(sb);
    wait_connected(&ctx, &["node-a", "node-d"]).await;
    let gone = get_flows(&mut c, fpb::GetFlowsRequest::default()).await;
    assert!(
        gone.1
            .contains(&("node-b".to_string(), "NotConnected".to_string())),
        "{:?}",
        gone.1
    );

    // An agent advertising another node's flow API gets nothing: the relay checks the
    // certificate against the node it asks for.
    let _se = connect_agent(stream_addr, &pki, "node-e", &a.url);
    wait_connected(&ctx, &["node-a", "node-d", "node-e"]).await;
    let spoofed = get_flows(&mut c, fpb::GetFlowsRequest::default()).await;
    assert!(spoofed.0.iter().all(|r| r.0 == "node-a"));
    assert_eq!(spoofed.0.len(), 2, "node-a's records once, under node-a");
    assert!(
        spoofed
            .1
            .contains(&("node-e".to_string(), "Unavailable".to_string())),
        "{:?}",
        spoofed.1
    );

    // A node that accepts connections but never answers is reported once the timeout passes,
    // and the others' answer still arrives.
    let silent = StdListener::bind("127.0.0.1:0").expect("a silent listener");
    let silent_url = format!("https://{}", silent.local_addr().expect("address"));
    let _sf = connect_agent(stream_addr, &pki, "node-f", &silent_url);
    wait_connected(&ctx, &["node-a", "node-d", "node-e", "node-f"]).await;
    let slow = get_flows(&mut c, fpb::GetFlowsRequest::default()).await;
    assert_eq!(slow.0.len(), 2);
    assert!(
        slow.1
            .contains(&("node-f".to_string(), "DeadlineExceeded".to_string())),
        "{:?}",
        slow.1
    );
    let slow_top = c
        .top_talkers(fpb::TopTalkersRequest::default())
        .await
        .expect("TopTalkers")
        .into_inner();
    assert!(
        names(&slow_top.node_errors)
            .contains(&("node-f".to_string(), "DeadlineExceeded".to_string()))
    );
    drop(silent);

    // A node that leaves the cluster (its last pod gone, no Node object) is no longer asked.
    api.delete("pods", "shop/cache");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = get_flows(&mut c, fpb::GetFlowsRequest::default()).await;
        if !now.1.iter().any(|(n, _)| n == "node-c") {
            break;
        }
        assert!(Instant::now() < deadline, "node-c still asked: {:?}", now.1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bad input is refused before anyone is asked; a client without a certificate is refused.
    let bad = c
        .get_flows(fpb::GetFlowsRequest {
            query: Some(fpb::Query {
                include: vec![fpb::FlowFilter {
                    source_ip: vec!["10.0.0.0/33".into()],
                    ..fpb::FlowFilter::default()
                }],
                ..fpb::Query::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a malformed CIDR");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("from-ip"), "{}", bad.message());
    let mut anonymous = relay_client(relay_addr, &pki, None).await;
    assert!(
        anonymous
            .server_status(fpb::ServerStatusRequest {})
            .await
            .is_err(),
        "the relay serves only clients with a certificate of its CA"
    );

    drop(controller);
}
