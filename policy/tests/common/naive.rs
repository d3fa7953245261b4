//! An independent evaluator written straight from the specifications (Kubernetes NetworkPolicy,
//! the ClusterNetworkPolicy tiers, FlowPolicy), over the model objects, for one concrete flow.
//! It shares nothing with the compiler but the model types and the cookie naming (RuleId).

use std::net::IpAddr;

use septum_datapath_common::{ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY};
use septum_policy::allocation::{AllocationKey, AllocationStore, RuleId};
use septum_policy::model::*;
use septum_policy::selector::LabelSelector;

/// One end of a concrete flow.
#[derive(Clone, Debug)]
pub enum End {
    Pod(ObjectKey, IpAddr),
    Node(String, IpAddr),
    External(IpAddr),
}

impl End {
    pub fn ip(&self) -> IpAddr {
        match self {
            End::Pod(_, ip) | End::Node(_, ip) | End::External(ip) => *ip,
        }
    }
}

/// (action, rule that decided) — `None` rule means not policed.
pub type Verdict = (u8, Option<RuleId>);

fn rid(kind: &'static str, object: ObjectKey, section: &'static str, index: usize) -> RuleId {
    RuleId {
        kind: kind.parse().expect("a policy kind"),
        object,
        section: section.parse().expect("a rule section"),
        index: index as u32,
    }
}

/// Cookie the naive verdict stands for when the engine allocated none for its rule (the
/// engine never compiled that rule): it differs from every compiled cookie, so the flow is
/// reported as a mismatch with the naive rule named, rather than as a panic.
pub const NO_COOKIE: u32 = u32::MAX;

/// The cookie the engine allocated for the rule that decided `v` (0: not policed).
pub fn cookie_of(store: &dyn AllocationStore, v: &Verdict) -> u32 {
    match &v.1 {
        None => 0,
        Some(r) if r.kind.as_str() == "builtin" => septum_policy::rules::COOKIE_HOST.get(),
        Some(r) => store
            .get(&AllocationKey::Rule(r.clone()))
            .unwrap_or(NO_COOKIE),
    }
}

fn peer_pod<'a>(c: &'a Cluster, e: &End) -> Option<&'a Pod> {
    match e {
        End::Pod(k, _) => c.pods.get(k).filter(|p| !p.host_network),
        _ => None,
    }
}

fn ns_sel_matches(c: &Cluster, sel: &LabelSelector, ns: &str) -> bool {
    sel.matches(&c.namespace_labels(ns))
}

fn in_block(
    ip: IpAddr,
    cidr: &septum_policy::cidr::Cidr,
    except: &[septum_policy::cidr::Cidr],
) -> bool {
    cidr.contains_ip(ip) && !except.iter().any(|e| e.contains_ip(ip))
}

/// Port entry of a NetworkPolicy (or FlowPolicy without Service) vs the flow, resolving names
/// on the destination pod.
fn np_port_matches(p: &NetworkPolicyPort, dest: Option<&Pod>, proto: u8, port: u16) -> bool {
    let want = p.protocol.unwrap_or(Protocol::Tcp);
    if want.number() != proto {
        return false;
    }
    match (&p.port, p.end_port) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(PortRef::Number(0)), _) => false,
        (Some(PortRef::Number(n)), None) => *n == port,
        (Some(PortRef::Number(n)), Some(e)) => e >= *n && *n <= port && port <= e,
        (Some(PortRef::Name(name)), None) => dest.is_some_and(|d| {
            d.ports.iter().any(|cp| {
                cp.name.as_deref() == Some(name) && cp.protocol == want && cp.port == port
            })
        }),
        (Some(PortRef::Name(_)), Some(_)) => false,
    }
}

fn target_matches(
    target: &PortRef,
    sp_proto: Protocol,
    dest: Option<&Pod>,
    proto: u8,
    port: u16,
) -> bool {
    if sp_proto.number() != proto {
        return false;
    }
    match target {
        PortRef::Number(t) => *t == port,
        PortRef::Name(n) => dest.is_some_and(|d| {
            d.ports.iter().any(|cp| {
                cp.name.as_deref() == Some(n) && cp.protocol == sp_proto && cp.port == port
            })
        }),
    }
}

