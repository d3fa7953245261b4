//! Generated worlds centred on Services, as proptest strategies: Services with several ports per
//! number (53/TCP beside 53/UDP and 53/SCTP), port names that are long DNS-1123 labels (up to the
//! 63 characters the API server allows, e.g. `service-port-tcp-53`), and named targetPorts that
//! resolve on only some of the selected pods (the name missing, or declared with another
//! protocol); FlowPolicies by Service subject and by Service peer, naming Service ports by name
//! and by number.

use std::net::IpAddr;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use septum_policy::model::*;
use septum_policy::selector::{LabelSelector, Labels};

use super::world::NODES;

/// Namespaces of a Service world (both always present).
pub const NAMESPACES: [&str; 2] = ["a", "b"];
/// Ports worth checking flows on in a Service world: every Service port, targetPort and
/// container port drawn, and one nothing uses.
pub const CHECK_PORTS: [u16; 7] = [53, 80, 443, 5353, 8080, 9090, 9091];

/// The (number, protocol) pairs a Service port may have; a Service draws a subsequence, so its
/// ports are unique by (number, protocol) as the API server requires.
const SERVICE_PORTS: [(u16, Protocol); 5] = [
    (53, Protocol::Tcp),
    (53, Protocol::Udp),
    (53, Protocol::Sctp),
    (80, Protocol::Tcp),
    (443, Protocol::Tcp),
];

/// A name a targetPort may give: `dns`, `http` and `metrics` are declared by some pods (with
/// varying protocols), `nope` by none.
fn target_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just("dns"), 2 => Just("http"), 1 => Just("metrics"), 1 => Just("nope")]
}

/// A Service name for FlowPolicies: mostly one that exists (`s0` always does), now and then
/// `gone`, which never does.
fn service_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just("s0"), 2 => Just("s1"), 1 => Just("s2"), 1 => Just("gone")]
}

/// The Service port name for (number, protocol): `service-port-udp-53` as the upstream e2e suite
/// writes them, or that prefix padded to the full 63 characters of a DNS-1123 label.
pub fn service_port_name(port: u16, protocol: Protocol, long: bool) -> String {
    let short = format!(
        "service-port-{}-{port}",
        protocol.as_str().to_ascii_lowercase()
    );
    if long {
        let pad = 63 - short.len() - 1;
        format!("{short}-{}", "x".repeat(pad))
    } else {
        short
    }
}

/// Every Service port name a world may contain (for FlowPolicies to name).
fn all_service_port_names() -> Vec<String> {
    SERVICE_PORTS
        .iter()
        .flat_map(|&(n, p)| [false, true].map(|long| service_port_name(n, p, long)))
        .collect()
}

fn app_label() -> impl Strategy<Value = Labels> {
    option::weighted(0.9, select(&["web", "db"][..])).prop_map(|app| {
        app.map(|a| Labels::from([("app".to_string(), a.to_string())]))
            .unwrap_or_default()
    })
}

fn app_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::everything()),
        select(&["web", "db"][..]).prop_map(|a| LabelSelector {
            match_labels: Labels::from([("app".to_string(), a.to_string())]),
            match_expressions: Vec::new(),
        }),
    ]
}

fn named_port(
    name: &'static str,
    choices: &'static [(Protocol, u16)],
) -> impl Strategy<Value = Option<ContainerPort>> {
    option::of(select(choices)).prop_map(move |c| {
        c.map(|(protocol, port)| ContainerPort {
            name: Some(name.to_string()),
            port,
            protocol,
        })
    })
}

/// Container ports: `dns` as UDP 5353, TCP 5353 or UDP 53; `http` as TCP 8080 or 80; `metrics`
/// as TCP 9090; each present or not (container port names are unique within a pod).
fn container_ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    (
        named_port(
            "dns",
            &[
                (Protocol::Udp, 5353),
                (Protocol::Tcp, 5353),
                (Protocol::Udp, 53),
            ],
        ),
        named_port("http", &[(Protocol::Tcp, 8080), (Protocol::Tcp, 80)]),
        named_port("metrics", &[(Protocol::Tcp, 9090)]),
    )
        .prop_map(|(a, b, c)| [a, b, c].into_iter().flatten().collect())
}

/// Pod `p{n}`: namespace (mostly `a`), `app` label, node, IPv4 `10.0.0.{n+2}` and sometimes
/// IPv6, container ports, service account.
fn pod() -> impl Strategy<Value = (bool, Pod)> {
    (
        prop_oneof![3 => Just("a"), 1 => Just("b")],
        app_label(),
        0..NODES.len(),
        any::<bool>(),
        container_ports(),
        select(&["default", "sa1"][..]),
    )
        .prop_map(|(namespace, labels, node, v6, ports, sa)| {
            (
                v6,
                Pod {
                    namespace: namespace.to_string(),
                    name: String::new(),
                    labels,
                    ips: Vec::new(),
                    ports,
                    node: Some(NODES[node].0.to_string()),
                    host_network: false,
                    service_account: sa.to_string(),
                    workload: None,
                },
            )
        })
}

fn target_port() -> impl Strategy<Value = Option<PortRef>> {
    prop_oneof![
        2 => Just(None),
        2 => select(&[53u16, 5353, 8080][..]).prop_map(|n| Some(PortRef::Number(n))),
        4 => target_name().prop_map(|n| Some(PortRef::Name(n.to_string()))),
    ]
}

