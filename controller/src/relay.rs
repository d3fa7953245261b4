//! The flow relay: `septum.flow.v1.FlowService` for the whole cluster, answered by asking every
//! node's agent and merging what they say.
//!
//! - Which agents: every node of the cluster (its Node objects and the nodes pods are scheduled
//!   on), and every agent connected to the stream. A connected agent's Hello says where its TCP flow API listens ([`Agents`]); the
//!   relay dials it with the controller's certificate and checks the agent's certificate
//!   against the *node name* (not the advertised host), so an agent can only ever answer for
//!   its own node. A query whose every include filter names nodes goes to those nodes only.
//! - Nothing is hidden: a node that is not connected, serves no flow API, fails or does not
//!   answer within the timeout is reported as a [`pb::NodeError`] next to the other nodes'
//!   answer.
//! - Merging: records by `last_seen`, oldest first, the newest (or, with `first`, oldest)
//!   `number` of all nodes kept; aggregates summed by their key. A relay answer is therefore the
//!   answer one store holding every node's records would give (a connection between pods on two
//!   nodes is one record on each, as between pods on one node; the service map counts it once,
//!   at its destination). Top talkers: each node contributes its top [`TOP_PER_NODE`] pairs.
//! - Following: each node's stored records are merged and sent, then a `CaughtUp`, then every
//!   node's live records as they arrive.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use septum_flowlog::wire;
use septum_proto::flow::v1::flow_service_client::FlowServiceClient;
use septum_proto::flow::v1::flow_service_server::{FlowService, FlowServiceServer};
use septum_proto::flow::v1::{self as pb, get_flows_response::Response as Msg};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::context::Context;

/// How many pairs each node is asked for by `TopTalkers` (the most a node gives).
pub const TOP_PER_NODE: u32 = 1000;
/// Responses queued per relayed `GetFlows` before the relay waits for its client.
const STREAM_QUEUE: usize = 256;
/// Live records held for a follower while slower nodes send their stored ones; beyond this a
/// node's live records are counted as lost (and reported as such) instead.
const EARLY_LIVE: usize = 16 * 1024;
/// The default time a node has to answer (a query, or a follow's stored records).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The agents connected to the node-state stream and where their flow APIs listen.
#[derive(Debug, Default)]
pub struct Agents {
    connected: Mutex<BTreeMap<String, (u64, String)>>,
    sessions: AtomicU64,
}

impl Agents {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, String)>> {
        self.connected.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a stream session of `node` advertising `flow_api` (empty: none); returns the
    /// session to pass to [`Agents::disconnected`].
    pub fn connected(&self, node: &str, flow_api: &str) -> u64 {
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock()
            .insert(node.to_string(), (session, flow_api.to_string()));
        session
    }

    /// Forgets `session` of `node`, unless a newer session of the node replaced it.
    pub fn disconnected(&self, node: &str, session: u64) {
        let mut g = self.lock();
        if g.get(node).is_some_and(|(s, _)| *s == session) {
            g.remove(node);
        }
    }

    /// Every connected node and its advertised flow API.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.lock()
            .iter()
            .map(|(n, (_, url))| (n.clone(), url.clone()))
            .collect()
    }
}

/// How the relay reaches agents.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// The CA that signs the agents' certificates and the controller's client identity; the
    /// server name is set per node.
    pub tls: ClientTlsConfig,
    /// How long a node has to answer.
    pub timeout: Duration,
}

/// The relay service.
#[derive(Clone, Debug)]
pub struct Relay {
    ctx: Arc<Context>,
    settings: RelaySettings,
    /// node -> (advertised URL, channel), reused while the URL stays the same.
    channels: Arc<Mutex<HashMap<String, (String, Channel)>>>,
}

/// One node the relay asks, or why it cannot.
enum Target {
    Reachable(String, FlowServiceClient<Channel>),
    Unreachable(pb::NodeError),
}

fn node_error(node: &str, code: &str, message: impl Into<String>) -> pb::NodeError {
    pb::NodeError {
        node: node.to_string(),
        code: code.to_string(),
        message: message.into(),
    }
}

