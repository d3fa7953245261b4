//! The cluster flow view of the two-node lab end to end, as root, with the real binaries:
//! `septum lab up --nodes 2` of `examples/two-node`, real connections across the link (allowed
//! and refused, by pod IP and through a ClusterIP), and `septum flows` with no flags beyond the
//! filters going through the lab controller's relay: each connection seen on both nodes (the
//! same 5-tuple leaving one and arriving at the other), with pods, namespaces, labels and the
//! deciding rule; filters, the aggregates and `status` answered by both nodes; `--follow` with
//! live records of both; and, with one agent killed, that node's error reported while the other
//! node's flows are still answered.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

#[path = "common/lab.rs"]
mod test_lab;
#[path = "common/two_node.rs"]
mod two_node;

use test_lab::TestLab;
use two_node::{NODES, down_leaves_nothing, example, json, logs, ok};

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or("")
}

/// `lab probe` of one cell.
fn probe(lab: &TestLab, from: &str, to: &str, via: &str) -> String {
    let v = json(
        lab,
        &[
            "lab",
            "probe",
            "--from",
            from,
            "--to",
            to,
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
    s(&v["results"][0], &["result"]).to_string()
}

/// What a `septum flows` command printed: its records (or aggregate) and its stderr.
struct Answer {
    value: Value,
    stderr: String,
}

/// `septum flows ARGS --output json` (through the relay: no server flags), which must succeed.
fn flows_json(lab: &TestLab, args: &[&str]) -> Answer {
    let mut a = vec!["flows"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--output", "json"]);
    let o = lab.run(&a);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(
        o.status.success(),
        "septum {a:?} failed:\nstdout: {out}\nstderr: {err}\n{}",
        logs(lab)
    );
    Answer {
        value: serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}")),
        stderr: err,
    }
}

/// The records of `septum flows ARGS`; no node may be missing from the answer.
fn records(lab: &TestLab, args: &[&str]) -> Vec<Value> {
    let a = flows_json(lab, args);
    assert_eq!(a.stderr, "", "every node answers {args:?}");
    a.value.as_array().expect("an array of flows").clone()
}

fn nodes_of(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| s(r, &["node"]).to_string())
        .collect()
}

/// One connection as one node recorded it.
#[derive(Clone, Copy, Debug)]
struct Seen<'a> {
    node: &'a str,
    point: &'a str,
    src_ip: &'a str,
    /// The source port, once the other node's record told it.
    src_port: Option<u64>,
    dst_ip: &'a str,
}

fn matches(r: &Value, w: &Seen) -> bool {
    s(r, &["node"]) == w.node
        && s(r, &["point"]) == w.point
        && s(r, &["src", "ip"]) == w.src_ip
        && w.src_port
            .is_none_or(|p| r["src"]["port"].as_u64() == Some(p))
        && s(r, &["dst", "ip"]) == w.dst_ip
        && r["dst"]["port"] == 80
        && r["protocol"] == 6
}

fn find<'a>(records: &'a [Value], w: &Seen) -> Option<&'a Value> {
    records.iter().find(|r| matches(r, w))
}

/// Waits until every `wanted` record is in the relay's answer (each node's pipeline flushes
/// within a fraction of a second); returns the answer.
fn eventually(lab: &TestLab, wanted: &[Seen]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = records(lab, &[]);
        let missing: Vec<&Seen> = wanted.iter().filter(|w| find(&got, w).is_none()).collect();
        if missing.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "records missing from the relay's answer: {missing:?}\nanswer: {got:#?}\n{}",
            logs(lab)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The record of a connection on the node where it arrived, found by the 5-tuple the
/// sending node recorded.
fn arrived<'a>(records: &'a [Value], left: &Value, node: &'a str, dst_ip: &'a str) -> &'a Value {
    let w = Seen {
        node,
        point: "to-pod",
        src_ip: s(left, &["src", "ip"]),
        src_port: left["src"]["port"].as_u64(),
        dst_ip,
    };
    find(records, &w)
        .unwrap_or_else(|| panic!("{w:?}: the connection {left} did not arrive: {records:#?}"))
}

