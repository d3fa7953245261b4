//! The OTLP exporter against a real OTLP/gRPC logs receiver on loopback, built from the official
//! `opentelemetry-proto` service definition: the records it decodes are exactly the records
//! that were sent (and that the store holds), in order; a receiver that is down costs counted,
//! never silent, failures; a full queue counts drops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use septum_flowlog::otlp::proto::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use septum_flowlog::otlp::proto::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use septum_flowlog::otlp::{ExporterSettings, OtlpExporter, records_from_request};
use septum_flowlog::store::{Retention, Store};
use septum_flowlog::{FlowEnd, FlowRecord, Point, Query, RuleRef, Verdict};

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn record(i: u64) -> FlowRecord {
    let end = |n: u64, port: u16, pod: bool| FlowEnd {
        ip: Some(std::net::IpAddr::from([10, 0, (n >> 8) as u8, n as u8])),
        port,
        namespace: if pod {
            "shop".into()
        } else {
            Default::default()
        },
        pod: if pod {
            format!("pod-{n}").into()
        } else {
            Default::default()
        },
        workload: if pod {
            format!("Deployment/app-{}", n % 3).into()
        } else {
            Default::default()
        },
        labels: if pod {
            BTreeMap::from([("app".to_string(), format!("app-{}", n % 3))]).into()
        } else {
            Default::default()
        },
        identity: 256 + n as u32,
        service: if port == 80 {
            "shop/web".into()
        } else {
            Default::default()
        },
    };
    FlowRecord {
        first_seen_ms: 1_800_000_000_000 + i as i64,
        last_seen_ms: 1_800_000_000_100 + i as i64,
        node: "node-a".into(),
        point: if i.is_multiple_of(2) {
            Point::FromPod
        } else {
            Point::ToPod
        },
        protocol: if i.is_multiple_of(5) { 17 } else { 6 },
        src: end(i % 300, 30_000 + (i % 1000) as u16, true),
        dst: end(
            i % 7,
            if i.is_multiple_of(3) { 80 } else { 5432 },
            !i.is_multiple_of(4),
        ),
        verdict: if i % 3 == 1 {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        },
        drop_reason: if i % 3 == 1 { 2 } else { 0 },
        egress_rule: None,
        ingress_rule: (i % 3 == 1).then(|| {
            Arc::new(RuleRef {
                kind: "NetworkPolicy".into(),
                namespace: "shop".into(),
                name: "default-deny".into(),
                tier: String::new(),
                rule_index: -1,
            })
        }),
        tcp_flags: 0x12,
        packets_forward: i,
        bytes_forward: i * 60,
        packets_reverse: i / 2,
        bytes_reverse: i * 30,
        is_reply: i.is_multiple_of(11),
        count: 1 + i % 4,
    }
}

async fn receiver() -> (String, Receiver, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = Receiver::default();
    let service = LogsServiceServer::new(r.clone());
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), r, task)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_decodes_exactly_the_records_the_store_holds() {
    let (endpoint, rx, task) = receiver().await;
    let exporter = OtlpExporter::start(
        endpoint,
        ExporterSettings {
            node: "node-a".into(),
            max_batch: 128,
            ..ExporterSettings::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("flows.db"), Retention::default()).unwrap();
    let records: Vec<FlowRecord> = (0..1000).map(record).collect();
    for chunk in records.chunks(37) {
        store.write(chunk).unwrap();
        exporter.send(chunk);
    }
    until("every record exported", || exporter.exported() == 1000).await;
    assert_eq!(exporter.dropped(), 0);
    assert_eq!(exporter.failed(), 0);
    assert_eq!(exporter.queued(), 0);
    let requests = rx.requests.lock().unwrap().clone();
    assert!(requests.len() > 1, "batched into several requests");
    let mut received = Vec::new();
    for r in &requests {
        assert!(r.resource_logs[0].scope_logs[0].log_records.len() <= 128);
        received.extend(records_from_request(r).unwrap());
    }
    assert_eq!(received, records);
    let mut stored = store
        .query(&Query {
            first: true,
            ..Query::default()
        })
        .unwrap();
    stored.sort_by_key(|r| r.first_seen_ms);
    assert_eq!(received, stored);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_and_a_full_queue_are_counted() {
    // Nothing listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exporter = OtlpExporter::start(
        format!("http://127.0.0.1:{port}"),
        ExporterSettings {
            queue_records: 100,
            timeout: Duration::from_millis(500),
            ..ExporterSettings::default()
        },
    )
    .unwrap();
    let records: Vec<FlowRecord> = (0..50).map(record).collect();
    for _ in 0..10 {
        exporter.send(&records);
    }
    until("every record accounted for", || {
        exporter.failed() + exporter.dropped() == 500
    })
    .await;
    assert_eq!(exporter.exported(), 0);
    assert!(exporter.dropped() > 0, "the queue of 100 overflowed");
    assert!(exporter.failed() > 0, "the sends failed");
}
