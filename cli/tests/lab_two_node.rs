//! The two-node lab end to end, as root, with the real binaries: `septum lab up --nodes 2` of
//! `examples/two-node` (pods on node-a and node-b joined by a link, an agent in cluster mode on
//! each fed by the local controller over the mTLS node-state stream), the probe matrix by pod IP
//! and by ClusterIP across the nodes checked against what the policies mean, a policy change
//! with `lab apply` that changes cells enforced on both nodes, and `lab down` leaving no
//! namespace, link, pin, directory or process behind, also after the controller was killed
//! (when `septum flows` names the missing relay). The cluster flow view through the relay is
//! `lab_two_node_flows.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

#[path = "common/lab.rs"]
mod test_lab;
#[path = "common/two_node.rs"]
mod two_node;

use test_lab::TestLab;
use two_node::{agent_status, down_leaves_nothing, example, json, logs, ok};

const PODS: [&str; 4] = [
    "outside/outsider",
    "shop/backend",
    "shop/database",
    "shop/frontend",
];

/// One probe cell: result and the two pods' nodes.
#[derive(Debug, Clone)]
struct Cell {
    result: String,
    from_node: String,
    to_node: String,
}

fn matrix(lab: &TestLab, via: &str) -> BTreeMap<(String, String), Cell> {
    let v = json(
        lab,
        &[
            "lab",
            "probe",
            "--port",
            "80",
            "--via",
            via,
            "--timeout",
            "700ms",
            "--output",
            "json",
        ],
    );
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                (s("from"), s("to")),
                Cell {
                    result: s("result"),
                    from_node: s("from_node"),
                    to_node: s("to_node"),
                },
            )
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// policies.yaml: backend admits frontend; database admits backend.
    Policies,
    /// lockdown.yaml: backend admits frontend and namespace `outside`; database admits nobody.
    Lockdown,
    /// No policy at all.
    Open,
}

/// What the policies of `phase` mean for `from` -> `to` on port 80.
fn allowed(phase: Phase, from: &str, to: &str) -> bool {
    match (phase, to) {
        (Phase::Open, _) => true,
        (Phase::Policies, "shop/backend") => from == "shop/frontend",
        (Phase::Policies, "shop/database") => from == "shop/backend",
        (Phase::Lockdown, "shop/backend") => from == "shop/frontend" || from == "outside/outsider",
        (Phase::Lockdown, "shop/database") => false,
        _ => true,
    }
}

/// Checks both matrices against `phase`; returns how many cross-node cells were allowed and
/// denied (by pod IP and by ClusterIP).
fn check(lab: &TestLab, phase: Phase) -> (usize, usize) {
    let (mut cross_allowed, mut cross_denied) = (0, 0);
    let by_pod = matrix(lab, "pod");
    let pairs: Vec<(String, String)> = by_pod.keys().cloned().collect();
    let every: Vec<(String, String)> = PODS
        .iter()
        .flat_map(|f| PODS.iter().map(|t| (f.to_string(), t.to_string())))
        .collect();
    assert_eq!(pairs, every, "every pod probes every pod");
    for ((from, to), cell) in &by_pod {
        // A pod reaching its own address never leaves its namespace.
        let want = from == to || allowed(phase, from, to);
        let got = cell.result == "connected";
        assert_eq!(
            got,
            want,
            "{phase:?}: {from} ({}) -> {to} ({}) by pod IP: {cell:?}\n{}",
            cell.from_node,
            cell.to_node,
            logs(lab)
        );
        if !got {
            assert_eq!(cell.result, "timeout", "a policy drop is silent: {cell:?}");
        }
        if cell.from_node != cell.to_node {
            if got {
                cross_allowed += 1;
            } else {
                cross_denied += 1;
            }
        }
    }
    let by_service = matrix(lab, "service");
    for ((from, to), cell) in &by_service {
        if !["shop/backend", "shop/database"].contains(&to.as_str()) {
            assert_eq!(cell.result, "error", "no Service selects {to}: {cell:?}");
            continue;
        }
        // Through its own Service a pod is hairpinned (masqueraded to the node); not policy
        // between two pods, so not judged here.
        if from == to {
            continue;
        }
        let want = allowed(phase, from, to);
        let got = cell.result == "connected";
        assert_eq!(
            got,
            want,
            "{phase:?}: {from} ({}) -> {to} ({}) by ClusterIP: {cell:?}\n{}",
            cell.from_node,
            cell.to_node,
            logs(lab)
        );
        if cell.from_node != cell.to_node {
            if got {
                cross_allowed += 1;
            } else {
                cross_denied += 1;
            }
        }
    }
    (cross_allowed, cross_denied)
}

