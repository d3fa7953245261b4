//! septum's node agent.
//!
//! It keeps the kernel equal to the compiled policy: it serves the endpoint registry the CNI
//! plugin calls (ADD attaches the datapath to the pod's host veth before returning), keeps its
//! endpoints and allocated numbers in a state directory so a restart loses nothing, compiles the
//! node's model and writes only the difference into the pinned maps.
//!
//! The model comes from standalone mode's datastore, a directory of Kubernetes YAML watched
//! with inotify ([`datastore`]), or in cluster mode from the controller's node-state stream
//! ([`cluster`]), which carries the node's compiled slice itself.
//!
//! - [`config`]: flags and `SEPTUM_*` keys.
//! - [`registry`]: the endpoints; [`state_dir`]: their persistence and the numbers'.
//! - [`datastore`]: the YAML directory and each file's last good version.
//! - [`reconcile`]: model -> map contents -> minimal writes, and their order.
//! - [`agent`]: the core joining them; [`server`]: the gRPC registry; [`health`]: `/healthz`,
//!   `/readyz`, `/status`, `/metrics`.
//! - [`flows`]: the flow pipeline (ring buffer -> enrich -> aggregate -> store, followers,
//!   exporters) and the `FlowService` served beside the registry (and on TCP with TLS).

pub mod agent;
pub mod cluster;
pub mod config;
pub mod datastore;
pub mod flows;
pub mod health;
pub mod reconcile;
pub mod registry;
pub mod server;
pub mod state_dir;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::Watcher as _;
use tokio::sync::Mutex;

pub use agent::Agent;
pub use config::AgentConfig;

/// How long after a file event the datastore is read (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How often the node's own addresses are checked (a bridge gets its address on the first ADD).
const ADDRESS_POLL: Duration = Duration::from_millis(500);