fn flow_port_matches(
    p: &FlowPort,
    svc: Option<&Service>,
    dest: Option<&Pod>,
    proto: u8,
    port: u16,
) -> bool {
    match (svc, &p.port) {
        // Toward a Service, the rule's port means Service ports (their targetPorts).
        (Some(svc), Some(pr)) => service_ports(svc, pr, p.protocol)
            .into_iter()
            .any(|sp| target_matches(&sp.target(), sp.protocol, dest, proto, port)),
        _ => np_port_matches(
            &NetworkPolicyPort {
                protocol: p.protocol,
                port: p.port.clone(),
                end_port: p.end_port,
            },
            dest,
            proto,
            port,
        ),
    }
}

fn np_selects(np: &NetworkPolicy, pod: &Pod) -> bool {
    np.namespace == pod.namespace && np.pod_selector.matches(&pod.labels)
}

fn fp_subject_service<'a>(c: &'a Cluster, fp: &FlowPolicy) -> Option<&'a Service> {
    match &fp.subject {
        FlowSubject::Service(n) => c.services.get(&ObjectKey::new(&fp.namespace, n)),
        _ => None,
    }
}

fn fp_selects(c: &Cluster, fp: &FlowPolicy, pod: &Pod) -> bool {
    if fp.namespace != pod.namespace {
        return false;
    }
    match &fp.subject {
        FlowSubject::Service(_) => fp_subject_service(c, fp).is_some_and(|s| s.selects(pod)),
        FlowSubject::Pods(sel) => sel.matches(&pod.labels),
        FlowSubject::ServiceAccount(sa) => &pod.service_account == sa,
    }
}

fn cnp_pod_matches(
    c: &Cluster,
    ns_sel: &LabelSelector,
    pod_sel: &LabelSelector,
    pod: &Pod,
) -> bool {
    ns_sel_matches(c, ns_sel, &pod.namespace) && pod_sel.matches(&pod.labels)
}

fn cnp_selects(c: &Cluster, cnp: &ClusterNetworkPolicy, pod: &Pod) -> bool {
    match &cnp.subject {
        CnpSubject::Namespaces(s) => ns_sel_matches(c, s, &pod.namespace),
        CnpSubject::Pods {
            namespace_selector,
            pod_selector,
        } => cnp_pod_matches(c, namespace_selector, pod_selector, pod),
    }
}

