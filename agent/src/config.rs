//! The agent's configuration: flags, each with a `SEPTUM_*` environment key, validated at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use septum_datapath::AttachMode;

/// `septum agent` / `septum-agent`.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentConfig {
    /// Standalone mode: a directory (or file) of Kubernetes YAML (Namespaces, Pods, Services,
    /// NetworkPolicy, FlowPolicy, ClusterNetworkPolicy) to enforce; watched for changes.
    /// Repeatable.
    #[arg(
        long = "manifests",
        env = "SEPTUM_MANIFESTS",
        value_name = "PATH",
        required = true
    )]
    pub manifests: Vec<PathBuf>,
    /// This node's name (pods registered here are placed on it).
    #[arg(long, env = "SEPTUM_NODE_NAME", default_value = "standalone")]
    pub node_name: String,
    /// Where the endpoint registry and allocated numbers are kept.
    #[arg(
        long,
        env = "SEPTUM_STATE_DIR",
        default_value = "/var/lib/septum/agent"
    )]
    pub state_dir: PathBuf,
    /// The endpoint registry's unix socket (the CNI plugin's `agentSocket`).
    #[arg(
        long,
        env = "SEPTUM_AGENT_SOCKET",
        default_value = "/run/septum/agent.sock"
    )]
    pub socket: PathBuf,
    /// Root of the bpffs pins.
    #[arg(long, env = "SEPTUM_PIN_ROOT", default_value = septum_datapath::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// How programs are attached: tcx, netlink (clsact) or auto.
    #[arg(long, env = "SEPTUM_ATTACH_MODE", default_value = "auto")]
    pub attach_mode: AttachMode,
    /// Health endpoint (`/healthz`, `/readyz`, `/status`); empty to disable.
    #[arg(long, env = "SEPTUM_HEALTH_ADDR", default_value = "127.0.0.1:9878")]
    pub health_addr: String,
    /// Remove pinned maps whose layout differs from this build's instead of refusing to start.
    #[arg(long, env = "SEPTUM_MIGRATE_MAPS")]
    pub migrate: bool,
}

impl AgentConfig {
    /// The health endpoint's address, if enabled.
    pub fn health_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.health_addr.is_empty() {
            return Ok(None);
        }
        self.health_addr
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--health-addr {:?}: {e}", self.health_addr))
    }
}