#[test]
fn two_nodes_enforce_policy_across_the_link_and_a_change_reaches_both() {
    let lab = TestLab::new("two");
    ok(
        &lab,
        &[
            "lab",
            "up",
            "--nodes",
            "2",
            &example("pods.yaml"),
            &example("policies.yaml"),
        ],
    );
    let st = json(&lab, &["lab", "status", "--output", "json"]);
    let nodes: BTreeMap<String, String> = st["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap_or_default(),
                    p["name"].as_str().unwrap_or_default()
                ),
                p["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        BTreeMap::from(
            [
                ("outside/outsider", "node-b"),
                ("shop/backend", "node-b"),
                ("shop/database", "node-a"),
                ("shop/frontend", "node-a"),
            ]
            .map(|(p, n)| (p.to_string(), n.to_string()))
        ),
        "pods run on the node their spec.nodeName names"
    );
    assert_eq!(st["nodes"].as_array().map(Vec::len), Some(2), "{st}");
    for p in st["pods"].as_array().expect("pods") {
        let ip = p["ips"][0].as_str().unwrap_or_default();
        let subnet = if p["node"] == "node-a" {
            "10.231.0."
        } else {
            "10.231.1."
        };
        assert!(ip.starts_with(subnet), "{p}");
    }
    // Each agent runs in cluster mode and holds the controller's state.
    for node in ["node-a", "node-b"] {
        let s = agent_status(&lab, node);
        assert_eq!(s["node"], node);
        assert_eq!(s["controller"]["connected"], true, "{node}: {s}");
        assert!(s["controller"]["revision"].as_u64() > Some(0), "{s}");
    }

    let (allowed_cross, denied_cross) = check(&lab, Phase::Policies);
    assert!(
        allowed_cross > 0 && denied_cross > 0,
        "cross-node cells both ways: {allowed_cross} allowed, {denied_cross} denied"
    );

    // One apply changes the backend's policy (node-b) and the database's (node-a).
    let revisions_before: Vec<Value> = ["node-a", "node-b"]
        .map(|n| agent_status(&lab, n)["controller"]["revision"].clone())
        .to_vec();
    let out = ok(&lab, &["lab", "apply", &example("lockdown.yaml")]);
    assert!(out.contains("applied and enforced"), "{out}");
    let revisions_after: Vec<Value> = ["node-a", "node-b"]
        .map(|n| agent_status(&lab, n)["controller"]["revision"].clone())
        .to_vec();
    for i in 0..2 {
        assert!(
            revisions_after[i].as_u64() > revisions_before[i].as_u64(),
            "node {i}: the change reached its agent before apply returned: {revisions_before:?} -> {revisions_after:?}"
        );
    }
    check(&lab, Phase::Lockdown);

    ok(&lab, &["lab", "delete", &example("lockdown.yaml")]);
    check(&lab, Phase::Open);

    down_leaves_nothing(&lab);
}

#[test]
fn a_killed_controller_fails_apply_clearly_and_down_still_removes_everything() {
    let lab = TestLab::new("twokill");
    ok(&lab, &["lab", "up", "--nodes", "2", &example("pods.yaml")]);
    let st: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).expect("lab.json"))
            .expect("lab.json is JSON");
    let pid = st["controller_pid"].as_u64().expect("controller pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -9 the controller");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while PathBuf::from(format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the controller lives on"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = lab.run(&["lab", "apply", &example("policies.yaml")]);
    assert!(!o.status.success(), "apply without a controller must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("controller"), "{err}");
    // The cluster flow view goes through the controller's relay: without it, septum flows
    // says so, naming the relay and the controller's log.
    let o = lab.run(&["flows"]);
    assert!(!o.status.success(), "flows without the relay must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("flow relay at https://10.230.0.1:4245") && err.contains("controller.log"),
        "{err}"
    );
    // The agents keep enforcing what they hold: the pods still reach each other.
    assert_eq!(
        matrix(&lab, "pod")[&("shop/frontend".to_string(), "shop/backend".to_string())].result,
        "connected"
    );
    down_leaves_nothing(&lab);
    // A second down finds nothing to remove, and does not fail.
    ok(&lab, &["lab", "down"]);
}
