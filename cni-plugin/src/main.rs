//! The `septum-cni` binary: reads the environment and stdin, runs the plugin, prints the result
//! or error result on stdout and exits 0 or 1. A panic (a bug) still prints an error result with
//! code 999, so the runtime never parses an empty or partial stdout.

use std::{
    io::Write,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use septum_cni::{read_config, run, version::CniVersion};

/// Set once anything was printed on stdout, so a panic after the result is not printed twice.
static PRINTED: AtomicBool = AtomicBool::new(false);

fn print_once(text: &str) {
    if PRINTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.is_empty() && !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = serde_json::json!({
            "cniVersion": CniVersion::LATEST.as_str(),
            "code": 999,
            "msg": "septum-cni crashed (a bug)",
            "details": info.to_string(),
        });
        print_once(&msg.to_string());
        eprintln!("septum-cni: {info}");
        // Exit here: the hook may run on a helper thread, and the result must not wait for the
        // main thread to notice.
        std::process::exit(1);
    }));
    let outcome = run(
        |k| std::env::var_os(k),
        read_config(std::io::stdin().lock()),
    );
    print_once(&outcome.stdout);
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
