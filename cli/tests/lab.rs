//! The lab end to end, as root, with the real binaries: `septum lab up` of the shop example
//! (network namespaces, Debian's bridge + host-local with septum-cni chained, the agent in
//! standalone mode, nftables DNAT), probes through pod IPs and Service ClusterIPs before and
//! after the policies, each cell checked against `septum explain`; editing, breaking and fixing
//! a policy file in the datastore; and `lab down` leaving the host as it found it.
//!
//! Each test runs its own lab (own directory, netns prefix and pin root), so they cannot collide
//! with each other or with a lab a user has up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/lab.rs"]
mod test_lab;

use test_lab::TestLab;

/// The probe matrix of a lab.
trait Matrix {
    /// (from, to) -> result.
    fn matrix(&self, port: u16, via: &str) -> BTreeMap<(String, String), String>;
}

impl Matrix for TestLab {
    fn matrix(&self, port: u16, via: &str) -> BTreeMap<(String, String), String> {
        let p = port.to_string();
        let v = self.json(&[
            "lab",
            "probe",
            "--port",
            &p,
            "--protocol",
            "TCP",
            "--via",
            via,
            "--timeout",
            "700ms",
            "--output",
            "json",
        ]);
        v["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| {
                (
                    (
                        r["from"].as_str().unwrap().to_string(),
                        r["to"].as_str().unwrap().to_string(),
                    ),
                    r["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

const PODS: [&str; 4] = [
    "outside/outsider",
    "shop/backend",
    "shop/database",
    "shop/frontend",
];

/// `septum explain --output json` of a flow over the lab's datastore.
fn explain_json(lab: &TestLab, from: &str, to: &str, port: &str) -> Value {
    let ds = lab.datastore();
    lab.json(&[
        "explain",
        "--manifests",
        path(&ds),
        "--from",
        from,
        "--to",
        to,
        "--port",
        port,
        "--output",
        "json",
    ])
}

/// What `septum explain` says of a flow over the lab's datastore: "allow" or "deny".
fn explain(lab: &TestLab, from: &str, to: &str, port: u16) -> String {
    let v = explain_json(lab, from, to, &port.to_string());
    v["verdict"].as_str().unwrap().to_string()
}

fn expected_after_policies(from: &str, to: &str, port: u16) -> bool {
    if !to.starts_with("shop/") || from == to {
        // No policy selects the outsider; a pod cannot block access to itself (its own
        // traffic never leaves it; through its Service it is masqueraded as the node).
        return true;
    }
    match (to, port) {
        ("shop/frontend", 80) => true,
        ("shop/backend", 80) => from == "shop/frontend",
        ("shop/database", 5432) => from == "shop/backend",
        _ => false,
    }
}

#[test]
fn shop_before_and_after_policies_through_pods_and_services() {
    let lab = TestLab::new("shop");
    let started = Instant::now();
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    eprintln!("lab up took {:?}", started.elapsed());

    // A second `up` is refused while this one is up.
    let again = lab.run(&["lab", "up", path(&examples().join("pods.yaml"))]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));

    let st = lab.json(&["lab", "status", "--output", "json"]);
    let pods = st["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 4, "{st}");
    for p in pods {
        assert!(!p["ips"].as_array().unwrap().is_empty(), "{p}");
        assert!(
            p["ports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["protocol"] == "TCP")
        );
    }
    let services = st["services"].as_array().unwrap();
    assert_eq!(services.len(), 4);
    assert!(
        services
            .iter()
            .all(|s| s["clusterIPs"].as_array().unwrap().len() == 1)
    );

    for via in ["pod", "service"] {
        let m = lab.matrix(80, via);
        assert_eq!(m.len(), 16, "{m:?}");
        for ((from, to), r) in &m {
            assert_eq!(r, "connected", "{from} -> {to} via {via} before any policy");
        }
    }

    let started = Instant::now();
    lab.ok(&["lab", "apply", path(&examples().join("policies.yaml"))]);
    eprintln!("apply took {:?}", started.elapsed());

    for port in [80u16, 5432] {
        for via in ["pod", "service"] {
            let m = lab.matrix(port, via);
            for from in PODS {
                for to in PODS {
                    let r = &m[&(from.to_string(), to.to_string())];
                    if via == "service" && port == 5432 && to != "shop/database" {
                        // No Service exposes 5432 on those pods.
                        assert_eq!(r, "error", "{from} -> {to}:{port} via {via}");
                        continue;
                    }
                    let has_port = port == 80 || to == "shop/database";
                    let want = if !has_port {
                        // Nothing listens: refused when allowed, a silent drop when denied.
                        if expected_after_policies(from, to, port) {
                            "refused"
                        } else {
                            "timeout"
                        }
                    } else if expected_after_policies(from, to, port) {
                        "connected"
                    } else {
                        "timeout"
                    };
                    assert_eq!(r, want, "{from} -> {to}:{port} via {via}");
                    if has_port && from != to {
                        let verdict = explain(&lab, from, to, port);
                        assert_eq!(
                            verdict == "allow",
                            r == "connected",
                            "explain says {verdict} for {from} -> {to}:{port}, the kernel said {r}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn standalone_edit_break_and_fix_a_policy_file() {
    let lab = TestLab::new("edit");
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    let cell = |lab: &TestLab| {
        let v = lab.json(&[
            "lab",
            "probe",
            "--port",
            "80",
            "--from",
            "outside/outsider",
            "--to",
            "shop/backend",
            "--timeout",
            "500ms",
            "--output",
            "json",
        ]);
        v["results"][0]["result"].as_str().unwrap().to_string()
    };
    assert_eq!(cell(&lab), "connected");

    let file = lab.datastore().join("zz-edit.yaml");
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: backend}}\n  policyTypes: [Ingress]\n";
    let wait = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = cell(&lab);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {got}, want {want}");
        }
    };
    std::fs::write(&file, deny).unwrap();
    wait("timeout");

    // A typo: the file does not validate; the last good version stays enforced.
    std::fs::write(&file, deny.replace("Ingress", "Ingres")).unwrap();
    let status_file = lab.dir.join("agent/status.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st: Value = serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap();
        let f = &st["files"][path(&file)];
        if f["diagnostics"].as_array().is_some_and(|d| !d.is_empty()) {
            assert!(f["diagnostics"].to_string().contains("policyTypes"), "{f}");
            assert_ne!(f["enforced"], f["current"], "{f}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was never reported: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cell(&lab), "timeout", "a broken file changed enforcement");

    // Fixed into an allow-everything policy: enforcement follows.
    std::fs::write(&file, format!("{deny}  ingress: [{{}}]\n")).unwrap();
    wait("connected");
    std::fs::remove_file(&file).unwrap();
    wait("connected");
}

#[test]
fn lab_down_leaves_the_host_as_it_found_it() {
    let lab = TestLab::new("down");
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    assert!(lab.pins.exists());
    let out = lab.ok(&["lab", "down"]);
    assert!(out.contains("lab down"), "{out}");
    assert!(!lab.dir.exists(), "lab directory left behind");
    assert!(!lab.pins.exists(), "pins left behind");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&lab.prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "network namespaces left: {left:?}");
    let dir = lab.dir.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(&dir)
        {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            assert!(
                stat.contains(") Z"),
                "process left: {:?} {stat}",
                e.file_name()
            );
        }
    }
    // A second down is harmless.
    lab.ok(&["lab", "down"]);
}

#[test]
fn agent_kill_and_restart_under_traffic() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let lab = TestLab::new("kill");
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    lab.ok(&["lab", "apply", path(&examples().join("policies.yaml"))]);
    let backend: std::net::SocketAddr = (lab.pod_ip("shop/backend"), 80).into();

    // An established, allowed connection (frontend -> backend:80) exchanging a line every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicUsize::new(0));
    let (s, e) = (stop.clone(), echoed.clone());
    let established = lab.in_pod("shop/frontend", move || {
        let sock = std::net::TcpStream::connect_timeout(&backend, Duration::from_secs(2))
            .expect("frontend -> backend is allowed");
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut reader = BufReader::new(sock.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).expect("greeting");
        let mut w = sock;
        while !s.load(Ordering::SeqCst) {
            w.write_all(b"ping\n").map_err(|e| format!("write: {e}"))?;
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|err| format!("read after {} echoes: {err}", e.load(Ordering::SeqCst)))?;
            if line != "ping\n" {
                return Err(format!("echo was {line:?}"));
            }
            e.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok::<(), String>(())
    });
    // A denied client (outsider -> backend:80) trying new connections all along.
    let (s, leaks) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
    let l = leaks.clone();
    let denied = lab.in_pod("outside/outsider", move || {
        let mut tries = 0;
        while !s.load(Ordering::SeqCst) {
            if std::net::TcpStream::connect_timeout(&backend, Duration::from_millis(100)).is_ok() {
                l.fetch_add(1, Ordering::SeqCst);
            }
            tries += 1;
        }
        tries
    });

    std::thread::sleep(Duration::from_millis(300));
    let st: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).unwrap()).unwrap();
    let pid = st["agent_pid"].as_u64().expect("agent pid") as i32;
    // SAFETY: kill(2) on the lab's agent.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let before = echoed.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        echoed.load(Ordering::SeqCst) > before,
        "the established connection stalled while the agent was down"
    );
    lab.ok(&["lab", "restart-agent", "--kill"]);
    let before = echoed.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    established
        .join()
        .unwrap()
        .expect("the established connection broke");
    assert!(
        echoed.load(Ordering::SeqCst) > before,
        "stalled after the restart"
    );
    let tries = denied.join().unwrap();
    assert!(tries > 0);
    assert_eq!(
        leaks.load(Ordering::SeqCst),
        0,
        "a denied connection got through around the restart"
    );
    // New allowed connections work after the restart.
    assert_eq!(
        lab.matrix(80, "pod")[&("shop/frontend".to_string(), "shop/backend".to_string())],
        "connected"
    );
}

#[test]
fn udp_and_sctp_through_pods_and_services() {
    let lab = TestLab::new("l4");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lab");
    lab.ok(&["lab", "up", path(&data.join("l4.yaml"))]);
    let cell = |port: &str, proto: &str, via: &str| {
        let v = lab.json(&[
            "lab",
            "probe",
            "--port",
            port,
            "--protocol",
            proto,
            "--via",
            via,
            "--from",
            "x/a",
            "--to",
            "x/b",
            "--timeout",
            "700ms",
            "--output",
            "json",
        ]);
        assert_eq!(v["results"][0]["protocol"], proto);
        v["results"][0]["result"].as_str().unwrap().to_string()
    };
    for via in ["pod", "service"] {
        assert_eq!(cell("81", "UDP", via), "connected", "UDP via {via}");
        assert_eq!(cell("82", "SCTP", via), "connected", "SCTP via {via}");
    }
    // Only UDP 81 is allowed into x/b: SCTP is dropped silently.
    lab.ok(&["lab", "apply", path(&data.join("l4-policy.yaml"))]);
    for via in ["pod", "service"] {
        assert_eq!(cell("81", "UDP", via), "connected", "UDP via {via}");
        assert_eq!(cell("82", "SCTP", via), "timeout", "SCTP via {via}");
    }
    // Deleting the policy restores the SCTP path.
    lab.ok(&["lab", "delete", path(&data.join("l4-policy.yaml"))]);
    assert_eq!(cell("82", "SCTP", "pod"), "connected");
}

#[test]
fn a_service_without_selector_reaches_what_its_endpoint_slice_names() {
    let lab = TestLab::new("slice");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lab");
    lab.ok(&["lab", "up", path(&data.join("manual-slice.yaml"))]);
    let cell = |to: &str, port: u16, via: &str| {
        let v = lab.json(&[
            "lab",
            "probe",
            "--port",
            &port.to_string(),
            "--protocol",
            "TCP",
            "--via",
            via,
            "--from",
            "x/a",
            "--to",
            to,
            "--timeout",
            "700ms",
            "--output",
            "json",
        ]);
        v["results"][0]["result"].as_str().unwrap().to_string()
    };
    // The Service's backend: `web` (80 on the VIP) is 8080 on the address the slice names.
    let slice_file = lab.dir.join("legacy-slice.yaml");
    let write_slice = |backend: &str| {
        let pod_ip = lab.pod_ip(backend);
        std::fs::write(
            &slice_file,
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: legacy-1\n  namespace: x\n  labels: {{kubernetes.io/service-name: legacy, endpointslice.kubernetes.io/managed-by: staff}}\naddressType: IPv4\nendpoints: [{{addresses: ['{pod_ip}']}}]\nports: [{{name: web, port: 8080}}]\n"
            ),
        )
        .expect("slice file");
        lab.ok(&["lab", "apply", path(&slice_file)]);
    };
    // Without a slice the Service has no backend: a reaches nothing of it.
    assert_eq!(cell("x/b", 8080, "pod"), "timeout", "no backend yet");
    write_slice("x/b");
    // Through the ClusterIP (kube-proxy-style DNAT to the slice's endpoint), and straight to
    // the endpoint at the slice's port: allowed; another port of the same pod: dropped.
    assert_eq!(cell("x/b", 80, "service"), "connected", "VIP:80 -> b:8080");
    assert_eq!(cell("x/b", 8080, "pod"), "connected", "b:8080 directly");
    assert_eq!(
        cell("x/b", 9090, "pod"),
        "timeout",
        "b:9090 is not the backend port"
    );
    assert_eq!(cell("x/c", 8080, "pod"), "timeout", "c is no backend");
    // The slice moves to c: the kernel follows.
    write_slice("x/c");
    assert_eq!(
        cell("x/c", 8080, "pod"),
        "connected",
        "c is the backend now"
    );
    assert_eq!(
        cell("x/b", 8080, "pod"),
        "timeout",
        "b is no backend any more"
    );
    assert_eq!(cell("x/c", 80, "service"), "connected", "VIP:80 -> c:8080");
    // And explain over the datastore agrees.
    let v = explain_json(&lab, "x/a", "service/x/legacy", "web");
    assert_eq!(v["verdict"], "allow", "{v}");
    assert_eq!(v["port"], 8080, "{v}");
    assert_eq!(v["dstIP"], lab.pod_ip("x/c").to_string(), "{v}");
}

/// Hammers `addr` from `pod` with short connects until `stop`; how many got through.
fn hammer(
    lab: &TestLab,
    pod: &str,
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    lab.in_pod(pod, move || {
        let mut through = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(30)).is_ok() {
                through += 1;
            }
        }
        through
    })
}

#[test]
fn a_new_pod_is_isolated_from_its_first_packet() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let lab = TestLab::new("first");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lab");
    lab.ok(&["lab", "up", path(&examples().join("pods.yaml"))]);
    lab.ok(&["lab", "apply", path(&examples().join("policies.yaml"))]);
    // host-local hands out addresses in order: the next pod gets the next one.
    let last = PODS.iter().map(|p| lab.pod_ip(p)).max().unwrap();
    let next = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => std::net::IpAddr::V4((u32::from(v4) + 1).into()),
        v6 => v6,
    };
    let isolated_ip = next(last);

