//! The `septum` command. Each subcommand lives in its own module; add new ones (run, lab,
//! flows, datapath demo, ...) as a variant of [`Command`] plus a module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod crd;
mod explain;
mod flows;
mod lab;
mod policy;

/// septum: Kubernetes micro-segmentation.
#[derive(Debug, Parser)]
#[command(name = "septum", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with policies offline.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Explain which rules decide a flow, over manifests.
    Explain(explain::ExplainArgs),
    /// septum's CustomResourceDefinitions.
    #[command(subcommand)]
    Crd(crd::CrdCommand),
    /// Runs the node agent (standalone mode: a directory of Kubernetes YAML is the datastore).
    Agent(Box<septum_agent::AgentConfig>),
    /// The flow log: who talked to whom, what was refused and why (filters, follow, top,
    /// denied, graph, status).
    Flows(Box<flows::FlowsArgs>),
    /// Network-namespace pods from manifests on this host, enforced and probed.
    #[command(subcommand)]
    Lab(lab::LabCommand),
}

/// Restores the default SIGPIPE action, which Rust's runtime sets to "ignore": with it ignored,
/// `septum explain ... | head` gets EPIPE on its next write and `println!` panics. With the
/// default action the process ends quietly when its reader goes away, like every Unix filter.
/// Only for the commands that are filters: a server (the agent, the lab's pod servers) must
/// keep SIGPIPE ignored, or a client that hangs up before its answer (a CNI plugin past its
/// deadline) kills it.
fn quiet_on_closed_pipe() {
    // SAFETY: called in main right after parsing, before any other thread exists; setting a signal's
    // disposition to SIG_DFL installs no handler code, so nothing can run in signal context.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run_agent(cfg: septum_agent::AgentConfig) -> anyhow::Result<ExitCode> {
    septum_agent::init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(septum_agent::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}

/// Whether the command must keep SIGPIPE ignored: a server (it must survive a client hanging
/// up), and `flows`, whose TLS connection to an agent or relay that refuses its certificate is
/// closed under a write (with the default action that write would end it without a word; it
/// ends quietly on a closed standard output by itself, see `flows::run`).
fn is_server(command: &Command) -> bool {
    matches!(
        command,
        Command::Agent(_)
            | Command::Flows(_)
            | Command::Lab(lab::LabCommand::Serve { .. })
            // A lab command that gives up waiting closes its end of the controller socket: the
            // late reply must fail with EPIPE, not end the controller.
            | Command::Lab(lab::LabCommand::Controller { .. })
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !is_server(&cli.command) {
        quiet_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Policy(c) => policy::run(c),
        Command::Explain(a) => explain::run(a),
        Command::Crd(c) => crd::run(c),
        Command::Agent(cfg) => run_agent(*cfg),
        Command::Lab(c) => lab::run(c),
        Command::Flows(a) => flows::run(*a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
