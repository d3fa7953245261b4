//! Real traffic over veth pairs between network-namespace pods, through the real programs
//! attached in a node namespace (TCX and clsact both), as the maps say.
//!
//! The `_tcx`/`_clsact` pair tests both attach modes (TCX needs kernel >= 6.6 and skips below
//! it); the other tests are about the datapath, not the attach mode, and use whichever the kernel
//! has ([`AttachMode::detect`]: TCX from 6.6, clsact below).

use std::{net::IpAddr, time::Duration};

use septum_datapath::AttachMode;
use septum_datapath_common::{
    ACTION_ALLOW, Counter, DIRECTION_EGRESS, DIRECTION_INGRESS, ENDPOINT_F_EGRESS_POLICY,
    ENDPOINT_F_INGRESS_POLICY, EVENT_F_DENIED_BY_INGRESS, EVENT_F_NODE_LOCAL, POINT_FROM_POD,
    POINT_TO_POD, SKB_MARK_NODE_LOCAL, Verdict, proto,
};
use septum_tests::{
    fixture::{PinRoot, enforce, topology_maps},
    kernel,
    netns::{Pod, Topology},
    traffic::{Outcome, sctp_probe, tcp_echo_server, tcp_probe, udp_echo_server, udp_probe},
    world::{Build as _, Rule},
};

const P0: u32 = 2000;
const P1: u32 = 2001;
const P2: u32 = 2002;
const BOTH: u8 = ENDPOINT_F_INGRESS_POLICY | ENDPOINT_F_EGRESS_POLICY;
const T: Duration = Duration::from_millis(700);

fn allow(subject: u32, direction: u8, peer: u32, protocol: u8, port: u16, cookie: u32) -> Rule {
    Rule {
        subject,
        direction,
        peer,
        protocol: Some(protocol),
        ports: Some((port, port)),
        action: ACTION_ALLOW,
        precedence: 100,
        cookie,
    }
}

/// Asserts the outcome of a TCP connection from each `(pod, port, outcome, what)` to `dst`.
fn assert_tcp(dst: IpAddr, v6: bool, cases: &[(&Pod, u16, Outcome, &str)]) {
    for &(from, port, want, what) in cases {
        assert_eq!(tcp_probe(&from.ns, dst, port, T), want, "{what}, v6={v6}");
    }
}

fn allowed_and_denied(mode: AttachMode) {
    let topo = Topology::new(3).expect("topology");
    let pins = PinRoot::new(&topo.tag);
    let mut maps = topology_maps(&topo, &[P0, P1, P2], &[0, ENDPOINT_F_INGRESS_POLICY, 0]);
    maps.isolate(P1, DIRECTION_INGRESS, 1);
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::TCP, 8080, 10));
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::UDP, 5353, 11));
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::SCTP, 9999, 12));
    let (p0, p1, p2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let _tcp = tcp_echo_server(&p1.ns, 8080);
    let _tcp2 = tcp_echo_server(&p1.ns, 8081);
    let _udp = udp_echo_server(&p1.ns, 5353);
    for v6 in [false, true] {
        let dst = p1.ip(v6);
        assert_eq!(
            tcp_probe(&p2.ns, dst, 8080, T),
            Outcome::Ok,
            "before enforcement, v6={v6}"
        );
    }
    let dp = enforce(&topo, &maps, mode, &pins).expect("enforce");
    for v6 in [false, true] {
        let dst = p1.ip(v6);
        assert_tcp(
            dst,
            v6,
            &[
                (p0, 8080, Outcome::Ok, "tcp allowed, echo replies pass"),
                (p0, 8081, Outcome::Timeout, "tcp other port: silent drop"),
                (p2, 8080, Outcome::Timeout, "tcp other peer: silent drop"),
            ],
        );
        assert_eq!(
            udp_probe(&p0.ns, dst, 5353, T),
            Outcome::Ok,
            "udp allowed, v6={v6}"
        );
        assert_eq!(
            udp_probe(&p2.ns, dst, 5353, T),
            Outcome::Timeout,
            "udp other peer, v6={v6}"
        );
        assert_eq!(
            sctp_probe(&p0.ns, &p1.ns, dst, 4000, 9999, T),
            Outcome::Ok,
            "sctp allowed, v6={v6}"
        );
        assert_eq!(
            sctp_probe(&p0.ns, &p1.ns, dst, 4001, 9998, T),
            Outcome::Timeout,
            "sctp other port, v6={v6}"
        );
        assert_eq!(
            sctp_probe(&p2.ns, &p1.ns, dst, 4002, 9999, T),
            Outcome::Timeout,
            "sctp other peer, v6={v6}"
        );
        // The node may always reach its pods.
        let node_probe = topo.node.run(|| {
            std::net::TcpStream::connect_timeout(&std::net::SocketAddr::new(dst, 8081), T).is_ok()
        });
        assert!(node_probe, "node to pod, v6={v6}");
        // Unpoliced pods are untouched.
        assert_eq!(
            tcp_probe(&p1.ns, p2.ip(v6), 1, T),
            Outcome::Refused,
            "unpoliced peer answers with a reset, v6={v6}"
        );
    }
    assert!(dp.counter(Counter::Dropped).expect("counter") > 0);
    assert!(dp.counter(Counter::ConntrackHit).expect("counter") > 0);
}

