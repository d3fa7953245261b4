//! Cluster mode: the node's state comes from the controller's node-state stream
//! (`septum.nodestate.v1`) instead of a directory of YAML.
//!
//! - [`Held`]: the state this agent holds (epoch, revision, the node's slice) and how an
//!   update moves it: a snapshot replaces it, a delta must start from exactly the held revision
//!   of the same epoch. It is persisted in the state directory after every update, so a
//!   restarted agent enforces (and resumes from) what it last had even while the controller is
//!   unreachable.
//! - [`run_client`]: connect with mutual TLS, say Hello with the held epoch and revision, apply
//!   each update through [`Agent::apply_update`], ack it, and reconnect with backoff whenever
//!   the stream ends. Nothing is removed from the kernel while the controller is away.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use septum_policy::node::NodeState;
use septum_policy::wire;
use septum_proto::nodestate::v1 as pb;
use septum_proto::nodestate::v1::node_state_service_client::NodeStateServiceClient;
use tokio::sync::{Mutex, mpsc};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::Agent;
use crate::config::AgentConfig;

/// The file the held state is kept in (a `septum.nodestate.v1.Update` snapshot).
pub const HELD_FILE: &str = "node-state.pb";
/// Largest update accepted (the controller's limit).
const MAX_MESSAGE_BYTES: usize = 256 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The node state this agent holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// The controller run the revision belongs to.
    pub epoch: u64,
    /// The last revision applied.
    pub revision: u64,
    /// The state.
    pub state: NodeState,
}

impl Held {
    /// The held state after `u`, or why `u` does not apply to it.
    pub fn after(held: Option<&Held>, node: &str, u: &wire::Update) -> Result<Held, String> {
        if u.node != node {
            return Err(format!(
                "the update is for node {:?}, this agent is {node:?}",
                u.node
            ));
        }
        if u.snapshot {
            return Ok(Held {
                epoch: u.epoch,
                revision: u.revision,
                state: u.to_state(),
            });
        }
        let Some(h) = held.filter(|h| h.epoch == u.epoch && h.revision == u.from_revision) else {
            return Err(format!(
                "a delta from revision {} of epoch {:x} does not apply to {}",
                u.from_revision,
                u.epoch,
                held.map_or("nothing".to_string(), |h| format!(
                    "revision {} of epoch {:x}",
                    h.revision, h.epoch
                ))
            ));
        };
        let mut next = h.clone();
        u.diff.apply_to(&mut next.state);
        next.revision = u.revision;
        Ok(next)
    }

    /// The persisted form (a snapshot update).
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(&wire::Update::snapshot(
            self.epoch,
            self.revision,
            &self.state,
        ))
        .encode_to_vec()
    }

    /// Reads the persisted form.
    pub fn decode(bytes: &[u8]) -> Result<Held, String> {
        let msg = pb::Update::decode(bytes).map_err(|e| e.to_string())?;
        let u = wire::decode(&msg).map_err(|e| e.to_string())?;
        if !u.snapshot {
            return Err("the held state is not a snapshot".into());
        }
        Ok(Held {
            epoch: u.epoch,
            revision: u.revision,
            state: u.to_state(),
        })
    }
}

/// How to reach the controller, read and checked at start.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// `https://host:port`.
    pub url: String,
    /// TLS: CA, client identity and the server name.
    pub tls: ClientTlsConfig,
    /// This node.
    pub node: String,
    /// Where the controller's flow relay reaches this agent (empty: nowhere).
    pub flow_api_url: String,
}

impl ClientSettings {
    /// The settings of a cluster-mode configuration (`None` in standalone mode).
    pub fn from_config(cfg: &AgentConfig) -> anyhow::Result<Option<Self>> {
        use anyhow::Context as _;
        let Some(url) = cfg.controller.clone() else {
            return Ok(None);
        };
        let read = |p: &Option<PathBuf>, what: &str| -> anyhow::Result<Vec<u8>> {
            let p = p
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--controller needs {what}"))?;
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        let ca = read(&cfg.controller_ca, "--controller-ca")?;
        let cert = read(&cfg.controller_tls_cert, "--controller-tls-cert")?;
        let key = read(&cfg.controller_tls_key, "--controller-tls-key")?;
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("--controller {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            anyhow::bail!(
                "--controller {url:?} must be an https:// URL (the stream is mutual TLS)"
            );
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("--controller {url:?} names no host"))?;
        let server_name = cfg
            .controller_server_name
            .clone()
            .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(server_name);
        Ok(Some(Self {
            url,
            tls,
            node: cfg.node_name.clone(),
            flow_api_url: flow_api_url(cfg)?,
        }))
    }
}

