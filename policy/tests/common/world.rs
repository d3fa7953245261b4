//! Random worlds and random changes, from a seed (proptest supplies the seeds).

use std::net::IpAddr;

use septum_policy::cidr::Cidr;
use septum_policy::model::*;
use septum_policy::selector::{LabelSelector, Labels, Operator, Requirement};

/// A tiny deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const NODES: [(&str, &str); 2] = [("n1", "10.1.0.1"), ("n2", "10.1.0.2")];

fn labels(rng: &mut Rng, pool: &[(&str, &[&str])]) -> Labels {
    let mut l = Labels::new();
    for (k, vs) in pool {
        if rng.chance(55) {
            l.insert(k.to_string(), rng.pick(vs).to_string());
        }
    }
    l
}

const POD_LABELS: &[(&str, &[&str])] =
    &[("app", &["web", "db", "api"]), ("tier", &["front", "back"])];
const NS_LABELS: &[(&str, &[&str])] = &[("team", &["x", "y"]), ("env", &["prod", "dev"])];

pub fn selector(rng: &mut Rng, pool: &[(&str, &[&str])]) -> LabelSelector {
    let mut s = LabelSelector::everything();
    if rng.chance(30) {
        return s;
    }
    let (k, vs) = rng.pick(pool);
    s.match_labels
        .insert(k.to_string(), rng.pick(vs).to_string());
    if rng.chance(35) {
        let (k, vs) = rng.pick(pool);
        let op = *rng.pick(&[
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]);
        let values = match op {
            Operator::In | Operator::NotIn => vec![rng.pick(vs).to_string()],
            _ => vec![],
        };
        s.match_expressions.push(Requirement {
            key: k.to_string(),
            operator: op,
            values,
        });
    }
    s
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|e| panic!("test cidr {s}: {e}"))
}

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

fn cidr_block(rng: &mut Rng) -> (Cidr, Vec<Cidr>) {
    let c = cidr(*rng.pick(&CIDRS));
    let mut except = Vec::new();
    if rng.chance(40) {
        for e in CIDRS {
            let e = cidr(e);
            if c.contains(&e) && e != c && rng.chance(50) {
                except.push(e);
            }
        }
        if c.is_ipv4() && rng.chance(50) {
            except.push(cidr(*rng.pick(&[
                "10.0.0.5/32",
                "10.0.1.3/32",
                "10.0.0.0/30",
            ])));
            except.retain(|e| c.contains(e) && *e != c);
        }
    }
    (c, except)
}

fn port_ref(rng: &mut Rng) -> PortRef {
    if rng.chance(60) {
        PortRef::Number(*rng.pick(&[53u16, 80, 443, 8080, 9090]))
    } else {
        PortRef::Name(rng.pick(&["http", "dns", "metrics", "nope"]).to_string())
    }
}

fn np_port(rng: &mut Rng) -> NetworkPolicyPort {
    let protocol = if rng.chance(50) {
        None
    } else {
        Some(*rng.pick(&Protocol::ALL))
    };
    let port = if rng.chance(20) {
        None
    } else {
        Some(port_ref(rng))
    };
    let end_port = match &port {
        Some(PortRef::Number(n)) if rng.chance(30) => {
            Some(n.saturating_add(*rng.pick(&[0u16, 1, 10, 1000])))
        }
        _ => None,
    };
    NetworkPolicyPort {
        protocol,
        port,
        end_port,
    }
}

fn np_peer(rng: &mut Rng) -> NetworkPolicyPeer {
    if rng.chance(25) {
        let (cidr, except) = cidr_block(rng);
        return NetworkPolicyPeer::IpBlock { cidr, except };
    }
    let pod = rng.chance(70).then(|| selector(rng, POD_LABELS));
    let ns = if pod.is_none() || rng.chance(40) {
        Some(selector(rng, NS_LABELS))
    } else {
        None
    };
    NetworkPolicyPeer::Pods {
        pod_selector: pod,
        namespace_selector: ns,
    }
}

