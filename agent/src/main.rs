//! `septum-agent`: the node agent as its own binary (the same as `septum agent`), and the node
//! init steps that install and remove septum's CNI plugin (`install-cni`, `uninstall-cni`; see
//! `septum_cni::install`). Without a subcommand it runs the agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use septum_cni::install::{self, NodeDirs, Report, SeptumEntry};

/// septum's node agent.
#[derive(Debug, Parser)]
#[command(
    name = "septum-agent",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    step: Option<Step>,
    #[command(flatten)]
    config: septum_agent::AgentConfig,
}

#[derive(Debug, Subcommand)]
enum Step {
    /// Copy septum-cni into the CNI bin dir and append it as the last plugin of the node's
    /// network configuration. Idempotent (nothing is written when nothing changes): run it on
    /// every agent start, which also restores the entry after Flannel or Calico rewrite their
    /// configuration.
    InstallCni(InstallCni),
    /// Remove septum-cni's entry from the node's network configurations (restoring a converted
    /// single-plugin file) and its binary. Idempotent.
    UninstallCni(CniDirs),
}

/// The node's CNI directories.
#[derive(Debug, Args)]
struct CniDirs {
    /// Where the runtime reads network configurations.
    #[arg(long, env = "SEPTUM_CNI_CONF_DIR", default_value = install::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// Where the runtime finds plugin binaries.
    #[arg(long, env = "SEPTUM_CNI_BIN_DIR", default_value = install::DEFAULT_BIN_DIR)]
    cni_bin_dir: PathBuf,
}

impl CniDirs {
    fn node_dirs(self) -> NodeDirs {
        NodeDirs {
            conf_dir: self.cni_conf_dir,
            bin_dir: self.cni_bin_dir,
        }
    }
}

#[derive(Debug, Args)]
struct InstallCni {
    #[command(flatten)]
    dirs: CniDirs,
    /// The septum-cni binary to install [default: septum-cni next to this executable].
    #[arg(long, env = "SEPTUM_CNI_PLUGIN_BINARY", value_name = "PATH")]
    plugin_binary: Option<PathBuf>,
    /// The agent's endpoint-registry socket, written as the plugin's `agentSocket`.
    #[arg(
        long,
        env = "SEPTUM_AGENT_SOCKET",
        default_value = septum_cni::config::DEFAULT_AGENT_SOCKET
    )]
    agent_socket: PathBuf,
}

fn install_cni(args: InstallCni) -> anyhow::Result<()> {
    let binary = match args.plugin_binary {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this executable to locate septum-cni next to it")?
            .with_file_name(install::BINARY_NAME),
    };
    let entry = SeptumEntry {
        agent_socket: args.agent_socket,
    };
    let report = install::install(&args.dirs.node_dirs(), &binary, &entry)
        .context("cannot install septum-cni")?;
    print(&report);
    Ok(())
}

fn uninstall_cni(dirs: CniDirs) -> anyhow::Result<()> {
    let report = install::uninstall(&dirs.node_dirs()).context("cannot uninstall septum-cni")?;
    print(&report);
    Ok(())
}

fn print(report: &Report) {
    if report.changes.is_empty() {
        println!("nothing to remove");
    }
    for change in &report.changes {
        println!("{change}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    septum_agent::init_tracing();
    let cli = Cli::parse();
    match cli.step {
        None => septum_agent::run(cli.config).await,
        Some(Step::InstallCni(args)) => install_cni(args),
        Some(Step::UninstallCni(dirs)) => uninstall_cni(dirs),
    }
}