#[test]
fn tcp_udp_sctp_allowed_and_denied_as_the_maps_say_tcx() {
    if !kernel::at_least(6, 6, "TCX links") {
        return;
    }
    allowed_and_denied(AttachMode::Tcx);
}

#[test]
fn tcp_udp_sctp_allowed_and_denied_as_the_maps_say_clsact() {
    allowed_and_denied(AttachMode::Netlink);
}

#[test]
fn a_connection_opened_before_enforcement_keeps_working() {
    use std::io::{Read, Write};
    let topo = Topology::new(3).expect("topology");
    let pins = PinRoot::new(&topo.tag);
    let (p0, p1, p2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let dst = std::net::SocketAddr::new(IpAddr::V4(p1.ip4), 7070);
    // A server that greets first: after enforcement starts, the first packet is the server's.
    let listener = p1
        .ns
        .run(|| std::net::TcpListener::bind(dst).expect("bind"));
    let mut client = p0
        .ns
        .run(|| std::net::TcpStream::connect(dst).expect("connect"));
    let (mut server, _) = listener.accept().expect("accept");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");

    // Both pods isolated both ways; only p0 -> p1:7070 is allowed (egress of p0, ingress of p1).
    let mut maps = topology_maps(&topo, &[P0, P1, P2], &[BOTH, BOTH, 0]);
    for id in [P0, P1] {
        maps.isolate(id, DIRECTION_INGRESS, 1);
        maps.isolate(id, DIRECTION_EGRESS, 1);
    }
    maps.add_rule(&allow(P0, DIRECTION_EGRESS, P1, proto::TCP, 7070, 20));
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::TCP, 7070, 21));
    let dp = enforce(&topo, &maps, AttachMode::detect(), &pins).expect("enforce");

    let mut buf = [0u8; 5];
    server.write_all(b"hello").expect("server writes first");
    client
        .read_exact(&mut buf)
        .expect("the pre-existing connection's reply arrives");
    assert_eq!(&buf, b"hello");
    client.write_all(b"world").expect("client writes");
    server
        .read_exact(&mut buf)
        .expect("the client's data arrives");
    assert_eq!(&buf, b"world");
    assert!(
        dp.counter(Counter::ConntrackPickup).expect("counter") >= 1,
        "picked up mid-stream"
    );
    // New connections still obey policy.
    let _srv = tcp_echo_server(&p1.ns, 7071);
    assert_eq!(tcp_probe(&p2.ns, p1.ip(false), 7071, T), Outcome::Timeout);
}