    // The shop's default deny covers the newcomer from before its first packet: a client
    // firing at its address all through its creation never gets in.
    let stop = Arc::new(AtomicBool::new(false));
    let h = hammer(
        &lab,
        "outside/outsider",
        (isolated_ip, 80).into(),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(100));
    lab.ok(&["lab", "apply", path(&data.join("new-pods.yaml"))]);
    // Long enough for the client's ARP retries (1 s apart) to find the new pod.
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        lab.pod_ip("shop/newcomer"),
        isolated_ip,
        "the address was not the predicted one"
    );
    assert_eq!(
        h.join().unwrap(),
        0,
        "a connection reached a pod its policy isolates"
    );

    // Control: the same client against an unpoliced newcomer does get through, so the
    // hammer above could have seen a leak.
    let open_ip = next(isolated_ip);
    let stop = Arc::new(AtomicBool::new(false));
    let h = hammer(&lab, "shop/frontend", (open_ip, 80).into(), stop.clone());
    lab.ok(&["lab", "apply", path(&data.join("new-open-pod.yaml"))]);
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::SeqCst);
    assert_eq!(lab.pod_ip("outside/newcomer"), open_ip);
    assert!(h.join().unwrap() > 0, "the control never connected");
}

/// A socket of `kind` bound to `src` with `SO_REUSEADDR`, so a second one can share the port
/// while the first is connected elsewhere; timeouts of `timeout` for connect and reads.
fn bound_socket(
    kind: nix::sys::socket::SockType,
    src: std::net::SocketAddrV4,
    timeout: Duration,
) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd as _;
    let fd = socket(AddressFamily::Inet, kind, SockFlag::empty(), None).expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    let tv =
        nix::sys::time::TimeVal::new(timeout.as_secs() as i64, i64::from(timeout.subsec_micros()));
    setsockopt(&fd, sockopt::SendTimeout, &tv).expect("SO_SNDTIMEO");
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).expect("SO_RCVTIMEO");
    bind(fd.as_raw_fd(), &SockaddrIn::from(src)).expect("bind");
    fd
}