/// Decision of one side. `subject` is the pod whose policies apply; `peer` the other end;
/// `dest` the destination pod (for named ports).
pub fn side(
    c: &Cluster,
    subject: &Pod,
    ingress: bool,
    peer: &End,
    proto: u8,
    port: u16,
) -> Verdict {
    let dest: Option<&Pod> = if ingress {
        Some(subject)
    } else {
        peer_pod(c, peer)
    };
    let section = if ingress { "ingress" } else { "egress" };
    // The node may always reach its own pods.
    if ingress {
        if let End::Node(n, _) = peer {
            if subject.node.as_deref() == Some(n.as_str()) {
                return (
                    ACTION_ALLOW,
                    Some(rid(
                        "builtin",
                        ObjectKey::new("", "node-to-pod"),
                        "ingress",
                        0,
                    )),
                );
            }
        }
    }
    let ppod = peer_pod(c, peer);
    let pip = peer.ip();

    // Tier 1: Admin.
    let mut admins: Vec<&ClusterNetworkPolicy> = c
        .cluster_network_policies
        .values()
        .filter(|p| p.tier == CnpTier::Admin && cnp_selects(c, p, subject))
        .collect();
    admins.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    let cnp_rule_matches = |r: &CnpRule| -> bool {
        let peer_ok = r.peers.iter().any(|p| match p {
            CnpPeer::Namespaces(s) => ppod.is_some_and(|pp| ns_sel_matches(c, s, &pp.namespace)),
            CnpPeer::Pods {
                namespace_selector,
                pod_selector,
            } => ppod.is_some_and(|pp| cnp_pod_matches(c, namespace_selector, pod_selector, pp)),
            CnpPeer::Networks(cidrs) => cidrs.iter().any(|x| x.contains_ip(pip)),
        });
        let port_ok = r.ports.is_empty()
            || r.ports.iter().any(|p| match p {
                CnpPort::AnyPort(pr) => pr.number() == proto,
                CnpPort::Range {
                    protocol,
                    start,
                    end,
                } => protocol.number() == proto && *start <= port && port <= *end,
                CnpPort::Named(n) => dest.is_some_and(|d| {
                    d.ports.iter().any(|cp| {
                        cp.name.as_deref() == Some(n)
                            && cp.protocol.number() == proto
                            && cp.port == port
                    })
                }),
            });
        peer_ok && port_ok
    };
    'admin: for p in &admins {
        let rules = if ingress { &p.ingress } else { &p.egress };
        for (i, r) in rules.iter().enumerate() {
            if cnp_rule_matches(r) {
                let id = Some(rid(
                    "ClusterNetworkPolicy",
                    ObjectKey::new("", &p.name),
                    section,
                    i,
                ));
                match r.action {
                    CnpAction::Accept => return (ACTION_ALLOW, id),
                    CnpAction::Deny => return (ACTION_DENY, id),
                    CnpAction::Pass => break 'admin,
                }
            }
        }
    }

    // Tier 3 (computed first; used when the namespaced tier does not isolate): Baseline.
    let mut baselines: Vec<&ClusterNetworkPolicy> = c
        .cluster_network_policies
        .values()
        .filter(|p| p.tier == CnpTier::Baseline && cnp_selects(c, p, subject))
        .collect();
    baselines.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    let mut baseline: Verdict = (ACTION_ALLOW, None);
    'base: for p in &baselines {
        let rules = if ingress { &p.ingress } else { &p.egress };
        for (i, r) in rules.iter().enumerate() {
            if cnp_rule_matches(r) {
                // Pass skips the rest of the tier; after Baseline comes the default allow.
                if r.action == CnpAction::Pass {
                    break 'base;
                }
                let id = Some(rid(
                    "ClusterNetworkPolicy",
                    ObjectKey::new("", &p.name),
                    section,
                    i,
                ));
                baseline = match r.action {
                    CnpAction::Deny => (ACTION_DENY, id),
                    _ => (ACTION_ALLOW, id),
                };
                break 'base;
            }
        }
    }

    // Tier 2: NetworkPolicy + FlowPolicy. (isolating policy id, allowing rule id) with/without audit.
    let mut iso_enf: Option<RuleId> = None;
    let mut iso_all: Option<RuleId> = None;
    let mut allow_enf: Option<RuleId> = None;
    let mut allow_all: Option<RuleId> = None;
    let iso_section = if ingress {
        "ingress-isolation"
    } else {
        "egress-isolation"
    };
    for np in c.network_policies.values() {
        if !np_selects(np, subject) {
            continue;
        }
        // The API server defaults a missing or empty `policyTypes` to Ingress, plus Egress when
        // there are egress rules.
        let types_in = match &np.policy_types {
            Some(t) if !t.is_empty() => t.contains(&PolicyType::Ingress),
            _ => true,
        };
        let types_out = match &np.policy_types {
            Some(t) if !t.is_empty() => t.contains(&PolicyType::Egress),
            _ => !np.egress.is_empty(),
        };
        let isolates = if ingress { types_in } else { types_out };
        if !isolates {
            continue;
        }
        let iso = rid("NetworkPolicy", np.key(), iso_section, 0);
        iso_enf.get_or_insert(iso.clone());
        iso_all.get_or_insert(iso);
        let rules = if ingress { &np.ingress } else { &np.egress };
        for (i, r) in rules.iter().enumerate() {
            let peer_ok = r.peers.is_empty()
                || r.peers.iter().any(|p| match p {
                    NetworkPolicyPeer::Pods {
                        pod_selector: None,
                        namespace_selector: None,
                    } => false,
                    NetworkPolicyPeer::Pods {
                        pod_selector,
                        namespace_selector,
                    } => ppod.is_some_and(|pp| {
                        let ns_ok = match namespace_selector {
                            None => pp.namespace == np.namespace,
                            Some(s) => ns_sel_matches(c, s, &pp.namespace),
                        };
                        ns_ok && pod_selector.as_ref().is_none_or(|s| s.matches(&pp.labels))
                    }),
                    NetworkPolicyPeer::IpBlock { cidr, except } => in_block(pip, cidr, except),
                });
            let port_ok = r.ports.is_empty()
                || r.ports
                    .iter()
                    .any(|p| np_port_matches(p, dest, proto, port));
            if peer_ok && port_ok {
                let id = rid("NetworkPolicy", np.key(), section, i);
                allow_enf.get_or_insert(id.clone());
                allow_all.get_or_insert(id);
            }
        }
    }
    for fp in c.flow_policies.values() {
        if !fp_selects(c, fp, subject) {
            continue;
        }
        let Some(rules) = (if ingress { &fp.ingress } else { &fp.egress }) else {
            continue;
        };
        let enforce = fp.mode == FlowMode::Enforce;
        let iso = rid("FlowPolicy", fp.key(), iso_section, 0);
        if enforce {
            iso_enf.get_or_insert(iso.clone());
        }
        iso_all.get_or_insert(iso);
        let subject_svc = fp_subject_service(c, fp);
        for (i, r) in rules.iter().enumerate() {
            let mut hit = false;
            if r.peers.is_empty() {
                let svc = if ingress { subject_svc } else { None };
                hit = r.ports.is_empty()
                    || r.ports
                        .iter()
                        .any(|p| flow_port_matches(p, svc, dest, proto, port));
            }
            for p in &r.peers {
                let (peer_ok, svc): (bool, Option<&Service>) = match p {
                    FlowPeer::Service { namespace, name } => {
                        let s = c.services.get(&ObjectKey::new(
                            namespace.as_deref().unwrap_or(&fp.namespace),
                            name,
                        ));
                        (
                            ppod.is_some_and(|pp| s.is_some_and(|s| s.selects(pp))),
                            if ingress { subject_svc } else { s },
                        )
                    }
                    FlowPeer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => (
                        ppod.is_some_and(|pp| {
                            let ns_ok = match namespace_selector {
                                None => pp.namespace == fp.namespace,
                                Some(s) => ns_sel_matches(c, s, &pp.namespace),
                            };
                            ns_ok && pod_selector.as_ref().is_none_or(|s| s.matches(&pp.labels))
                        }),
                        if ingress { subject_svc } else { None },
                    ),
                    FlowPeer::ServiceAccount { namespace, name } => (
                        ppod.is_some_and(|pp| {
                            pp.namespace == namespace.as_deref().unwrap_or(&fp.namespace)
                                && &pp.service_account == name
                        }),
                        if ingress { subject_svc } else { None },
                    ),
                    FlowPeer::Cidr { cidr, except } => (
                        in_block(pip, cidr, except),
                        if ingress { subject_svc } else { None },
                    ),
                };
                // A Service that does not exist (or selects nothing) resolves no port.
                let port_ok = r.ports.is_empty()
                    || r.ports
                        .iter()
                        .any(|pt| flow_port_matches(pt, svc, dest, proto, port));
                let svc_missing =
                    matches!(p, FlowPeer::Service { .. }) && !ingress && svc.is_none();
                if peer_ok && port_ok && !svc_missing {
                    hit = true;
                }
                if let FlowPeer::Service { namespace, name } = p
                    && let Some(s) = c.services.get(&ObjectKey::new(
                        namespace.as_deref().unwrap_or(&fp.namespace),
                        name,
                    ))
                {
                    let ports_ok = |slice: &EndpointSlice| {
                        r.ports.is_empty()
                            || r.ports.iter().any(|pt| {
                                if ingress {
                                    flow_port_matches(pt, subject_svc, dest, proto, port)
                                } else {
                                    slice_port_matches(s, slice, pt, dest, proto, port)
                                }
                            })
                    };
                    if manual_slices(c, s).any(|sl| sl.addresses.contains(&pip) && ports_ok(sl)) {
                        hit = true;
                    }
                }
            }
            if hit {
                let id = rid("FlowPolicy", fp.key(), section, i);
                if enforce {
                    allow_enf.get_or_insert(id.clone());
                }
                allow_all.get_or_insert(id);
            }
        }
    }
    let enforced: Verdict = match &iso_enf {
        None => baseline.clone(),
        Some(iso) => match allow_enf {
            Some(a) => (ACTION_ALLOW, Some(a)),
            None => (ACTION_DENY, Some(iso.clone())),
        },
    };
    let hypothetical: Verdict = match &iso_all {
        None => baseline.clone(),
        Some(iso) => match allow_all {
            Some(a) => (ACTION_ALLOW, Some(a)),
            None => (ACTION_DENY, Some(iso.clone())),
        },
    };
    if enforced.0 == ACTION_DENY {
        enforced
    } else if hypothetical.0 == ACTION_DENY {
        (ACTION_AUDIT, hypothetical.1)
    } else {
        enforced
    }
}