#[test]
fn service_vip_is_enforced_on_the_backend_identity_and_port_after_dnat() {
    let topo = Topology::new(3).expect("topology");
    let pins = PinRoot::new(&topo.tag);
    let (p0, p1, p2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let vip: std::net::Ipv4Addr = "10.96.0.10".parse().expect("vip");
    topo.add_service(vip, 80, "tcp", p1.ip4, 8080)
        .expect("nftables DNAT rule");
    let _srv = tcp_echo_server(&p1.ns, 8080);
    assert_eq!(
        tcp_probe(&p2.ns, IpAddr::V4(vip), 80, T),
        Outcome::Ok,
        "DNAT works before enforcement"
    );

    // p0's egress allows the backend's identity on the target port; p2's only on another port.
    let mut maps = topology_maps(
        &topo,
        &[P0, P1, P2],
        &[ENDPOINT_F_EGRESS_POLICY, 0, ENDPOINT_F_EGRESS_POLICY],
    );
    maps.isolate(P0, DIRECTION_EGRESS, 1);
    maps.isolate(P2, DIRECTION_EGRESS, 1);
    maps.add_rule(&allow(P0, DIRECTION_EGRESS, P1, proto::TCP, 8080, 30));
    maps.add_rule(&allow(P2, DIRECTION_EGRESS, P1, proto::TCP, 9090, 31));
    maps.add_service(IpAddr::V4(vip), 80, proto::TCP, 1);
    let dp = enforce(&topo, &maps, AttachMode::detect(), &pins).expect("enforce");

    assert_eq!(
        tcp_probe(&p0.ns, IpAddr::V4(vip), 80, T),
        Outcome::Ok,
        "allowed through the VIP"
    );
    assert_eq!(
        tcp_probe(&p0.ns, p1.ip(false), 8080, T),
        Outcome::Ok,
        "allowed directly"
    );
    assert_eq!(
        tcp_probe(&p2.ns, IpAddr::V4(vip), 80, T),
        Outcome::Timeout,
        "denied through the VIP"
    );
    assert_eq!(
        tcp_probe(&p2.ns, p1.ip(false), 8080, T),
        Outcome::Timeout,
        "denied directly"
    );
    assert!(dp.counter(Counter::EgressDeferred).expect("counter") >= 2);
}

#[test]
fn flow_events_arrive_in_user_space_with_the_right_fields() {
    let topo = Topology::new(3).expect("topology");
    let pins = PinRoot::new(&topo.tag);
    let (p0, p1, p2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let mut maps = topology_maps(&topo, &[P0, P1, P2], &[0, ENDPOINT_F_INGRESS_POLICY, 0]);
    maps.isolate(P1, DIRECTION_INGRESS, 41);
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::TCP, 8080, 40));
    let _srv = tcp_echo_server(&p1.ns, 8080);
    let mut dp = enforce(&topo, &maps, AttachMode::detect(), &pins).expect("enforce");
    let reader = dp.take_events().expect("reader");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut reader = rt
        .block_on(async { reader.into_async() })
        .expect("async reader");

    assert_eq!(tcp_probe(&p0.ns, p1.ip(false), 8080, T), Outcome::Ok);
    assert_eq!(tcp_probe(&p2.ns, p1.ip(false), 8080, T), Outcome::Timeout);
    let events = rt.block_on(async {
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while all
            .iter()
            .filter(|e: &&septum_datapath_common::FlowEvent| e.verdict == Verdict::Dropped as u8)
            .count()
            == 0
        {
            match tokio::time::timeout_at(deadline, reader.next_batch()).await {
                Ok(Ok(batch)) => all.extend(batch),
                _ => break,
            }
        }
        all
    });
    // Both pods are on this node: the connection is decided whole at the client's from_pod,
    // and its one event carries the server's ingress decision too.
    let allowed = events
        .iter()
        .find(|e| {
            e.point == POINT_FROM_POD
                && e.src_identity == P0
                && e.dst_identity == P1
                && e.dport == 8080
        })
        .unwrap_or_else(|| panic!("no forwarded from_pod event for p0 -> p1:8080 in {events:#?}"));
    assert_eq!(allowed.verdict, Verdict::Forwarded as u8);
    assert_eq!(allowed.ingress_cookie, 40);
    assert_ne!(allowed.flags & EVENT_F_NODE_LOCAL, 0);
    assert_eq!(allowed.protocol, proto::TCP);
    assert_eq!(&allowed.saddr[..4], &p0.ip4.octets());
    assert_eq!(&allowed.daddr[..4], &p1.ip4.octets());
    assert_eq!(allowed.ifindex, p0.host_ifindex);
    let at_server = events
        .iter()
        .filter(|e| e.point == POINT_TO_POD && e.dport == 8080)
        .count();
    assert_eq!(
        at_server, 0,
        "the server's to_pod reports nothing: {events:#?}"
    );
    let dropped = events
        .iter()
        .find(|e| e.verdict == Verdict::Dropped as u8)
        .unwrap_or_else(|| panic!("no drop event in {events:#?}"));
    assert_eq!((dropped.src_identity, dropped.dst_identity), (P2, P1));
    assert_eq!(dropped.ingress_cookie, 41, "the isolation entry decided it");
    assert_eq!(dropped.point, POINT_FROM_POD, "dropped where it left p2");
    assert_ne!(dropped.flags & EVENT_F_DENIED_BY_INGRESS, 0);
    assert_eq!(&dropped.saddr[..4], &p2.ip4.octets());
}

