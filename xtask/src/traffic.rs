//! `cargo xtask bench --traffic`: what septum costs real traffic, beside no filter at all and
//! beside an idiomatic nftables ruleset with the same meaning, all in one run.
//!
//! Topology (the same for every variant): a client pod and a server pod, each a network
//! namespace, routed through a node namespace over veth pairs. Variants:
//! - `floor`: no program, no ruleset;
//! - `septum N`: septum's programs on both host veths (TCX where the kernel has it), both pods
//!   isolated both ways, the flows under test allowed by one rule each side, the policy trie
//!   filled to N entries with other identities' rules, and a reader draining the event ring;
//! - `nftables N`: in the node namespace's forward hook, `ct state established,related accept`,
//!   then a concatenated set `ip saddr . ip daddr . meta l4proto . th dport` of N elements
//!   (the allowed flows among them) and `drop`: what a careful operator or
//!   kube-network-policies writes, a set lookup rather than a linear chain.
//!
//! Workloads (client and server are threads of this process inside the pods' namespaces):
//! - `tcp_rr`: 1-byte request/response on [`PARALLEL`] connections (netperf TCP_RR);
//! - `tcp_crr`: connect, 1-byte request/response, close, on [`PARALLEL`] threads (TCP_CRR):
//!   every transaction is a new flow, so this is the new-flow path on real traffic;
//! - `stream`: one TCP stream of 128 KiB writes (bulk throughput);
//! - `udp`: 64-byte datagrams flat out on one socket, counted where they arrive.
//!
//! Every repetition runs every variant (order rotated each repetition, so drift spreads over
//! all of them) and divides each figure by the floor of the same repetition. The table shows the
//! median ratio with min..max over repetitions; 1.00 is no cost.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::{Rng, SeedableRng, rngs::StdRng};
use septum_datapath::{AttachMode, Datapath, remove_pins};
use septum_datapath_common::{
    ACTION_ALLOW, Counter, DIRECTION_EGRESS, DIRECTION_INGRESS, ENDPOINT_F_EGRESS_POLICY,
    ENDPOINT_F_INGRESS_POLICY, proto,
};
use septum_tests::{
    fixture::{PinRoot, enforce, topology_maps},
    netns::{NetNs, Topology},
    world::{Build as _, Rule},
};

/// Parallel connections (or connecting threads) for the request/response workloads.
const PARALLEL: usize = 4;
const RR_PORT: u16 = 5001;
const CRR_PORT: u16 = 5002;
const STREAM_PORT: u16 = 5003;
const UDP_PORT: u16 = 5004;
const CLIENT: u32 = 3000;
const SERVER: u32 = 3001;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Floor,
    Septum(usize),
    Nftables(usize),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Floor => "floor (no filter)".into(),
            Self::Septum(n) => format!("septum {n} entries"),
            Self::Nftables(n) => format!("nftables {n} elements"),
        }
    }
}

const WORKLOADS: [&str; 4] = ["tcp_rr", "tcp_crr", "stream", "udp"];
const UNITS: [&str; 4] = ["trans/s", "conn/s", "Gbit/s", "pkt/s"];

/// Options of one run.
pub struct Options {
    pub quick: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let (reps, secs) = if opts.quick { (3, 1.0) } else { (7, 3.0) };
    let window = Duration::from_secs_f64(secs);
    let variants = [
        Variant::Floor,
        Variant::Septum(10),
        Variant::Septum(1_000),
        Variant::Septum(100_000),
        Variant::Nftables(10),
        Variant::Nftables(1_000),
        Variant::Nftables(10_000),
    ];
    let topo = Topology::new(2).context("creating network namespaces (run as root)")?;
    let (client, server) = (&topo.pods[0], &topo.pods[1]);
    // A connection-rate workload opens ~10^5 connections a run: a wide port range and reuse
    // of TIME_WAIT ports keep the client from running out of ports.
    client.ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )?;
    let servers = Servers::start(&server.ns)?;
    let dst = IpAddr::V4(server.ip4);
    let mode = AttachMode::detect();
    println!(
        "real traffic: client pod -> node namespace -> server pod over veths; {reps} repetitions, \
         {secs} s per workload, variants interleaved (order rotated each repetition)"
    );
    println!(
        "septum attached with {mode:?}; nftables in the node namespace's forward hook; {PARALLEL} \
         parallel connections for tcp_rr and tcp_crr"
    );
    // results[variant][workload] = one figure per repetition.
    let mut results = vec![vec![Vec::new(); WORKLOADS.len()]; variants.len()];
    let mut ring = Vec::new();
    for rep in 0..reps {
        for k in 0..variants.len() {
            let vi = (k + rep) % variants.len();
            let v = variants[vi];
            let armed = Armed::arm(v, &topo, mode)
                .with_context(|| format!("setting up variant {}", v.name()))?;
            let figures = [
                tcp_rr(&client.ns, dst, window)?,
                tcp_crr(&client.ns, dst, window)?,
                stream(&client.ns, dst, window)? * 8.0 / 1e9,
                udp(&client.ns, dst, window, &servers.udp_received)?,
            ];
            for (w, f) in figures.iter().enumerate() {
                results[vi][w].push(*f);
            }
            if let Some(r) = armed.disarm(&topo)? {
                ring.push((v, figures[1], r));
            }
        }
        eprint!("\rrepetition {}/{reps} done", rep + 1);
    }
    eprintln!();
    report(&variants, &results);
    println!(
        "\nflow events on real traffic (reader attached; tcp_crr opens a new flow per transaction):"
    );
    for (v, crr, r) in ring {
        println!(
            "  {:<24} {:>8.0} new conn/s  events read {:>8}  sent {:>8}  lost (ring full) {}",
            v.name(),
            crr,
            r.read,
            r.sent,
            r.lost
        );
    }
    kernel_time(&topo, mode, &client.ns, dst, window)?;
    servers.stop();
    Ok(())
}