/// Both sides of a flow: (egress verdict, ingress verdict); `None` where that end is not a pod.
pub fn flow(
    c: &Cluster,
    src: &End,
    dst: &End,
    proto: u8,
    port: u16,
) -> (Option<Verdict>, Option<Verdict>) {
    let eg = peer_pod(c, src).map(|s| side(c, s, false, dst, proto, port));
    let ing = peer_pod(c, dst).map(|d| side(c, d, true, src, proto, port));
    (eg, ing)
}

/// The Service ports a port reference means. A Service port is identified by its name (unique
/// within the Service) or by its number and protocol together (the API server refuses two ports
/// with the same number and protocol, so 53/TCP and 53/UDP are two ports). With a protocol, only
/// that protocol's port; without one (a FlowPolicy port that names none), every Service port with
/// that number, or the named one.
pub fn service_ports<'a>(
    svc: &'a Service,
    port: &PortRef,
    protocol: Option<Protocol>,
) -> Vec<&'a ServicePort> {
    svc.ports
        .iter()
        .filter(|sp| {
            let same = match port {
                PortRef::Name(n) => sp.name.as_deref() == Some(n.as_str()),
                PortRef::Number(x) => sp.port == *x,
            };
            same && protocol.is_none_or(|p| p == sp.protocol)
        })
        .collect()
}