/// A TCP connection from `src` to `dst` (a blocking connect, given up after `timeout`) and the
/// server's greeting line.
fn tcp_from(
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    timeout: Duration,
) -> Result<(std::net::TcpStream, String), String> {
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    let fd = bound_socket(nix::sys::socket::SockType::Stream, src, timeout);
    nix::sys::socket::connect(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(dst))
        .map_err(|e| format!("connect {src} -> {dst}: {e}"))?;
    let mut stream = std::net::TcpStream::from(fd);
    let mut greeting = [0u8; 128];
    let n = stream
        .read(&mut greeting)
        .map_err(|e| format!("greeting {src} -> {dst}: {e}"))?;
    Ok((stream, String::from_utf8_lossy(&greeting[..n]).into_owned()))
}

/// A UDP exchange from `src` with `dst` (the lab's servers echo): the reply, or why none came
/// within `timeout` (the request repeated every 200 ms, as `lab probe` does).
fn udp_from(
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    timeout: Duration,
) -> Result<(std::net::UdpSocket, String), String> {
    let fd = bound_socket(
        nix::sys::socket::SockType::Datagram,
        src,
        Duration::from_millis(200),
    );
    let socket = std::net::UdpSocket::from(fd);
    socket
        .connect(dst)
        .map_err(|e| format!("connect {src} -> {dst}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 128];
    while Instant::now() < deadline {
        socket
            .send(b"septum nat clash\n")
            .map_err(|e| format!("send {src} -> {dst}: {e}"))?;
        if let Ok(n) = socket.recv(&mut buf) {
            return Ok((socket, String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    Err(format!("no reply {src} -> {dst} within {timeout:?}"))
}

#[test]
fn a_direct_connection_that_clashes_with_a_clusterip_one_keeps_its_replies() {
    // a reaches b through the ClusterIP and, while that connection is open, directly from the
    // same source port. The node's netfilter tracks both; the direct one's reply tuple is the
    // first one's, so NAT's clash resolution remaps the direct one's source port, after a's
    // from_pod decided the flow and before b's to_pod sees it. b's replies go to the new port:
    // the datapath must know them as replies (a's ingress denies every new flow into a).
    let lab = TestLab::new("clash");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lab");
    lab.ok(&["lab", "up", path(&data.join("nat-clash.yaml"))]);
    let v4 = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(v6) => panic!("pod address {v6} is not IPv4"),
    };
    let (a, b) = (v4(lab.pod_ip("x/a")), v4(lab.pod_ip("x/b")));
    let st = lab.json(&["lab", "status", "--output", "json"]);
    let vip: std::net::Ipv4Addr = st["services"][0]["clusterIPs"][0]
        .as_str()
        .expect("the Service's ClusterIP")
        .parse()
        .expect("ClusterIP");
    let port = 40_000 + (std::process::id() % 10_000) as u16;
    let src = std::net::SocketAddrV4::new(a, port);
    let timeout = Duration::from_secs(3);
    let got = lab
        .in_pod("x/a", move || {
            let at = std::net::SocketAddrV4::new;
            let (_through_vip, g1) = tcp_from(src, at(vip, 80), timeout)?;
            let (_direct, g2) = tcp_from(src, at(b, 80), timeout)?;
            let (_u1, r1) = udp_from(src, at(vip, 81), timeout)?;
            let (_u2, r2) = udp_from(src, at(b, 81), timeout)?;
            Ok::<_, String>([g1, g2, r1, r2])
        })
        .join()
        .expect("the client thread");
    let got = got.unwrap_or_else(|e| panic!("{e}; the agent's log: {}", lab.agent_log()));
    let want = [
        ("TCP via the ClusterIP", "septum\n"),
        ("TCP direct", "septum\n"),
        ("UDP via the ClusterIP", "septum nat clash\n"),
        ("UDP direct", "septum nat clash\n"),
    ];
    for ((what, want), reply) in want.iter().zip(&got) {
        assert_eq!(reply, want, "{what}");
    }
}