/// The flow API URL the Hello advertises: `--flows-advertise`, else `--flows-addr` when it names
/// a specific address (a wildcard address says nothing about where the node is reached).
fn flow_api_url(cfg: &AgentConfig) -> anyhow::Result<String> {
    match (&cfg.flows_advertise, cfg.flows_addr) {
        (Some(_), None) => {
            anyhow::bail!("--flows-advertise needs --flows-addr (the flow API it advertises)")
        }
        (Some(url), Some(_)) => {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| anyhow::anyhow!("--flows-advertise {url:?} is not a URL: {e}"))?;
            if uri.scheme_str() != Some("https") || uri.host().is_none() || uri.port().is_none() {
                anyhow::bail!(
                    "--flows-advertise {url:?} must be https://HOST:PORT (the flow API is TLS)"
                );
            }
            Ok(url.clone())
        }
        (None, Some(addr)) if !addr.ip().is_unspecified() => Ok(format!("https://{addr}")),
        (None, _) => Ok(String::new()),
    }
}

/// Follows the stream until the task is dropped: connect, Hello, apply + ack every update,
/// reconnect with backoff.
pub async fn run_client(agent: Arc<Mutex<Agent>>, settings: ClientSettings) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let got_updates = match session(&agent, &settings).await {
            Ok(n) => {
                tracing::warn!("the controller closed the node-state stream; reconnecting");
                n > 0
            }
            Err((n, e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "node-state stream failed; enforcing the last state meanwhile");
                n > 0
            }
        };
        agent.lock().await.set_controller_connected(false, None);
        if got_updates {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection; returns how many updates it applied (and the error that ended it).
async fn session(
    agent: &Arc<Mutex<Agent>>,
    settings: &ClientSettings,
) -> Result<usize, (usize, String)> {
    let fail = |n: usize| move |e: String| (n, e);
    let channel = Endpoint::from_shared(settings.url.clone())
        .map_err(|e| e.to_string())
        .and_then(|e| {
            e.tls_config(settings.tls.clone())
                .map_err(|e| e.to_string())
        })
        .map_err(fail(0))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(|e| (0, format!("connecting to {}: {e:?}", settings.url)))?;
    let mut client =
        NodeStateServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (epoch, revision) = agent.lock().await.held_revision();
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: settings.node.clone(),
            epoch,
            revision,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            flow_api_url: settings.flow_api_url.clone(),
        })),
    };
    tx.send(hello).await.map_err(|e| (0, e.to_string()))?;
    let mut inbound = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| (0, format!("{}: {}", s.code(), s.message())))?
        .into_inner();
    tracing::info!(url = %settings.url, epoch, revision, "node-state stream open");
    agent.lock().await.set_controller_connected(true, None);
    let mut applied = 0;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(applied),
            Err(s) => return Err((applied, format!("{}: {}", s.code(), s.message()))),
        };
        let result = match wire::decode(&msg) {
            Ok(u) => agent.lock().await.apply_update(&u),
            Err(e) => Err(e.to_string()),
        };
        let ack = pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::Ack(pb::Ack {
                epoch: msg.epoch,
                revision: msg.revision,
                error: result.clone().err().unwrap_or_default(),
            })),
        };
        if tx.send(ack).await.is_err() {
            return Err((applied, "the stream closed".into()));
        }
        match result {
            Ok(()) => applied += 1,
            Err(e) => {
                // Whatever went wrong, the way back is a snapshot: forget the held revision
                // (the state stays enforced) and reconnect.
                agent
                    .lock()
                    .await
                    .set_controller_connected(false, Some(e.clone()));
                agent.lock().await.forget_revision();
                return Err((applied, format!("update refused: {e}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septum_datapath_common::Identity;
    use septum_policy::model::ObjectKey;
    use septum_policy::node::NodeStateDiff;
    use septum_policy::state::EndpointState;

    fn ep(name: &str, id: u32) -> (ObjectKey, EndpointState) {
        (
            ObjectKey::new("ns", name),
            EndpointState {
                identity: Identity::new(id),
                flags: 0,
                mode: 0,
            },
        )
    }

    fn snapshot(epoch: u64, revision: u64) -> wire::Update {
        let mut state = NodeState {
            node: "n".into(),
            ..NodeState::default()
        };
        state.endpoints.extend([ep("a", 10)]);
        wire::Update::snapshot(epoch, revision, &state)
    }

    fn delta(epoch: u64, from: u64, to: u64) -> wire::Update {
        let mut diff = NodeStateDiff::default();
        diff.endpoints.upserts.push(ep("b", 11));
        wire::Update {
            epoch,
            from_revision: from,
            revision: to,
            snapshot: false,
            node: "n".into(),
            diff,
        }
    }

    fn advertised(args: &[&str]) -> anyhow::Result<String> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            cfg: AgentConfig,
        }
        use clap::Parser as _;
        let cli = Cli::try_parse_from(
            ["septum-agent", "--controller", "https://c:4240"]
                .iter()
                .chain(args),
        )
        .expect("flags parse");
        flow_api_url(&cli.cfg)
    }

    #[test]
    fn the_hello_advertises_a_reachable_flow_api_or_none() {
        assert_eq!(advertised(&[]).unwrap(), "");
        assert_eq!(
            advertised(&["--flows-addr", "10.0.0.7:4245"]).unwrap(),
            "https://10.0.0.7:4245"
        );
        // A wildcard address says nothing about where the node is reached.
        assert_eq!(advertised(&["--flows-addr", "0.0.0.0:4245"]).unwrap(), "");
        assert_eq!(advertised(&["--flows-addr", "[::]:4245"]).unwrap(), "");
        assert_eq!(
            advertised(&[
                "--flows-addr",
                "0.0.0.0:4245",
                "--flows-advertise",
                "https://node-a.example:4245"
            ])
            .unwrap(),
            "https://node-a.example:4245"
        );
        let refused = |args: &[&str], says: &str| {
            let e = advertised(args).expect_err("refused").to_string();
            assert!(e.contains(says), "{e}");
        };
        refused(
            &["--flows-advertise", "https://n:4245"],
            "needs --flows-addr",
        );
        for bad in ["http://n:4245", "https://n", "n:4245", "https://"] {
            refused(
                &["--flows-addr", "0.0.0.0:4245", "--flows-advertise", bad],
                "--flows-advertise",
            );
        }
    }

    #[test]
    fn deltas_apply_only_to_the_revision_they_start_from() {
        let h = Held::after(None, "n", &snapshot(7, 3)).expect("a snapshot always applies");
        assert_eq!((h.epoch, h.revision, h.state.endpoints.len()), (7, 3, 1));
        let h2 = Held::after(Some(&h), "n", &delta(7, 3, 4)).expect("in order");
        assert_eq!((h2.revision, h2.state.endpoints.len()), (4, 2));
        for bad in [delta(7, 2, 4), delta(8, 3, 4)] {
            let e = Held::after(Some(&h), "n", &bad).expect_err("gap or other epoch");
            assert!(e.contains("does not apply"), "{e}");
        }
        assert!(Held::after(None, "n", &delta(7, 3, 4)).is_err());
        let e = Held::after(None, "m", &snapshot(7, 3)).expect_err("another node");
        assert!(e.contains("this agent is \"m\""), "{e}");
    }

    #[test]
    fn the_held_state_survives_its_file() {
        let h = Held::after(None, "n", &snapshot(7, 3)).unwrap();
        assert_eq!(Held::decode(&h.encode()), Ok(h));
        assert!(Held::decode(b"\xff\xff garbage").is_err());
    }
}
