//! Project tasks: `demo` (the standalone datapath demo) and `bench` (ns/packet of the real
//! programs via BPF_PROG_TEST_RUN, side by side with an empty classifier; with `--traffic`,
//! real traffic between pods beside no filter and beside nftables).
//!
//! Usage: `cargo xtask demo`, `cargo xtask bench [--quick] [--traffic]` (both as root).

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod traffic;

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
        /// Real traffic between two pods: septum and nftables as ratios of no filter at all.
        #[arg(long)]
        traffic: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Demo => demo::run(),
        Task::Bench {
            quick,
            traffic: true,
        } => traffic::run(&traffic::Options { quick }),
        Task::Bench { quick, .. } => bench::run(quick),
    }
}
