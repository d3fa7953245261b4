//! The node-state stream (`septum.nodestate.v1.NodeStateService`): each agent receives its own
//! node's state as a snapshot and then one revisioned delta per change, and acks every revision
//! it has written into its kernel.
//!
//! - Who is asking: the Common Name of the client certificate (mutual TLS; the server is only
//!   ever served with a client CA). A Hello naming another node is refused, so a misconfigured
//!   agent can never be fed a neighbour's state.
//! - What is sent: only what the controller has *published* ([`Published`]): a delta leaves
//!   after the identity numbers it uses are persisted, and a snapshot is never newer than the
//!   deltas already broadcast, so an agent never sees a number a restarted controller would not
//!   know.
//! - Resuming: revisions count within an *epoch* (one run of the controller). An agent that
//!   reconnects with this epoch gets nothing when it is current, the missed deltas when they are
//!   still in the per-node history, and a snapshot otherwise (another epoch, a gap, a lagging
//!   stream). A snapshot replaces the agent's state; the agent writes only what differs from its
//!   maps, so a snapshot after a controller restart rewrites nothing that did not change.
//! - Acks feed the FlowPolicy `Programmed` condition: a policy's current version is programmed
//!   on a node once the node acks the revision that first contained it ([`Published::require`]).

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use prost::Message as _;
use septum_policy::model::ObjectKey;
use septum_policy::node::NodeState;
use septum_policy::wire;
use septum_proto::nodestate::v1 as pb;
use septum_proto::nodestate::v1::node_state_service_server::{
    NodeStateService, NodeStateServiceServer,
};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::Context;
use crate::node_state::{NodeDelta, Revisioned};

/// Deltas kept per node for agents that resume.
pub const HISTORY: usize = 32;
/// How long an agent has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest update on the wire (a snapshot of a big cluster's ipcache is a few MiB).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// A fresh epoch: nonzero, and different for every run of the controller.
pub fn new_epoch() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 48)) | 1
}

/// How an agent is brought up to date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// It already holds the current revision.
    Current,
    /// These deltas, in order, take it there.
    Deltas(Vec<NodeDelta>),
    /// It needs the whole state (read from the compiler once nothing is unpublished,
    /// [`Context::snapshot`]).
    Snapshot,
}

/// What the controller has published: every node's last broadcast revision, the recent deltas
/// of each, the revision each node's agent has acked, and the revisions each FlowPolicy's
/// current version needs. Pure. The states themselves live once, in the compiler.
#[derive(Debug, Default)]
pub struct Published {
    nodes: BTreeMap<String, u64>,
    history: BTreeMap<String, VecDeque<NodeDelta>>,
    acked: BTreeMap<String, u64>,
    required: BTreeMap<ObjectKey, BTreeMap<String, u64>>,
}

/// A node's state before anything is known about it.
pub fn empty(node: &str) -> Revisioned {
    Revisioned {
        revision: 0,
        state: NodeState {
            node: node.to_string(),
            ..NodeState::default()
        },
    }
}

impl Published {
    /// Records deltas about to be broadcast.
    pub fn publish(&mut self, deltas: &[NodeDelta]) {
        for d in deltas {
            self.nodes.insert(d.node.clone(), d.revision);
            let h = self.history.entry(d.node.clone()).or_default();
            h.push_back(d.clone());
            while h.len() > HISTORY {
                h.pop_front();
            }
        }
    }

    /// A node's published revision (0 when the node is unknown).
    pub fn revision(&self, node: &str) -> u64 {
        self.nodes.get(node).copied().unwrap_or(0)
    }

    /// Every published node and its revision.
    pub fn nodes(&self) -> impl Iterator<Item = (&String, u64)> {
        self.nodes.iter().map(|(n, r)| (n, *r))
    }

    /// How to bring an agent that holds `revision` of this epoch (`same_epoch`) up to date.
    pub fn catch_up(&self, node: &str, same_epoch: bool, revision: u64) -> CatchUp {
        let current = self.revision(node);
        if same_epoch && revision == current {
            return CatchUp::Current;
        }
        if same_epoch
            && revision > 0
            && revision < current
            && let Some(h) = self.history.get(node)
            && let Some(start) = h.iter().position(|d| d.from_revision == revision)
        {
            return CatchUp::Deltas(h.iter().skip(start).cloned().collect());
        }
        CatchUp::Snapshot
    }

