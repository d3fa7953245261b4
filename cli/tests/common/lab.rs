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
    /// More environment for every command (the agent `lab up` starts inherits it).
    pub env: Vec<(String, String)>,
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
            env: Vec::new(),
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
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
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
            self.agent_log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `septum ARGS` and parses its output as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Runs `f` on a thread inside the network namespace of lab pod `pod` (`ns/name`).
    pub fn in_pod<R: Send + 'static>(
        &self,
        pod: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let st: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("lab.json")).unwrap()).unwrap();
        let netns = st["pods"][pod]["netns"]
            .as_str()
            .expect("pod netns")
            .to_string();
        std::thread::spawn(move || {
            let f0 = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
            nix::sched::setns(&f0, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }

    pub fn pod_ip(&self, pod: &str) -> std::net::IpAddr {
        let st = self.json(&["lab", "status", "--output", "json"]);
        st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ) == pod
            })
            .and_then(|p| p["ips"][0].as_str())
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The lab agent's log, empty if it has none yet.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
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