fn np_rule(rng: &mut Rng) -> NetworkPolicyRule {
    let peers = (0..rng.below(3)).map(|_| np_peer(rng)).collect();
    let ports = (0..rng.below(3)).map(|_| np_port(rng)).collect();
    NetworkPolicyRule { peers, ports }
}

pub fn network_policy(rng: &mut Rng, name: &str) -> NetworkPolicy {
    let policy_types = match rng.below(5) {
        0 => None,
        4 => Some(vec![]),
        1 => Some(vec![PolicyType::Ingress]),
        2 => Some(vec![PolicyType::Egress]),
        _ => Some(vec![PolicyType::Ingress, PolicyType::Egress]),
    };
    NetworkPolicy {
        namespace: rng.pick(&NAMESPACES).to_string(),
        name: name.to_string(),
        pod_selector: selector(rng, POD_LABELS),
        policy_types,
        ingress: (0..rng.below(3)).map(|_| np_rule(rng)).collect(),
        egress: (0..rng.below(3)).map(|_| np_rule(rng)).collect(),
    }
}

fn flow_peer(rng: &mut Rng) -> FlowPeer {
    match rng.below(5) {
        0 => FlowPeer::Service {
            namespace: rng.chance(50).then(|| rng.pick(&NAMESPACES).to_string()),
            name: rng.pick(&["web", "db", "gone"]).to_string(),
        },
        1 => FlowPeer::ServiceAccount {
            namespace: rng.chance(50).then(|| rng.pick(&NAMESPACES).to_string()),
            name: rng.pick(&["default", "sa1"]).to_string(),
        },
        2 => {
            let (cidr, except) = cidr_block(rng);
            FlowPeer::Cidr { cidr, except }
        }
        _ => FlowPeer::Pods {
            namespace_selector: rng.chance(40).then(|| selector(rng, NS_LABELS)),
            pod_selector: rng.chance(70).then(|| selector(rng, POD_LABELS)),
        },
    }
}

fn flow_port(rng: &mut Rng) -> FlowPort {
    let p = np_port(rng);
    let port = if rng.chance(20) {
        Some(PortRef::Name(rng.pick(&["web", "svc-dns"]).to_string()))
    } else {
        p.port
    };
    FlowPort {
        protocol: p.protocol,
        port,
        end_port: p.end_port,
    }
}

fn flow_rules(rng: &mut Rng) -> Option<Vec<FlowRule>> {
    if rng.chance(40) {
        return None;
    }
    Some(
        (0..rng.below(3))
            .map(|_| FlowRule {
                peers: (0..rng.below(3)).map(|_| flow_peer(rng)).collect(),
                ports: (0..rng.below(3)).map(|_| flow_port(rng)).collect(),
            })
            .collect(),
    )
}

pub fn flow_policy(rng: &mut Rng, name: &str) -> FlowPolicy {
    FlowPolicy {
        namespace: rng.pick(&NAMESPACES).to_string(),
        name: name.to_string(),
        mode: if rng.chance(40) {
            FlowMode::Audit
        } else {
            FlowMode::Enforce
        },
        subject: match rng.below(3) {
            0 => FlowSubject::Service(rng.pick(&["web", "db", "gone"]).to_string()),
            1 => FlowSubject::ServiceAccount(rng.pick(&["default", "sa1"]).to_string()),
            _ => FlowSubject::Pods(selector(rng, POD_LABELS)),
        },
        ingress: flow_rules(rng),
        egress: flow_rules(rng),
    }
}

fn cnp_peer(rng: &mut Rng, egress: bool) -> CnpPeer {
    match rng.below(if egress { 3 } else { 2 }) {
        0 => CnpPeer::Namespaces(selector(rng, NS_LABELS)),
        1 => CnpPeer::Pods {
            namespace_selector: selector(rng, NS_LABELS),
            pod_selector: selector(rng, POD_LABELS),
        },
        _ => CnpPeer::Networks(
            (0..1 + rng.below(2))
                .map(|_| cidr(*rng.pick(&CIDRS)))
                .collect(),
        ),
    }
}