/// A pod marks every packet it sends with the node-local mark (an nftables rule in its own
/// namespace, the same as SO_MARK on each socket): the veth clears the mark on the way to the
/// node, so a connection the destination's ingress denies stays denied, and the allowed one
/// still works. Even the mark set after from_pod, in the node's namespace, does not open a
/// connection: `to_pod` passes a marked SYN only on the entries from_pod made for its tuple.
#[test]
fn a_pod_cannot_forge_the_node_local_mark() {
    let topo = Topology::new(3).expect("topology");
    let pins = PinRoot::new(&topo.tag);
    let (p0, p1, p2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let mut maps = topology_maps(&topo, &[P0, P1, P2], &[0, ENDPOINT_F_INGRESS_POLICY, 0]);
    maps.isolate(P1, DIRECTION_INGRESS, 51);
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::TCP, 8080, 50));
    let _srv = tcp_echo_server(&p1.ns, 8080);
    let _srv2 = tcp_echo_server(&p1.ns, 8081);
    // A Service VIP in front of p1: its flows are decided at p1's to_pod alone (after DNAT), so
    // there a trusted mark would skip everything.
    let vip: std::net::Ipv4Addr = "10.96.0.11".parse().expect("vip");
    topo.add_service(vip, 80, "tcp", p1.ip4, 8080)
        .expect("nftables DNAT rule");
    maps.add_service(IpAddr::V4(vip), 80, proto::TCP, 1);
    let dp = enforce(&topo, &maps, AttachMode::detect(), &pins).expect("enforce");
    let mark = format!("{SKB_MARK_NODE_LOCAL:#x}");
    for pod in [p0, p2] {
        for cmd in [
            "add table inet forge".to_string(),
            "add chain inet forge out { type route hook output priority mangle ; }".to_string(),
            format!("add rule inet forge out meta mark set {mark}"),
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            let out = pod.ns.exec("nft", &args).expect("nft");
            assert!(out.status.success(), "nft {cmd} in the pod: {out:?}");
        }
    }
    // The mark is really set inside the pod.
    let out = p2.ns.exec("nft", &["list", "ruleset"]).expect("nft");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("meta mark set"),
        "{out:?}"
    );
    for v6 in [false, true] {
        let dst = p1.ip(v6);
        assert_tcp(
            dst,
            v6,
            &[
                (
                    p2,
                    8080,
                    Outcome::Timeout,
                    "a marked connection from a denied peer stays denied",
                ),
                (
                    p0,
                    8081,
                    Outcome::Timeout,
                    "a marked connection to a denied port stays denied",
                ),
                (p0, 8080, Outcome::Ok, "the allowed connection works"),
            ],
        );
    }
    assert_eq!(
        tcp_probe(&p2.ns, IpAddr::V4(vip), 80, T),
        Outcome::Timeout,
        "a marked connection through the VIP from a denied peer stays denied"
    );
    assert_eq!(
        tcp_probe(&p0.ns, IpAddr::V4(vip), 80, T),
        Outcome::Ok,
        "the allowed one through the VIP works"
    );
    assert!(dp.counter(Counter::Dropped).expect("counter") > 0);
    assert!(dp.counter(Counter::NodeLocalPassed).expect("counter") > 0);

    // The same mark set in the node's namespace (by a rule only root can write, after
    // from_pod) on the VIP's connection: from_pod deferred it and made no node-local entries
    // for it, so p1's to_pod decides its SYN as unmarked, and p2 stays denied.
    for cmd in [
        "add table ip forge".to_string(),
        "add chain ip forge pre { type filter hook prerouting priority mangle ; }".to_string(),
        format!(
            "add rule ip forge pre ip saddr {} counter meta mark set {mark}",
            p2.ip4
        ),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        let out = topo.node.exec("nft", &args).expect("nft");
        assert!(out.status.success(), "nft {cmd} in the node: {out:?}");
    }
    let passed = dp.counter(Counter::NodeLocalPassed).expect("counter");
    assert_eq!(
        tcp_probe(&p2.ns, IpAddr::V4(vip), 80, T),
        Outcome::Timeout,
        "a mark set in the node namespace opened a connection from_pod never decided"
    );
    assert_eq!(
        tcp_probe(&p0.ns, IpAddr::V4(vip), 80, T),
        Outcome::Ok,
        "the allowed one through the VIP still works"
    );
    assert_eq!(
        dp.counter(Counter::NodeLocalPassed).expect("counter"),
        passed,
        "a marked SYN without from_pod's entries passed as node-local"
    );
    // And the node's rule did mark p2's packets (else the timeout above proves nothing).
    let out = topo
        .node
        .exec("nft", &["list", "chain", "ip", "forge", "pre"])
        .expect("nft");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let marked: u64 = listing
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in {listing}"));
    assert!(marked > 0, "the node's rule marked nothing: {listing}");
}