/// The kernel's own account of septum's programs on the same traffic (`bpf_stats`): ns per
/// program run for each workload, and from the connection-rate workload the cost of a new
/// flow: its time less what its established packets cost at the request/response workload's
/// per-run figure, divided by the new flows the datapath counted.
fn kernel_time(
    topo: &Topology,
    mode: AttachMode,
    client: &NetNs,
    dst: IpAddr,
    window: Duration,
) -> anyhow::Result<()> {
    use septum_datapath::RunStats;
    use septum_datapath_common::program_names::{FROM_POD, TO_POD};
    let previous = RunStats::enable().context("enabling kernel.bpf_stats_enabled")?;
    println!(
        "
kernel time per program run on this traffic (bpf_stats; statistics add two clock reads \
         per run, so these are upper bounds):"
    );
    println!(
        "  {:<24} {:<8} {:>12} {:>12} {:>10} {:>12}",
        "variant", "workload", "runs", "ns/run", "new flows", "ns/new flow"
    );
    let result = (|| -> anyhow::Result<()> {
        for entries in [10usize, 100_000] {
            let armed = arm_septum(entries, topo, mode)?;
            let Armed::Septum { dp, .. } = &armed else {
                unreachable!("arm_septum arms septum")
            };
            let mut established_ns = f64::NAN;
            for (w, name) in WORKLOADS.iter().enumerate() {
                let snap = |dp: &Datapath| -> anyhow::Result<(RunStats, u64)> {
                    let (a, b) = (dp.run_stats(FROM_POD)?, dp.run_stats(TO_POD)?);
                    Ok((
                        RunStats {
                            runs: a.runs + b.runs,
                            time_ns: a.time_ns + b.time_ns,
                        },
                        dp.counter(Counter::NewFlows)?,
                    ))
                };
                let (s0, n0) = snap(dp)?;
                match w {
                    0 => drop(tcp_rr(client, dst, window)?),
                    1 => drop(tcp_crr(client, dst, window)?),
                    2 => drop(stream(client, dst, window)?),
                    _ => drop(udp(client, dst, window, &AtomicU64::new(0))?),
                }
                let (s1, n1) = snap(dp)?;
                let d = s1.since(s0);
                let new = n1 - n0;
                if w == 0 {
                    established_ns = d.ns_per_run();
                }
                let per_new = if w == 1 && new > 0 {
                    let est = (d.runs - new) as f64 * established_ns;
                    format!("{:.0}", (d.time_ns as f64 - est) / new as f64)
                } else {
                    "-".into()
                };
                println!(
                    "  {:<24} {name:<8} {:>12} {:>12.1} {new:>10} {per_new:>12}",
                    Variant::Septum(entries).name(),
                    d.runs,
                    d.ns_per_run()
                );
            }
            armed.disarm(topo)?;
        }
        Ok(())
    })();
    RunStats::restore(&previous)?;
    result
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

fn report(variants: &[Variant], results: &[Vec<Vec<f64>>]) {
    println!("\nratio to the floor of the same repetition: median (min..max); 1.00 = no cost");
    print!("{:<24}", "variant");
    for w in WORKLOADS {
        print!(" {w:>20}");
    }
    println!();
    let floor = &results[0];
    let mut medians = vec![[0f64; 4]; variants.len()];
    for (vi, v) in variants.iter().enumerate() {
        print!("{:<24}", v.name());
        for w in 0..WORKLOADS.len() {
            let ratios: Vec<f64> = results[vi][w]
                .iter()
                .zip(&floor[w])
                .map(|(x, f)| x / f)
                .collect();
            let (lo, mid, hi) = stats(&ratios);
            medians[vi][w] = mid;
            print!(" {:>20}", format!("{mid:.3} ({lo:.2}..{hi:.2})"));
        }
        println!();
    }
    print!("\n{:<24}", "floor, absolute");
    for (w, unit) in UNITS.iter().enumerate() {
        let (_, mid, _) = stats(&floor[w]);
        let f = |x: f64| {
            if x >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        };
        print!(" {:>20}", format!("{} {unit}", f(mid)));
    }
    println!();
    print!("{:<24}", "floor spread (max/min)");
    for figures in floor {
        let (lo, _, hi) = stats(figures);
        print!(" {:>20}", format!("{:.2}x", hi / lo));
    }
    println!();
    // Added cost per unit of work: a rate r (ratio to the floor) costs 1/r - 1 more time.
    let find = |want: Variant| variants.iter().position(|v| *v == want);
    if let (Some(s), Some(n)) = (
        find(Variant::Septum(100_000)),
        find(Variant::Nftables(10_000)),
    ) {
        println!(
            "\nadded time per unit of work (1/ratio - 1), septum 100000 entries vs nftables 10000 elements:"
        );
        for (w, name) in WORKLOADS.iter().enumerate() {
            let (a, b) = (1.0 / medians[s][w] - 1.0, 1.0 / medians[n][w] - 1.0);
            let rel = if b > 0.005 {
                format!("{:.2}x nftables'", a / b)
            } else {
                "nftables within noise of the floor".into()
            };
            println!(
                "  {name:<8} septum {:>+6.1}%  nftables {:>+6.1}%  ({rel})",
                a * 100.0,
                b * 100.0
            );
        }
    }
    if let (Some(a), Some(b)) = (find(Variant::Septum(10)), find(Variant::Septum(100_000))) {
        print!("scaling, septum 100000 / 10 entries (median ratios):");
        for (w, name) in WORKLOADS.iter().enumerate() {
            print!("  {name} {:.3}", medians[b][w] / medians[a][w]);
        }
        println!();
    }
}

/// The servers, in the server pod, for the whole run.
struct Servers {
    stop: Arc<AtomicBool>,
    udp_received: Arc<AtomicU64>,
}

impl Servers {
    fn start(ns: &NetNs) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let udp_received = Arc::new(AtomicU64::new(0));
        let (rr, crr, st, u) = ns.run(|| -> std::io::Result<_> {
            Ok((
                TcpListener::bind(("0.0.0.0", RR_PORT))?,
                TcpListener::bind(("0.0.0.0", CRR_PORT))?,
                TcpListener::bind(("0.0.0.0", STREAM_PORT))?,
                UdpSocket::bind(("0.0.0.0", UDP_PORT))?,
            ))
        })?;
        // Sockets keep the namespace they were made in: plain threads can serve them.
        std::thread::spawn(move || {
            for c in rr.incoming().flatten() {
                std::thread::spawn(move || echo_each_byte(c));
            }
        });
        let crr = Arc::new(crr);
        for _ in 0..PARALLEL {
            let l = crr.clone();
            std::thread::spawn(move || {
                for mut c in l.incoming().flatten() {
                    let mut b = [0u8; 1];
                    if c.read_exact(&mut b).is_ok() {
                        let _ = c.write_all(&b);
                    }
                    // The server closes first, so TIME_WAIT stays on the server's side.
                }
            });
        }
        std::thread::spawn(move || {
            for mut c in st.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 18];
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        {
            let (stop, n) = (stop.clone(), udp_received.clone());
            u.set_read_timeout(Some(Duration::from_millis(100)))?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Relaxed) {
                    if u.recv(&mut buf).is_ok() {
                        n.fetch_add(1, Relaxed);
                    }
                }
            });
        }
        Ok(Self { stop, udp_received })
    }

    fn stop(&self) {
        self.stop.store(true, Relaxed);
    }
}