fn cnp_port(rng: &mut Rng) -> CnpPort {
    match rng.below(3) {
        0 => CnpPort::AnyPort(*rng.pick(&Protocol::ALL)),
        1 => {
            let start = *rng.pick(&[53u16, 80, 443, 8080]);
            CnpPort::Range {
                protocol: *rng.pick(&Protocol::ALL),
                start,
                end: start + *rng.pick(&[0u16, 1, 10, 2000]),
            }
        }
        _ => CnpPort::Named(rng.pick(&["http", "dns", "metrics"]).to_string()),
    }
}

pub fn cluster_network_policy(rng: &mut Rng, name: &str) -> ClusterNetworkPolicy {
    let tier = if rng.chance(50) {
        CnpTier::Admin
    } else {
        CnpTier::Baseline
    };
    let rules = |egress: bool, rng: &mut Rng| -> Vec<CnpRule> {
        (0..rng.below(3))
            .map(|i| CnpRule {
                name: format!("r{i}"),
                action: match rng.below(3) {
                    0 => CnpAction::Accept,
                    1 => CnpAction::Deny,
                    _ if tier == CnpTier::Admin => CnpAction::Pass,
                    _ => CnpAction::Deny,
                },
                peers: (0..1 + rng.below(2))
                    .map(|_| cnp_peer(rng, egress))
                    .collect(),
                ports: (0..rng.below(3)).map(|_| cnp_port(rng)).collect(),
            })
            .collect()
    };
    let ingress = rules(false, rng);
    let egress = rules(true, rng);
    ClusterNetworkPolicy {
        name: name.to_string(),
        tier,
        priority: rng.below(4) as u32,
        subject: if rng.chance(50) {
            CnpSubject::Namespaces(selector(rng, NS_LABELS))
        } else {
            CnpSubject::Pods {
                namespace_selector: selector(rng, NS_LABELS),
                pod_selector: selector(rng, POD_LABELS),
            }
        },
        ingress,
        egress,
    }
}

pub fn namespace(rng: &mut Rng, name: &str) -> Namespace {
    Namespace {
        name: name.to_string(),
        labels: labels(rng, NS_LABELS),
    }
}

pub fn pod(rng: &mut Rng, n: usize) -> Pod {
    let mut l = labels(rng, POD_LABELS);
    if rng.chance(30) {
        l.insert("pod-template-hash".into(), format!("h{}", rng.below(3)));
    }
    let node = rng.pick(&NODES);
    let host_network = rng.chance(8);
    let ips: Vec<IpAddr> = if host_network {
        vec![node.1.parse().expect("node ip")]
    } else {
        let mut v: Vec<IpAddr> = vec![
            format!("10.0.{}.{}", rng.below(2), n + 2)
                .parse()
                .expect("ip"),
        ];
        if rng.chance(30) {
            v.push(format!("fd00::{:x}", n + 2).parse().expect("ip"));
        }
        v
    };
    let mut ports = Vec::new();
    for (name, proto, choices) in [
        ("http", Protocol::Tcp, &[80u16, 8080][..]),
        ("dns", Protocol::Udp, &[53u16][..]),
        ("metrics", Protocol::Tcp, &[9090u16][..]),
    ] {
        if rng.chance(50) {
            ports.push(ContainerPort {
                name: Some(name.to_string()),
                port: *rng.pick(choices),
                protocol: if rng.chance(85) {
                    proto
                } else {
                    Protocol::Sctp
                },
            });
        }
    }
    Pod {
        namespace: rng.pick(&NAMESPACES).to_string(),
        name: format!("p{n}"),
        labels: l,
        ips,
        ports,
        node: Some(node.0.to_string()),
        host_network,
        service_account: rng.pick(&["default", "sa1"]).to_string(),
    }
}

