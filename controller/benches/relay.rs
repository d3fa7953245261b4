//! `cargo bench -p septum-controller --bench relay [-- RECORDS NODES]` (default 20000 3): what the
//! flow relay costs a query, beside the baseline of asking one agent directly.
//!
//! Each node runs the agent's real flow side (pipeline into a SQLite store, `FlowService` over
//! TLS), holding RECORDS distinct connections; the controller's relay is connected to all of
//! them through the real node-state stream. Measured on loopback, median (min..max) of 7
//! interleaved runs:
//! - `GetFlows` of the newest 10,000 records through the relay (from NODES x RECORDS) against the
//!   same query to one agent (from RECORDS);
//! - `TopTalkers`, `ServiceMap` and `ServerStatus` the same way.

#[path = "../tests/fake_api/mod.rs"]
mod fake_api;
#[path = "../tests/flow_nodes/mod.rs"]
mod flow_nodes;
#[path = "../tests/pki/mod.rs"]
mod pki;

use std::future::Future;
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use flow_nodes::{FlowNode, RelayController, connect_agent, event};
use pki::Pki;
use septum_datapath_common::POINT_TO_POD;
use septum_proto::flow::v1 as fpb;
use septum_proto::flow::v1::flow_service_client::FlowServiceClient;
use tonic::transport::Channel;

const RUNS: usize = 7;

fn client(url: &str, pki: &Pki, server_name: &str) -> FlowServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("URL")
        .tls_config(pki.client_tls(Some("operator"), server_name))
        .expect("TLS")
        .connect_lazy();
    FlowServiceClient::new(channel).max_decoding_message_size(64 << 20)
}

async fn timed<F, Fut>(f: F) -> Duration
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let t = Instant::now();
    f().await;
    t.elapsed()
}

async fn get_flows(mut c: FlowServiceClient<Channel>, want: usize) {
    let mut s = c
        .get_flows(fpb::GetFlowsRequest {
            number: 10_000,
            ..Default::default()
        })
        .await
        .expect("GetFlows")
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.expect("stream") {
        if let Some(fpb::get_flows_response::Response::Flow(_)) = m.response {
            n += 1;
        }
    }
    assert_eq!(n, want, "records received");
}

fn summary(v: &mut [Duration]) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:>8.1} ms ({:.1}..{:.1})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    // Distinct connections differ by source port.
    let records = args.first().copied().unwrap_or(20_000).min(60_000);
    let nodes = args.get(1).copied().unwrap_or(3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let pki = Pki::new();
        let (_api, kube) = FakeApi::start(&["clusternetworkpolicies"]);
        let controller = RelayController::start(kube, &pki, Duration::from_secs(60)).await;
        let (ctx, stream_addr, relay_addr) = (
            controller.ctx.clone(),
            controller.stream_addr,
            controller.relay_addr,
        );

        let mut flow_nodes = Vec::new();
        let mut sessions = Vec::new();
        let t = Instant::now();
        for i in 0..nodes {
            let name = format!("node-{i}");
            let mut n = FlowNode::start(&name, &pki).await;
            for chunk in (0..records).collect::<Vec<_>>().chunks(4096) {
                let events: Vec<_> = chunk
                    .iter()
                    .map(|&k| {
                        let mut e = event(POINT_TO_POD, "client", "web", 80, false, 0);
                        e.sport = 1024 + k as u16;
                        e
                    })
                    .collect();
                let stored = (chunk[chunk.len() - 1] + 1) as u64;
                n.record(&events, stored).await;
            }
            sessions.push(connect_agent(stream_addr, &pki, &name, &n.url));
            flow_nodes.push(n);
        }
        while ctx.agents.snapshot().len() < nodes {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "{nodes} nodes x {records} records stored in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        let relay = client(&format!("https://{relay_addr}"), &pki, "localhost");
        let direct = client(&flow_nodes[0].url, &pki, &flow_nodes[0].name);
        let want_relay = 10_000.min(records * nodes);
        let want_direct = 10_000.min(records);
        let mut rows: Vec<(&str, Vec<Duration>, Vec<Duration>)> = [
            "GetFlows newest 10k",
            "TopTalkers",
            "ServiceMap",
            "ServerStatus",
        ]
        .into_iter()
        .map(|n| (n, Vec::new(), Vec::new()))
        .collect();
        for _ in 0..RUNS {
            for (i, c) in [relay.clone(), direct.clone()].into_iter().enumerate() {
                let want = if i == 0 { want_relay } else { want_direct };
                let d = [
                    timed(|| get_flows(c.clone(), want)).await,
                    timed(|| async {
                        c.clone()
                            .top_talkers(fpb::TopTalkersRequest::default())
                            .await
                            .expect("TopTalkers");
                    })
                    .await,
                    timed(|| async {
                        c.clone()
                            .service_map(fpb::ServiceMapRequest::default())
                            .await
                            .expect("ServiceMap");
                    })
                    .await,
                    timed(|| async {
                        c.clone()
                            .server_status(fpb::ServerStatusRequest {})
                            .await
                            .expect("ServerStatus");
                    })
                    .await,
                ];
                for (row, d) in rows.iter_mut().zip(d) {
                    if i == 0 { row.1.push(d) } else { row.2.push(d) }
                }
            }
        }
        println!(
            "{:<22} {:>28} {:>28}",
            "query",
            format!("relay ({nodes} nodes)"),
            "baseline: one agent"
        );
        for (name, mut r, mut d) in rows {
            println!("{name:<22} {:>28} {:>28}", summary(&mut r), summary(&mut d));
        }
        drop(sessions);
    });
    rt.shutdown_background();
}