/// A node-local connection p0 -> p1 that from_pod allows (p1's ingress allows p0), which the
/// node then DNATs to p2 (an nftables rule in the node's namespace, after from_pod): p2's
/// `to_pod` sees a packet marked as decided for p1 and decides it for p2, which denies p0. The
/// mark's handover (the destination's ifindex in `tc_index`) is what tells them apart: p2's
/// address alone would take it for decided.
fn a_node_local_flow_redirected_to_another_pod_is_decided_there(mode: AttachMode) {
    let topo = Topology::new(3).expect("topology");
    let pins = PinRoot::new(&topo.tag);
    let (p0, p1, p2) = (&topo.pods[0], &topo.pods[1], &topo.pods[2]);
    let mut maps = topology_maps(
        &topo,
        &[P0, P1, P2],
        &[0, ENDPOINT_F_INGRESS_POLICY, ENDPOINT_F_INGRESS_POLICY],
    );
    maps.isolate(P1, DIRECTION_INGRESS, 61);
    maps.isolate(P2, DIRECTION_INGRESS, 62);
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::TCP, 8080, 60));
    let _at_p1 = tcp_echo_server(&p1.ns, 8080);
    let _at_p2 = tcp_echo_server(&p2.ns, 8080);
    let _at_p2_direct = tcp_echo_server(&p2.ns, 8090);
    // p0 -> p1:8090 becomes p0 -> p2:8080.
    topo.add_service(p1.ip4, 8090, "tcp", p2.ip4, 8080)
        .expect("nftables DNAT rule");
    assert_eq!(
        tcp_probe(&p0.ns, IpAddr::V4(p1.ip4), 8090, T),
        Outcome::Ok,
        "the DNAT works before enforcement"
    );
    maps.add_rule(&allow(P1, DIRECTION_INGRESS, P0, proto::TCP, 8090, 63));
    let dp = enforce(&topo, &maps, mode, &pins).expect("enforce");
    assert_eq!(
        tcp_probe(&p0.ns, IpAddr::V4(p1.ip4), 8080, T),
        Outcome::Ok,
        "the allowed node-local connection works"
    );
    assert_eq!(
        tcp_probe(&p0.ns, IpAddr::V4(p1.ip4), 8090, T),
        Outcome::Timeout,
        "decided for p1, redirected to p2, denied by p2"
    );
    assert_eq!(
        tcp_probe(&p0.ns, IpAddr::V4(p2.ip4), 8080, T),
        Outcome::Timeout,
        "p2 denies p0 directly too"
    );
    assert!(dp.counter(Counter::NodeLocalDecided).expect("counter") >= 2);
}

#[test]
fn a_node_local_flow_redirected_to_another_pod_is_decided_there_tcx() {
    if !kernel::at_least(6, 6, "TCX links") {
        return;
    }
    a_node_local_flow_redirected_to_another_pod_is_decided_there(AttachMode::Tcx);
}

#[test]
fn a_node_local_flow_redirected_to_another_pod_is_decided_there_clsact() {
    a_node_local_flow_redirected_to_another_pod_is_decided_there(AttachMode::Netlink);
}