pub fn service(rng: &mut Rng, name: &str) -> Service {
    let mut sel = Labels::new();
    if rng.chance(85) {
        sel.insert("app".into(), rng.pick(&["web", "db", "api"]).to_string());
    }
    Service {
        namespace: rng.pick(&NAMESPACES).to_string(),
        name: name.to_string(),
        selector: Some(sel),
        ports: vec![
            ServicePort {
                name: Some("web".into()),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: Some(if rng.chance(50) {
                    PortRef::Name("http".into())
                } else {
                    PortRef::Number(8080)
                }),
            },
            ServicePort {
                name: Some("svc-dns".into()),
                port: 53,
                protocol: Protocol::Udp,
                target_port: None,
            },
        ],
        cluster_ips: vec![
            format!("10.96.0.{}", 10 + rng.below(50))
                .parse()
                .expect("ip"),
        ],
    }
}

/// A whole random world.
pub fn world(seed: u64) -> Cluster {
    let mut rng = Rng::new(seed);
    let mut c = Cluster::default();
    for ns in NAMESPACES {
        if rng.chance(85) {
            let n = namespace(&mut rng, ns);
            c.namespaces.insert(ns.to_string(), n);
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
    for i in 0..1 + rng.below(6) {
        let p = pod(&mut rng, i);
        c.pods.insert(p.key(), p);
    }
    for name in ["web", "db"] {
        if rng.chance(60) {
            let s = service(&mut rng, name);
            c.services.insert(s.key(), s);
        }
    }
    for i in 0..rng.below(4) {
        let p = network_policy(&mut rng, &format!("np{i}"));
        c.network_policies.insert(p.key(), p);
    }
    for i in 0..rng.below(3) {
        let p = flow_policy(&mut rng, &format!("fp{i}"));
        c.flow_policies.insert(p.key(), p);
    }
    for i in 0..rng.below(3) {
        let p = cluster_network_policy(&mut rng, &format!("cnp{i}"));
        c.cluster_network_policies.insert(p.name.clone(), p);
    }
    c
}

/// A random change to `c`.
pub fn change(rng: &mut Rng, c: &Cluster, serial: usize) -> Change {
    match rng.below(11) {
        0 | 1 => Change::UpsertPod(pod(rng, 10 + serial)),
        2 if !c.pods.is_empty() => {
            let k = rng
                .pick(&c.pods.keys().cloned().collect::<Vec<_>>())
                .clone();
            Change::DeletePod(k)
        }
        3 if !c.pods.is_empty() => {
            // Relabel (keeps name, namespace, IPs).
            let mut p = rng
                .pick(&c.pods.values().cloned().collect::<Vec<_>>())
                .clone();
            p.labels = labels(rng, POD_LABELS);
            Change::UpsertPod(p)
        }
        4 => {
            let n = *rng.pick(&NAMESPACES);
            Change::UpsertNamespace(namespace(rng, n))
        }
        5 => {
            let n = format!("np{}", rng.below(4));
            Change::UpsertNetworkPolicy(network_policy(rng, &n))
        }
        6 if !c.network_policies.is_empty() => Change::DeleteNetworkPolicy(
            rng.pick(&c.network_policies.keys().cloned().collect::<Vec<_>>())
                .clone(),
        ),
        7 => {
            let n = format!("fp{}", rng.below(3));
            Change::UpsertFlowPolicy(flow_policy(rng, &n))
        }
        8 => {
            let n = format!("cnp{}", rng.below(3));
            Change::UpsertClusterNetworkPolicy(cluster_network_policy(rng, &n))
        }
        9 => {
            let n = *rng.pick(&["web", "db"]);
            Change::UpsertService(service(rng, n))
        }
        _ if !c.services.is_empty() => Change::DeleteService(
            rng.pick(&c.services.keys().cloned().collect::<Vec<_>>())
                .clone(),
        ),
        _ => Change::UpsertPod(pod(rng, 10 + serial)),
    }
}