fn echo_each_byte(mut c: TcpStream) {
    let _ = c.set_nodelay(true);
    let mut b = [0u8; 1];
    while c.read_exact(&mut b).is_ok() {
        if c.write_all(&b).is_err() {
            break;
        }
    }
}

/// Runs `f` on `PARALLEL` threads in `ns` until `window` ends; the sum of their counts per second.
fn parallel(
    ns: &NetNs,
    window: Duration,
    f: impl Fn(Instant) -> anyhow::Result<u64> + Sync,
) -> anyhow::Result<f64> {
    ns.run(|| {
        let end = Instant::now() + window;
        let start = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = (0..PARALLEL).map(|_| s.spawn(|| f(end))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .sum::<anyhow::Result<u64>>()
        })?;
        Ok(total as f64 / start.elapsed().as_secs_f64())
    })
}

fn tcp_rr(ns: &NetNs, dst: IpAddr, window: Duration) -> anyhow::Result<f64> {
    parallel(ns, window, |end| {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(dst, RR_PORT), Duration::from_secs(2))
                .context("tcp_rr connect")?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut n = 0u64;
        let mut b = [7u8; 1];
        while Instant::now() < end {
            for _ in 0..64 {
                c.write_all(&b)?;
                c.read_exact(&mut b).context("tcp_rr reply")?;
            }
            n += 64;
        }
        Ok(n)
    })
}

