//! Probes between two network namespaces joined by a veth pair, as root: TCP, UDP and SCTP to
//! served ports connect, to unserved ports are refused, through a drop rule time out.
//!
//! Every test builds its own pair of namespaces (`septum-probe-<random>`), so tests run in
//! parallel; a guard deletes them even when an assertion fails. The server runs `serve` on a
//! thread that entered the server namespace, with its own runtime; probes run on a thread that
//! entered the client namespace, on a current-thread runtime, as the lab runs them.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use septum_lab::connect::{ProbeOutcome, ProbeResult, Protocol, probe};
use septum_lab::serve::{ServePort, Server};

const SERVER_V4: &str = "10.213.0.1";
const CLIENT_V4: &str = "10.213.0.2";
const SERVER_V6: &str = "fd00:213::1";
const CLIENT_V6: &str = "fd00:213::2";
const SERVED: u16 = 8080;
const DROPPED: u16 = 8081;
const UNSERVED: u16 = 9999;
/// Long enough for any answer on a veth; refused and connected probes end long before it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// What a silent drop costs a probe.
const DROP_TIMEOUT: Duration = Duration::from_millis(500);

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two namespaces, server and client, joined by a veth pair (`eth0` in each) with IPv4 and
/// IPv6 addresses. Dropping it deletes both namespaces (and with them the veth pair).
struct NetnsPair {
    server: String,
    client: String,
    created: Vec<String>,
}