    /// The current version of `policy` needs every node's current revision.
    pub fn require(&mut self, policy: ObjectKey) {
        let need = self.nodes.clone();
        self.required.insert(policy, need);
    }

    /// Forgets a deleted policy.
    pub fn forget(&mut self, policy: &ObjectKey) {
        self.required.remove(policy);
    }

    /// Records an ack; returns the policies whose programmed count it changes.
    pub fn ack(&mut self, node: &str, revision: u64) -> Vec<ObjectKey> {
        let before = self.acked.get(node).copied().unwrap_or(0);
        if revision <= before {
            return Vec::new();
        }
        self.acked.insert(node.to_string(), revision);
        self.required
            .iter()
            .filter(|(_, need)| need.get(node).is_some_and(|&r| r > before && r <= revision))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The revision a node's agent last acked in this epoch.
    pub fn acked(&self, node: &str) -> u64 {
        self.acked.get(node).copied().unwrap_or(0)
    }

    /// How many nodes have programmed the current version of `policy`, and the names of the
    /// others (sorted).
    pub fn programmed(&self, policy: &ObjectKey) -> Option<(usize, Vec<String>)> {
        let need = self.required.get(policy)?;
        let mut done = 0;
        let mut pending = Vec::new();
        for n in self.nodes.keys() {
            let want = need.get(n).copied().unwrap_or(0);
            if self.acked(n) >= want.max(1) {
                done += 1;
            } else {
                pending.push(n.clone());
            }
        }
        Some((done, pending))
    }
}

fn update_of(epoch: u64, d: &NodeDelta) -> wire::Update {
    wire::Update {
        epoch,
        from_revision: d.from_revision,
        revision: d.revision,
        // The first delta of a node starts from the empty state: it is the whole state.
        snapshot: d.from_revision == 0,
        node: d.node.clone(),
        diff: d.diff.clone(),
    }
}

/// The node a request speaks for: its client certificate's Common Name.
pub fn node_of_certificate(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the client certificate has no Common Name")?
        .as_str()
        .map_err(|e| format!("the client certificate's Common Name is not text: {e}"))?;
    if cn.is_empty() {
        return Err("the client certificate's Common Name is empty".into());
    }
    Ok(cn.to_string())
}

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct NodeStateServer {
    ctx: Arc<Context>,
}

impl NodeStateServer {
    /// The service for `ctx`.
    pub fn new(ctx: Arc<Context>) -> NodeStateServiceServer<Self> {
        NodeStateServiceServer::new(Self { ctx })
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .max_decoding_message_size(1 << 20)
    }
}

type Updates = Pin<Box<dyn Stream<Item = Result<pb::Update, Status>> + Send>>;

#[tonic::async_trait]
impl NodeStateService for NodeStateServer {
    type SubscribeStream = Updates;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Updates>, Status> {
        let ctx = self.ctx.clone();
        let refuse = |s: Status| {
            ctx.metrics.stream_refused.inc();
            warn!(error = %s.message(), "node-state stream refused");
            s
        };
        let certs = request.peer_certs().ok_or_else(|| {
            refuse(Status::unauthenticated(
                "a client certificate is required (its Common Name is the node name)",
            ))
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| refuse(Status::unauthenticated("a client certificate is required")))?;
        let node = node_of_certificate(leaf).map_err(|e| refuse(Status::unauthenticated(e)))?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                return Err(refuse(Status::invalid_argument(
                    "the first message must be a Hello",
                )));
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                return Err(refuse(Status::cancelled("the agent left before its Hello")));
            }
            Err(_) => {
                return Err(refuse(Status::deadline_exceeded(format!(
                    "no Hello within {HELLO_TIMEOUT:?}"
                ))));
            }
        };
        if !hello.node.is_empty() && hello.node != node {
            return Err(refuse(Status::permission_denied(format!(
                "the certificate is for node {node:?} but the agent says it is {:?}",
                hello.node
            ))));
        }
        // Subscribe before reading the published state: nothing falls between the two.
        let updates = ctx.subscribe();
        let (tx, rx) = mpsc::channel(8);
        let span = info_span!("stream", node = %node, agent.version = %hello.agent_version);
        tokio::spawn(session(ctx, node, hello, inbound, updates, tx).instrument(span));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct Sender<'a> {
    ctx: &'a Context,
    tx: mpsc::Sender<Result<pb::Update, Status>>,
    sent: u64,
}

impl Sender<'_> {
    async fn send(&mut self, u: &wire::Update) -> bool {
        let msg = wire::encode(u);
        self.ctx.metrics.stream_updates.inc();
        self.ctx
            .metrics
            .stream_update_bytes
            .add(msg.encoded_len() as u64);
        debug!(
            from = u.from_revision,
            revision = u.revision,
            snapshot = u.snapshot,
            ops = u.diff.len(),
            bytes = msg.encoded_len(),
            "update sent"
        );
        self.sent = u.revision;
        self.tx.send(Ok(msg)).await.is_ok()
    }