/// A Service (named by the caller): selector `app=web`, `app=db` or none, 1 to 4 ports unique
/// by (number, protocol), each with a long name and a targetPort.
fn service() -> impl Strategy<Value = Service> {
    (
        prop_oneof![3 => Just("a"), 1 => Just("b")],
        prop_oneof![
            4 => select(&["web", "db"][..]).prop_map(Some),
            1 => Just(None),
        ],
        subsequence(&SERVICE_PORTS[..], 1..=4),
        vec((any::<bool>(), target_port()), SERVICE_PORTS.len()),
    )
        .prop_map(|(namespace, app, numbers, extras)| Service {
            namespace: namespace.to_string(),
            name: String::new(),
            selector: app.map(|a| Labels::from([("app".to_string(), a.to_string())])),
            ports: numbers
                .into_iter()
                .zip(extras)
                .map(|((port, protocol), (long, target_port))| ServicePort {
                    name: Some(service_port_name(port, protocol, long)),
                    port,
                    protocol,
                    target_port,
                })
                .collect(),
            cluster_ips: Vec::new(),
        })
}

/// A FlowPolicy port toward a Service: a Service port by name or by number, with or without a
/// protocol.
fn flow_port() -> impl Strategy<Value = FlowPort> {
    (
        option::of(select(&Protocol::ALL[..])),
        option::weighted(
            0.85,
            prop_oneof![
                select(all_service_port_names()).prop_map(PortRef::Name),
                select(&[53u16, 80, 443, 5353, 8080][..]).prop_map(PortRef::Number),
            ],
        ),
    )
        .prop_map(|(protocol, port)| FlowPort {
            protocol,
            port,
            end_port: None,
        })
}

fn flow_peer() -> impl Strategy<Value = FlowPeer> {
    prop_oneof![
        3 => (
            option::of(select(&NAMESPACES[..]).prop_map(String::from)),
            service_name(),
        )
            .prop_map(|(namespace, name)| FlowPeer::Service {
                namespace,
                name: name.to_string(),
            }),
        1 => app_selector().prop_map(|s| FlowPeer::Pods {
            namespace_selector: None,
            pod_selector: Some(s),
        }),
    ]
}

fn flow_rules() -> impl Strategy<Value = Option<Vec<FlowRule>>> {
    option::weighted(
        0.7,
        vec(
            (vec(flow_peer(), 0..3), vec(flow_port(), 0..3))
                .prop_map(|(peers, ports)| FlowRule { peers, ports }),
            0..3,
        ),
    )
}

/// A FlowPolicy (named by the caller) whose subject is mostly a Service.
fn flow_policy() -> impl Strategy<Value = FlowPolicy> {
    (
        prop_oneof![3 => Just("a"), 1 => Just("b")],
        prop_oneof![3 => Just(FlowMode::Enforce), 1 => Just(FlowMode::Audit)],
        prop_oneof![
            3 => service_name().prop_map(|n| FlowSubject::Service(n.to_string())),
            1 => app_selector().prop_map(FlowSubject::Pods),
        ],
        flow_rules(),
        flow_rules(),
    )
        .prop_map(|(namespace, mode, subject, ingress, egress)| FlowPolicy {
            namespace: namespace.to_string(),
            name: String::new(),
            mode,
            subject,
            ingress,
            egress,
        })
}

/// A Service world: namespaces `a` and `b`, both nodes, 2 to 8 pods, 1 to 3 Services `s{i}`
/// (VIP `10.96.0.{10+i}`), 1 or 2 FlowPolicies `fp{i}`.
pub fn service_world() -> impl Strategy<Value = Cluster> {
    (
        vec(pod(), 2..=8),
        vec(service(), 1..=3),
        vec(flow_policy(), 1..=2),
    )
        .prop_map(|(pods, services, fps)| {
            let mut c = Cluster::default();
            for ns in NAMESPACES {
                c.namespaces.insert(
                    ns.to_string(),
                    Namespace {
                        name: ns.to_string(),
                        labels: Labels::new(),
                    },
                );
            }
            for (name, ip) in NODES {
                c.nodes.insert(
                    name.to_string(),
                    Node {
                        name: name.to_string(),
                        ips: vec![ip.parse().expect("node ip")],
                    },
                );
            }
            for (i, (v6, mut p)) in pods.into_iter().enumerate() {
                p.name = format!("p{i}");
                let mut ips: Vec<IpAddr> = vec![format!("10.0.0.{}", i + 2).parse().expect("ip")];
                if v6 {
                    ips.push(format!("fd00::{:x}", i + 2).parse().expect("ip"));
                }
                p.ips = ips;
                c.pods.insert(p.key(), p);
            }
            for (i, mut s) in services.into_iter().enumerate() {
                s.name = format!("s{i}");
                s.cluster_ips = vec![format!("10.96.0.{}", 10 + i).parse().expect("ip")];
                c.services.insert(s.key(), s);
            }
            for (i, mut p) in fps.into_iter().enumerate() {
                p.name = format!("fp{i}");
                c.flow_policies.insert(p.key(), p);
            }
            c
        })
}
