//! The upstream Kubernetes NetworkPolicy e2e cases through the real lab, as root: the case data
//! of `crd/tests/upstream/cases.rs` (which `crd/tests/upstream_e2e.rs` checks against the policy
//! engine alone) enforced by the lab's agent in the kernel and probed over real sockets.
//!
//! The world is upstream's: namespaces x, y, z labelled `ns: <name>`; pods a, b, c in each
//! labelled `pod: <name>`, serving upstream's named ports (serve-80-tcp, serve-81-tcp,
//! serve-80-udp, serve-81-udp, serve-80-sctp) plus every other (port, protocol) a probe of the
//! cases uses (derived from the cases, so it is always complete); one Service per pod (`s-a` in x
//! selects `pod: a`) exposing every served port. It is checked first: every port connected from
//! every pod to every pod, through pod IPs and through ClusterIPs.
//!
//! Each case then runs as upstream runs it: its policies applied (`lab apply` returns once the
//! agent enforces them), then step by step its mutations as the lab sees them (a policy created
//! or replaced: `lab apply`; all policies deleted: `lab delete` of the policy files; a namespace
//! or pod label added: the whole Namespace or Pod object re-applied with the merged labels, same
//! ports) and its probes: the concurrent 9 x 9 matrix through pod IPs and through Service
//! ClusterIPs, on the probe's protocol (a named port is probed on its number). Every cell except
//! loopback (upstream's `ignoreLoopback`) must be `connected` where the truth table says
//! connected and `timeout` (a silent drop) where it says blocked; `refused` and `error` are
//! failures. Every cell is also compared with `septum explain` of the pod-to-pod flow over the
//! lab's datastore as it was at that step (a copy, so the explains run in the background while
//! the lab moves on). Between cases the world is restored: the case's
//! policies deleted, changed labels put back.
//!
//! The case YAML names the engine world's pod addresses (10.0.<namespace 1..3>.<pod 1..3>); they
//! are replaced by the lab's real ones before applying, and every CIDR of a case must classify
//! the lab's pods as it classifies the engine's (upstream's `makeLargeCIDRForIP` /4 included), or
//! the test says so instead of checking a different case.
//!
//! Every case of the data runs here; none is engine-only and none is excluded.
//!
//! One known way for this test to fail on a correct case, rarely (roughly 1-2% of runs, by the
//! number of UDP and SCTP probes per pair): the datapath's conntrack entries never expire and a
//! flow that has one is not evaluated again (only a TCP SYN is), so a UDP or SCTP probe whose
//! random source port happens to repeat that of an earlier, then-allowed probe of the same pair
//! and port gets through a policy that now denies it. Such a cell is reported with that hint.

#[path = "../../crd/tests/upstream/cases.rs"]
mod cases;
#[path = "common/lab.rs"]
mod test_lab;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use serde_json::{Value, json};

use cases::{CASES, Case, Mutation, PODS, Probe, expected};
use test_lab::{SEPTUM, TestLab};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_NAMES: [&str; 3] = ["a", "b", "c"];

/// The named ports of upstream's pods, as `crd/tests/common/mod.rs`'s world declares them.
const NAMED_PORTS: [(&str, u16, &str); 5] = [
    ("serve-80-tcp", 80, "TCP"),
    ("serve-81-tcp", 81, "TCP"),
    ("serve-80-udp", 80, "UDP"),
    ("serve-81-udp", 81, "UDP"),
    ("serve-80-sctp", 80, "SCTP"),
];

/// Per probe. Every cell here is on one bridge, a connection takes well under a millisecond; a
/// denied cell costs the whole timeout, and nearly every matrix has one.
const PROBE_TIMEOUT: &str = "300ms";

/// Said of a UDP or SCTP cell that got through where it should not. The datapath's conntrack
/// entries never expire and a flow with an entry is not evaluated again (only a TCP SYN is), so
/// a probe whose random source port repeats that of an earlier, then-allowed probe of the same
/// pair and port passes a policy that denies it.
const STALE_CONNTRACK_HINT: &str = " (UDP/SCTP: if an earlier probe of this pair and port was \
allowed from the same source port, its conntrack entry, which never expires, let this one through)";

/// How probes reach their destination (`lab probe --via`).
const VIAS: [&str; 2] = ["pod", "service"];

