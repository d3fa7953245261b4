//! `septum policy ...`: offline policy commands. `check` validates manifests and prints every
//! problem with file, document, object and field.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use septum_crd::files as manifest_files;

/// Policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate multi-document YAML (Namespaces, Pods, Nodes, Services, EndpointSlices,
    /// NetworkPolicies, FlowPolicies, ClusterNetworkPolicies). Exits non-zero on any error.
    Check {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// Runs a policy subcommand.
pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { paths } => check(&paths),
    }
}

fn check(paths: &[PathBuf]) -> Result<ExitCode> {
    let m = manifest_files::load(paths);
    let mut problems = m.diagnostics.clone();
    problems.extend(m.semantic_problems());
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let warnings = problems.len() - errors;
    for p in &problems {
        eprintln!("{p}");
    }
    let c = &m.cluster;
    let objects = c.namespaces.len()
        + c.pods.len()
        + c.nodes.len()
        + c.services.len()
        + c.network_policies.len()
        + c.flow_policies.len()
        + c.cluster_network_policies.len();
    if errors > 0 {
        eprintln!("{errors} error(s), {warnings} warning(s) in {objects} valid object(s)");
        Ok(ExitCode::FAILURE)
    } else {
        println!(
            "ok: {objects} object(s) ({} NetworkPolicies, {} FlowPolicies, {} ClusterNetworkPolicies), {warnings} warning(s)",
            c.network_policies.len(),
            c.flow_policies.len(),
            c.cluster_network_policies.len()
        );
        Ok(ExitCode::SUCCESS)
    }
}