/// Runs the agent until SIGTERM or SIGINT. Enforcement stays in the kernel when it ends.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let health = cfg.health_addr()?;
    let flow_settings = cfg.flow_settings()?;
    let tls = flows_tls(&cfg)?;
    let socket = cfg.socket.clone();
    let roots = cfg.manifests.clone();
    let node = cfg.node_name.clone();
    let cluster = cluster::ClientSettings::from_config(&cfg)?;
    let cni = match &cfg.cni_conf_dir {
        Some(conf_dir) => Some(CniInstall {
            dirs: septum_cni::install::NodeDirs {
                conf_dir: conf_dir.clone(),
                bin_dir: cfg.cni_bin_dir.clone(),
            },
            binary: match &cfg.cni_plugin_binary {
                Some(b) => b.clone(),
                None => std::env::current_exe()
                    .context("cannot find this executable to locate septum-cni next to it")?
                    .with_file_name(septum_cni::install::BINARY_NAME),
            },
            entry: septum_cni::install::SeptumEntry {
                agent_socket: cfg.socket.clone(),
            },
        }),
        None => None,
    };
    let mut started = Agent::start(cfg)?;
    let hub = Arc::new(flows::FlowHub::new(
        &node,
        flow_settings.store.clone(),
        flow_settings.retention,
        started.enricher_cell(),
    ));
    let (events, observer) = started
        .flow_sources()
        .map_err(|e| anyhow::anyhow!("opening the datapath for flow logs: {e}"))?;
    let agent = Arc::new(Mutex::new(started));
    match events {
        Some(events) => {
            let h = hub.clone();
            tokio::spawn(async move {
                if let Err(e) = flows::pipeline::run(h, events, observer, flow_settings).await {
                    tracing::error!(error = %format!("{e:#}"), "the flow pipeline stopped; flows are no longer recorded");
                }
            });
        }
        None => tracing::error!("the ring buffer was already taken; flows are not recorded"),
    }

    // Keep septum-cni installed (before the registry listens, an ADD naming septum-cni fails
    // and the runtime retries: a pod never starts unenforced).
    let _cni_watcher = match &cni {
        Some(k) => Some(keep_cni_installed(k.clone())?),
        None => None,
    };

    if let Some(settings) = cluster {
        tokio::spawn(cluster::run_client(agent.clone(), settings));
    }

    // Datastore watch: inotify on every root (a file root: its directory; none in cluster mode).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && datastore::is_change(&ev.kind)
            && ev.paths.iter().any(|p| datastore::is_relevant(p))
        {
            let _ = tx.send(());
        }
    })
    .context("starting the datastore watcher")?;
    for root in &roots {
        let (path, mode) = if root.is_dir() {
            (root.clone(), notify::RecursiveMode::Recursive)
        } else {
            (
                root.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
                notify::RecursiveMode::NonRecursive,
            )
        };
        watcher
            .watch(&path, mode)
            .with_context(|| format!("watching {}", path.display()))?;
    }
    let a = agent.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let mut g = a.lock().await;
            g.reload();
            g.sync();
        }
    });

    let a = agent.clone();
    tokio::spawn(async move {
        let mut last = agent::node_addresses();
        loop {
            tokio::time::sleep(ADDRESS_POLL).await;
            let now = agent::node_addresses();
            if now != last {
                tracing::info!(addresses = ?now, "node addresses changed");
                last = now;
                a.lock().await.sync();
            }
        }
    });

    if let Some(addr) = health {
        let a = agent.clone();
        let h = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = health::serve(addr, a, Some(h)).await {
                tracing::error!(error = %e, "health endpoint failed");
            }
        });
    }

    if let Some((addr, tls)) = tls {
        let api = flows::service::FlowApi::new(hub.clone());
        let incoming = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the flow API on {addr}"))?;
        tracing::info!(%addr, "flow API listening (TLS)");
        let server = tonic::transport::Server::builder()
            .tls_config(tls)
            .context("the flow API's TLS configuration")?
            .add_service(septum_proto::flow::v1::flow_service_server::FlowServiceServer::new(api))
            // TCP_NODELAY: small gRPC frames must not wait for delayed ACKs.
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(incoming).with_nodelay(Some(true)),
            );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the TCP flow API stopped");
            }
        });
    }

    let listener =
        server::bind_socket(&socket).with_context(|| format!("binding {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "endpoint registry listening");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(
            septum_proto::agent::v1::endpoint_registry_server::EndpointRegistryServer::new(
                server::RegistryService::new(agent.clone()),
            ),
        )
        .add_service(
            septum_proto::flow::v1::flow_service_server::FlowServiceServer::new(
                flows::service::FlowApi::new(hub.clone()),
            ),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving the endpoint registry")?;
    let _ = std::fs::remove_file(&socket);
    drop(watcher);
    tracing::info!("agent stopped; enforcement stays in the kernel");
    Ok(())
}

/// What the agent keeps installed in the node's CNI configuration.
#[derive(Clone, Debug)]
struct CniInstall {
    dirs: septum_cni::install::NodeDirs,
    binary: std::path::PathBuf,
    entry: septum_cni::install::SeptumEntry,
}

impl CniInstall {
    fn run(&self) -> Result<(), septum_cni::install::InstallError> {
        let report = septum_cni::install::install(&self.dirs, &self.binary, &self.entry)?;
        if report.changed() {
            for c in &report.changes {
                tracing::info!(change = %c, "CNI configuration");
            }
        }
        Ok(())
    }
}

/// Installs septum-cni now (failing the start if it cannot) and again on every change of the
/// conf dir, until the returned watcher is dropped. An unchanged configuration is not
/// rewritten, so the agent's own writes end the loop after one check.
fn keep_cni_installed(k: CniInstall) -> anyhow::Result<notify::RecommendedWatcher> {
    k.run()
        .with_context(|| format!("installing septum-cni in {}", k.dirs.conf_dir.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && datastore::is_change(&ev.kind)
        {
            let _ = tx.send(());
        }
    })
    .context("starting the CNI conf dir watcher")?;
    watcher
        .watch(&k.dirs.conf_dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", k.dirs.conf_dir.display()))?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let k = k.clone();
            match tokio::task::spawn_blocking(move || k.run()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot re-install septum-cni; new pods may start without septum")
                }
                Err(e) => tracing::error!(error = %e, "the CNI install task failed"),
            }
        }
    });
    Ok(watcher)
}

/// The TCP flow API's address and TLS settings, read and checked at start.
fn flows_tls(
    cfg: &AgentConfig,
) -> anyhow::Result<Option<(std::net::SocketAddr, tonic::transport::ServerTlsConfig)>> {
    let Some(addr) = cfg.flows_addr else {
        return Ok(None);
    };
    let read = |p: &Option<std::path::PathBuf>, what: &str| -> anyhow::Result<Vec<u8>> {
        let p = p
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--flows-addr needs {what}"))?;
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let cert = read(&cfg.flows_tls_cert, "--flows-tls-cert")?;
    let key = read(&cfg.flows_tls_key, "--flows-tls-key")?;
    let mut tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key));
    if cfg.flows_tls_client_ca.is_some() {
        let ca = read(&cfg.flows_tls_client_ca, "--flows-tls-client-ca")?;
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    Ok(Some((addr, tls)))
}

/// Sets up tracing (`RUST_LOG`, default info) for the agent's binaries.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
