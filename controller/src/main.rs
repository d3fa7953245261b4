//! `septum-controller`: the cluster controller. The API server is found the way kubectl finds
//! it (`KUBECONFIG`, `~/.kube/config`, or the in-cluster service account); metrics are served
//! on `--metrics-addr`, the node-state stream on `--stream-addr` with mutual TLS (agents present
//! a client certificate whose Common Name is their node's name, signed by `--stream-client-ca`).
//! With `--leader-elect` (the default) only the replica holding the Lease
//! `--lease-namespace`/`--lease-name` watches, writes and serves the stream; the others wait, and
//! a leader that cannot renew exits so that it never acts on a Lease it may have lost.
//! With `--relay-addr`, the leader also serves the flow relay: `septum.flow.v1.FlowService` for
//! the whole cluster (`septum flows --server`), answered by every agent's flow API, which it
//! reaches with its stream certificate and checks against the node's name.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use septum_controller::Controller;

/// septum's cluster controller.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the Prometheus metrics endpoint.
    #[arg(long, env = "SEPTUM_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Address of the node-state stream (gRPC, mutual TLS).
    #[arg(long, env = "SEPTUM_STREAM_ADDR", default_value = "0.0.0.0:4240")]
    stream_addr: SocketAddr,
    /// PEM certificate chain the stream serves.
    #[arg(long, env = "SEPTUM_STREAM_TLS_CERT", value_name = "PATH")]
    stream_tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, env = "SEPTUM_STREAM_TLS_KEY", value_name = "PATH")]
    stream_tls_key: PathBuf,
    /// Elect a leader among replicas with a coordination.k8s.io Lease.
    #[arg(long, env = "SEPTUM_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease (the pod's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "septum-system")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "SEPTUM_LEASE_NAME", default_value = "septum-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// PEM CA that signs the agents' client certificates.
    #[arg(long, env = "SEPTUM_STREAM_TLS_CLIENT_CA", value_name = "PATH")]
    stream_client_ca: PathBuf,
    /// Serve the flow relay (FlowService for the whole cluster) on this address, with TLS and
    /// the stream's certificate.
    #[arg(long, env = "SEPTUM_RELAY_ADDR")]
    relay_addr: Option<SocketAddr>,
    /// PEM CA that signs the certificates of the relay's clients (required with
    /// --relay-addr: flow records say who talks to whom).
    #[arg(long, env = "SEPTUM_RELAY_CLIENT_CA", value_name = "PATH")]
    relay_client_ca: Option<PathBuf>,
    /// How long an agent has to answer a relayed query.
    #[arg(long, env = "SEPTUM_RELAY_TIMEOUT", default_value = "10s")]
    relay_timeout: String,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read(&args.stream_tls_cert)?,
            read(&args.stream_tls_key)?,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(read(
            &args.stream_client_ca,
        )?));
    let relay = match (args.relay_addr, &args.relay_client_ca) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!(
            "--relay-addr needs --relay-client-ca: the relay serves every node's flow records"
        ),
        (Some(addr), Some(ca)) => {
            let ms = septum_flowlog::wire::parse_duration("relay-timeout", &args.relay_timeout)?;
            if ms <= 0 {
                anyhow::bail!("--relay-timeout must be positive");
            }
            let identity = tonic::transport::Identity::from_pem(
                read(&args.stream_tls_cert)?,
                read(&args.stream_tls_key)?,
            );
            let serving = tonic::transport::ServerTlsConfig::new()
                .identity(identity.clone())
                .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
            let dialing = septum_controller::relay::RelaySettings {
                tls: tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(read(
                        &args.stream_client_ca,
                    )?))
                    .identity(identity),
                timeout: std::time::Duration::from_millis(ms.unsigned_abs()),
            };
            Some((addr, serving, dialing))
        }
    };
    let lease = args.leader_elect.then(|| {
        let identity = args.identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("septum-controller-{}", std::process::id()))
        });
        (
            kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                client.clone(),
                &args.lease_namespace,
            ),
            septum_controller::leader::LeaseSettings::new(
                &args.lease_namespace,
                &args.lease_name,
                &identity,
            ),
        )
    });
    if let Some((api, settings)) = &lease {
        tracing::info!(lease = %settings.name, identity = %settings.identity, "waiting to lead");
        septum_controller::leader::acquire(api, settings).await;
    }
    let controller = Controller::new(client);
    let stream = tokio::net::TcpListener::bind(args.stream_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.stream_addr))?;
    let ctx = controller.context();
    tokio::spawn(async move {
        if let Err(e) = septum_controller::stream::serve(ctx, stream, tls).await {
            tracing::error!(error = %e, "the node-state stream stopped");
        }
    });
    if let Some((addr, serving, dialing)) = relay {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let relay = septum_controller::relay::Relay::new(controller.context(), dialing);
        tracing::info!(%addr, "flow relay listening (TLS)");
        tokio::spawn(async move {
            if let Err(e) = septum_controller::relay::serve(relay, listener, serving).await {
                tracing::error!(error = %e, "the flow relay stopped");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tokio::spawn(septum_controller::metrics::serve(
        listener,
        controller.context().metrics.clone(),
    ));
    let lost = async {
        match &lease {
            Some((api, settings)) => septum_controller::leader::hold(api, settings).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = controller.run() => r.context("controller stopped")?,
        _ = lost => anyhow::bail!("lost the leader Lease; exiting so that a replica that holds it takes over"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    Ok(())
}
