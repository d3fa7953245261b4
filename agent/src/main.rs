//! `septum-agent`: the node agent as its own binary (the same as `septum agent`).

use clap::Parser;

/// septum's node agent.
#[derive(Debug, Parser)]
#[command(name = "septum-agent", version, about)]
struct Cli {
    #[command(flatten)]
    config: septum_agent::AgentConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    septum_agent::init_tracing();
    let cli = Cli::parse();
    septum_agent::run(cli.config).await
}
