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
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    pub manifests: Vec<PathBuf>,
    /// Cluster mode: the controller's node-state stream (`https://host:4240`), instead of
    /// `--manifests`. Needs --controller-ca, --controller-tls-cert and --controller-tls-key;
    /// the client certificate's Common Name must be this node's name.
    #[arg(long, env = "SEPTUM_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,
    /// PEM CA that signs the controller's serving certificate.
    #[arg(long, env = "SEPTUM_CONTROLLER_CA", value_name = "PATH")]
    pub controller_ca: Option<PathBuf>,
    /// PEM client certificate (Common Name = this node's name).
    #[arg(long, env = "SEPTUM_CONTROLLER_TLS_CERT", value_name = "PATH")]
    pub controller_tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "SEPTUM_CONTROLLER_TLS_KEY", value_name = "PATH")]
    pub controller_tls_key: Option<PathBuf>,
    /// The name the controller's certificate is checked against (default: the URL's host).
    #[arg(long, env = "SEPTUM_CONTROLLER_SERVER_NAME", value_name = "NAME")]
    pub controller_server_name: Option<String>,
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
    /// The flow store (SQLite); default `<state-dir>/flows.db`.
    #[arg(long, env = "SEPTUM_FLOW_STORE", value_name = "PATH")]
    pub flow_store: Option<PathBuf>,
    /// Flow records last seen longer ago than this are removed (`0`: no age bound).
    #[arg(
        long,
        env = "SEPTUM_FLOW_RETENTION",
        default_value = "24h",
        value_name = "DURATION"
    )]
    pub flow_retention: String,
    /// The flow store is kept under this many bytes (`0`: no size bound).
    #[arg(long, env = "SEPTUM_FLOW_STORE_MAX_BYTES", default_value_t = 1 << 30)]
    pub flow_store_max_bytes: u64,
    /// Also export flow records as JSON lines to this file (rotated by size).
    #[arg(long, env = "SEPTUM_FLOW_JSONL", value_name = "PATH")]
    pub flow_jsonl: Option<PathBuf>,
    /// Rotate the JSON-lines export past this size.
    #[arg(long, env = "SEPTUM_FLOW_JSONL_MAX_BYTES", default_value_t = 100 << 20)]
    pub flow_jsonl_max_bytes: u64,
    /// Rotated JSON-lines files kept.
    #[arg(long, env = "SEPTUM_FLOW_JSONL_KEEP", default_value_t = 5)]
    pub flow_jsonl_keep: u32,
    /// Also export flow records as OTLP logs to this collector (`http://host:4317`).
    #[arg(long, env = "SEPTUM_FLOW_OTLP", value_name = "URL")]
    pub flow_otlp: Option<String>,
    /// Serve the flow API on this TCP address too, with TLS (needs --flows-tls-cert and
    /// --flows-tls-key; with --flows-tls-client-ca, clients must present a certificate it signed).
    #[arg(long, env = "SEPTUM_FLOWS_ADDR", value_name = "ADDR")]
    pub flows_addr: Option<SocketAddr>,
    /// PEM certificate chain of the TCP flow API.
    #[arg(long, env = "SEPTUM_FLOWS_TLS_CERT", value_name = "PATH")]
    pub flows_tls_cert: Option<PathBuf>,
    /// PEM private key of the TCP flow API.
    #[arg(long, env = "SEPTUM_FLOWS_TLS_KEY", value_name = "PATH")]
    pub flows_tls_key: Option<PathBuf>,
    /// PEM CA certificate that signs the TCP flow API's client certificates.
    #[arg(long, env = "SEPTUM_FLOWS_TLS_CLIENT_CA", value_name = "PATH")]
    pub flows_tls_client_ca: Option<PathBuf>,
    /// Cluster mode: the URL at which the controller's flow relay reaches the TCP flow API
    /// (`https://NODE-IP:PORT`), sent to the controller in the stream's Hello [default:
    /// `https://<--flows-addr>` when that names a specific address; none otherwise].
    #[arg(long, env = "SEPTUM_FLOWS_ADVERTISE", value_name = "URL")]
    pub flows_advertise: Option<String>,
    /// Keep septum-cni installed as the last plugin of this directory's network configuration:
    /// installed at start and again whenever the directory changes (Flannel and Calico rewrite
    /// their configuration when they restart). Unset: the agent does not touch CNI files.
    #[arg(long, env = "SEPTUM_CNI_CONF_DIR", value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// Where the runtime finds plugin binaries (with --cni-conf-dir).
    #[arg(
        long,
        env = "SEPTUM_CNI_BIN_DIR",
        default_value = septum_cni::install::DEFAULT_BIN_DIR,
        value_name = "DIR"
    )]
    pub cni_bin_dir: PathBuf,
    /// The septum-cni binary to install (with --cni-conf-dir) [default: septum-cni next to this
    /// executable].
    #[arg(long, env = "SEPTUM_CNI_PLUGIN_BINARY", value_name = "PATH")]
    pub cni_plugin_binary: Option<PathBuf>,
}

impl AgentConfig {
    /// The flow pipeline's settings, validated.
    pub fn flow_settings(&self) -> anyhow::Result<crate::flows::FlowSettings> {
        let age = septum_flowlog::wire::parse_duration("flow-retention", &self.flow_retention)?;
        if self.flows_addr.is_some()
            && (self.flows_tls_cert.is_none() || self.flows_tls_key.is_none())
        {
            anyhow::bail!(
                "--flows-addr serves the flow API over TLS only: give --flows-tls-cert and --flows-tls-key"
            );
        }
        Ok(crate::flows::FlowSettings {
            store: self
                .flow_store
                .clone()
                .unwrap_or_else(|| self.state_dir.join("flows.db")),
            retention: septum_flowlog::Retention {
                max_age_ms: (age > 0).then_some(age),
                max_bytes: (self.flow_store_max_bytes > 0).then_some(self.flow_store_max_bytes),
            },
            jsonl: self
                .flow_jsonl
                .clone()
                .map(|p| (p, self.flow_jsonl_max_bytes, self.flow_jsonl_keep)),
            otlp: self.flow_otlp.clone(),
            aggregation: septum_flowlog::aggregate::Settings::default(),
        })
    }

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