fn tcp_crr(ns: &NetNs, dst: IpAddr, window: Duration) -> anyhow::Result<f64> {
    parallel(ns, window, |end| {
        let addr = SocketAddr::new(dst, CRR_PORT);
        let mut n = 0u64;
        while Instant::now() < end {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .context("tcp_crr connect")?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut b = [7u8; 1];
            c.write_all(&b)?;
            c.read_exact(&mut b).context("tcp_crr reply")?;
            // Wait for the server's FIN, then close.
            let _ = c.read(&mut b);
            n += 1;
        }
        Ok(n)
    })
}

fn stream(ns: &NetNs, dst: IpAddr, window: Duration) -> anyhow::Result<f64> {
    ns.run(|| {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(dst, STREAM_PORT), Duration::from_secs(2))
                .context("stream connect")?;
        let buf = vec![0x5au8; 128 << 10];
        let start = Instant::now();
        let end = start + window;
        let mut bytes = 0u64;
        while Instant::now() < end {
            c.write_all(&buf)?;
            bytes += buf.len() as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        c.shutdown(Shutdown::Both)?;
        Ok(bytes as f64 / secs)
    })
}

fn udp(ns: &NetNs, dst: IpAddr, window: Duration, received: &AtomicU64) -> anyhow::Result<f64> {
    ns.run(|| {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect(SocketAddr::new(dst, UDP_PORT))?;
        let payload = [0xa5u8; 64];
        let before = received.load(Relaxed);
        let start = Instant::now();
        let end = start + window;
        while Instant::now() < end {
            for _ in 0..64 {
                // A full socket buffer (ENOBUFS) is the sender outrunning the path; not an error.
                let _ = s.send(&payload);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
        Ok((received.load(Relaxed) - before) as f64 / secs)
    })
}

/// Event counts of one septum variant.
struct RingCounts {
    read: u64,
    sent: u64,
    lost: u64,
}

/// A variant set up on the topology.
enum Armed {
    Nothing,
    Septum {
        dp: Box<Datapath>,
        pins: PinRoot,
        stop: Arc<AtomicBool>,
        reader: std::thread::JoinHandle<u64>,
    },
    Nftables,
}

impl Armed {
    fn arm(v: Variant, topo: &Topology, mode: AttachMode) -> anyhow::Result<Self> {
        match v {
            Variant::Floor => Ok(Self::Nothing),
            Variant::Septum(n) => arm_septum(n, topo, mode),
            Variant::Nftables(n) => {
                let path = std::env::temp_dir().join(format!("septum-bench-{}.nft", topo.tag));
                std::fs::write(&path, nft_ruleset(topo, n))?;
                let res = topo.node.exec("nft", &["-f", &path.to_string_lossy()]);
                let _ = std::fs::remove_file(&path);
                res.context("loading the nftables ruleset")?;
                Ok(Self::Nftables)
            }
        }
    }

    fn disarm(self, topo: &Topology) -> anyhow::Result<Option<RingCounts>> {
        match self {
            Self::Nothing => Ok(None),
            Self::Nftables => {
                topo.node
                    .exec("nft", &["delete", "table", "inet", "septum_bench"])?;
                Ok(None)
            }
            Self::Septum {
                mut dp,
                pins,
                stop,
                reader,
            } => {
                // Let the reader catch up with the last events before counting.
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Relaxed);
                let read = reader.join().unwrap_or(0);
                let sent = dp.counter(Counter::EventsSent)?;
                let lost = dp.counter(Counter::EventsLost)?;
                topo.node.run(|| -> anyhow::Result<()> {
                    for pod in &topo.pods {
                        dp.detach(&pod.host_if, pod.host_ifindex)?;
                    }
                    Ok(())
                })?;
                drop(dp);
                remove_pins(&pins.0)?;
                Ok(Some(RingCounts { read, sent, lost }))
            }
        }
    }
}

fn arm_septum(entries: usize, topo: &Topology, mode: AttachMode) -> anyhow::Result<Armed> {
    let both = ENDPOINT_F_EGRESS_POLICY | ENDPOINT_F_INGRESS_POLICY;
    let mut maps = topology_maps(topo, &[CLIENT, SERVER], &[both, both]);
    for id in [CLIENT, SERVER] {
        maps.isolate(id, DIRECTION_EGRESS, 1);
        maps.isolate(id, DIRECTION_INGRESS, 1);
    }
    let rule = |subject, direction, peer, protocol, port: u16| Rule {
        subject,
        direction,
        peer,
        protocol: Some(protocol),
        ports: Some((port, port)),
        action: ACTION_ALLOW,
        precedence: 100,
        cookie: 7,
    };
    for (p, port) in [
        (proto::TCP, RR_PORT),
        (proto::TCP, CRR_PORT),
        (proto::TCP, STREAM_PORT),
        (proto::UDP, UDP_PORT),
    ] {
        maps.add_rule(&rule(CLIENT, DIRECTION_EGRESS, SERVER, p, port));
        maps.add_rule(&rule(SERVER, DIRECTION_INGRESS, CLIENT, p, port));
    }
    let mut rng = StdRng::seed_from_u64(7);
    while maps.policy.len() < entries {
        let p = rng.r#gen::<u16>();
        maps.add_rule(&Rule {
            subject: 5000 + rng.gen_range(0..(entries as u32 / 10).max(1)),
            direction: if rng.gen_bool(0.5) {
                DIRECTION_EGRESS
            } else {
                DIRECTION_INGRESS
            },
            peer: 5000 + rng.gen_range(0..10_000),
            protocol: Some(proto::TCP),
            ports: Some((p, p)),
            action: ACTION_ALLOW,
            precedence: 100,
            cookie: 9,
        });
    }
    let pins = PinRoot::new(&format!("bench-{}", topo.tag));
    let mut dp = enforce(topo, &maps, mode, &pins).context("loading and attaching septum")?;
    let events = dp.take_events().context("event reader")?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || -> u64 {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return 0,
            };
            rt.block_on(async move {
                let Ok(mut r) = events.into_async() else {
                    return 0;
                };
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    if let Ok(Ok(batch)) =
                        tokio::time::timeout(Duration::from_millis(20), r.next_batch()).await
                    {
                        n += batch.len() as u64;
                    }
                }
                n
            })
        })
    };
    Ok(Armed::Septum {
        dp: Box::new(dp),
        pins,
        stop,
        reader,
    })
}

