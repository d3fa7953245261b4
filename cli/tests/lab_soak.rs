//! CNI ADD/DEL soak through a running lab, as root: `SEPTUM_SOAK_CYCLES` (default 1000) pods
//! added and deleted through the real chain (bridge + host-local + septum-cni, libcni
//! semantics), with faults injected on a schedule: duplicate DELs, the pod's network namespace
//! deleted before DEL, the agent killed (SIGKILL) before DEL, so septum-cni queues the DEL on
//! disk and a later invocation replays it to the restarted agent, and ADD timing out because the
//! agent is stopped (SIGSTOP) past septum-cni's deadline, followed by the runtime's DEL. Afterwards nothing may have
//! leaked: no endpoints, host veths, link pins, IPAM reservations, queue files or namespaces
//! beyond the lab's own four pods, and no DEL may have failed.

use std::path::{Path, PathBuf};

use septum_lab::control::{Lab, Programs};
use septum_lab::ns::NetNs;
use septum_lab::state::LabDir;

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The last lines of a log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn thousand_add_del_cycles_with_faults_leak_nothing() {
    let cycles: usize = std::env::var("SEPTUM_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let tag = std::process::id() % 100_000;
    let root = PathBuf::from(format!("/run/septum-test-soak-{tag}"));
    let prefix = format!("sts{tag}-");
    let pins = PathBuf::from(format!("/sys/fs/bpf/septum-test-soak-{tag}"));
    // SAFETY: this test binary holds this one test; the variables are set before any thread
    // exists and only read afterwards.
    unsafe {
        std::env::set_var("SEPTUM_LAB_NETNS_PREFIX", &prefix);
        std::env::set_var("SEPTUM_LAB_PIN_ROOT", &pins);
    }
    let septum = PathBuf::from(env!("CARGO_BIN_EXE_septum"));
    let programs = Programs {
        cni_path: vec![
            septum.parent().unwrap().to_path_buf(),
            PathBuf::from("/usr/lib/cni"),
        ],
        septum,
    };
    let dir = LabDir::at(&root);
    struct Down(LabDir, Programs);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = septum_lab::control::down(&self.0, &self.1);
        }
    }
    let _down = Down(dir.clone(), programs.clone());
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop/pods.yaml");
    Lab::up(dir.clone(), programs.clone(), &[shop]).expect("lab up");

    let node = NetNs::open(&format!("{prefix}node")).unwrap();
    let links = |node: &NetNs| node.run(|| count(Path::new("/sys/class/net"))).unwrap();
    let links_before = links(&node);
    let pins_before = count(&pins.join("v1/links"));
    let ipam = root.join("cni/ipam/septum-lab");
    let ipam_before = count(&ipam);

    let mut lab = Lab::open(dir.clone(), programs.clone()).unwrap();
    let list = lab.conflist();
    // The same chain with a short ADD deadline, for the cycles where the agent does not answer.
    let mut impatient = list.clone();
    let plugins = impatient["plugins"].as_array_mut().unwrap();
    let septum_cni = plugins.last_mut().unwrap();
    assert_eq!(septum_cni["type"], "septum-cni");
    septum_cni["addTimeout"] = serde_json::json!("300ms");
    let (mut dup, mut gone, mut killed, mut timed_out) = (0, 0, 0, 0);
    for i in 0..cycles {
        let name = format!("{prefix}soak");
        let ns = NetNs::create(&name).unwrap();
        let rt = septum_lab::cni::RuntimeConf {
            container_id: format!("soak-{i}"),
            netns: ns.path().to_path_buf(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "shop".into()),
                ("K8S_POD_NAME".into(), format!("soak-{i}")),
            ],
        };
        let runner = lab.cni().unwrap();
        if i % 100 == 37 {
            // ADD times out: the agent is stopped (SIGSTOP) past septum-cni's deadline, so ADD
            // fails; the runtime then sends DEL (with no prevResult, as after any failed ADD),
            // which must succeed once the agent runs again and leave nothing behind.
            let pid = lab.state().agent_pid.unwrap() as i32;
            // SAFETY: kill(2) on the lab's agent.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            let add = runner.add(&impatient, &rt);
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            match add {
                Err(septum_lab::cni::CniError::Plugin { ref plugin, .. })
                    if plugin == "septum-cni" => {}
                other => panic!("cycle {i}: ADD with the agent stopped: {other:?}"),
            }
            runner
                .del(&list, &rt)
                .unwrap_or_else(|e| panic!("cycle {i}: DEL after a timed-out ADD: {e}"));
            timed_out += 1;
            NetNs::delete(&name).unwrap();
            continue;
        }
        runner.add(&list, &rt).unwrap_or_else(|e| {
            panic!(
                "cycle {i}: ADD: {e}\nagent log (tail):\n{}",
                log_tail(&root.join("agent.log"))
            )
        });
        if i % 50 == 49 {
            // The agent dies: the DEL is queued by septum-cni and succeeds anyway.
            let pid = lab.state().agent_pid.unwrap() as i32;
            // SAFETY: kill(2) on the lab's agent.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(std::time::Duration::from_millis(20));
            runner
                .del(&list, &rt)
                .unwrap_or_else(|e| panic!("cycle {i}: DEL, agent down: {e}"));
            lab.restart_agent(true).unwrap();
            killed += 1;
        } else if i % 25 == 24 {
            // The runtime deleted the namespace first.
            NetNs::delete(&name).unwrap();
            runner
                .del(&list, &rt)
                .unwrap_or_else(|e| panic!("cycle {i}: DEL, netns gone: {e}"));
            gone += 1;
        } else {
            runner
                .del(&list, &rt)
                .unwrap_or_else(|e| panic!("cycle {i}: DEL: {e}"));
            if i % 10 == 9 {
                runner
                    .del(&list, &rt)
                    .unwrap_or_else(|e| panic!("cycle {i}: second DEL: {e}"));
                dup += 1;
            }
        }
        NetNs::delete(&name).unwrap();
    }
    // One more invocation replays whatever is still queued.
    let ns = NetNs::create(&format!("{prefix}soak")).unwrap();
    let rt = septum_lab::cni::RuntimeConf {
        container_id: "soak-final".into(),
        netns: ns.path().to_path_buf(),
        ifname: "eth0".into(),
        args: vec![],
    };
    let runner = lab.cni().unwrap();
    runner.add(&list, &rt).unwrap();
    runner.del(&list, &rt).unwrap();
    NetNs::delete(ns.name()).unwrap();
    eprintln!(
        "{cycles} cycles: {dup} duplicate DELs, {gone} with the netns gone, {killed} with the agent killed, {timed_out} ADDs timed out"
    );

    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("agent/status.json")).unwrap()).unwrap();
    assert_eq!(
        status["endpoints"].as_array().unwrap().len(),
        4,
        "endpoints leaked: {status}"
    );
    assert_eq!(links(&node), links_before, "host veths leaked");
    assert_eq!(
        count(&pins.join("v1/links")),
        pins_before,
        "link pins leaked"
    );
    assert_eq!(count(&ipam), ipam_before, "IPAM reservations leaked");
    let queued: Vec<String> = std::fs::read_dir(root.join("cni/del-queue"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.')) // the replay lock
                .collect()
        })
        .unwrap_or_default();
    assert!(queued.is_empty(), "queued DELs never replayed: {queued:?}");
    assert_eq!(
        count(&root.join("cni/cache/results")),
        4,
        "CNI cache entries leaked"
    );
    assert!(NetNs::list_with_prefix(&format!("{prefix}soak")).is_empty());
}