fn rule(r: &Value, side: &str) -> (String, String, String, i64) {
    let x = &r[side];
    (
        s(x, &["kind"]).to_string(),
        s(x, &["namespace"]).to_string(),
        s(x, &["name"]).to_string(),
        x["rule_index"].as_i64().unwrap_or(i64::MIN),
    )
}

fn network_policy(name: &str, index: i64) -> (String, String, String, i64) {
    ("NetworkPolicy".into(), "shop".into(), name.into(), index)
}

/// A `septum flows --follow`, killed on drop (also when the test fails).
struct Follower(Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[test]
fn septum_flows_in_a_two_node_lab_merges_both_nodes_through_the_relay() {
    let started = Instant::now();
    let lab = TestLab::new("twoflows");
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
    let up = started.elapsed();
    let st = json(&lab, &["lab", "status", "--output", "json"]);
    let pod_ip = |pod: &str| -> String {
        st["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .find(|p| format!("{}/{}", s(p, &["namespace"]), s(p, &["name"])) == pod)
            .and_then(|p| p["ips"][0].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no pod {pod}: {st}"))
    };
    let cluster_ip = |svc: &str| -> String {
        st["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|x| format!("{}/{}", s(x, &["namespace"]), s(x, &["name"])) == svc)
            .and_then(|x| x["clusterIPs"][0].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no Service {svc}: {st}"))
    };
    // node-a runs the frontend and the database, node-b the backend and the outsider.
    let (frontend, database) = (pod_ip("shop/frontend"), pod_ip("shop/database"));
    let (backend, outsider) = (pod_ip("shop/backend"), pod_ip("outside/outsider"));
    let (backend_vip, database_vip) = (cluster_ip("shop/backend"), cluster_ip("shop/database"));
    assert!(frontend.starts_with("10.231.0.") && backend.starts_with("10.231.1."));

    // Real traffic across the link, both ways: allowed and refused, by pod IP and ClusterIP.
    let t = Instant::now();
    let cells = [
        ("shop/frontend", "shop/backend", "pod", "connected"),
        ("outside/outsider", "shop/database", "pod", "timeout"),
        ("shop/backend", "shop/database", "service", "connected"),
        ("shop/database", "shop/backend", "service", "timeout"),
    ];
    for (from, to, via, want) in cells {
        assert_eq!(probe(&lab, from, to, via), want, "{from} -> {to} via {via}");
    }
    let traffic = t.elapsed();

    // Each connection as the sending node recorded it, leaving its pod.
    let t = Instant::now();
    let left = |node, src_ip, dst_ip| Seen {
        node,
        point: "from-pod",
        src_ip,
        src_port: None,
        dst_ip,
    };
    let wanted = [
        left("node-a", &frontend, &backend),
        left("node-b", &outsider, &database),
        left("node-b", &backend, &database_vip),
        left("node-a", &database, &backend_vip),
    ];
    let mut all = eventually(&lab, &wanted);
    // ...and as the receiving node did (the same 5-tuple, after DNAT for the ClusterIPs).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let arrivals = wanted.iter().all(|w| {
            let l = find(&all, w).expect("left");
            let dst = if w.dst_ip == backend_vip {
                &backend
            } else if w.dst_ip == database_vip {
                &database
            } else {
                w.dst_ip
            };
            let other = if w.node == "node-a" {
                "node-b"
            } else {
                "node-a"
            };
            find(
                &all,
                &Seen {
                    node: other,
                    point: "to-pod",
                    src_ip: w.src_ip,
                    src_port: l["src"]["port"].as_u64(),
                    dst_ip: dst,
                },
            )
            .is_some()
        });
        if arrivals || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        all = records(&lab, &[]);
    }
    let recorded = t.elapsed();
    let t = Instant::now();
    assert_eq!(
        nodes_of(&all),
        NODES.iter().map(|n| n.to_string()).collect(),
        "one answer holds both nodes' records"
    );

    // Allowed by pod IP, node-a -> node-b: the frontend leaves node-a to the backend; it
    // arrives at the backend on node-b, let in by backend-in's first rule.
    let r = find(&all, &wanted[0]).expect("frontend -> backend on node-a");
    assert_eq!(s(r, &["verdict"]), "forwarded", "{r}");
    assert_eq!(s(r, &["src", "namespace"]), "shop", "{r}");
    assert_eq!(s(r, &["src", "pod"]), "frontend", "{r}");
    assert_eq!(s(r, &["src", "labels", "app"]), "frontend", "{r}");
    assert_eq!(s(r, &["dst", "namespace"]), "shop", "{r}");
    assert_eq!(s(r, &["dst", "labels", "app"]), "backend", "{r}");
    let at = arrived(&all, r, "node-b", &backend);
    assert_eq!(s(at, &["verdict"]), "forwarded", "{at}");
    assert_eq!(s(at, &["dst", "pod"]), "backend", "{at}");
    assert_eq!(s(at, &["dst", "namespace"]), "shop", "{at}");
    assert_eq!(s(at, &["dst", "labels", "app"]), "backend", "{at}");
    assert_eq!(s(at, &["src", "namespace"]), "shop", "{at}");
    assert_eq!(s(at, &["src", "labels", "app"]), "frontend", "{at}");
    assert_eq!(
        rule(at, "ingress_rule"),
        network_policy("backend-in", 0),
        "{at}"
    );

    // Refused by pod IP, node-b -> node-a: the outsider's SYNs leave node-b (no egress policy)
    // and are dropped arriving at the database, by database-in's isolation.
    let r = find(&all, &wanted[1]).expect("outsider -> database on node-b");
    assert_eq!(s(r, &["verdict"]), "forwarded", "{r}");
    assert_eq!(s(r, &["src", "pod"]), "outsider", "{r}");
    assert_eq!(s(r, &["src", "namespace"]), "outside", "{r}");
    let denied_at_a = arrived(&all, r, "node-a", &database);
    let at = denied_at_a;
    assert_eq!(s(at, &["verdict"]), "dropped", "{at}");
    assert_eq!(s(at, &["dst", "pod"]), "database", "{at}");
    assert_eq!(s(at, &["src", "namespace"]), "outside", "{at}");
    assert_eq!(s(at, &["src", "labels", "app"]), "outsider", "{at}");
    assert_eq!(
        rule(at, "ingress_rule"),
        network_policy("database-in", -1),
        "{at}"
    );
    assert!(at["count"].as_u64() >= Some(1), "{at}");

    // Allowed through the database's ClusterIP, node-b -> node-a: addressed to the VIP leaving
    // node-b, DNATed there, let in at the database by database-in's first rule.
    let via_database_vip = find(&all, &wanted[2]).expect("backend -> database VIP on node-b");
    let r = via_database_vip;
    assert_eq!(s(r, &["verdict"]), "forwarded", "{r}");
    assert_eq!(s(r, &["src", "pod"]), "backend", "{r}");
    let at = arrived(&all, r, "node-a", &database);
    assert_eq!(s(at, &["verdict"]), "forwarded", "{at}");
    assert_eq!(s(at, &["dst", "pod"]), "database", "{at}");
    assert_eq!(s(at, &["src", "labels", "app"]), "backend", "{at}");
    assert_eq!(
        rule(at, "ingress_rule"),
        network_policy("database-in", 0),
        "{at}"
    );

    // Refused through the backend's ClusterIP, node-a -> node-b: deferred leaving node-a (a
    // Service VIP), dropped arriving at the backend by backend-in's isolation.
    let via_backend_vip = find(&all, &wanted[3]).expect("database -> backend VIP on node-a");
    let r = via_backend_vip;
    assert_eq!(s(r, &["verdict"]), "forwarded", "{r}");
    assert_eq!(s(r, &["src", "pod"]), "database", "{r}");
    let at = arrived(&all, r, "node-b", &backend);
    assert_eq!(s(at, &["verdict"]), "dropped", "{at}");
    assert_eq!(s(at, &["dst", "pod"]), "backend", "{at}");
    assert_eq!(s(at, &["src", "labels", "app"]), "database", "{at}");
    assert_eq!(
        rule(at, "ingress_rule"),
        network_policy("backend-in", -1),
        "{at}"
    );

    // The Service a ClusterIP flow was addressed to (cluster-mode agents learn Service names
    // from the node-state stream).
    let named: Vec<&str> = [via_database_vip, via_backend_vip]
        .iter()
        .map(|r| s(r, &["dst", "service"]))
        .collect();
    assert_eq!(named, ["shop/database", "shop/backend"], "{all:#?}");
    let by_service = records(&lab, &["--to-service", "shop/database"]);
    assert!(
        by_service.iter().any(|r| matches(r, &wanted[2])),
        "{by_service:#?}"
    );

    // Filters go to both nodes (or, naming nodes, to those only).
    for node in NODES {
        let got = records(&lab, &["--node", node]);
        assert!(!got.is_empty(), "{node}");
        assert_eq!(
            nodes_of(&got),
            BTreeSet::from([node.to_string()]),
            "{got:#?}"
        );
    }
    let dropped = records(&lab, &["--verdict", "dropped", "--protocol", "tcp"]);
    assert_eq!(
        nodes_of(&dropped),
        NODES.iter().map(|n| n.to_string()).collect(),
        "{dropped:#?}"
    );
    assert!(dropped.iter().all(|r| s(r, &["verdict"]) == "dropped"));
    let by_policy = records(&lab, &["--policy", "shop/database-in"]);
    assert!(by_policy.iter().any(|r| r == denied_at_a), "{by_policy:#?}");
    assert!(
        by_policy.iter().all(|r| s(r, &["node"]) == "node-a"),
        "database-in decides on node-a only: {by_policy:#?}"
    );
    let by_label = records(
        &lab,
        &["--from-label", "app=outsider", "--verdict", "dropped"],
    );
    assert!(by_label.iter().any(|r| r == denied_at_a), "{by_label:#?}");

    // The table a user reads: both nodes' refusals with their rules, no node missing.
    let o = lab.run(&["flows", "--verdict", "dropped"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && o.stderr.is_empty(), "{o:?}");
    assert!(table.starts_with("LAST SEEN"), "{table}");
    for rule in [
        "ingress NetworkPolicy shop/database-in default-deny",
        "ingress NetworkPolicy shop/backend-in default-deny",
    ] {
        assert!(table.contains(rule), "{rule}: {table}");
    }
    // Each row names the node that recorded it: the one whose policy decided.
    for (rule, node) in [
        ("shop/database-in default-deny", "node-a"),
        ("shop/backend-in default-deny", "node-b"),
    ] {
        let rows: Vec<&str> = table.lines().filter(|l| l.contains(rule)).collect();
        assert!(!rows.is_empty(), "{table}");
        assert!(
            rows.iter()
                .all(|l| l.split_whitespace().nth(1) == Some(node)),
            "{rule} on {node}: {table}"
        );
    }
    // A source on the other node is named like a local one (the stream names every pod).
    let outsider_row = table
        .lines()
        .find(|l| l.contains("shop/database:80"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(outsider_row.contains("outside/outsider:"), "{table}");

    // `septum flows | head`: a reader that goes away ends the command quietly.
    let mut closed = lab
        .command(&["flows"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("septum flows");
    drop(closed.stdout.take());
    let o = closed.wait_with_output().expect("septum flows");
    assert!(o.status.success() && o.stderr.is_empty(), "{o:?}");

    // Aggregates, summed over both nodes: refusals by policy (database-in on node-a,
    // backend-in on node-b), talkers named where each node knows the pod.
    let denied = flows_json(&lab, &["denied"]);
    assert_eq!(denied.stderr, "");
    let policies: Vec<&str> = denied
        .value
        .as_array()
        .expect("denied")
        .iter()
        .map(|d| s(d, &["policy"]))
        .collect();
    for p in [
        "NetworkPolicy shop/database-in",
        "NetworkPolicy shop/backend-in",
    ] {
        assert!(policies.iter().any(|x| x.contains(p)), "{p}: {policies:?}");
    }
    let top = flows_json(&lab, &["top", "--number", "100"]);
    assert_eq!(top.stderr, "");
    // The frontend is named as a source where it runs (node-a), the backend as a destination
    // where it runs (node-b); on the other node each is its address.
    let talkers = top.value.as_array().expect("top").clone();
    assert!(
        talkers.iter().any(|t| s(t, &["from"]) == "shop/frontend"),
        "node-a's talkers: {talkers:#?}"
    );
    assert!(
        talkers.iter().any(|t| s(t, &["to"]) == "shop/backend"),
        "node-b's talkers: {talkers:#?}"
    );
    let dot = ok(&lab, &["flows", "graph", "--format", "dot"]);
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("#2e7d32"), "no allowed edge: {dot}");
    assert!(dot.contains("#c62828"), "no refused edge: {dot}");
    // Every pod, whichever node recorded it, is drawn in its namespace: none is an address
    // outside the cluster (a cross-node connection is one pod-to-pod edge).
    assert!(
        !dot.lines()
            .any(|l| l.contains("outside the cluster") && l.contains("10.231.")),
        "{dot}"
    );

    // Status: one row per node, and the totals.
    let status = flows_json(&lab, &["status"]).value;
    let per_node: Vec<(&str, u64)> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| (s(n, &["node"]), n["stored_flows"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(
        per_node.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        NODES,
        "{status}"
    );
    assert!(per_node.iter().all(|(_, f)| *f > 0), "{status}");
    assert_eq!(
        status["stored_flows"].as_u64(),
        Some(per_node.iter().map(|(_, f)| f).sum()),
        "{status}"
    );
    assert_eq!(status["node_errors"], Value::Array(Vec::new()), "{status}");
    let table = ok(&lab, &["flows", "status"]);
    for row in ["node-a ", "node-b ", "(all) "] {
        assert!(table.lines().any(|l| l.starts_with(row)), "{row}: {table}");
    }
    // The relay with explicit flags, from inside node-a: the lab's operator certificate is let
    // in; a node's certificate (another CA: a node must not read every node's flows) and no
    // certificate are refused.
    let pki = lab.dir.join("pki");
    let explicit = |cert: Option<&str>| {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &format!("{}node-a", lab.prefix)])
            .arg(test_lab::SEPTUM)
            .args(["flows", "status", "--output", "json"])
            .args(["--server", "https://10.230.0.1:4245", "--tls-ca"])
            .arg(pki.join("ca.crt"));
        if let Some(name) = cert {
            c.arg("--tls-cert")
                .arg(pki.join(format!("{name}.crt")))
                .arg("--tls-key")
                .arg(pki.join(format!("{name}.key")));
        }
        c.output().expect("ip netns exec septum")
    };
    let o = explicit(Some("septum-lab-operator"));
    assert!(o.status.success(), "{o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2), "{v}");
    // (How the refusal reads depends on when the client sees the server's alert: TLS 1.3
    // checks the client's certificate after the client's side of the handshake is done.)
    for cert in [Some("node-a"), None] {
        let o = explicit(cert);
        assert!(!o.status.success(), "{cert:?} let in: {o:?}");
        assert!(o.stdout.is_empty(), "{cert:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("transport error"),
            "{cert:?}: {o:?}"
        );
    }
    let queried = t.elapsed();

    // --follow: a new connection shows up live from both nodes, leaving node-a and arriving
    // at node-b.
    let t = Instant::now();
    let mut follower = Follower(
        lab.command(&[
            "flows",
            "--follow",
            "--output",
            "jsonl",
            "--from-ip",
            &frontend,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("septum flows --follow"),
    );
    let stdout = follower.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str(&line) else {
                continue;
            };
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    // The follower's stored records come first; the new connection is younger than this.
    std::thread::sleep(Duration::from_millis(500));
    let since = now_ms();
    assert_eq!(
        probe(&lab, "shop/frontend", "shop/backend", "pod"),
        "connected"
    );
    let mut live: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while nodes_of(&live).len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(r) = rx.recv_timeout(left) else {
            panic!("the follower did not print both nodes' records: {live:#?}");
        };
        if r["first_seen_ms"].as_u64() >= Some(since) && s(&r, &["dst", "ip"]) == backend {
            live.push(r);
        }
    }
    drop(follower);
    let leaving = live
        .iter()
        .find(|r| s(r, &["node"]) == "node-a")
        .expect("node-a");
    assert_eq!(s(leaving, &["point"]), "from-pod", "{leaving}");
    assert_eq!(s(leaving, &["src", "pod"]), "frontend", "{leaving}");
    let arriving = live
        .iter()
        .find(|r| s(r, &["node"]) == "node-b")
        .expect("node-b");
    assert_eq!(s(arriving, &["point"]), "to-pod", "{arriving}");
    assert_eq!(s(arriving, &["dst", "pod"]), "backend", "{arriving}");
    assert_eq!(
        leaving["src"]["port"], arriving["src"]["port"],
        "one connection: {live:#?}"
    );
    let followed = t.elapsed();

    // node-b's agent dies: the relay names it, and still answers with node-a's flows.
    let t = Instant::now();
    let state: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).expect("lab.json"))
            .expect("lab.json is JSON");
    let pid = state["nodes"][1]["agent_pid"]
        .as_u64()
        .expect("node-b's agent");
    assert_eq!(s(&state["nodes"][1], &["name"]), "node-b");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -9 node-b's agent");
    let gone = Instant::now() + Duration::from_secs(10);
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
        assert!(Instant::now() < gone, "node-b's agent lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
    let missing_b = |stderr: &str| {
        assert!(
            stderr.contains("septum: node node-b did not answer (")
                && stderr.contains("its flows are missing from this answer"),
            "node-b is named: {stderr}"
        );
        assert!(!stderr.contains("node-a"), "{stderr}");
    };
    let answer = flows_json(&lab, &[]);
    missing_b(&answer.stderr);
    let rest = answer.value.as_array().expect("flows").clone();
    assert_eq!(
        nodes_of(&rest),
        BTreeSet::from(["node-a".to_string()]),
        "{rest:#?}"
    );
    assert!(
        rest.iter().any(|r| r == denied_at_a),
        "node-a's refusal is still answered: {rest:#?}"
    );
    let status = flows_json(&lab, &["status"]).value;
    assert_eq!(
        status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| s(n, &["node"]))
            .collect::<Vec<_>>(),
        ["node-a"],
        "{status}"
    );
    let errors = status["node_errors"].as_array().expect("node_errors");
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(s(&errors[0], &["node"]), "node-b", "{status}");
    assert!(
        ["NotConnected", "Unavailable"].contains(&s(&errors[0], &["code"])),
        "a dead agent: not connected, or its flow API refused: {status}"
    );
    assert!(!s(&errors[0], &["message"]).is_empty(), "{status}");
    let table = ok(&lab, &["flows", "status"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-b ") && l.contains("did not answer")),
        "{table}"
    );
    let denied = flows_json(&lab, &["denied"]);
    missing_b(&denied.stderr);
    let policies: Vec<&str> = denied
        .value
        .as_array()
        .expect("denied")
        .iter()
        .map(|d| s(d, &["policy"]))
        .collect();
    assert!(
        policies.iter().any(|p| p.contains("shop/database-in")),
        "{policies:?}"
    );
    assert!(
        !policies.iter().any(|p| p.contains("shop/backend-in")),
        "backend-in's refusals were node-b's: {policies:?}"
    );
    let only_b = flows_json(&lab, &["--node", "node-b"]);
    missing_b(&only_b.stderr);
    assert_eq!(only_b.value, Value::Array(Vec::new()));
    let stopped = t.elapsed();

    down_leaves_nothing(&lab);
    eprintln!(
        "timings: up {up:?}, traffic {traffic:?}, recorded {recorded:?}, queried {queried:?}, \
         follow {followed:?}, stopped node {stopped:?}, total {:?}",
        started.elapsed()
    );
}
