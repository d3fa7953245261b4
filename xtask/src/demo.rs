//! The demo: three pods in network namespaces on this host, the real eBPF programs enforcing
//! "backend accepts only frontend on TCP 8080", real connections, and the flow events the
//! datapath reported for them.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::Context as _;
use septum_datapath::AttachMode;
use septum_datapath_common::{
    ACTION_ALLOW, DIRECTION_INGRESS, DropReason, ENDPOINT_F_INGRESS_POLICY, FAMILY_IPV4, FlowEvent,
    IDENTITY_HOST, POINT_FROM_POD, Verdict, proto,
};
use septum_tests::{
    fixture::{PinRoot, enforce, topology_maps},
    netns::Topology,
    traffic::{Outcome, tcp_echo_server, tcp_probe, udp_echo_server, udp_probe},
    world::{Build as _, Rule},
};

const FRONTEND: u32 = 4000;
const BACKEND: u32 = 4001;
const INTRUDER: u32 = 4002;

pub fn run() -> anyhow::Result<()> {
    let names = ["frontend", "backend", "intruder"];
    println!("septum datapath demo: three pods in network namespaces, real eBPF enforcement\n");
    let topo = Topology::new(3).context("creating network namespaces (run as root)")?;
    let pins = PinRoot::new(&topo.tag);
    for (pod, name) in topo.pods.iter().zip(names) {
        println!(
            "  pod {name:<9} {} / {}  (netns {}, host veth {})",
            pod.ip4, pod.ip6, pod.ns.name, pod.host_if
        );
    }
    let mut maps = topology_maps(
        &topo,
        &[FRONTEND, BACKEND, INTRUDER],
        &[0, ENDPOINT_F_INGRESS_POLICY, 0],
    );
    maps.isolate(BACKEND, DIRECTION_INGRESS, 1);
    maps.add_rule(&Rule {
        subject: BACKEND,
        direction: DIRECTION_INGRESS,
        peer: FRONTEND,
        protocol: Some(proto::TCP),
        ports: Some((8080, 8080)),
        action: ACTION_ALLOW,
        precedence: 100,
        cookie: 2,
    });
    println!(
        "\npolicy: backend accepts TCP 8080 from frontend only (rule cookie 2; isolation cookie 1)"
    );
    let _servers = [
        tcp_echo_server(&topo.pods[1].ns, 8080),
        tcp_echo_server(&topo.pods[1].ns, 9090),
    ];
    let _udp = udp_echo_server(&topo.pods[1].ns, 5353);
    let mode = AttachMode::detect();
    let mut dp =
        enforce(&topo, &maps, mode, &pins).context("loading and attaching the datapath")?;
    println!(
        "datapath: programs attached with {mode:?}, pinned under {}\n",
        pins.0.display()
    );
    let mut events = dp.take_events().context("event reader")?;

    let t = Duration::from_millis(600);
    println!("reachability (ok = echo came back; timeout = silently dropped):");
    println!(
        "  {:<10} {:<10} {:<14} {:<8} result",
        "from", "to", "port", "family"
    );
    for (from, port, udp) in [
        (0usize, 8080u16, false),
        (2, 8080, false),
        (0, 9090, false),
        (0, 5353, true),
    ] {
        for v6 in [false, true] {
            let dst = topo.pods[1].ip(v6);
            let out = if udp {
                udp_probe(&topo.pods[from].ns, dst, port, t)
            } else {
                tcp_probe(&topo.pods[from].ns, dst, port, t)
            };
            let label = match out {
                Outcome::Ok => "ok",
                Outcome::Timeout => "timeout",
                Outcome::Refused => "refused",
                Outcome::Other => "error",
            };
            println!(
                "  {:<10} {:<10} {:<14} {:<8} {label}",
                names[from],
                "backend",
                format!("{}/{port}", if udp { "udp" } else { "tcp" }),
                if v6 { "ipv6" } else { "ipv4" }
            );
        }
    }
    let node_ok = topo.node.run(|| {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(topo.pods[1].ip(false), 9090),
            t,
        )
        .is_ok()
    });
    println!(
        "  {:<10} {:<10} {:<14} {:<8} {}",
        "node",
        "backend",
        "tcp/9090",
        "ipv4",
        if node_ok {
            "ok (the node may always reach its pods)"
        } else {
            "FAILED"
        }
    );

    let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
    ids.insert(FRONTEND, "frontend");
    ids.insert(BACKEND, "backend");
    ids.insert(INTRUDER, "intruder");
    ids.insert(IDENTITY_HOST, "node");
    println!("\nflow events from the ring buffer:");
    for ev in events.drain() {
        println!("  {}", describe(&ev, &ids));
    }
    println!("\ncounters:");
    for (counter, value) in dp.counters()? {
        if value > 0 {
            println!("  {counter:?}: {value}");
        }
    }
    println!("\ncleaning up namespaces and pins");
    Ok(())
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

fn describe(ev: &FlowEvent, ids: &BTreeMap<u32, &str>) -> String {
    let who = |id: u32| {
        ids.get(&id)
            .map_or_else(|| format!("identity {id}"), |s| s.to_string())
    };
    let proto = match ev.protocol {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::SCTP => "sctp",
        proto::ICMP | proto::ICMPV6 => "icmp",
        _ => "ip",
    };
    let verdict = Verdict::from_u8(ev.verdict).map_or("?", Verdict::as_str);
    let reason = match DropReason::from_u8(ev.drop_reason) {
        Some(DropReason::None) | None => String::new(),
        Some(r) => format!(" reason={}", r.as_str()),
    };
    format!(
        "{:<9} {:<8} {} -> {}  {proto} {}:{} -> {}:{}  cookies egress={} ingress={}{reason}",
        verdict,
        if ev.point == POINT_FROM_POD {
            "from_pod"
        } else {
            "to_pod"
        },
        who(ev.src_identity),
        who(ev.dst_identity),
        addr(ev.family, &ev.saddr),
        ev.sport,
        addr(ev.family, &ev.daddr),
        ev.dport,
        ev.egress_cookie,
        ev.ingress_cookie,
    )
}
