//! `septum lab`: network-namespace pods from Kubernetes manifests on this host, enforced by
//! septum's agent in standalone mode, and the reachability matrix between them (see
//! `septum_lab` for what it builds). Needs root.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};

use septum_lab::connect::Protocol;
use septum_lab::control::{self, Lab, Programs};
use septum_lab::probe::{self, ProbeSpec, Via};
use septum_lab::state::LabDir;

/// Output format of `status` and `probe`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Table,
    /// JSON.
    Json,
}

/// `septum lab ...`.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Builds the pods, Services and policies of the manifests (refused if a lab is up).
    Up {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Node namespaces: 1 (a standalone agent) or 2 (`node-a`, `node-b` joined by a link,
        /// an agent in cluster mode on each, fed by a local controller over the node-state
        /// stream). Pods go to the node their `spec.nodeName` names, else to the node with the
        /// fewest pods.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Creates or updates objects in the running lab; returns once the change is enforced.
    Apply {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Deletes the objects named in the files.
    Delete {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The lab's pods and Services.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Probes every pod (or --from) to every pod (or --to).
    Probe {
        /// Destination port.
        #[arg(long)]
        port: u16,
        /// TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP")]
        protocol: Protocol,
        /// Through the pod IP or a Service ClusterIP.
        #[arg(long, default_value = "pod")]
        via: Via,
        /// Only from NS/POD.
        #[arg(long)]
        from: Option<String>,
        /// Only to NS/POD.
        #[arg(long)]
        to: Option<String>,
        /// Per probe (e.g. 500ms, 2s).
        #[arg(long, default_value = "1s", value_parser = probe::parse_duration)]
        timeout: std::time::Duration,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Restarts the lab's agent (`--kill`: with SIGKILL, as a crash would); enforcement
    /// continues in the kernel meanwhile.
    RestartAgent {
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// Removes everything the lab created (also after a crash or a killed `up`).
    Down,
    /// Benchmarks a lab of its own: `up` of 9 pods, a 9x9 probe, policy edit -> enforced, CNI
    /// ADD (each beside a baseline).
    Bench {
        /// Policy edits to time.
        #[arg(long, default_value_t = 100)]
        edits: usize,
        /// CNI ADDs to time.
        #[arg(long, default_value_t = 50)]
        adds: usize,
    },
    /// (internal) The local controller of a multi-node lab, run inside its first node's
    /// network namespace.
    #[command(hide = true)]
    Controller {
        /// The lab directory.
        #[arg(long)]
        lab_dir: PathBuf,
    },
    /// (internal) The servers of one pod, run inside its network namespace.
    #[command(hide = true)]
    Serve {
        /// PORT/PROTOCOL, repeatable.
        #[arg(long = "port")]
        ports: Vec<String>,
        /// The lab directory (marks the process as the lab's, for `down`).
        #[arg(long)]
        lab_dir: PathBuf,
    },
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads eBPF programs: run it as root");
    }
    Ok(())
}

/// Runs a lab subcommand.
pub fn run(cmd: LabCommand) -> Result<ExitCode> {
    if !matches!(cmd, LabCommand::Serve { .. }) {
        require_root()?;
    }
    let dir = LabDir::from_env();
    let programs = Programs::discover()?;
    match cmd {
        LabCommand::Up { paths, nodes } => {
            let started = std::time::Instant::now();
            let lab = Lab::up_nodes(dir, programs, &paths, nodes)?;
            let on = if lab.is_cluster() {
                format!(" on {} nodes", lab.state().nodes.len())
            } else {
                String::new()
            };
            println!(
                "lab up: {} pod(s), {} Service(s){on} in {:.2}s",
                lab.state().pods.len(),
                lab.state().services.len(),
                started.elapsed().as_secs_f64()
            );
        }
        LabCommand::Controller { lab_dir } => {
            septum_lab::cluster::run_controller(&LabDir::at(&lab_dir))?;
        }
        LabCommand::Apply { paths } => {
            let mut lab = Lab::open(dir, programs)?;
            let started = std::time::Instant::now();
            lab.apply(&paths)?;
            println!(
                "applied and enforced in {:.0} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        LabCommand::Delete { paths } => {
            let mut lab = Lab::open(dir, programs)?;
            lab.delete(&paths)?;
            println!("deleted");
        }
        LabCommand::Status { output } => {
            let lab = Lab::open(dir, programs)?;
            let st = lab.status_json();
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&st)?),
                Output::Table => {
                    for p in lab.state().pods.values() {
                        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
                        let ports: Vec<String> = p
                            .ports
                            .iter()
                            .map(|x| format!("{}/{}", x.port, x.protocol.as_str()))
                            .collect();
                        let node = p
                            .node
                            .as_deref()
                            .map(|n| format!("\t{n}"))
                            .unwrap_or_default();
                        println!(
                            "pod {}/{}\t{}\t{}{node}",
                            p.namespace,
                            p.name,
                            ips.join(","),
                            ports.join(",")
                        );
                    }
                    for s in lab.state().services.values() {
                        let ips: Vec<String> =
                            s.cluster_ips.iter().map(ToString::to_string).collect();
                        println!("service {}/{}\t{}", s.namespace, s.name, ips.join(","));
                    }
                    for n in &lab.state().nodes {
                        println!(
                            "node {}\t{}\t{}\tagent pid {}",
                            n.name,
                            n.netns,
                            n.pod_subnet,
                            n.agent_pid.map_or("-".to_string(), |p| p.to_string())
                        );
                    }
                }
            }
        }
        LabCommand::Probe {
            port,
            protocol,
            via,
            from,
            to,
            timeout,
            output,
        } => {
            let lab = Lab::open(dir, programs)?;
            let spec = ProbeSpec {
                port,
                protocol,
                via,
                from,
                to,
                timeout,
            };
            let cells = probe::run(&lab, &spec)?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "results": cells }))?
                ),
                Output::Table => print!("{}", probe::table(&cells)),
            }
        }
        LabCommand::RestartAgent { kill } => {
            let mut lab = Lab::open(dir, programs)?;
            lab.restart_agent(kill)?;
            println!(
                "agent restarted (pid {})",
                lab.state().agent_pid.unwrap_or(0)
            );
        }
        LabCommand::Bench { edits, adds } => septum_lab::bench::run(programs, edits, adds)?,
        LabCommand::Down => {
            for line in control::down(&dir, &programs)? {
                println!("{line}");
            }
            println!("lab down");
        }
        LabCommand::Serve { ports, lab_dir: _ } => {
            let mut parsed = Vec::new();
            for p in &ports {
                let (n, proto) = p.split_once('/').unwrap_or((p, "TCP"));
                let port: u16 = n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--port {p:?}: not PORT/PROTOCOL"))?;
                let protocol: Protocol = proto
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--port {p:?}: {e}"))?;
                parsed.push(septum_lab::serve::ServePort { port, protocol });
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(septum_lab::serve::serve(parsed))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
