//! Random worlds and random change sequences as proptest strategies. Every part is drawn from a
//! strategy that shrinks (collections lose elements, `prop_oneof!` falls back to its earlier,
//! simpler alternatives, options to `None`), so a failing world is reported as a small one.
//!
//! Names and addresses are assigned by position after drawing (pod `p{i}` has IPv4
//! `10.0.{0|1}.{i+2}` and maybe `fd00::{i+2}`), so removing an element while shrinking never
//! makes two objects collide. Changes are drawn as [`Step`]s that pick their target with an
//! [`Index`] and are resolved against the cluster as it is when they are applied.

use std::net::IpAddr;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use septum_policy::cidr::Cidr;
use septum_policy::model::*;
use septum_policy::selector::{LabelSelector, Labels, Operator, Requirement};

/// Namespaces a world may hold (each present or not).
pub const NAMESPACES: [&str; 3] = ["a", "b", "c"];
/// Nodes of every world, with their addresses.
pub const NODES: [(&str, &str); 2] = [("n1", "10.1.0.1"), ("n2", "10.1.0.2")];
/// Changes applied to each world by the incremental property.
pub const STEPS: usize = 16;

/// Label keys with the values each may take.
type Pool = &'static [(&'static str, &'static [&'static str])];

const POD_LABELS: Pool = &[("app", &["web", "db", "api"]), ("tier", &["front", "back"])];
const NS_LABELS: Pool = &[("team", &["x", "y"]), ("env", &["prod", "dev"])];

const CIDRS: [&str; 8] = [
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "fd00::/64",
    "192.168.0.0/16",
    "10.1.0.0/16",
    "8.8.8.0/24",
];

/// Candidate `except` entries: the prefixes above plus carve-outs that hit pod addresses
/// (`10.0.1.3` is pod 1 on subnet 1, `10.0.0.0/30` holds pod 0, `fd00::3` is pod 1's IPv6).
const EXCEPTS: [&str; 12] = [
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "fd00::/64",
    "192.168.0.0/16",
    "10.1.0.0/16",
    "8.8.8.0/24",
    "10.0.0.5/32",
    "10.0.1.3/32",
    "10.0.0.0/30",
    "fd00::3/128",
];

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|e| panic!("test cidr {s}: {e}"))
}

