//! The flow log end to end, as root, with the real binaries: the shop lab with its policies,
//! real connections between network-namespace pods (through pod IPs and Service ClusterIPs),
//! and `septum flows` against the lab's agent with no flags beyond the filters: records with
//! the right pods, Services, verdicts and deciding rules on both sides, each filter, `--follow`
//! while traffic runs, the aggregates, the service map as a picture, and hostile filters
//! refused with the flag that carried them.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/lab.rs"]
mod test_lab;

use test_lab::TestLab;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn probe(lab: &TestLab, from: &str, to: &str, port: u16, via: &str) -> String {
    let v = lab.json(&[
        "lab",
        "probe",
        "--from",
        from,
        "--to",
        to,
        "--port",
        &port.to_string(),
        "--via",
        via,
        "--timeout",
        "500ms",
        "--output",
        "json",
    ]);
    v["results"][0]["result"].as_str().unwrap().to_string()
}

/// `septum flows ARGS --output json`, as records.
fn flows(lab: &TestLab, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["flows"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--output", "json"]);
    lab.json(&a).as_array().expect("an array of flows").clone()
}

/// Waits until `septum flows ARGS` returns at least one record (the pipeline flushes within a
/// fraction of a second).
fn eventually(lab: &TestLab, args: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = flows(lab, args);
        if !got.is_empty() || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or("")
}

#[test]
fn lab_traffic_is_recorded_queryable_followed_and_drawn() {
    let lab = TestLab::new("flows");
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    lab.ok(&["lab", "apply", path(&examples().join("policies.yaml"))]);

    // Allowed: frontend -> backend through its Service; refused: outsider -> database.
    assert_eq!(
        probe(&lab, "shop/frontend", "shop/backend", 80, "service"),
        "connected"
    );
    assert_eq!(
        probe(&lab, "outside/outsider", "shop/database", 5432, "pod"),
        "timeout"
    );

    // The allowed connection, seen leaving the frontend and arriving at the backend.
    let allowed = eventually(
        &lab,
        &[
            "--from-pod",
            "shop/frontend",
            "--to-pod",
            "shop/backend",
            "--verdict",
            "forwarded",
        ],
    );
    assert!(!allowed.is_empty(), "no forwarded frontend -> backend flow");
    for r in &allowed {
        assert_eq!(s(r, &["verdict"]), "forwarded", "{r}");
        assert_eq!(s(r, &["src", "namespace"]), "shop");
        assert_eq!(s(r, &["src", "pod"]), "frontend");
        assert_eq!(s(r, &["dst", "pod"]), "backend");
        assert_eq!(r["dst"]["port"], 80, "{r}");
        assert_eq!(r["protocol"], 6);
        assert_eq!(s(r, &["src", "labels", "app"]), "frontend", "{r}");
    }
    // Arriving at the backend, the ingress side was decided by the FlowPolicy that allows it.
    let at_backend: Vec<&Value> = allowed
        .iter()
        .filter(|r| s(r, &["point"]) == "to-pod")
        .collect();
    assert!(!at_backend.is_empty(), "{allowed:?}");
    for r in &at_backend {
        assert_eq!(s(r, &["ingress_rule", "kind"]), "FlowPolicy", "{r}");
        assert_eq!(
            s(r, &["ingress_rule", "name"]),
            "frontend-to-backend",
            "{r}"
        );
        assert_eq!(s(r, &["ingress_rule", "namespace"]), "shop", "{r}");
    }
    // Leaving the frontend, the connection was addressed to the backend's Service ClusterIP.
    let to_service = eventually(&lab, &["--to-service", "shop/backend"]);
    assert!(
        to_service
            .iter()
            .any(|r| s(r, &["src", "pod"]) == "frontend" && s(r, &["point"]) == "from-pod"),
        "{to_service:?}"
    );

    // The refused one: a drop at the database, decided by its namespace's default deny.
    let refused = eventually(&lab, &["--to-pod", "shop/database", "--verdict", "dropped"]);
    assert!(!refused.is_empty(), "no dropped flow to the database");
    let r = refused
        .iter()
        .find(|r| s(r, &["src", "pod"]) == "outsider")
        .unwrap_or_else(|| panic!("{refused:?}"));
    assert_eq!(s(r, &["src", "namespace"]), "outside");
    assert_eq!(r["dst"]["port"], 5432);
    assert_eq!(
        s(r, &["ingress_rule", "name"]),
        "default-deny-ingress",
        "{r}"
    );
    // Every dropped packet of the one connect (SYN retransmits included) folds into one record.
    let same_connection: Vec<&Value> = refused
        .iter()
        .filter(|x| x["src"]["port"] == r["src"]["port"] && s(x, &["src", "pod"]) == "outsider")
        .collect();
    assert_eq!(same_connection.len(), 1, "{refused:?}");
    assert!(r["count"].as_u64().unwrap() >= 1, "{r}");

    // Each filter selects: by namespace, label, port, protocol, policy, drop reason, IP, node,
    // and an exclude takes away what it names.
    let by = |args: &[&str]| flows(&lab, args);
    assert!(!by(&["--from-namespace", "outside"]).is_empty());
    assert!(by(&["--from-namespace", "kube-system"]).is_empty());
    assert!(!by(&["--from-label", "app=frontend", "--to-port", "80"]).is_empty());
    assert!(by(&["--from-label", "app=nothing"]).is_empty());
    assert!(!by(&["--protocol", "tcp", "--verdict", "dropped"]).is_empty());
    assert!(by(&["--protocol", "udp"]).is_empty());
    assert!(!by(&["--policy", "shop/default-deny-ingress"]).is_empty());
    assert!(!by(&["--drop-reason", "policy-default-deny"]).is_empty());
    assert!(by(&["--to-service", "ops/backend"]).is_empty());
    assert!(!by(&["--node", s(r, &["node"])]).is_empty());
    assert!(by(&["--node", "another-node"]).is_empty());
    let outsider_ip = s(r, &["src", "ip"]).to_string();
    assert!(!by(&["--from-ip", &outsider_ip]).is_empty());
    assert!(!by(&["--ip", "0.0.0.0/0", "--since", "10m"]).is_empty());
    assert!(by(&["--until", "1970-01-02T00:00:00Z"]).is_empty());
    let everything = by(&[]);
    let without = by(&["--exclude", "verdict=dropped"]);
    assert!(without.len() < everything.len());
    assert!(without.iter().all(|r| s(r, &["verdict"]) != "dropped"));
    let newest = by(&["--last", "1"]);
    assert_eq!(newest.len(), 1);

    // Table and JSON lines outputs.
    let table = lab.ok(&["flows", "--to-pod", "shop/database"]);
    assert!(table.starts_with("LAST SEEN"), "{table}");
    assert!(table.contains("outside/outsider"), "{table}");
    assert!(table.contains("dropped"), "{table}");
    let jsonl = lab.ok(&["flows", "--output", "jsonl"]);
    assert_eq!(jsonl.lines().count(), everything.len());

    // Aggregates.
    let top = lab.json(&["flows", "top", "--output", "json"]);
    assert!(
        top.as_array()
            .unwrap()
            .iter()
            .any(|t| s(t, &["from"]) == "shop/frontend"),
        "{top}"
    );
    let denied = lab.json(&["flows", "denied", "--output", "json"]);
    assert!(
        denied
            .as_array()
            .unwrap()
            .iter()
            .any(|d| s(d, &["policy"]).contains("default-deny-ingress")),
        "{denied}"
    );
    let status = lab.json(&["flows", "status", "--output", "json"]);
    assert!(status["stored_flows"].as_u64().unwrap() > 0, "{status}");
    assert!(status["events"].as_u64().unwrap() > 0, "{status}");

    // The service map: allowed and refused edges drawn differently.
    let dot = lab.ok(&["flows", "graph", "--format", "dot"]);
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("#2e7d32"), "no allowed edge: {dot}");
    assert!(dot.contains("#c62828"), "no refused edge: {dot}");
    let svg_path = lab.dir.join("map.svg");
    lab.ok(&["flows", "graph", "--format", "svg", "-o", path(&svg_path)]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{svg}");
    assert!(svg.contains("shop"), "{svg}");

    // Hostile filters: refused before any request, naming the flag.
    for (args, flag) in [
        (vec!["--from-pod", "x' OR 1=1 --"], "from-pod"),
        (
            vec!["--to-label", "app=\"); DROP TABLE flows; --"],
            "to-label",
        ),
        (vec!["--ip", "10.0.0.0/99"], "ip"),
        (vec!["--policy", &"a".repeat(10_000)], "policy"),
    ] {
        let mut a = vec!["flows"];
        a.extend(args.iter().copied());
        let o = lab.run(&a);
        assert!(!o.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    // The store still answers after them, and lost nothing (the lab's traffic may still add a
    // late record, such as a reply flushed after the first query).
    assert!(by(&[]).len() >= everything.len());

    // --follow: a new connection shows up live while the follower runs.
    let mut follower = lab
        .command(&[
            "flows",
            "--follow",
            "--from-pod",
            "shop/backend",
            "--to-pod",
            "shop/database",
            "--output",
            "jsonl",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        probe(&lab, "shop/backend", "shop/database", 5432, "pod"),
        "connected"
    );
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = follower.kill();
    let _ = follower.wait();
    let line = line.expect("the follower printed the new connection");
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(s(&r, &["src", "pod"]), "backend", "{r}");
    assert_eq!(s(&r, &["dst", "pod"]), "database", "{r}");
    assert_eq!(s(&r, &["verdict"]), "forwarded", "{r}");
}

/// The identity of a record: one connection at one observation point.
fn key(r: &Value) -> String {
    format!(
        "{}|{}|{}|{}:{}|{}:{}|{}",
        s(r, &["node"]),
        s(r, &["point"]),
        r["protocol"],
        s(r, &["src", "ip"]),
        r["src"]["port"],
        s(r, &["dst", "ip"]),
        r["dst"]["port"],
        r["first_seen_ms"]
    )
}

fn keys(records: &[Value]) -> std::collections::BTreeSet<String> {
    records.iter().map(key).collect()
}

#[test]
fn agent_kill_9_during_ingest_loses_no_committed_flow() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let kills: usize = std::env::var("SEPTUM_FLOW_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut lab = TestLab::new("fkill");
    let jsonl = PathBuf::from(format!("{}.flows.jsonl", lab.dir.display()));
    let _ = std::fs::remove_file(&jsonl);
    lab.env
        .push(("SEPTUM_FLOW_JSONL".into(), jsonl.display().to_string()));
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    lab.ok(&["lab", "apply", path(&examples().join("policies.yaml"))]);
    let backend: std::net::SocketAddr = (lab.pod_ip("shop/backend"), 80).into();
    let database: std::net::SocketAddr = (lab.pod_ip("shop/database"), 5432).into();

    // Ingest all along: new allowed connections and refused ones, each client paced so the
    // store stays within one query's 100,000 records over the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for (pod, to) in [
        ("shop/frontend", backend),
        ("shop/frontend", database),
        ("outside/outsider", backend),
    ] {
        let (stop, made) = (stop.clone(), made.clone());
        load.push(lab.in_pod(pod, move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(20));
                made.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }

    let all = |lab: &TestLab| flows(lab, &["--first", "100000"]);
    let mut committed = std::collections::BTreeSet::new();
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(300));
        // What a query returned is committed.
        committed.extend(keys(&all(&lab)));
        lab.ok(&["lab", "restart-agent", "--kill"]);
        let after = all(&lab);
        assert!(after.len() < 100_000, "the store outgrew one query");
        let after = keys(&after);
        let lost: Vec<&String> = committed.difference(&after).collect();
        assert!(
            lost.is_empty(),
            "kill {round}: {} committed records gone, e.g. {:?}",
            lost.len(),
            lost.first()
        );
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    assert!(made.load(Ordering::SeqCst) > 100, "the load ran");
    assert!(
        committed.len() > kills,
        "records were ingested between kills: {}",
        committed.len()
    );

    // The JSON-lines export carries the store's records: every record in the file is in the
    // store (the file may hold an update twice; a kill may cut its unflushed tail).
    std::thread::sleep(Duration::from_millis(600));
    let stored = keys(&all(&lab));
    let exported: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !exported.is_empty(),
        "nothing exported to {}",
        jsonl.display()
    );
    let exported = keys(&exported);
    let missing: Vec<&String> = exported.difference(&stored).collect();
    assert!(missing.is_empty(), "exported but not stored: {missing:?}");
    let _ = std::fs::remove_file(&jsonl);
}

/// `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA (`NAME-ca.pem`) and a certificate it signs (`NAME.pem`, `NAME.key`) for 127.0.0.1.
fn pki(dir: &Path, name: &str) {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let (key, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}-ca"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

#[test]
fn the_tls_flow_api_refuses_a_client_without_a_valid_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    pki(d, "server");
    pki(d, "client");
    pki(d, "rogue");
    let p = |f: &str| d.join(f).display().to_string();
    let mut lab = TestLab::new("ftls");
    for (k, v) in [
        ("SEPTUM_FLOWS_ADDR", "127.0.0.1:19443".to_string()),
        ("SEPTUM_FLOWS_TLS_CERT", p("server.pem")),
        ("SEPTUM_FLOWS_TLS_KEY", p("server.key")),
        ("SEPTUM_FLOWS_TLS_CLIENT_CA", p("client-ca.pem")),
    ] {
        lab.env.push((k.into(), v));
    }
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    assert_eq!(
        probe(&lab, "shop/frontend", "shop/backend", 80, "pod"),
        "connected"
    );
    // The listener is in the lab's node namespace, where the agent runs.
    let st: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).unwrap()).unwrap();
    let node = st["node_netns"].as_str().unwrap().to_string();
    let remote = |extra: &[String]| {
        let mut c = std::process::Command::new("ip");
        c.args([
            "netns",
            "exec",
            &node,
            test_lab::SEPTUM,
            "flows",
            "--server",
        ])
        .arg("https://127.0.0.1:19443")
        .args(["--tls-ca", &p("server-ca.pem"), "--output", "json"])
        .args(extra)
        .env_remove("SEPTUM_AGENT_SOCKET");
        c.output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let good = loop {
        let o = remote(&[
            "--tls-cert".into(),
            p("client.pem"),
            "--tls-key".into(),
            p("client.key"),
            "--from-pod".into(),
            "shop/frontend".into(),
        ]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if (o.status.success() && v.as_array().is_some_and(|a| !a.is_empty()))
            || Instant::now() > deadline
        {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        good.status.success(),
        "a client with a valid certificate: {}",
        String::from_utf8_lossy(&good.stderr)
    );
    let flows: Value = serde_json::from_slice(&good.stdout).unwrap();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .all(|r| s(r, &["src", "pod"]) == "frontend"),
        "{flows}"
    );
    for (what, extra) in [
        ("no client certificate", vec![]),
        (
            "a certificate from another CA",
            vec![
                "--tls-cert".to_string(),
                p("rogue.pem"),
                "--tls-key".into(),
                p("rogue.key"),
            ],
        ),
    ] {
        let o = remote(&extra);
        assert!(!o.status.success(), "{what}: accepted");
        assert!(o.stdout.is_empty(), "{what}: answered");
    }
    // Plain text to a TLS-only API is refused by the client before any connection.
    let o = std::process::Command::new(test_lab::SEPTUM)
        .args(["flows", "--server", "http://127.0.0.1:19443"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("TLS only"));
}
