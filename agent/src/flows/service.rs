//! `septum.flow.v1.FlowService` over the agent's store and live pipeline. Requests are
//! validated at this edge (a bad filter is INVALID_ARGUMENT naming the flag); store work runs
//! on blocking threads; a follower receives the stored records, then every new and updated one
//! matching its query (after a `CaughtUp` marker), with a `LostFlows` message whenever it fell
//! behind.

use std::pin::Pin;
use std::sync::Arc;

use septum_flowlog::wire;
use septum_flowlog::{FilterError, Query, StoreError};
use septum_proto::flow::v1::{self as pb, flow_service_server::FlowService};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::pipeline::FlowHub;

/// Responses queued per `GetFlows` stream before the sender waits for the client.
const STREAM_QUEUE: usize = 256;

/// The service.
#[derive(Debug, Clone)]
pub struct FlowApi {
    hub: Arc<FlowHub>,
}

impl FlowApi {
    /// A service over `hub`.
    pub fn new(hub: Arc<FlowHub>) -> Self {
        Self { hub }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FlowHub) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let hub = self.hub.clone();
        tokio::task::spawn_blocking(move || f(&hub))
            .await
            .map_err(|e| Status::internal(format!("store task: {e}")))?
            .map_err(store_status)
    }
}

fn bad(e: FilterError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Filter(f) => bad(f),
        other => Status::unavailable(format!("flow store: {other}")),
    }
}

fn flow(node: &str, r: &septum_flowlog::FlowRecord) -> pb::GetFlowsResponse {
    pb::GetFlowsResponse {
        response: Some(pb::get_flows_response::Response::Flow(pb::Flow::from(r))),
        node: node.to_string(),
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<pb::GetFlowsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlowService for FlowApi {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        req: Request<pb::GetFlowsRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        let req = req.into_inner();
        let number = wire::flows_number(req.number).map_err(bad)?;
        let query = wire::query(req.query.as_ref(), Some(number), req.first).map_err(bad)?;
        // Subscribe before reading the store, so nothing produced in between is missed (a
        // record may then arrive twice: stored, then updated; consumers keep the latest).
        let mut sub = req.follow.then(|| self.hub.subscribe());
        let q = query.clone();
        let mut stored = self
            .blocking(move |hub| hub.with_reader(|s| s.query(&q)))
            .await?;
        if !req.first {
            stored.reverse();
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let node = hub.node.clone();
            for r in &stored {
                if tx.send(Ok(flow(&node, r))).await.is_err() {
                    return;
                }
            }
            let Some(sub) = sub.as_mut() else { return };
            let caught_up = pb::GetFlowsResponse {
                response: Some(pb::get_flows_response::Response::CaughtUp(pb::CaughtUp {})),
                node: node.clone(),
            };
            if tx.send(Ok(caught_up)).await.is_err() {
                return;
            }
            let live = Query {
                limit: None,
                ..query
            };
            loop {
                let recv = tokio::select! {
                    r = sub.recv() => r,
                    _ = tx.closed() => return,
                };
                let Some((lost, batch)) = recv else { return };
                if lost > 0 {
                    hub.count_lagged(lost);
                    let msg = pb::GetFlowsResponse {
                        response: Some(pb::get_flows_response::Response::Lost(pb::LostFlows {
                            count: lost,
                        })),
                        node: node.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                for r in batch.records.iter().filter(|r| live.matches(r)) {
                    if tx.send(Ok(flow(&node, r))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn top_talkers(
        &self,
        req: Request<pb::TopTalkersRequest>,
    ) -> Result<Response<pb::TopTalkersResponse>, Status> {
        let req = req.into_inner();
        let n = wire::top_number(req.number).map_err(bad)?;
        let q = wire::query(req.query.as_ref(), None, false).map_err(bad)?;
        let talkers = self
            .blocking(move |hub| hub.with_reader(|s| s.top_talkers(&q, n)))
            .await?;
        Ok(Response::new(pb::TopTalkersResponse {
            talkers: talkers.iter().map(pb::Talker::from).collect(),
            node_errors: Vec::new(),
        }))
    }

    async fn denied_by_policy(
        &self,
        req: Request<pb::DeniedByPolicyRequest>,
    ) -> Result<Response<pb::DeniedByPolicyResponse>, Status> {
        let q = wire::query(req.into_inner().query.as_ref(), None, false).map_err(bad)?;
        let rows = self
            .blocking(move |hub| hub.with_reader(|s| s.denied_by_policy(&q)))
            .await?;
        Ok(Response::new(pb::DeniedByPolicyResponse {
            policies: rows.iter().map(pb::DeniedPolicy::from).collect(),
            node_errors: Vec::new(),
        }))
    }

    async fn service_map(
        &self,
        req: Request<pb::ServiceMapRequest>,
    ) -> Result<Response<pb::ServiceMapResponse>, Status> {
        let q = wire::query(req.into_inner().query.as_ref(), None, false).map_err(bad)?;
        let edges = self
            .blocking(move |hub| hub.with_reader(|s| s.edges(&q)))
            .await?;
        Ok(Response::new(pb::ServiceMapResponse {
            edges: edges.iter().map(pb::Edge::from).collect(),
            node_errors: Vec::new(),
        }))
    }

    async fn server_status(
        &self,
        _req: Request<pb::ServerStatusRequest>,
    ) -> Result<Response<pb::ServerStatusResponse>, Status> {
        let (stored, bytes) = self
            .blocking(|hub| hub.with_reader(|s| Ok((s.len()?, s.size_bytes()?))))
            .await?;
        let h = &self.hub;
        Ok(Response::new(pb::ServerStatusResponse {
            node: h.node.clone(),
            stored_flows: stored,
            store_bytes: bytes,
            retention_max_age_ms: h
                .retention
                .max_age_ms
                .map_or(0, |v| u64::try_from(v).unwrap_or(0)),
            retention_max_bytes: h.retention.max_bytes.unwrap_or(0),
            events: h.stats.events.load(std::sync::atomic::Ordering::Relaxed),
            records_written: h.stats.written.load(std::sync::atomic::Ordering::Relaxed),
            losses: h
                .losses()
                .into_iter()
                .map(|(source, count)| pb::Loss {
                    source: source.to_string(),
                    count,
                })
                .collect(),
            open_records: h.stats.open.load(std::sync::atomic::Ordering::Relaxed),
            nodes: Vec::new(),
            node_errors: Vec::new(),
        }))
    }
}