/// The number a probe connects to: its port, or the number of the named port it gives.
fn port_number(probe: &Probe) -> u16 {
    if let Ok(n) = probe.port.parse() {
        return n;
    }
    let (_, n, proto) = NAMED_PORTS
        .iter()
        .find(|(name, ..)| *name == probe.port)
        .unwrap_or_else(|| {
            panic!(
                "probe port {:?} is neither a number nor a named port of the world",
                probe.port
            )
        });
    assert_eq!(
        *proto, probe.proto,
        "probe {} names a port of another protocol",
        probe.port
    );
    *n
}

/// Every (port, protocol) the pods serve: the named ports and whatever a probe uses.
fn served_ports() -> BTreeSet<(u16, &'static str)> {
    let mut served: BTreeSet<_> = NAMED_PORTS.iter().map(|(_, n, p)| (*n, *p)).collect();
    for probe in CASES.iter().flat_map(|c| c.steps).flat_map(|s| s.probes) {
        served.insert((port_number(probe), probe.proto));
    }
    served
}

fn port_name(port: u16, proto: &str) -> Option<&'static str> {
    NAMED_PORTS
        .iter()
        .find(|(_, n, p)| *n == port && *p == proto)
        .map(|(name, ..)| *name)
}

type Labels = BTreeMap<String, String>;

/// The labels of the world's objects: namespaces by name, pods by `ns/pod`.
#[derive(Clone, Debug, PartialEq)]
struct WorldLabels {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<String, Labels>,
}

impl WorldLabels {
    fn original() -> Self {
        let one = |k: &str, v: &str| Labels::from([(k.to_string(), v.to_string())]);
        Self {
            namespaces: NAMESPACES
                .iter()
                .map(|ns| (ns.to_string(), one("ns", ns)))
                .collect(),
            pods: PODS
                .iter()
                .map(|p| (p.to_string(), one("pod", p.split_once('/').unwrap().1)))
                .collect(),
        }
    }
}

fn namespace_object(ns: &str, labels: &Labels) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns, "labels": labels},
    })
}

fn pod_object(pod: &str, labels: &Labels, served: &BTreeSet<(u16, &str)>) -> Value {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    let ports: Vec<Value> = served
        .iter()
        .map(|&(port, proto)| {
            let mut p = json!({"containerPort": port, "protocol": proto});
            if let Some(n) = port_name(port, proto) {
                p["name"] = json!(n);
            }
            p
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": ports}]},
    })
}

fn service_object(pod: &str, served: &BTreeSet<(u16, &str)>) -> Value {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    let ports: Vec<Value> = served
        .iter()
        .map(|&(port, proto)| {
            json!({
                "name": format!("{}-{port}", proto.to_ascii_lowercase()),
                "port": port,
                "targetPort": port,
                "protocol": proto,
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("s-{name}"), "namespace": ns},
        "spec": {"selector": {"pod": name}, "ports": ports},
    })
}

/// Writes objects as a multi-document manifest (JSON is YAML).
fn write_objects(path: &Path, objects: &[Value]) {
    let docs: Vec<String> = objects
        .iter()
        .map(|o| serde_json::to_string_pretty(o).unwrap())
        .collect();
    std::fs::write(path, docs.join("\n---\n")).unwrap();
}

/// The engine world's address of a pod: 10.0.<namespace 1..3>.<pod 1..3>.
fn engine_ip(pod: &str) -> Ipv4Addr {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    let n = NAMESPACES.iter().position(|x| *x == ns).expect("namespace") as u8 + 1;
    let p = POD_NAMES.iter().position(|x| *x == name).expect("pod") as u8 + 1;
    Ipv4Addr::new(10, 0, n, p)
}

fn in_prefix(net: Ipv4Addr, len: u8, ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(net) & mask == u32::from(ip) & mask
}

/// The case YAML with the engine world's pod addresses replaced by the lab's. Panics when a
/// CIDR would classify the lab's pods differently from the engine's: the case would not be the
/// same case any more.
fn localize(yaml: &str, lab_ips: &BTreeMap<String, Ipv4Addr>, case: &str) -> String {
    let engine_to_lab: BTreeMap<Ipv4Addr, Ipv4Addr> =
        PODS.iter().map(|p| (engine_ip(p), lab_ips[*p])).collect();
    let mut out = String::with_capacity(yaml.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let (addr, len) = match token.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok().filter(|l| *l <= 32)),
            None => (token.as_str(), Some(32)),
        };
        match (addr.parse::<Ipv4Addr>(), len) {
            (Ok(before), Some(len)) => {
                let after = engine_to_lab.get(&before).copied().unwrap_or(before);
                for pod in PODS {
                    assert_eq!(
                        in_prefix(before, len, engine_ip(pod)),
                        in_prefix(after, len, lab_ips[pod]),
                        "{case}: {token} holds {pod} in one world and not in the other \
                         (engine {}, lab {})",
                        engine_ip(pod),
                        lab_ips[pod]
                    );
                }
                out.push_str(&token.replacen(addr, &after.to_string(), 1));
            }
            _ => out.push_str(token),
        }
        token.clear();
    };
    for c in yaml.chars() {
        if c.is_ascii_digit() || c == '.' || c == '/' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// A scratch directory for the manifests the test writes, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "septum-test-{tag}-{}",
            std::process::id() % 100_000
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One cell of a lab probe.
#[derive(Clone, Debug)]
struct Cell {
    result: String,
    detail: String,
}

/// `lab probe` of every pod to every pod: (from, to) -> cell.
fn matrix(lab: &TestLab, port: u16, proto: &str, via: &str) -> BTreeMap<(String, String), Cell> {
    let v = lab.json(&[
        "lab",
        "probe",
        "--port",
        &port.to_string(),
        "--protocol",
        proto,
        "--via",
        via,
        "--timeout",
        PROBE_TIMEOUT,
        "--output",
        "json",
    ]);
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
                    detail: s("detail"),
                },
            )
        })
        .collect()
}

