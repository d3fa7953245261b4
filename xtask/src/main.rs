//! Project tasks: `demo` (the standalone datapath demo) and `bench` (ns/packet of the real
//! programs via BPF_PROG_TEST_RUN, side by side with an empty classifier).
//!
//! Usage: `cargo xtask demo`, `cargo xtask bench [--quick]` (both as root).

mod bench;
mod demo;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo::run(),
        Some("bench") => bench::run(args.iter().any(|a| a == "--quick")),
        _ => {
            eprintln!("usage: xtask demo | xtask bench [--quick]");
            std::process::exit(2);
        }
    }
}
