//! `septum crd ...`: the CRDs septum installs, generated from the Rust types.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

/// CRD subcommands.
#[derive(Debug, Subcommand)]
pub enum CrdCommand {
    /// Print every CRD as multi-document YAML (what manifests/crds holds).
    Print,
}

/// Runs a CRD subcommand.
pub fn run(cmd: CrdCommand) -> Result<ExitCode> {
    match cmd {
        CrdCommand::Print => {
            print!("{}", septum_crd::generate::all_yaml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