    async fn snapshot(&mut self, r: &Revisioned) -> bool {
        let epoch = self.ctx.epoch();
        self.send(&wire::Update::snapshot(epoch, r.revision, &r.state))
            .await
    }

    async fn catch_up(&mut self, node: &str, c: CatchUp) -> bool {
        match c {
            CatchUp::Current => true,
            CatchUp::Deltas(ds) => {
                for d in &ds {
                    if !self.send(&update_of(self.ctx.epoch(), d)).await {
                        return false;
                    }
                }
                true
            }
            CatchUp::Snapshot => {
                let r = self.ctx.snapshot(node).await;
                // Revision 0: the controller knows nothing of this node yet; the agent keeps
                // what it has until the node's first delta.
                r.revision == 0 || self.snapshot(&r).await
            }
        }
    }
}

async fn session(
    ctx: Arc<Context>,
    node: String,
    hello: pb::Hello,
    mut inbound: Streaming<pb::AgentMessage>,
    mut updates: broadcast::Receiver<Arc<Vec<NodeDelta>>>,
    tx: mpsc::Sender<Result<pb::Update, Status>>,
) {
    let _connection = Connection::new(&ctx, &node, &hello);
    // An agent must never get a half-listed cluster: wait for the first full sync.
    while !ctx.is_synced() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tx.closed() => return,
        }
    }
    let mut out = Sender {
        ctx: &ctx,
        tx: tx.clone(),
        sent: 0,
    };
    let epoch = ctx.epoch();
    let first = ctx
        .published()
        .catch_up(&node, hello.epoch == epoch, hello.revision);
    if first == CatchUp::Current {
        out.sent = hello.revision;
    }
    if !out.catch_up(&node, first).await {
        return;
    }
    loop {
        tokio::select! {
            msg = updates.recv() => match msg {
                Ok(deltas) => {
                    for d in deltas.iter().filter(|d| d.node == node) {
                        if d.revision <= out.sent {
                            continue;
                        }
                        let ok = if d.from_revision == out.sent {
                            out.send(&update_of(epoch, d)).await
                        } else {
                            let current = ctx.snapshot(&node).await;
                            out.snapshot(&current).await
                        };
                        if !ok {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "the stream fell behind; sending a snapshot");
                    let current = ctx.snapshot(&node).await;
                    if current.revision != out.sent && !out.snapshot(&current).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            msg = inbound.message() => match msg {
                Ok(Some(pb::AgentMessage { kind: Some(pb::agent_message::Kind::Ack(a)) })) => {
                    ctx.metrics.stream_acks.inc();
                    if a.epoch != epoch {
                        continue;
                    }
                    if a.error.is_empty() {
                        ctx.acked(&node, a.revision);
                    } else {
                        warn!(revision = a.revision, error = %a.error, "the agent could not apply an update");
                    }
                }
                Ok(Some(_)) => {
                    warn!("unexpected message from the agent; closing the stream");
                    let _ = tx.send(Err(Status::invalid_argument("only Acks follow the Hello"))).await;
                    return;
                }
                Ok(None) | Err(_) => return,
            },
        }
    }
}

/// One agent's session, counted and registered (with its flow API) while it lasts.
struct Connection<'a> {
    ctx: &'a Context,
    node: &'a str,
    session: u64,
}

impl<'a> Connection<'a> {
    fn new(ctx: &'a Context, node: &'a str, hello: &pb::Hello) -> Self {
        ctx.metrics.agents_connected.inc();
        let session = ctx.agents.connected(node, &hello.flow_api_url);
        info!(
            epoch = hello.epoch,
            revision = hello.revision,
            flow_api = %hello.flow_api_url,
            "agent connected"
        );
        Self { ctx, node, session }
    }
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.ctx.metrics.agents_connected.dec();
        self.ctx.agents.disconnected(self.node, self.session);
        info!("agent disconnected");
    }
}

