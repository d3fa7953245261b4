//! The running agent keeps septum-cni installed: with `--cni-conf-dir` it appends itself to the
//! node's network configuration at start, and when the primary plugin's daemon rewrites that
//! file without it (Flannel does on every restart) it is back within moments, so pods created
//! after the rewrite still go through septum. Needs root (the agent loads the datapath).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLANNEL: &str = include_str!("../../cni-plugin/tests/fixtures/install/10-flannel.conflist");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn plugins(path: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read conflist")).expect("JSON");
    v["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rewritten_configuration_gets_septum_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("net.d");
    let bin = dir.path().join("bin");
    let manifests = dir.path().join("manifests");
    for d in [&conf, &bin, &manifests] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let list = conf.join("10-flannel.conflist");
    std::fs::write(&list, FLANNEL).expect("write conflist");
    let pins = format!("/sys/fs/bpf/sat-cni-{}", std::process::id());
    let fake_plugin = dir.path().join("septum-cni");
    std::fs::write(&fake_plugin, b"#!/bin/sh\n").expect("plugin binary");
    let _agent = Running(
        Command::new(env!("CARGO_BIN_EXE_septum-agent"))
            .args(["--manifests"])
            .arg(&manifests)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .args(["--pin-root", &pins, "--health-addr", ""])
            .arg("--cni-conf-dir")
            .arg(&conf)
            .arg("--cni-bin-dir")
            .arg(&bin)
            .arg("--cni-plugin-binary")
            .arg(&fake_plugin)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting septum-agent"),
    );
    struct Pins(String);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = septum_datapath::remove_pins(Path::new(&self.0));
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _pins = Pins(pins);

    wait_for("septum-cni appended at start", || {
        plugins(&list) == ["flannel", "portmap", "septum-cni"]
    });
    assert!(bin.join("septum-cni").exists(), "the binary is installed");
    let installed = std::fs::read(&list).expect("read");

    // Flannel restarts and writes its own configuration back.
    let tmp = conf.join(".10-flannel.tmp");
    std::fs::write(&tmp, FLANNEL).expect("write");
    std::fs::rename(&tmp, &list).expect("rename");
    wait_for("septum-cni re-appended after the rewrite", || {
        plugins(&list) == ["flannel", "portmap", "septum-cni"]
    });
    assert_eq!(std::fs::read(&list).expect("read"), installed);
    // And then the agent leaves the file alone (its own write is not a loop).
    let mtime = std::fs::metadata(&list)
        .and_then(|m| m.modified())
        .expect("mtime");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        std::fs::metadata(&list)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );
}