/// The matrices of several probes, through pods and through Services (in `VIAS` order), all at
/// once: each is a concurrent 9 x 9 probe taking about one timeout when a cell is denied.
fn matrices(
    lab: &TestLab,
    probes: &[(u16, &'static str)],
) -> Vec<Vec<BTreeMap<(String, String), Cell>>> {
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = probes
            .iter()
            .map(|&(port, proto)| {
                VIAS.iter()
                    .map(|via| s.spawn(move || matrix(lab, port, proto, via)))
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.into_iter().map(|h| h.join().unwrap()).collect())
            .collect()
    })
}

/// What `septum explain` is asked: (datastore snapshot, from, to, port as the case gives it,
/// protocol).
type ExplainKey = (
    usize,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// `septum explain` of one pod-to-pod flow over a manifest directory: its verdict.
fn explain(manifests: &Path, key: &ExplainKey) -> Result<String, String> {
    let (_, from, to, port, proto) = *key;
    let o = Command::new(SEPTUM)
        .args(["explain", "--manifests", path(manifests)])
        .args([
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
            "--protocol",
            proto,
        ])
        .args(["--output", "json"])
        .output()
        .map_err(|e| format!("running septum explain: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "septum explain failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("explain JSON: {e}"))?;
    v["verdict"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("explain gave no verdict: {v}"))
}

/// Explains run in the background, on copies of the datastore taken at each step.
struct Explainer {
    jobs: Option<mpsc::Sender<(ExplainKey, PathBuf)>>,
    results: mpsc::Receiver<(ExplainKey, Result<String, String>)>,
    workers: Vec<std::thread::JoinHandle<()>>,
    asked: BTreeSet<ExplainKey>,
    snapshots: Vec<PathBuf>,
}

impl Explainer {
    fn new() -> Self {
        let (jobs, queue) = mpsc::channel::<(ExplainKey, PathBuf)>();
        let queue = Arc::new(Mutex::new(queue));
        let (done, results) = mpsc::channel();
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = (0..n)
            .map(|_| {
                let (queue, done) = (queue.clone(), done.clone());
                std::thread::spawn(move || {
                    loop {
                        let job = queue.lock().unwrap().recv();
                        let Ok((key, dir)) = job else { return };
                        let verdict = explain(&dir, &key);
                        if done.send((key, verdict)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(jobs),
            results,
            workers,
            asked: BTreeSet::new(),
            snapshots: Vec::new(),
        }
    }

    /// Copies the lab's datastore as it is now; the snapshot's number.
    fn snapshot(&mut self, lab: &TestLab, scratch: &Scratch) -> usize {
        let n = self.snapshots.len();
        let dir = scratch.path(&format!("datastore-{n:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(lab.datastore()).unwrap().flatten() {
            let name = e.file_name();
            if e.file_type().unwrap().is_file() && !name.to_string_lossy().starts_with('.') {
                std::fs::copy(e.path(), dir.join(&name)).unwrap();
            }
        }
        self.snapshots.push(dir);
        n
    }

    fn ask(&mut self, key: ExplainKey) {
        if self.asked.insert(key) {
            let dir = self.snapshots[key.0].clone();
            self.jobs.as_ref().unwrap().send((key, dir)).unwrap();
        }
    }

    /// Waits for every answer.
    fn finish(mut self) -> BTreeMap<ExplainKey, Result<String, String>> {
        drop(self.jobs.take());
        for w in self.workers.drain(..) {
            w.join().expect("an explain worker panicked");
        }
        let answers: BTreeMap<_, _> = self.results.try_iter().collect();
        assert_eq!(answers.len(), self.asked.len(), "explains lost");
        answers
    }
}

/// One probe of one step, as observed.
struct ProbeRun {
    case: &'static str,
    step: usize,
    probe: &'static Probe,
    snapshot: usize,
    /// Per entry of `VIAS`.
    observed: Vec<BTreeMap<(String, String), Cell>>,
}

/// The world and what the test needs to run cases in it.
struct World {
    served: BTreeSet<(u16, &'static str)>,
    lab_ips: BTreeMap<String, Ipv4Addr>,
    original: WorldLabels,
}

/// Applies `objects` (written to `name` in the scratch directory).
fn apply_objects(lab: &TestLab, scratch: &Scratch, name: &str, objects: &[Value]) {
    let f = scratch.path(name);
    write_objects(&f, objects);
    lab.ok(&["lab", "apply", path(&f)]);
}

/// Runs one case; the probes it made. The world is as it found it on return.
fn run_case(
    lab: &TestLab,
    world: &World,
    scratch: &Scratch,
    explainer: &mut Explainer,
    ci: usize,
    case: &'static Case,
) -> Vec<ProbeRun> {
    let mut runs = Vec::new();
    let mut policy_files = Vec::new();
    let mut labels = world.original.clone();
    let f = scratch.path(&format!("case-{ci:02}.yaml"));
    std::fs::write(&f, localize(case.yaml, &world.lab_ips, case.name)).unwrap();
    lab.ok(&["lab", "apply", path(&f)]);
    policy_files.push(f);
    for (si, step) in case.steps.iter().enumerate() {
        match &step.change {
            None => {}
            Some(Mutation::Policy(yaml)) => {
                let f = scratch.path(&format!("case-{ci:02}-step-{si}.yaml"));
                std::fs::write(&f, localize(yaml, &world.lab_ips, case.name)).unwrap();
                lab.ok(&["lab", "apply", path(&f)]);
                policy_files.push(f);
            }
            Some(Mutation::DeleteAllPolicies) => {
                let mut args = vec!["lab", "delete"];
                args.extend(policy_files.iter().map(|f| path(f)));
                lab.ok(&args);
                policy_files.clear();
            }
            Some(Mutation::NamespaceLabel(ns, k, v)) => {
                let l = labels.namespaces.get_mut(*ns).expect("namespace");
                l.insert(k.to_string(), v.to_string());
                let o = namespace_object(ns, l);
                apply_objects(lab, scratch, &format!("case-{ci:02}-step-{si}.yaml"), &[o]);
            }
            Some(Mutation::PodLabels(pod, new)) => {
                let l = labels.pods.get_mut(*pod).expect("pod");
                l.extend(new.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                let o = pod_object(pod, l, &world.served);
                apply_objects(lab, scratch, &format!("case-{ci:02}-step-{si}.yaml"), &[o]);
            }
        }
        let snapshot = explainer.snapshot(lab, scratch);
        let wanted: Vec<_> = step
            .probes
            .iter()
            .map(|p| (port_number(p), p.proto))
            .collect();
        for (probe, observed) in step.probes.iter().zip(matrices(lab, &wanted)) {
            for from in PODS {
                for to in PODS.iter().filter(|t| **t != from) {
                    explainer.ask((snapshot, from, to, probe.port, probe.proto));
                }
            }
            runs.push(ProbeRun {
                case: case.name,
                step: si,
                probe,
                snapshot,
                observed,
            });
        }
    }

    // Back to the world as it was: no policy, the original labels.
    if !policy_files.is_empty() {
        let mut args = vec!["lab", "delete"];
        args.extend(policy_files.iter().map(|f| path(f)));
        lab.ok(&args);
    }
    let mut restore = Vec::new();
    for (ns, l) in &world.original.namespaces {
        if labels.namespaces[ns] != *l {
            restore.push(namespace_object(ns, l));
        }
    }
    for (pod, l) in &world.original.pods {
        if labels.pods[pod] != *l {
            restore.push(pod_object(pod, l, &world.served));
        }
    }
    if !restore.is_empty() {
        apply_objects(
            lab,
            scratch,
            &format!("case-{ci:02}-restore.yaml"),
            &restore,
        );
    }
    let left: Vec<String> = std::fs::read_dir(lab.datastore())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !n.starts_with("namespace.") && !n.starts_with("pod.") && !n.starts_with("service.")
        })
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        left.is_empty(),
        "{}: left in the datastore: {left:?}",
        case.name
    );
    runs
}

fn result_mark(result: &str) -> char {
    match result {
        "connected" => '.',
        "timeout" => 'X',
        "refused" => 'R',
        "error" => 'E',
        _ => '?',
    }
}

/// The failures of one probe run, one per way in (empty when every cell agrees).
fn check(run: &ProbeRun, explains: &BTreeMap<ExplainKey, Result<String, String>>) -> Vec<String> {
    let want = expected(run.probe.expect);
    let verdict = |from: &'static str, to: &'static str| {
        explains[&(run.snapshot, from, to, run.probe.port, run.probe.proto)].clone()
    };
    let mut failures = Vec::new();
    for (via, observed) in VIAS.iter().zip(&run.observed) {
        let cell = |f: &str, t: &str| observed.get(&(f.to_string(), t.to_string()));
        let mut lines = Vec::new();
        let mut differs = BTreeSet::new();
        for from in PODS {
            for to in PODS.iter().copied().filter(|t| *t != from) {
                let Some(c) = cell(from, to) else {
                    lines.push(format!("{from} -> {to}: no result"));
                    differs.insert((from, to));
                    continue;
                };
                let connected = c.result == "connected";
                if !connected && c.result != "timeout" {
                    lines.push(format!(
                        "{from} -> {to}: {} ({}): neither connected nor a silent drop",
                        c.result, c.detail
                    ));
                    differs.insert((from, to));
                } else if connected != want[&(from, to)] {
                    let hint = if connected && run.probe.proto != "TCP" {
                        STALE_CONNTRACK_HINT
                    } else {
                        ""
                    };
                    lines.push(format!(
                        "{from} -> {to}: want {}, got {}{hint}",
                        if want[&(from, to)] {
                            "connected"
                        } else {
                            "blocked"
                        },
                        c.result
                    ));
                    differs.insert((from, to));
                }
                match verdict(from, to) {
                    Ok(v) if v == "allow" || v == "deny" => {
                        if (v == "allow") != connected {
                            lines.push(format!(
                                "{from} -> {to}: septum explain says {v}, the kernel said {}",
                                c.result
                            ));
                            differs.insert((from, to));
                        }
                    }
                    Ok(v) => {
                        lines.push(format!("{from} -> {to}: septum explain says {v}"));
                        differs.insert((from, to));
                    }
                    Err(e) => {
                        lines.push(format!("{from} -> {to}: {e}"));
                        differs.insert((from, to));
                    }
                }
            }
        }
        if lines.is_empty() {
            continue;
        }
        failures.push(format!(
            "{name}: step {step}, {proto}/{port} via {via}:\n  {lines}\n{exp}{obs}{expl}{cmp}",
            name = run.case,
            step = run.step,
            proto = run.probe.proto,
            port = run.probe.port,
            lines = lines.join("\n  "),
            exp = cases::table("expected (. connected, X blocked)", |f, t| {
                match (f == t, want[&(f, t)]) {
                    (true, _) => '-',
                    (_, true) => '.',
                    (_, false) => 'X',
                }
            }),
            obs = cases::table(
                "observed (. connected, X timeout, R refused, E error)",
                |f, t| match cell(f, t) {
                    _ if f == t => '-',
                    Some(c) => result_mark(&c.result),
                    None => '?',
                }
            ),
            expl = cases::table("septum explain (. allow, X deny)", |f, t| {
                if f == t {
                    return '-';
                }
                let f = PODS.iter().find(|p| **p == f).unwrap();
                let t = PODS.iter().find(|p| **p == t).unwrap();
                match verdict(f, t).as_deref() {
                    Ok("allow") => '.',
                    Ok("deny") => 'X',
                    _ => '?',
                }
            }),
            cmp = cases::table("comparison (X differs)", |f, t| {
                if f == t {
                    '-'
                } else if differs.iter().any(|(a, b)| *a == f && *b == t) {
                    'X'
                } else {
                    '.'
                }
            }),
        ));
    }
    failures
}

#[test]
fn upstream_netpol_e2e_cases_through_the_lab() {
    let started = Instant::now();
    let lab = TestLab::new("upstream");
    let scratch = Scratch::new("upstream-e2e");
    let served = served_ports();
    let original = WorldLabels::original();

    let mut objects = Vec::new();
    for (ns, l) in &original.namespaces {
        objects.push(namespace_object(ns, l));
    }
    for (pod, l) in &original.pods {
        objects.push(service_object(pod, &served));
        objects.push(pod_object(pod, l, &served));
    }
    let world_file = scratch.path("world.yaml");
    write_objects(&world_file, &objects);
    lab.ok(&["lab", "up", path(&world_file)]);

    let st = lab.json(&["lab", "status", "--output", "json"]);
    let mut lab_ips = BTreeMap::new();
    for p in st["pods"].as_array().expect("pods") {
        let key = format!(
            "{}/{}",
            p["namespace"].as_str().unwrap(),
            p["name"].as_str().unwrap()
        );
        let ip: Ipv4Addr = p["ips"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|ip| ip.as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("pod {key} has no IPv4 address: {p}"));
        let ports: BTreeSet<(u16, String)> = p["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["port"].as_u64().unwrap() as u16,
                    x["protocol"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: BTreeSet<(u16, String)> =
            served.iter().map(|(n, p)| (*n, p.to_string())).collect();
        assert_eq!(ports, want, "pod {key} does not serve the world's ports");
        lab_ips.insert(key, ip);
    }
    assert_eq!(
        lab_ips.keys().map(String::as_str).collect::<Vec<_>>(),
        PODS.to_vec(),
        "{st}"
    );
    assert_eq!(st["services"].as_array().unwrap().len(), PODS.len(), "{st}");
    let world = World {
        served,
        lab_ips,
        original,
    };
    eprintln!(
        "lab up of the world ({} served ports) took {:?}",
        world.served.len(),
        started.elapsed()
    );

    // The world itself, before any policy: every served port reachable everywhere, both ways in.
    let mut failures = Vec::new();
    let served: Vec<_> = world.served.iter().copied().collect();
    let baseline: Vec<_> = served
        .chunks(4)
        .flat_map(|chunk| chunk.iter().copied().zip(matrices(&lab, chunk)))
        .collect();
    for ((port, proto), observed) in baseline {
        for (via, m) in VIAS.iter().zip(observed) {
            let bad: Vec<String> = m
                .iter()
                .filter(|((f, t), c)| f != t && c.result != "connected")
                .map(|((f, t), c)| format!("{f} -> {t}: {} ({})", c.result, c.detail))
                .collect();
            if !bad.is_empty() || m.len() != PODS.len() * PODS.len() {
                failures.push(format!(
                    "the world before any policy, {proto}/{port} via {via} ({} cells):\n  {}",
                    m.len(),
                    bad.join("\n  ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    let mut explainer = Explainer::new();
    let mut runs = Vec::new();
    let mut names = BTreeSet::new();
    for (ci, case) in CASES.iter().enumerate() {
        assert!(names.insert(case.name), "duplicate case {}", case.name);
        let t = Instant::now();
        runs.extend(run_case(&lab, &world, &scratch, &mut explainer, ci, case));
        eprintln!("{:>6.2}s  {}", t.elapsed().as_secs_f64(), case.name);
    }
    let probing = started.elapsed();
    let explains = explainer.finish();
    for run in &runs {
        failures.extend(check(run, &explains));
    }
    let cells: usize = runs
        .iter()
        .map(|r| {
            r.observed
                .iter()
                .map(|m| m.keys().filter(|(f, t)| f != t).count())
                .sum::<usize>()
        })
        .sum();
    println!(
        "lab upstream e2e: {} cases, {} probes, {} cells (pod and Service, no loopback), {} explains; probing took {:.1}s, all {:.1}s",
        CASES.len(),
        runs.len(),
        cells,
        explains.len(),
        probing.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failing probe(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
