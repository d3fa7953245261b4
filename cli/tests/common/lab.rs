//! A private lab for one test: its own lab directory, network-namespace prefix and bpffs pin
//! root (all named with a unique tag), so tests cannot collide with each other or with a lab a
//! user has up; `lab down` on drop, also when the test fails. The same shape as `lab.rs`'s.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The `septum` binary under test.
pub const SEPTUM: &str = env!("CARGO_BIN_EXE_septum");

/// One lab, removed on drop.
#[derive(Debug)]
pub struct TestLab {
    /// `SEPTUM_LAB_DIR`.
    pub dir: PathBuf,
    /// `SEPTUM_LAB_NETNS_PREFIX`.
    pub prefix: String,
    /// `SEPTUM_LAB_PIN_ROOT`.
    pub pins: PathBuf,
}

impl TestLab {
    /// A lab named after `tag` and this process (nothing is created until `lab up`); a
    /// leftover of an earlier run with the same name is removed first.
    pub fn new(tag: &str) -> Self {
        let unique = format!("{tag}{}", std::process::id() % 100_000);
        let lab = Self {
            dir: PathBuf::from(format!("/run/septum-test-lab-{unique}")),
            prefix: format!("stl{unique}-"),
            pins: PathBuf::from(format!("/sys/fs/bpf/septum-test-lab-{unique}")),
        };
        let _ = lab.run(&["lab", "down"]);
        lab
    }

    /// `septum ARGS` aimed at this lab, run from the crate directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SEPTUM);
        c.args(args)
            .env("SEPTUM_LAB_DIR", &self.dir)
            .env("SEPTUM_LAB_NETNS_PREFIX", &self.prefix)
            .env("SEPTUM_LAB_PIN_ROOT", &self.pins)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    }

    /// Runs `septum ARGS`, whatever its outcome.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running septum")
    }

    /// Runs `septum ARGS`; its standard output, or a panic with both outputs and the agent's log.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "septum {args:?} failed:\nstdout: {}\nstderr: {}\nagent log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `septum ARGS` and parses its output as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// The directory the lab's agent enforces.
    pub fn datastore(&self) -> PathBuf {
        self.dir.join("datastore")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.run(&["lab", "down"]);
    }
}