fn status_error(node: &str, s: &Status) -> pb::NodeError {
    let mut message = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        message = format!("{message}: {e}");
        source = e.source();
    }
    // The relay never cancels a call it still waits for: a cancelled one is a connection the
    // agent's side dropped. So is an Unknown that carries a transport error (a reset stream or
    // connection; an agent's own Unknown status has no source).
    let code = match s.code() {
        tonic::Code::Cancelled => tonic::Code::Unavailable,
        tonic::Code::Unknown if std::error::Error::source(s).is_some() => tonic::Code::Unavailable,
        c => c,
    };
    node_error(node, &format!("{code:?}"), message)
}

fn timed_out(node: &str, after: Duration) -> pb::NodeError {
    node_error(
        node,
        "DeadlineExceeded",
        format!("no answer within {after:?}"),
    )
}

/// The nodes a query is limited to: when every include filter names nodes, their union.
fn scope(q: Option<&pb::Query>) -> Option<BTreeSet<String>> {
    let q = q?;
    if q.include.is_empty() || q.include.iter().any(|f| f.node.is_empty()) {
        return None;
    }
    Some(q.include.iter().flat_map(|f| f.node.clone()).collect())
}

fn bad(e: septum_flowlog::FilterError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl Relay {
    /// A relay over the agents of `ctx`.
    pub fn new(ctx: Arc<Context>, settings: RelaySettings) -> Self {
        Self {
            ctx,
            settings,
            channels: Arc::default(),
        }
    }

    /// The gRPC service.
    pub fn service(self) -> FlowServiceServer<Self> {
        FlowServiceServer::new(self)
    }

    fn channel(&self, node: &str, url: &str) -> Result<Channel, String> {
        let mut g = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((u, c)) = g.get(node)
            && u == url
        {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("the advertised flow API {url:?} is not a URL: {e}"))?
            .tls_config(self.settings.tls.clone().domain_name(node))
            .map_err(|e| format!("TLS for {url:?}: {e}"))?
            .connect_timeout(self.settings.timeout)
            .connect_lazy();
        g.insert(node.to_string(), (url.to_string(), channel.clone()));
        Ok(channel)
    }

    /// The nodes to ask: every Node object, every node a pod is scheduled on, and every
    /// connected agent, within `scope`.
    fn targets(&self, scope: Option<BTreeSet<String>>) -> Vec<Target> {
        let connected = self.ctx.agents.snapshot();
        let mut nodes: BTreeSet<String> = self
            .ctx
            .with_compiler(|c| {
                c.engine()
                    .map(|e| {
                        let cluster = e.cluster();
                        let mut n: BTreeSet<String> = cluster.nodes.keys().cloned().collect();
                        n.extend(cluster.pods.values().filter_map(|p| p.node.clone()));
                        n
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        nodes.extend(connected.keys().cloned());
        if let Some(s) = &scope {
            nodes.retain(|n| s.contains(n));
            // A node asked for by name that nobody knows is reported, not silently empty.
            nodes.extend(s.iter().cloned());
        }
        nodes
            .into_iter()
            .map(|node| match connected.get(&node).map(String::as_str) {
                None => Target::Unreachable(node_error(
                    &node,
                    "NotConnected",
                    "the node's agent is not connected to the controller",
                )),
                Some("") => Target::Unreachable(node_error(
                    &node,
                    "NoFlowApi",
                    "the agent serves no TCP flow API (start it with --flows-addr and, when \
                     that is a wildcard address, --flows-advertise)",
                )),
                Some(url) => match self.channel(&node, url) {
                    Ok(c) => Target::Reachable(
                        node,
                        FlowServiceClient::new(c).max_decoding_message_size(64 << 20),
                    ),
                    Err(e) => Target::Unreachable(node_error(&node, "Unavailable", e)),
                },
            })
            .collect()
    }

    /// Asks every target with `call`; answers by node, and the nodes that gave none.
    async fn each<T, F, Fut>(
        &self,
        scope: Option<BTreeSet<String>>,
        call: F,
    ) -> (Vec<(String, T)>, Vec<pb::NodeError>)
    where
        T: Send + 'static,
        F: Fn(FlowServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        let mut errors = Vec::new();
        let mut set = JoinSet::new();
        let timeout = self.settings.timeout;
        for t in self.targets(scope) {
            match t {
                Target::Unreachable(e) => errors.push(e),
                Target::Reachable(node, client) => {
                    let answer = call(client);
                    set.spawn(async move { (node, tokio::time::timeout(timeout, answer).await) });
                }
            }
        }
        let mut answers = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((node, Ok(Ok(r)))) => answers.push((node, r.into_inner())),
                Ok((node, Ok(Err(s)))) => errors.push(status_error(&node, &s)),
                Ok((node, Err(_))) => errors.push(timed_out(&node, timeout)),
                Err(e) => warn!(error = %e, "a relay task failed"),
            }
        }
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        errors.sort_by(|a, b| a.node.cmp(&b.node));
        for e in &errors {
            debug!(node = %e.node, code = %e.code, message = %e.message, "node did not answer");
        }
        (answers, errors)
    }
}

/// What one node's `GetFlows` task reports to the merger.
enum NodeEvent {
    /// The node's stored records (all of them: the stream ended or caught up).
    Stored(String, Vec<pb::Flow>),
    /// A live response (a record or a loss), after the node caught up.
    Live(Box<pb::GetFlowsResponse>),
    /// The node failed; for a follower, its stream ended.
    Failed(pb::NodeError),
}

async fn node_flows(
    node: String,
    mut client: FlowServiceClient<Channel>,
    req: pb::GetFlowsRequest,
    tx: mpsc::Sender<NodeEvent>,
) {
    let follow = req.follow;
    let mut stream = match client.get_flows(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let _ = tx.send(NodeEvent::Failed(status_error(&node, &s))).await;
            return;
        }
    };
    let mut stored = Vec::new();
    let mut live = false;
    loop {
        let event = match stream.message().await {
            Ok(Some(m)) => match m.response {
                Some(Msg::Flow(f)) if !live => {
                    stored.push(f);
                    continue;
                }
                Some(Msg::CaughtUp(_)) if !live => {
                    live = true;
                    NodeEvent::Stored(node.clone(), std::mem::take(&mut stored))
                }
                Some(Msg::Flow(_) | Msg::Lost(_)) => {
                    NodeEvent::Live(Box::new(pb::GetFlowsResponse {
                        node: node.clone(),
                        ..m
                    }))
                }
                // An agent sends neither; nothing to relay.
                Some(Msg::NodeError(_) | Msg::CaughtUp(_)) | None => continue,
            },
            Ok(None) => {
                if !live {
                    let _ = tx
                        .send(NodeEvent::Stored(node.clone(), std::mem::take(&mut stored)))
                        .await;
                }
                if follow {
                    let _ = tx
                        .send(NodeEvent::Failed(node_error(
                            &node,
                            "Unavailable",
                            "the node's stream ended",
                        )))
                        .await;
                }
                return;
            }
            Err(s) => NodeEvent::Failed(status_error(&node, &s)),
        };
        let last = matches!(event, NodeEvent::Failed(_));
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

/// Merges per-node records (each oldest first) by `last_seen`, keeping the newest `number`
/// (the oldest with `first`). Ties keep each node's order, nodes in name order.
fn merge(mut per_node: Vec<(String, Vec<pb::Flow>)>, number: usize, first: bool) -> Vec<pb::Flow> {
    per_node.sort_by(|a, b| a.0.cmp(&b.0));
    let mut all: Vec<pb::Flow> = per_node.into_iter().flat_map(|(_, v)| v).collect();
    // Stable: a node's own order (by last_seen, then its store's id) survives ties.
    all.sort_by_key(|f| f.last_seen_unix_ms);
    if first {
        all.truncate(number);
    } else if all.len() > number {
        all.drain(..all.len() - number);
    }
    all
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<pb::GetFlowsResponse, Status>> + Send>>;

fn error_msg(e: pb::NodeError) -> pb::GetFlowsResponse {
    pb::GetFlowsResponse {
        node: e.node.clone(),
        response: Some(Msg::NodeError(e)),
    }
}

#[tonic::async_trait]
impl FlowService for Relay {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        req: Request<pb::GetFlowsRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        let req = req.into_inner();
        let number = wire::flows_number(req.number).map_err(bad)?;
        wire::query(req.query.as_ref(), Some(number), req.first).map_err(bad)?;
        let (first, follow) = (req.first, req.follow);
        let timeout = self.settings.timeout;
        let (events, mut rx) = mpsc::channel(STREAM_QUEUE);
        let mut tasks = JoinSet::new();
        let mut aborts = BTreeMap::new();
        let mut errors = Vec::new();
        for t in self.targets(scope(req.query.as_ref())) {
            match t {
                Target::Unreachable(e) => errors.push(e),
                Target::Reachable(node, client) => {
                    let h = tasks.spawn(node_flows(
                        node.clone(),
                        client,
                        req.clone(),
                        events.clone(),
                    ));
                    aborts.insert(node, h);
                }
            }
        }
        drop(events);
        let (tx, out) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(async move {
            // Owned here: dropping the task set (the client left) stops every node's stream.
            let _tasks = tasks;
            let mut pending: BTreeSet<String> = aborts.keys().cloned().collect();
            let mut stored = Vec::new();
            let mut early = Vec::new();
            let mut early_lost: BTreeMap<String, u64> = BTreeMap::new();
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            while !pending.is_empty() {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(NodeEvent::Stored(node, flows)) => {
                            if pending.remove(&node) {
                                stored.push((node, flows));
                            }
                        }
                        Some(NodeEvent::Failed(e)) => {
                            pending.remove(&e.node);
                            errors.push(e);
                        }
                        Some(NodeEvent::Live(m)) if early.len() < EARLY_LIVE => early.push(*m),
                        Some(NodeEvent::Live(m)) => {
                            let lost = match &m.response {
                                Some(Msg::Lost(l)) => l.count,
                                _ => 1,
                            };
                            *early_lost.entry(m.node).or_insert(0) += lost;
                        }
                        None => break,
                    },
                    _ = &mut deadline => {
                        for node in std::mem::take(&mut pending) {
                            if let Some(h) = aborts.get(&node) {
                                h.abort();
                            }
                            errors.push(timed_out(&node, timeout));
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
            errors.sort_by(|a, b| a.node.cmp(&b.node));
            let merged = merge(stored, number as usize, first);
            let head = errors
                .into_iter()
                .map(error_msg)
                .chain(merged.into_iter().map(|f| pb::GetFlowsResponse {
                    node: f.node.clone(),
                    response: Some(Msg::Flow(f)),
                }));
            for m in head {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            let caught_up = pb::GetFlowsResponse {
                node: String::new(),
                response: Some(Msg::CaughtUp(pb::CaughtUp {})),
            };
            if tx.send(Ok(caught_up)).await.is_err() {
                return;
            }
            let lost = early_lost
                .into_iter()
                .map(|(node, count)| pb::GetFlowsResponse {
                    node,
                    response: Some(Msg::Lost(pb::LostFlows { count })),
                });
            for m in early.into_iter().chain(lost) {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            loop {
                let m = tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(NodeEvent::Live(m)) => *m,
                        Some(NodeEvent::Failed(e)) => error_msg(e),
                        Some(NodeEvent::Stored(..)) => continue,
                        None => return,
                    },
                    _ = tx.closed() => return,
                };
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn top_talkers(
        &self,
        req: Request<pb::TopTalkersRequest>,
    ) -> Result<Response<pb::TopTalkersResponse>, Status> {
        let req = req.into_inner();
        let n = wire::top_number(req.number).map_err(bad)?;
        wire::query(req.query.as_ref(), None, false).map_err(bad)?;
        let ask = pb::TopTalkersRequest {
            query: req.query.clone(),
            number: TOP_PER_NODE,
        };
        let (answers, node_errors) = self
            .each(scope(req.query.as_ref()), |mut c| {
                let ask = ask.clone();
                async move { c.top_talkers(ask).await }
            })
            .await;
        let mut sums: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for t in answers.into_iter().flat_map(|(_, a)| a.talkers) {
            let s = sums.entry((t.source, t.destination)).or_default();
            s.0 = s.0.saturating_add(t.flows);
            s.1 = s.1.saturating_add(t.bytes);
        }
        let mut talkers: Vec<pb::Talker> = sums
            .into_iter()
            .map(|((source, destination), (flows, bytes))| pb::Talker {
                source,
                destination,
                flows,
                bytes,
            })
            .collect();
        // The store's order: most bytes first, then by the pair.
        talkers.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then_with(|| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)))
        });
        talkers.truncate(n as usize);
        Ok(Response::new(pb::TopTalkersResponse {
            talkers,
            node_errors,
        }))
    }

    async fn denied_by_policy(
        &self,
        req: Request<pb::DeniedByPolicyRequest>,
    ) -> Result<Response<pb::DeniedByPolicyResponse>, Status> {
        let req = req.into_inner();
        wire::query(req.query.as_ref(), None, false).map_err(bad)?;
        let (answers, node_errors) = self
            .each(scope(req.query.as_ref()), |mut c| {
                let req = req.clone();
                async move { c.denied_by_policy(req).await }
            })
            .await;
        let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for p in answers.into_iter().flat_map(|(_, a)| a.policies) {
            let s = sums.entry(p.policy).or_default();
            s.0 = s.0.saturating_add(p.flows);
            s.1 = s.1.saturating_add(p.events);
        }
        let mut policies: Vec<pb::DeniedPolicy> = sums
            .into_iter()
            .map(|(policy, (flows, events))| pb::DeniedPolicy {
                policy,
                flows,
                events,
            })
            .collect();
        // The store's order: most records first, then by name.
        policies.sort_by(|a, b| b.flows.cmp(&a.flows).then_with(|| a.policy.cmp(&b.policy)));
        Ok(Response::new(pb::DeniedByPolicyResponse {
            policies,
            node_errors,
        }))
    }

    async fn service_map(
        &self,
        req: Request<pb::ServiceMapRequest>,
    ) -> Result<Response<pb::ServiceMapResponse>, Status> {
        let req = req.into_inner();
        wire::query(req.query.as_ref(), None, false).map_err(bad)?;
        let (answers, node_errors) = self
            .each(scope(req.query.as_ref()), |mut c| {
                let req = req.clone();
                async move { c.service_map(req).await }
            })
            .await;
        let mut sums: BTreeMap<(String, String, u32, u32), [u64; 4]> = BTreeMap::new();
        for e in answers.into_iter().flat_map(|(_, a)| a.edges) {
            let s = sums
                .entry((e.source, e.destination, e.port, e.protocol))
                .or_default();
            for (a, b) in s.iter_mut().zip([e.forwarded, e.dropped, e.audit, e.bytes]) {
                *a = a.saturating_add(b);
            }
        }
        // The store's order: by (source, destination, port, protocol), as the map iterates.
        let edges = sums
            .into_iter()
            .map(|((source, destination, port, protocol), c)| pb::Edge {
                source,
                destination,
                port,
                protocol,
                forwarded: c[0],
                dropped: c[1],
                audit: c[2],
                bytes: c[3],
            })
            .collect();
        Ok(Response::new(pb::ServiceMapResponse { edges, node_errors }))
    }

    async fn server_status(
        &self,
        _req: Request<pb::ServerStatusRequest>,
    ) -> Result<Response<pb::ServerStatusResponse>, Status> {
        let (answers, node_errors) = self
            .each(None, |mut c| async move {
                c.server_status(pb::ServerStatusRequest {}).await
            })
            .await;
        let mut total = pb::ServerStatusResponse::default();
        let mut losses: BTreeMap<String, u64> = BTreeMap::new();
        for (node, mut s) in answers {
            total.stored_flows = total.stored_flows.saturating_add(s.stored_flows);
            total.store_bytes = total.store_bytes.saturating_add(s.store_bytes);
            total.events = total.events.saturating_add(s.events);
            total.records_written = total.records_written.saturating_add(s.records_written);
            total.open_records = total.open_records.saturating_add(s.open_records);
            for l in &s.losses {
                let c = losses.entry(l.source.clone()).or_default();
                *c = c.saturating_add(l.count);
            }
            // The node's own answer names it; the certificate checked is the node's.
            s.node = node;
            total.nodes.push(s);
        }
        total.losses = losses
            .into_iter()
            .map(|(source, count)| pb::Loss { source, count })
            .collect();
        total.node_errors = node_errors;
        Ok(Response::new(total))
    }
}

/// Serves the relay on `listener` with `tls` until the task is dropped.
pub async fn serve(
    relay: Relay,
    listener: tokio::net::TcpListener,
    tls: tonic::transport::ServerTlsConfig,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(relay.service())
        // Small gRPC frames must not wait for delayed ACKs (Nagle), as they do on a socket
        // accepted without TCP_NODELAY.
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(node: &str, last: i64) -> pb::Flow {
        pb::Flow {
            node: node.into(),
            last_seen_unix_ms: last,
            first_seen_unix_ms: last,
            ..pb::Flow::default()
        }
    }

    fn seen(v: &[pb::Flow]) -> Vec<(String, i64)> {
        v.iter()
            .map(|f| (f.node.clone(), f.last_seen_unix_ms))
            .collect()
    }

    #[test]
    fn records_merge_by_time_keeping_the_newest_or_the_oldest() {
        let per_node = || {
            vec![
                (
                    "b".to_string(),
                    vec![flow("b", 2), flow("b", 5), flow("b", 9)],
                ),
                (
                    "a".to_string(),
                    vec![flow("a", 1), flow("a", 5), flow("a", 7)],
                ),
            ]
        };
        let want = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
            v.iter().map(|(n, t)| (n.to_string(), *t)).collect()
        };
        assert_eq!(
            seen(&merge(per_node(), 10, false)),
            want(&[("a", 1), ("b", 2), ("a", 5), ("b", 5), ("a", 7), ("b", 9)])
        );
        assert_eq!(
            seen(&merge(per_node(), 3, false)),
            want(&[("b", 5), ("a", 7), ("b", 9)])
        );
        assert_eq!(
            seen(&merge(per_node(), 3, true)),
            want(&[("a", 1), ("b", 2), ("a", 5)])
        );
    }

    #[test]
    fn a_query_naming_nodes_in_every_include_goes_to_those_nodes_only() {
        let f = |nodes: &[&str]| pb::FlowFilter {
            node: nodes.iter().map(|n| n.to_string()).collect(),
            ..pb::FlowFilter::default()
        };
        let q = |include: Vec<pb::FlowFilter>| pb::Query {
            include,
            ..pb::Query::default()
        };
        assert_eq!(scope(None), None);
        assert_eq!(scope(Some(&q(vec![]))), None);
        assert_eq!(scope(Some(&q(vec![f(&["a"]), f(&[])]))), None);
        assert_eq!(
            scope(Some(&q(vec![f(&["a"]), f(&["b", "a"])]))),
            Some(BTreeSet::from(["a".to_string(), "b".to_string()]))
        );
        // Excludes never narrow who is asked.
        let mut only_exclude = q(vec![]);
        only_exclude.exclude.push(f(&["a"]));
        assert_eq!(scope(Some(&only_exclude)), None);
    }

    #[test]
    fn a_newer_session_of_a_node_is_not_forgotten_when_the_old_one_ends() {
        let a = Agents::default();
        let old = a.connected("n", "https://10.0.0.1:4245");
        let new = a.connected("n", "https://10.0.0.2:4245");
        a.disconnected("n", old);
        assert_eq!(
            a.snapshot().get("n").map(String::as_str),
            Some("https://10.0.0.2:4245")
        );
        a.disconnected("n", new);
        assert!(a.snapshot().is_empty());
    }
}