/// The nftables ruleset with the same meaning: both pods isolated, the workloads' flows
/// allowed, `n` elements in the allow set.
fn nft_ruleset(topo: &Topology, n: usize) -> String {
    let (c, s) = (topo.pods[0].ip4, topo.pods[1].ip4);
    let mut elems = vec![
        format!("{c} . {s} . tcp . {RR_PORT}"),
        format!("{c} . {s} . tcp . {CRR_PORT}"),
        format!("{c} . {s} . tcp . {STREAM_PORT}"),
        format!("{c} . {s} . udp . {UDP_PORT}"),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    while elems.len() < n {
        elems.push(format!(
            "10.{}.{}.{} . 10.{}.{}.{} . tcp . {}",
            rng.gen_range(0..=255),
            rng.gen_range(0..=255),
            rng.gen_range(1..=254),
            rng.gen_range(0..=255),
            rng.gen_range(0..=255),
            rng.gen_range(1..=254),
            rng.gen_range(1..=65535)
        ));
    }
    elems.sort();
    elems.dedup();
    format!(
        "table inet septum_bench {{\n\
         \x20 set allowed {{\n\
         \x20   type ipv4_addr . ipv4_addr . inet_proto . inet_service\n\
         \x20   elements = {{ {} }}\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy drop;\n\
         \x20   ct state established,related accept\n\
         \x20   ct state invalid drop\n\
         \x20   ip saddr . ip daddr . meta l4proto . th dport @allowed accept\n\
         \x20 }}\n\
         }}\n",
        elems.join(",\n      ")
    )
}