/// The EndpointSlices that name backends of `svc` beyond its selector: those in its namespace
/// labelled with its name, except the ones the EndpointSlice controller derives from selectors.
pub fn manual_slices<'a>(
    c: &'a Cluster,
    svc: &'a Service,
) -> impl Iterator<Item = &'a EndpointSlice> {
    c.endpoint_slices.values().filter(move |sl| {
        sl.namespace == svc.namespace
            && sl.service.as_deref() == Some(svc.name.as_str())
            && sl.managed_by.as_deref() != Some("endpointslice-controller.k8s.io")
    })
}

/// A FlowPolicy port toward Service `svc` vs a flow to an endpoint of its manual slice
/// `slice`: a named or numbered Service port means the slice's port of the same name (unnamed:
/// `""`) and protocol; a port without number or name, every port of its protocol.
fn slice_port_matches(
    svc: &Service,
    slice: &EndpointSlice,
    pt: &FlowPort,
    dest: Option<&Pod>,
    proto: u8,
    port: u16,
) -> bool {
    match &pt.port {
        None => np_port_matches(
            &NetworkPolicyPort {
                protocol: pt.protocol,
                port: None,
                end_port: pt.end_port,
            },
            dest,
            proto,
            port,
        ),
        Some(pr) => service_ports(svc, pr, pt.protocol).into_iter().any(|sp| {
            sp.protocol.number() == proto
                && slice.ports.iter().any(|ep| {
                    ep.name == sp.name.clone().unwrap_or_default()
                        && ep.protocol == sp.protocol
                        && ep.port == Some(port)
                })
        }),
    }
}

/// The pods a Service selects: those of its namespace whose labels include every entry of a
/// non-empty selector (septum polices pod endpoints, so host-network pods and pods without an
/// address are left out). Sorted by pod.
pub fn service_backends<'a>(c: &'a Cluster, svc: &Service) -> Vec<&'a Pod> {
    let Some(selector) = svc.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    c.pods
        .values()
        .filter(|pod| {
            pod.namespace == svc.namespace
                && !pod.host_network
                && !pod.ips.is_empty()
                && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        })
        .collect()
}

/// The endpoints of one Service port, as the EndpointSlice controller computes them: each
/// selected pod ([`service_backends`]) with the port its targetPort resolves to there. A numeric
/// targetPort (or none: the port itself) is taken as is; a named one is looked up among the
/// pod's container ports by name and the Service port's protocol, and a pod on which it does not
/// resolve is not an endpoint of that port. Sorted by pod.
pub fn service_endpoints(c: &Cluster, svc: &Service, sp: &ServicePort) -> Vec<(ObjectKey, u16)> {
    service_backends(c, svc)
        .into_iter()
        .filter_map(|pod| {
            let port = match &sp.target_port {
                None => Some(sp.port),
                Some(PortRef::Number(n)) => Some(*n),
                Some(PortRef::Name(name)) => pod
                    .ports
                    .iter()
                    .find(|cp| {
                        cp.name.as_deref() == Some(name.as_str()) && cp.protocol == sp.protocol
                    })
                    .map(|cp| cp.port),
            };
            port.map(|port| (pod.key(), port))
        })
        .collect()
}