impl NetnsPair {
    fn new() -> Self {
        let suffix: u32 = rand::random();
        let mut pair = Self {
            server: format!("septum-probe-{suffix:08x}-s"),
            client: format!("septum-probe-{suffix:08x}-c"),
            created: Vec::new(),
        };
        for name in [pair.server.clone(), pair.client.clone()] {
            run("ip", &["netns", "add", &name]);
            pair.created.push(name.clone());
            run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        }
        let (server, client) = (pair.server.as_str(), pair.client.as_str());
        run(
            "ip",
            &[
                "-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                "netns", client,
            ],
        );
        for (netns, v4, v6) in [
            (server, SERVER_V4, SERVER_V6),
            (client, CLIENT_V4, CLIENT_V6),
        ] {
            run(
                "ip",
                &[
                    "-n",
                    netns,
                    "addr",
                    "add",
                    &format!("{v4}/24"),
                    "dev",
                    "eth0",
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    netns,
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            run("ip", &["-n", netns, "link", "set", "eth0", "up"]);
        }
        pair
    }

    /// Loads an nftables script into the server namespace.
    fn server_nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.server, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run nft in the server namespace");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(script.as_bytes())
            .expect("cannot write the nft script");
        let output = child.wait_with_output().expect("nft did not finish");
        assert!(
            output.status.success(),
            "nft rejected the script:\n{script}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Drops TCP, UDP and SCTP to `port` on the server's input hook, silently.
    fn drop_in_server(&self, port: u16) {
        self.server_nft(&format!(
            "table inet septum_probe {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tmeta l4proto {{ tcp, udp, sctp }} th dport {port} drop\n\
             \t}}\n\
             }}\n"
        ));
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for name in &self.created {
            // Best effort: a failed delete must not hide the test's own failure.
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn enter_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).unwrap_or_else(|error| panic!("cannot open {path}: {error}"));
    setns(&file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|error| panic!("cannot enter network namespace {name}: {error}"));
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// Runs `make()` to completion on a new thread inside network namespace `name`, on a
/// current-thread runtime.
fn in_netns<F, Fut, T>(name: &str, make: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter_netns(&name);
        current_thread_runtime().block_on(make())
    })
    .join()
    .expect("the thread probing from the client namespace panicked")
}

/// `serve`'s server running in a namespace; dropping it stops the server and joins its thread.
struct RunningServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    fn start(netns: &str, ports: Vec<ServePort>) -> Self {
        let netns = netns.to_owned();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            enter_netns(&netns);
            current_thread_runtime().block_on(async move {
                let server = match Server::bind(&ports).await {
                    Ok(server) => server,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.to_string()));
                        return Err(error);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    served = server.run() => served,
                    _ = stopped => Ok(()),
                }
            })
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the server did not report within 10 s whether it is bound");
        if let Err(error) = ready {
            panic!("the server could not bind its ports: {error}");
        }
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_ports(ports: &[u16]) -> Vec<ServePort> {
    ports
        .iter()
        .flat_map(|&port| Protocol::ALL.map(|protocol| ServePort { port, protocol }))
        .collect()
}

fn server_addresses() -> [IpAddr; 2] {
    [
        SERVER_V4.parse().expect("IPv4 literal"),
        SERVER_V6.parse().expect("IPv6 literal"),
    ]
}

/// One probe to make and the result it must have.
#[derive(Clone, Debug)]
struct Expectation {
    addr: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
    expected: ProbeResult,
}

/// Runs all probes concurrently from `netns` and asserts every result, listing the whole table
/// when any differs.
fn assert_probes(netns: &str, expectations: Vec<Expectation>) -> Vec<ProbeOutcome> {
    let probes = expectations.clone();
    let outcomes = in_netns(netns, move || async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, expectation) in probes.into_iter().enumerate() {
            tasks.spawn(async move {
                let outcome =
                    probe(expectation.addr, expectation.protocol, expectation.timeout).await;
                (index, outcome)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            outcomes.push(joined.expect("a probe task panicked"));
        }
        outcomes.sort_by_key(|(index, _)| *index);
        outcomes
            .into_iter()
            .map(|(_, outcome)| outcome)
            .collect::<Vec<_>>()
    });
    let table: Vec<String> = expectations
        .iter()
        .zip(&outcomes)
        .map(|(expectation, outcome)| {
            let mark = if outcome.result == expectation.expected {
                " "
            } else {
                "!"
            };
            format!(
                "{mark} {} {:<4} expected {:<9} got {outcome}",
                expectation.addr, expectation.protocol, expectation.expected
            )
        })
        .collect();
    // Shown with --nocapture, and by the test harness when a later assertion fails.
    println!("{}", table.join("\n"));
    assert!(
        expectations
            .iter()
            .zip(&outcomes)
            .all(|(expectation, outcome)| outcome.result == expectation.expected),
        "probe results differ from expectations (marked !):\n{}",
        table.join("\n")
    );
    outcomes
}

fn expect(
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
    expected: ProbeResult,
) -> Expectation {
    Expectation {
        addr: SocketAddr::new(ip, port),
        protocol,
        timeout,
        expected,
    }
}

#[test]
fn served_ports_connect_and_unserved_ports_are_refused() {
    let pair = NetnsPair::new();
    let _server = RunningServer::start(&pair.server, serve_ports(&[SERVED]));
    let mut expectations = Vec::new();
    for ip in server_addresses() {
        for protocol in Protocol::ALL {
            expectations.push(expect(
                ip,
                SERVED,
                protocol,
                ANSWER_TIMEOUT,
                ProbeResult::Connected,
            ));
            expectations.push(expect(
                ip,
                UNSERVED,
                protocol,
                ANSWER_TIMEOUT,
                ProbeResult::Refused,
            ));
        }
    }
    let outcomes = assert_probes(&pair.client, expectations.clone());
    for (expectation, outcome) in expectations.iter().zip(&outcomes) {
        if expectation.protocol == Protocol::Tcp && expectation.expected == ProbeResult::Connected {
            assert_eq!(
                outcome.detail.as_deref(),
                Some("septum"),
                "TCP to {} should have read the server's greeting line",
                expectation.addr
            );
        }
    }
}

#[test]
fn dropped_ports_time_out_while_others_still_connect() {
    let pair = NetnsPair::new();
    let _server = RunningServer::start(&pair.server, serve_ports(&[SERVED, DROPPED]));
    pair.drop_in_server(DROPPED);
    let mut expectations = Vec::new();
    for ip in server_addresses() {
        for protocol in Protocol::ALL {
            expectations.push(expect(
                ip,
                DROPPED,
                protocol,
                DROP_TIMEOUT,
                ProbeResult::Timeout,
            ));
            expectations.push(expect(
                ip,
                SERVED,
                protocol,
                ANSWER_TIMEOUT,
                ProbeResult::Connected,
            ));
        }
    }
    assert_probes(&pair.client, expectations);
}

#[test]
fn nine_concurrent_sctp_probes_to_one_port_all_connect() {
    let pair = NetnsPair::new();
    let _server = RunningServer::start(&pair.server, serve_ports(&[SERVED]));
    for ip in server_addresses() {
        let expectations = (0..9)
            .map(|_| {
                expect(
                    ip,
                    SERVED,
                    Protocol::Sctp,
                    ANSWER_TIMEOUT,
                    ProbeResult::Connected,
                )
            })
            .collect();
        assert_probes(&pair.client, expectations);
    }
}

#[test]
fn concurrent_sctp_probes_keep_their_results_apart() {
    // Connected, refused and dropped probes at once: an ABORT or INIT-ACK meant for one probe
    // must not decide another's result.
    let pair = NetnsPair::new();
    let _server = RunningServer::start(&pair.server, serve_ports(&[SERVED, DROPPED]));
    pair.drop_in_server(DROPPED);
    let mut expectations = Vec::new();
    for _ in 0..3 {
        for ip in server_addresses() {
            expectations.push(expect(
                ip,
                SERVED,
                Protocol::Sctp,
                DROP_TIMEOUT,
                ProbeResult::Connected,
            ));
            expectations.push(expect(
                ip,
                UNSERVED,
                Protocol::Sctp,
                DROP_TIMEOUT,
                ProbeResult::Refused,
            ));
            expectations.push(expect(
                ip,
                DROPPED,
                Protocol::Sctp,
                DROP_TIMEOUT,
                ProbeResult::Timeout,
            ));
        }
    }
    assert_probes(&pair.client, expectations);
}

#[test]
fn icmp_errors_reach_only_the_sctp_probe_they_concern() {
    // A firewall that rejects SCTP to one port answers with ICMP port unreachable. Every raw
    // SCTP socket connected to that host hears of it; only the probe whose INIT caused it may
    // be refused.
    let pair = NetnsPair::new();
    let _server = RunningServer::start(&pair.server, serve_ports(&[SERVED, DROPPED]));
    pair.server_nft(&format!(
        "table inet septum_probe {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tmeta l4proto sctp th dport {DROPPED} reject\n\
         \t}}\n\
         }}\n"
    ));
    let mut expectations = Vec::new();
    for _ in 0..4 {
        for ip in server_addresses() {
            expectations.push(expect(
                ip,
                DROPPED,
                Protocol::Sctp,
                ANSWER_TIMEOUT,
                ProbeResult::Refused,
            ));
            expectations.push(expect(
                ip,
                SERVED,
                Protocol::Sctp,
                ANSWER_TIMEOUT,
                ProbeResult::Connected,
            ));
        }
    }
    assert_probes(&pair.client, expectations);
}

#[test]
fn a_namespace_without_a_server_refuses_every_protocol() {
    // No SCTP responder: the kernel answers ICMP protocol unreachable (ICMPv6 parameter
    // problem), which the probe reports as refused, as a real stack's ABORT would be.
    let pair = NetnsPair::new();
    let mut expectations = Vec::new();
    for ip in server_addresses() {
        for protocol in Protocol::ALL {
            expectations.push(expect(
                ip,
                SERVED,
                protocol,
                ANSWER_TIMEOUT,
                ProbeResult::Refused,
            ));
        }
    }
    assert_probes(&pair.client, expectations);
}

#[test]
fn unreachable_hosts_are_errors_with_a_detail() {
    let pair = NetnsPair::new();
    // Neighbour resolution gives up after 3 solicitations; make that 3 x 100 ms, not 3 s.
    for family in ["ipv4", "ipv6"] {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &pair.client,
                "sysctl",
                "-q",
                "-w",
                &format!("net.{family}.neigh.eth0.retrans_time_ms=100"),
            ],
        );
    }
    let absent_neighbour_v4: IpAddr = "10.213.0.99".parse().expect("IPv4 literal");
    let absent_neighbour_v6: IpAddr = "fd00:213::99".parse().expect("IPv6 literal");
    let no_route: IpAddr = "192.0.2.1".parse().expect("IPv4 literal");
    let timeout = Duration::from_secs(5);
    let mut expectations = Vec::new();
    for ip in [absent_neighbour_v4, absent_neighbour_v6, no_route] {
        for protocol in Protocol::ALL {
            expectations.push(expect(ip, SERVED, protocol, timeout, ProbeResult::Error));
        }
    }
    let outcomes = assert_probes(&pair.client, expectations.clone());
    for (expectation, outcome) in expectations.iter().zip(&outcomes) {
        assert!(
            outcome
                .detail
                .as_deref()
                .is_some_and(|detail| !detail.is_empty()),
            "an error probe to {} over {} should say why, got {outcome:?}",
            expectation.addr,
            expectation.protocol
        );
    }
}

#[test]
fn binding_a_port_twice_names_port_and_protocol() {
    let pair = NetnsPair::new();
    let _server = RunningServer::start(&pair.server, serve_ports(&[SERVED]));
    let error = in_netns(&pair.server, || async {
        Server::bind(&[ServePort {
            port: SERVED,
            protocol: Protocol::Tcp,
        }])
        .await
        .map(|_| ())
    })
    .expect_err("binding TCP 8080 a second time should fail");
    let message = error.to_string();
    assert!(
        message.contains("TCP") && message.contains("8080"),
        "the bind error should name protocol and port, got {message:?}"
    );
    let zero = in_netns(&pair.server, || async {
        Server::bind(&[ServePort {
            port: 0,
            protocol: Protocol::Udp,
        }])
        .await
        .map(|_| ())
    })
    .expect_err("port 0 should be rejected");
    assert_eq!(
        zero.kind(),
        std::io::ErrorKind::InvalidInput,
        "port 0: {zero}"
    );
}