/// Serves the node-state stream on `listener` with `tls` until the task is dropped.
pub async fn serve(
    ctx: Arc<Context>,
    listener: tokio::net::TcpListener,
    tls: tonic::transport::ServerTlsConfig,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(NodeStateServer::new(ctx))
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
    use crate::node_state::NodeStateDiff;
    use septum_datapath_common::Identity;
    use septum_policy::state::EndpointState;

    fn delta(node: &str, from: u64, to: u64, pod: &str) -> NodeDelta {
        let mut diff = NodeStateDiff::default();
        diff.endpoints.upserts.push((
            ObjectKey::new("ns", pod),
            EndpointState {
                identity: Identity::new(u32::try_from(to).expect("small") + 100),
                flags: 0,
                mode: 0,
            },
        ));
        NodeDelta {
            node: node.into(),
            from_revision: from,
            revision: to,
            diff,
        }
    }

    #[test]
    fn agents_resume_from_history_or_get_a_snapshot() {
        let mut p = Published::default();
        for r in 0..40 {
            p.publish(&[delta("a", r, r + 1, &format!("p{r}"))]);
        }
        assert_eq!(p.revision("a"), 40);
        assert_eq!(p.catch_up("a", true, 40), CatchUp::Current);
        match p.catch_up("a", true, 37) {
            CatchUp::Deltas(ds) => {
                assert_eq!(
                    ds.iter()
                        .map(|d| (d.from_revision, d.revision))
                        .collect::<Vec<_>>(),
                    [(37, 38), (38, 39), (39, 40)]
                );
            }
            other => panic!("expected deltas, got {other:?}"),
        }
        // Older than the history, another epoch, or ahead of us: a snapshot.
        for (same, rev) in [(true, 2), (false, 40), (false, 37), (true, 41), (true, 0)] {
            assert!(
                p.catch_up("a", same, rev) == CatchUp::Snapshot,
                "{same} {rev}"
            );
        }
        assert_eq!(p.revision("z"), 0, "a node nobody has mentioned yet");
    }

    #[test]
    fn a_policy_is_programmed_where_its_revision_is_acked() {
        let mut p = Published::default();
        p.publish(&[delta("a", 0, 1, "x"), delta("b", 0, 1, "y")]);
        let k = ObjectKey::new("ns", "fp");
        p.require(k.clone());
        assert_eq!(p.programmed(&k), Some((0, vec!["a".into(), "b".into()])));
        assert_eq!(p.ack("a", 1), vec![k.clone()]);
        assert_eq!(p.programmed(&k), Some((1, vec!["b".into()])));
        // A new version of the policy changes only node b.
        p.publish(&[delta("b", 1, 2, "z")]);
        p.require(k.clone());
        assert_eq!(p.programmed(&k), Some((1, vec!["b".into()])));
        assert!(p.ack("b", 1).is_empty(), "revision 1 predates the policy");
        assert_eq!(p.programmed(&k), Some((1, vec!["b".into()])));
        assert_eq!(p.ack("b", 2), vec![k.clone()]);
        assert_eq!(p.programmed(&k), Some((2, vec![])));
        // Old acks change nothing.
        assert!(p.ack("b", 1).is_empty());
        assert_eq!(p.programmed(&ObjectKey::new("ns", "other")), None);
    }
}
