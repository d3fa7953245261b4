//! Project tasks: `demo` (the standalone datapath demo) and `bench` (ns/packet of the real
//! programs via BPF_PROG_TEST_RUN, side by side with an empty classifier).
//!
//! Usage: `cargo xtask demo`, `cargo xtask bench [--quick]` (both as root).

use clap::{Parser, Subcommand};

mod bench;
mod demo;

/// septum's project tasks.
#[derive(Debug, Parser)]
#[command(name = "xtask", about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// The datapath demo: pods in network namespaces, maps filled by hand, flow events.
    Demo,
    /// ns/packet of the real programs via BPF_PROG_TEST_RUN beside an empty classifier.
    Bench {
        /// Fewer repetitions: a quick look rather than stable figures.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Demo => demo::run(),
        Task::Bench { quick } => bench::run(quick),
    }
}