/// A label set drawn from `pool`: each key present a little more often than not.
pub fn labels(pool: Pool) -> impl Strategy<Value = Labels> {
    let per_key: Vec<_> = pool
        .iter()
        .map(|&(k, vs)| option::weighted(0.55, select(vs)).prop_map(move |v| v.map(|v| (k, v))))
        .collect();
    per_key.prop_map(|kvs| {
        kvs.into_iter()
            .flatten()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn requirement(pool: Pool) -> impl Strategy<Value = Requirement> {
    (
        select(pool),
        select(
            &[
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ][..],
        ),
        any::<Index>(),
    )
        .prop_map(|((k, vs), operator, i)| Requirement {
            key: k.to_string(),
            operator,
            values: match operator {
                Operator::In | Operator::NotIn => vec![i.get(vs).to_string()],
                Operator::Exists | Operator::DoesNotExist => Vec::new(),
            },
        })
}

/// A selector over `pool`: empty (selects everything), or one `matchLabels` entry and maybe one
/// expression.
pub fn selector(pool: Pool) -> BoxedStrategy<LabelSelector> {
    prop_oneof![
        3 => Just(LabelSelector::everything()),
        7 => (select(pool), any::<Index>(), option::weighted(0.35, requirement(pool))).prop_map(
            |((k, vs), i, req)| {
                let mut s = LabelSelector::everything();
                s.match_labels.insert(k.to_string(), i.get(vs).to_string());
                s.match_expressions.extend(req);
                s
            }
        ),
    ]
    .boxed()
}

fn pod_selector() -> BoxedStrategy<LabelSelector> {
    selector(POD_LABELS)
}

fn ns_selector() -> BoxedStrategy<LabelSelector> {
    selector(NS_LABELS)
}

/// A prefix and its carve-outs (only those inside it and not equal to it survive).
fn cidr_block() -> impl Strategy<Value = (Cidr, Vec<Cidr>)> {
    (
        select(&CIDRS[..]),
        option::weighted(0.4, subsequence(&EXCEPTS[..], 0..=EXCEPTS.len())),
    )
        .prop_map(|(c, except)| {
            let c = cidr(c);
            let except = except
                .unwrap_or_default()
                .into_iter()
                .map(cidr)
                .filter(|e| c.contains(e) && *e != c)
                .collect();
            (c, except)
        })
}

fn port_ref() -> impl Strategy<Value = PortRef> {
    prop_oneof![
        6 => select(&[53u16, 80, 443, 8080, 9090][..]).prop_map(PortRef::Number),
        4 => select(&["http", "dns", "metrics", "nope"][..]).prop_map(|n| PortRef::Name(n.into())),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    select(&Protocol::ALL[..])
}

/// A NetworkPolicy port: protocol missing or any of three, port missing, numbered or named, and
/// an `endPort` (sometimes equal to `port`) after numbered ports.
fn np_port() -> impl Strategy<Value = NetworkPolicyPort> {
    (
        option::weighted(0.5, protocol()),
        option::weighted(0.8, port_ref()),
        option::weighted(0.3, select(&[0u16, 1, 10, 1000][..])),
    )
        .prop_map(|(protocol, port, span)| {
            let end_port = match (&port, span) {
                (Some(PortRef::Number(n)), Some(d)) => Some(n.saturating_add(d)),
                _ => None,
            };
            NetworkPolicyPort {
                protocol,
                port,
                end_port,
            }
        })
}

/// A NetworkPolicy peer: `podSelector` (maybe with `namespaceSelector`), `namespaceSelector`
/// alone, an `ipBlock`, or (rarely) an entry with neither selector, which matches nothing.
fn np_peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    prop_oneof![
        52 => (pod_selector(), option::weighted(0.4, ns_selector())).prop_map(|(p, ns)| {
            NetworkPolicyPeer::Pods {
                pod_selector: Some(p),
                namespace_selector: ns,
            }
        }),
        21 => ns_selector().prop_map(|ns| NetworkPolicyPeer::Pods {
            pod_selector: None,
            namespace_selector: Some(ns),
        }),
        25 => cidr_block().prop_map(|(cidr, except)| NetworkPolicyPeer::IpBlock { cidr, except }),
        2 => Just(NetworkPolicyPeer::Pods {
            pod_selector: None,
            namespace_selector: None,
        }),
    ]
}

fn np_rule() -> impl Strategy<Value = NetworkPolicyRule> {
    (vec(np_peer(), 0..3), vec(np_port(), 0..3))
        .prop_map(|(peers, ports)| NetworkPolicyRule { peers, ports })
}

/// `policyTypes`: missing, empty (the API server defaults it like a missing one), or a list.
fn policy_types() -> impl Strategy<Value = Option<Vec<PolicyType>>> {
    prop_oneof![
        4 => Just(None),
        4 => Just(Some(vec![PolicyType::Ingress])),
        4 => Just(Some(vec![PolicyType::Egress])),
        4 => Just(Some(vec![PolicyType::Ingress, PolicyType::Egress])),
        2 => Just(Some(Vec::new())),
    ]
}

/// A NetworkPolicy (its name is set by the caller).
pub fn network_policy() -> BoxedStrategy<NetworkPolicy> {
    (
        select(&NAMESPACES[..]),
        pod_selector(),
        policy_types(),
        vec(np_rule(), 0..3),
        vec(np_rule(), 0..3),
    )
        .prop_map(
            |(namespace, pod_selector, policy_types, ingress, egress)| NetworkPolicy {
                namespace: namespace.to_string(),
                name: String::new(),
                pod_selector,
                policy_types,
                ingress,
                egress,
            },
        )
        .boxed()
}

fn optional_namespace() -> impl Strategy<Value = Option<String>> {
    option::of(select(&NAMESPACES[..]).prop_map(String::from))
}

fn flow_peer() -> impl Strategy<Value = FlowPeer> {
    prop_oneof![
        3 => (option::weighted(0.4, ns_selector()), option::weighted(0.7, pod_selector()))
            .prop_map(|(namespace_selector, pod_selector)| FlowPeer::Pods {
                namespace_selector,
                pod_selector,
            }),
        2 => (optional_namespace(), select(&["web", "db", "gone"][..]))
            .prop_map(|(namespace, name)| FlowPeer::Service {
                namespace,
                name: name.into(),
            }),
        1 => (optional_namespace(), select(&["default", "sa1"][..]))
            .prop_map(|(namespace, name)| FlowPeer::ServiceAccount {
                namespace,
                name: name.into(),
            }),
        1 => cidr_block().prop_map(|(cidr, except)| FlowPeer::Cidr { cidr, except }),
    ]
}

/// A FlowPolicy port: like a NetworkPolicy port, sometimes naming a Service port instead.
fn flow_port() -> impl Strategy<Value = FlowPort> {
    (
        np_port(),
        option::weighted(0.2, select(&["web", "svc-dns"][..])),
    )
        .prop_map(|(p, service_port)| FlowPort {
            protocol: p.protocol,
            port: service_port.map_or(p.port, |n| Some(PortRef::Name(n.into()))),
            end_port: p.end_port,
        })
}

fn flow_rules() -> impl Strategy<Value = Option<Vec<FlowRule>>> {
    option::weighted(
        0.6,
        vec(
            (vec(flow_peer(), 0..3), vec(flow_port(), 0..3))
                .prop_map(|(peers, ports)| FlowRule { peers, ports }),
            0..3,
        ),
    )
}

fn flow_subject() -> impl Strategy<Value = FlowSubject> {
    prop_oneof![
        pod_selector().prop_map(FlowSubject::Pods),
        select(&["web", "db", "gone"][..]).prop_map(|n| FlowSubject::Service(n.into())),
        select(&["default", "sa1"][..]).prop_map(|n| FlowSubject::ServiceAccount(n.into())),
    ]
}

/// A FlowPolicy, Enforce or Audit, with a subject by selector, Service or service account (its
/// name is set by the caller).
pub fn flow_policy() -> BoxedStrategy<FlowPolicy> {
    (
        select(&NAMESPACES[..]),
        prop_oneof![3 => Just(FlowMode::Enforce), 2 => Just(FlowMode::Audit)],
        flow_subject(),
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
        .boxed()
}

fn cnp_peer(egress: bool) -> BoxedStrategy<CnpPeer> {
    let pods = (ns_selector(), pod_selector()).prop_map(|(namespace_selector, pod_selector)| {
        CnpPeer::Pods {
            namespace_selector,
            pod_selector,
        }
    });
    if egress {
        prop_oneof![
            ns_selector().prop_map(CnpPeer::Namespaces),
            pods,
            vec(select(&CIDRS[..]).prop_map(cidr), 1..3).prop_map(CnpPeer::Networks),
        ]
        .boxed()
    } else {
        prop_oneof![ns_selector().prop_map(CnpPeer::Namespaces), pods].boxed()
    }
}

fn cnp_port() -> impl Strategy<Value = CnpPort> {
    prop_oneof![
        protocol().prop_map(CnpPort::AnyPort),
        (
            protocol(),
            select(&[53u16, 80, 443, 8080][..]),
            select(&[0u16, 1, 10, 2000][..])
        )
            .prop_map(|(protocol, start, span)| CnpPort::Range {
                protocol,
                start,
                end: start + span,
            }),
        select(&["http", "dns", "metrics"][..]).prop_map(|n| CnpPort::Named(n.into())),
    ]
}

fn cnp_rules(egress: bool) -> impl Strategy<Value = Vec<CnpRule>> {
    vec(
        (
            select(&[CnpAction::Accept, CnpAction::Deny, CnpAction::Pass][..]),
            vec(cnp_peer(egress), 1..3),
            vec(cnp_port(), 0..3),
        ),
        0..3,
    )
    .prop_map(|rules| {
        rules
            .into_iter()
            .enumerate()
            .map(|(i, (action, peers, ports))| CnpRule {
                name: format!("r{i}"),
                action,
                peers,
                ports,
            })
            .collect()
    })
}

/// A ClusterNetworkPolicy of either tier (Pass in both: in Baseline it ends Baseline's say),
/// priority 0..4
/// (its name is set by the caller).
pub fn cluster_network_policy() -> BoxedStrategy<ClusterNetworkPolicy> {
    (
        select(&[CnpTier::Admin, CnpTier::Baseline][..]),
        0u32..4,
        prop_oneof![
            ns_selector().prop_map(CnpSubject::Namespaces),
            (ns_selector(), pod_selector()).prop_map(|(namespace_selector, pod_selector)| {
                CnpSubject::Pods {
                    namespace_selector,
                    pod_selector,
                }
            }),
        ],
        cnp_rules(false),
        cnp_rules(true),
    )
        .prop_map(
            |(tier, priority, subject, ingress, egress)| ClusterNetworkPolicy {
                name: String::new(),
                tier,
                priority,
                subject,
                ingress,
                egress,
            },
        )
        .boxed()
}

/// A pod before it gets its name and addresses from its position.
#[derive(Clone, Debug)]
pub struct PodDraw {
    namespace: &'static str,
    labels: Labels,
    node: usize,
    host_network: bool,
    subnet: u8,
    ipv6: bool,
    ports: Vec<ContainerPort>,
    service_account: &'static str,
}

impl PodDraw {
    /// The pod `p{n}`.
    pub fn into_pod(self, n: usize) -> Pod {
        let (node, node_ip) = NODES[self.node];
        let ips: Vec<IpAddr> = if self.host_network {
            vec![node_ip.parse().expect("node ip")]
        } else {
            let mut v: Vec<IpAddr> = vec![
                format!("10.0.{}.{}", self.subnet, n + 2)
                    .parse()
                    .expect("ip"),
            ];
            if self.ipv6 {
                v.push(format!("fd00::{:x}", n + 2).parse().expect("ip"));
            }
            v
        };
        Pod {
            namespace: self.namespace.to_string(),
            name: format!("p{n}"),
            labels: self.labels,
            ips,
            ports: self.ports,
            node: Some(node.to_string()),
            host_network: self.host_network,
            service_account: self.service_account.to_string(),
            workload: None,
        }
    }
}

/// Named container ports `http` (TCP 80 or 8080), `dns` (UDP 53), `metrics` (TCP 9090), each
/// present or not and now and then declared SCTP instead.
fn container_ports() -> impl Strategy<Value = Vec<ContainerPort>> {
    let one = |name: &'static str, protocol: Protocol, numbers: &'static [u16]| {
        option::of((
            select(numbers),
            option::weighted(0.15, Just(Protocol::Sctp)),
        ))
        .prop_map(move |p| {
            p.map(|(port, sctp)| ContainerPort {
                name: Some(name.to_string()),
                port,
                protocol: sctp.unwrap_or(protocol),
            })
        })
    };
    (
        one("http", Protocol::Tcp, &[80, 8080]),
        one("dns", Protocol::Udp, &[53]),
        one("metrics", Protocol::Tcp, &[9090]),
    )
        .prop_map(|(a, b, c)| [a, b, c].into_iter().flatten().collect())
}

/// A pod: labels (sometimes a `pod-template-hash`), node, host network now and then, IPv4 and
/// sometimes IPv6, named container ports, service account.
pub fn pod() -> BoxedStrategy<PodDraw> {
    (
        select(&NAMESPACES[..]),
        labels(POD_LABELS),
        option::weighted(0.3, select(&["h0", "h1", "h2"][..])),
        (0..NODES.len(), option::weighted(0.08, Just(()))),
        (0u8..2, option::weighted(0.3, Just(()))),
        container_ports(),
        select(&["default", "sa1"][..]),
    )
        .prop_map(
            |(namespace, mut labels, hash, (node, host), (subnet, v6), ports, sa)| {
                if let Some(h) = hash {
                    labels.insert("pod-template-hash".into(), h.into());
                }
                PodDraw {
                    namespace,
                    labels,
                    node,
                    host_network: host.is_some(),
                    subnet,
                    ipv6: v6.is_some(),
                    ports,
                    service_account: sa,
                }
            },
        )
        .boxed()
}

/// Service `name`: selects `app=...` (or, now and then, nothing), ports `web` 80/TCP (targetPort
/// the named port `http` or 8080) and `svc-dns` 53/UDP.
pub fn service(name: &'static str) -> BoxedStrategy<Service> {
    (
        select(&NAMESPACES[..]),
        option::weighted(0.75, select(&["web", "db", "api"][..])),
        prop_oneof![
            Just(PortRef::Number(8080)),
            Just(PortRef::Name("http".into()))
        ],
        // A narrow range, so that two Services now and then claim one VIP (externalIPs may).
        10u8..14,
    )
        .prop_map(move |(namespace, app, target, vip)| {
            let mut selector = Labels::new();
            if let Some(app) = app {
                selector.insert("app".into(), app.into());
            }
            Service {
                namespace: namespace.to_string(),
                name: name.to_string(),
                selector: Some(selector),
                ports: vec![
                    ServicePort {
                        name: Some("web".into()),
                        port: 80,
                        protocol: Protocol::Tcp,
                        target_port: Some(target),
                    },
                    ServicePort {
                        name: Some("svc-dns".into()),
                        port: 53,
                        protocol: Protocol::Udp,
                        target_port: None,
                    },
                ],
                cluster_ips: vec![format!("10.96.0.{vip}").parse().expect("ip")],
            }
        })
        .boxed()
}

/// Addresses EndpointSlices name: pods' (p0 on subnet 0, p1 on subnet 1, p2 on subnet 0,
/// p1's IPv6), a node's, and outside ones the checks probe.
const SLICE_ADDRESSES: [&str; 8] = [
    "10.0.0.2",
    "10.0.1.3",
    "10.0.0.4",
    "fd00::3",
    "10.1.0.2",
    "8.8.8.8",
    "10.0.1.77",
    "fd00::99",
];

/// An EndpointSlice of Service `web` or `db` (now and then of none), managed by hand, with no
/// manager, or derived by the EndpointSlice controller (which the engine ignores): up to three
/// addresses, port `web` at 9090 or 8080 (or without a number, or missing), maybe `svc-dns`
/// 53/UDP, now and then a `web` of the wrong protocol.
pub fn endpoint_slice() -> BoxedStrategy<EndpointSlice> {
    let web = prop_oneof![
        4 => (prop_oneof![Just(9090u16), Just(8080)]).prop_map(|n| Some(EndpointPort {
            name: "web".into(),
            port: Some(n),
            protocol: Protocol::Tcp,
        })),
        1 => Just(None),
        1 => Just(Some(EndpointPort {
            name: "web".into(),
            port: None,
            protocol: Protocol::Tcp,
        })),
        1 => Just(Some(EndpointPort {
            name: "web".into(),
            port: Some(9090),
            protocol: Protocol::Udp,
        })),
    ];
    (
        select(&NAMESPACES[..]),
        option::weighted(0.9, select(&["web", "db"][..])),
        prop_oneof![
            4 => Just(Some("staff")),
            2 => Just(None),
            1 => Just(Some(ENDPOINTSLICE_CONTROLLER)),
        ],
        subsequence(&SLICE_ADDRESSES[..], 0..=3),
        web,
        option::weighted(0.4, Just(())),
    )
        .prop_map(|(namespace, service, manager, addresses, web, dns)| {
            let mut addresses: Vec<IpAddr> = addresses
                .iter()
                .map(|a| a.parse().expect("slice address"))
                .collect();
            addresses.sort();
            EndpointSlice {
                namespace: namespace.to_string(),
                name: String::new(),
                service: service.map(str::to_string),
                managed_by: manager.map(str::to_string),
                addresses,
                ports: web
                    .into_iter()
                    .chain(dns.map(|()| EndpointPort {
                        name: "svc-dns".into(),
                        port: Some(53),
                        protocol: Protocol::Udp,
                    }))
                    .collect(),
            }
        })
        .boxed()
}

/// The policy with each Service peer that names a namespace pointed at the namespace of the
/// Service of that name, when one exists (so Service peers resolve often enough to matter;
/// peers without a namespace still mean the policy's own).
fn naming_existing_services(c: &Cluster, mut fp: FlowPolicy) -> FlowPolicy {
    for r in fp.ingress.iter_mut().chain(fp.egress.iter_mut()).flatten() {
        for p in &mut r.peers {
            if let FlowPeer::Service {
                namespace: Some(ns),
                name,
            } = p
                && let Some(svc) = c.services.values().find(|s| &s.name == name)
            {
                *ns = svc.namespace.clone();
            }
        }
    }
    fp
}

/// The slice in the namespace of the Service it names, when that Service exists (a slice
/// belongs to a Service of its own namespace; elsewhere it would name nothing).
fn beside_its_service(c: &Cluster, mut s: EndpointSlice) -> EndpointSlice {
    if let Some(svc) = c
        .services
        .values()
        .find(|x| Some(&x.name) == s.service.as_ref())
    {
        s.namespace = svc.namespace.clone();
    }
    s
}

fn named<T>(items: Vec<T>, prefix: &str, set: impl Fn(&mut T, String)) -> Vec<T> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut x)| {
            set(&mut x, format!("{prefix}{i}"));
            x
        })
        .collect()
}

/// A whole world: some of the namespaces, both nodes, 1..=6 pods, Services `web` and `db` (each
/// maybe), up to 3 NetworkPolicies, 2 FlowPolicies, 2 ClusterNetworkPolicies and 2
/// EndpointSlices.
pub fn world() -> impl Strategy<Value = Cluster> {
    (
        NAMESPACES
            .iter()
            .map(|_| option::weighted(0.85, labels(NS_LABELS)))
            .collect::<Vec<_>>(),
        vec(pod(), 1..=6),
        (
            option::weighted(0.6, service("web")),
            option::weighted(0.6, service("db")),
        ),
        vec(network_policy(), 0..4),
        vec(flow_policy(), 0..3),
        vec(cluster_network_policy(), 0..3),
        vec(endpoint_slice(), 0..3),
    )
        .prop_map(|(namespaces, pods, (web, db), nps, fps, cnps, slices)| {
            let mut c = Cluster::default();
            for (name, labels) in NAMESPACES.iter().zip(namespaces) {
                if let Some(labels) = labels {
                    c.namespaces.insert(
                        name.to_string(),
                        Namespace {
                            name: name.to_string(),
                            labels,
                        },
                    );
                }
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
            for (i, p) in pods.into_iter().enumerate() {
                let p = p.into_pod(i);
                c.pods.insert(p.key(), p);
            }
            for s in [web, db].into_iter().flatten() {
                c.services.insert(s.key(), s);
            }
            for p in named(nps, "np", |p, n| p.name = n) {
                c.network_policies.insert(p.key(), p);
            }
            for p in named(fps, "fp", |p, n| p.name = n) {
                let p = naming_existing_services(&c, p);
                c.flow_policies.insert(p.key(), p);
            }
            for p in named(cnps, "cnp", |p, n| p.name = n) {
                c.cluster_network_policies.insert(p.name.clone(), p);
            }
            for s in named(slices, "es", |s, n| s.name = n) {
                let s = beside_its_service(&c, s);
                c.endpoint_slices.insert(s.key(), s);
            }
            c
        })
}

/// A [`world`] around Service `web` with 1..=3 manual EndpointSlices of its own, and 1..=2
/// FlowPolicies of its namespace each with a rule whose peers include `web` (egress or
/// ingress, with drawn ports): the worlds where slice resolution decides verdicts, which the
/// general worlds reach only now and then.
pub fn slice_world() -> impl Strategy<Value = Cluster> {
    (
        world(),
        service("web"),
        vec(endpoint_slice(), 1..=3),
        vec(
            (flow_policy(), vec(flow_port(), 0..3), any::<bool>()),
            1..=2,
        ),
    )
        .prop_map(|(mut c, web, slices, fps)| {
            for s in named(slices, "ms", |s, n| s.name = n) {
                let s = EndpointSlice {
                    namespace: web.namespace.clone(),
                    service: Some(web.name.clone()),
                    managed_by: s.managed_by.filter(|m| m != ENDPOINTSLICE_CONTROLLER),
                    ..s
                };
                c.endpoint_slices.insert(s.key(), s);
            }
            for (i, (fp, ports, egress)) in fps.into_iter().enumerate() {
                let mut fp = FlowPolicy {
                    namespace: web.namespace.clone(),
                    name: format!("sfp{i}"),
                    ..fp
                };
                let rule = FlowRule {
                    peers: vec![FlowPeer::Service {
                        namespace: None,
                        name: web.name.clone(),
                    }],
                    ports,
                };
                let rules = if egress {
                    &mut fp.egress
                } else {
                    &mut fp.ingress
                };
                rules.get_or_insert_with(Vec::new).push(rule);
                c.flow_policies.insert(fp.key(), fp);
            }
            c.services.insert(web.key(), web);
            c
        })
}

/// One drawn change; [`Step::resolve`] turns it into a [`Change`] of the cluster at hand.
#[derive(Clone, Debug)]
pub enum Step {
    /// A new pod (named after the step).
    NewPod(PodDraw),
    /// Delete an existing pod.
    DeletePod(Index),
    /// Relabel an existing pod (name, namespace, addresses kept).
    RelabelPod(Index, Labels),
    /// Create or relabel a namespace.
    UpsertNamespace(&'static str, Labels),
    /// Delete a namespace (its pods stay: only the namespace labels go).
    DeleteNamespace(&'static str),
    /// Create or replace `np{i}`.
    UpsertNetworkPolicy(usize, NetworkPolicy),
    /// Delete an existing NetworkPolicy.
    DeleteNetworkPolicy(Index),
    /// Create or replace `fp{i}`.
    UpsertFlowPolicy(usize, FlowPolicy),
    /// Delete an existing FlowPolicy.
    DeleteFlowPolicy(Index),
    /// Create or replace `cnp{i}`.
    UpsertClusterNetworkPolicy(usize, ClusterNetworkPolicy),
    /// Delete an existing ClusterNetworkPolicy.
    DeleteClusterNetworkPolicy(Index),
    /// Create or replace Service `web` or `db`.
    UpsertService(Service),
    /// Delete an existing Service.
    DeleteService(Index),
    /// Create or replace `es{i}` (which may move it to another Service or namespace).
    UpsertEndpointSlice(usize, EndpointSlice),
    /// Delete an existing EndpointSlice.
    DeleteEndpointSlice(Index),
}

/// A change step: the kinds and weights of the old hand-rolled generator (new pods a little more
/// often, as the old one fell back to a new pod where there was nothing to delete; worlds end
/// the sequence with as many pods as before), plus rarer deletions of namespaces, FlowPolicies
/// and ClusterNetworkPolicies.
pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => pod().prop_map(Step::NewPod),
        3 => any::<Index>().prop_map(Step::DeletePod),
        3 => (any::<Index>(), labels(POD_LABELS)).prop_map(|(i, l)| Step::RelabelPod(i, l)),
        3 => (select(&NAMESPACES[..]), labels(NS_LABELS))
            .prop_map(|(n, l)| Step::UpsertNamespace(n, l)),
        3 => (0usize..4, network_policy()).prop_map(|(i, p)| Step::UpsertNetworkPolicy(i, p)),
        3 => any::<Index>().prop_map(Step::DeleteNetworkPolicy),
        3 => (0usize..3, flow_policy()).prop_map(|(i, p)| Step::UpsertFlowPolicy(i, p)),
        3 => (0usize..3, cluster_network_policy())
            .prop_map(|(i, p)| Step::UpsertClusterNetworkPolicy(i, p)),
        3 => prop_oneof![service("web"), service("db")].prop_map(Step::UpsertService),
        3 => any::<Index>().prop_map(Step::DeleteService),
        3 => (0usize..3, endpoint_slice()).prop_map(|(i, s)| Step::UpsertEndpointSlice(i, s)),
        2 => any::<Index>().prop_map(Step::DeleteEndpointSlice),
        1 => select(&NAMESPACES[..]).prop_map(Step::DeleteNamespace),
        1 => any::<Index>().prop_map(Step::DeleteFlowPolicy),
        1 => any::<Index>().prop_map(Step::DeleteClusterNetworkPolicy),
    ]
}

/// [`STEPS`] change steps.
pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    vec(step(), STEPS)
}

/// The `index`-th key of `map`, or `absent` when it is empty (deleting what does not exist is a
/// change a watch can deliver, and must be a no-op).
fn pick_key<K: Clone, V>(map: &std::collections::BTreeMap<K, V>, index: &Index, absent: K) -> K {
    if map.is_empty() {
        absent
    } else {
        map.keys()
            .nth(index.index(map.len()))
            .cloned()
            .unwrap_or(absent)
    }
}

impl Step {
    /// The change this step makes to `c`; `serial` names new pods.
    pub fn resolve(&self, c: &Cluster, serial: usize) -> Change {
        let absent = || ObjectKey::new("a", "absent");
        match self.clone() {
            Step::NewPod(p) => Change::UpsertPod(p.into_pod(10 + serial)),
            Step::DeletePod(i) => Change::DeletePod(pick_key(&c.pods, &i, absent())),
            Step::RelabelPod(i, labels) => {
                match c.pods.values().nth(i.index(c.pods.len().max(1))) {
                    Some(p) => Change::UpsertPod(Pod {
                        labels,
                        ..p.clone()
                    }),
                    None => Change::DeletePod(absent()),
                }
            }
            Step::UpsertNamespace(name, labels) => Change::UpsertNamespace(Namespace {
                name: name.to_string(),
                labels,
            }),
            Step::DeleteNamespace(name) => Change::DeleteNamespace(name.to_string()),
            Step::UpsertNetworkPolicy(i, p) => Change::UpsertNetworkPolicy(NetworkPolicy {
                name: format!("np{i}"),
                ..p
            }),
            Step::DeleteNetworkPolicy(i) => {
                Change::DeleteNetworkPolicy(pick_key(&c.network_policies, &i, absent()))
            }
            Step::UpsertFlowPolicy(i, p) => Change::UpsertFlowPolicy(naming_existing_services(
                c,
                FlowPolicy {
                    name: format!("fp{i}"),
                    ..p
                },
            )),
            Step::DeleteFlowPolicy(i) => {
                Change::DeleteFlowPolicy(pick_key(&c.flow_policies, &i, absent()))
            }
            Step::UpsertClusterNetworkPolicy(i, p) => {
                Change::UpsertClusterNetworkPolicy(ClusterNetworkPolicy {
                    name: format!("cnp{i}"),
                    ..p
                })
            }
            Step::DeleteClusterNetworkPolicy(i) => Change::DeleteClusterNetworkPolicy(pick_key(
                &c.cluster_network_policies,
                &i,
                "absent".to_string(),
            )),
            Step::UpsertService(s) => Change::UpsertService(s),
            Step::DeleteService(i) => Change::DeleteService(pick_key(&c.services, &i, absent())),
            Step::UpsertEndpointSlice(i, s) => Change::UpsertEndpointSlice(beside_its_service(
                c,
                EndpointSlice {
                    name: format!("es{i}"),
                    ..s
                },
            )),
            Step::DeleteEndpointSlice(i) => {
                Change::DeleteEndpointSlice(pick_key(&c.endpoint_slices, &i, absent()))
            }
        }
    }
}
