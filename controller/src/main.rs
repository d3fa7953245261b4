//! `septum-controller`: the cluster controller. The API server is found the way kubectl finds
//! it (`KUBECONFIG`, `~/.kube/config`, or the in-cluster service account); metrics are served
//! on `--metrics-addr`. Leader election is not implemented yet: run one replica.

use std::net::SocketAddr;

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
    let controller = Controller::new(client);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tokio::spawn(septum_controller::metrics::serve(
        listener,
        controller.context().metrics.clone(),
    ));
    tokio::select! {
        r = controller.run() => r.context("controller stopped")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
    Ok(())
}
