//! Helpers of the two-node lab tests (`lab_two_node.rs`, `lab_two_node_flows.rs`): the example's
//! files, commands that fail with every part's log, and `lab down` leaving nothing.
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

use super::test_lab::TestLab;

/// The nodes of a two-node lab.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// A file of `examples/two-node`.
pub fn example(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/two-node")
        .join(file)
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// The logs of every part of a multi-node lab, for failure messages.
pub fn logs(lab: &TestLab) -> String {
    let mut out = format!(
        "controller log:\n{}\n",
        std::fs::read_to_string(lab.dir.join("controller.log")).unwrap_or_default()
    );
    for node in NODES {
        let p = lab.dir.join("nodes").join(node).join("agent.log");
        out.push_str(&format!(
            "{node} agent log:\n{}\n",
            std::fs::read_to_string(p).unwrap_or_default()
        ));
    }
    out
}

/// `septum ARGS`, which must succeed; its standard output.
pub fn ok(lab: &TestLab, args: &[&str]) -> String {
    let o = lab.run(args);
    assert!(
        o.status.success(),
        "septum {args:?} failed:\nstdout: {}\nstderr: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        logs(lab)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `septum ARGS`, which must succeed and print JSON.
pub fn json(lab: &TestLab, args: &[&str]) -> Value {
    let out = ok(lab, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A node's agent status file.
pub fn agent_status(lab: &TestLab, node: &str) -> Value {
    let p = lab
        .dir
        .join("nodes")
        .join(node)
        .join("agent")
        .join("status.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The network namespaces named with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose command line mentions `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .collect()
}

/// `lab down` and nothing of the lab is left.
pub fn down_leaves_nothing(lab: &TestLab) {
    ok(lab, &["lab", "down"]);
    assert_eq!(netns_with_prefix(&lab.prefix), Vec::<String>::new());
    assert!(!lab.pins.exists(), "{} is left", lab.pins.display());
    assert!(!lab.dir.exists(), "{} is left", lab.dir.display());
    assert_eq!(processes_mentioning(&lab.dir), Vec::<u32>::new());
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("to-node-a") && !links.contains("to-node-b"),
        "a node link is left in the host namespace: {links}"
    );
}
