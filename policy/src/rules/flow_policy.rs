//! FlowPolicy (septum.dev/v1alpha1): subjects and peers by Service, selector or service account;
//! ports through a Service's ports to their `targetPort` where the destination is a Service;
//! Audit mode.
//!
//! A Service peer means the Service's backends: the pods its selector picks, and the addresses
//! its manual EndpointSlices name (a Service without a selector has only those: endpoints
//! managed by hand, or mirrored from its Endpoints). Those addresses are host prefixes, as an
//! ipBlock of each would be, with each slice's own backend port for each Service port, the way
//! kube-proxy pairs them by port name. A subject must be pods, so a Service subject needs a
//! selector.

use super::describe::describe_rule;
use super::network_policy::np_port;
use super::{
    Direction, NamespaceMatch, NormalizedPolicy, PeerMatch, PodMatch, PolicyKind, PolicyRef,
    PortItem, PortMatch, Rule, RuleAction, RuleOrder, Section, Tier, rule_cookie,
};
use crate::allocation::AllocationStore;
use crate::cidr::Cidr;
use crate::model::{
    Cluster, EndpointSlice, FlowMode, FlowPeer, FlowPolicy, FlowPort, FlowSubject,
    NetworkPolicyPort, ObjectKey, PortRef, Service,
};
use crate::ports::PortSel;
use crate::selector::LabelSelector;

fn service_pods(svc: Option<&Service>) -> Option<PodMatch> {
    let svc = svc?;
    let sel = svc.selector.as_ref().filter(|s| !s.is_empty())?;
    Some(PodMatch {
        namespace: NamespaceMatch::Exact(svc.namespace.clone()),
        pods: LabelSelector {
            match_labels: sel.clone(),
            match_expressions: Vec::new(),
        },
        service_account: None,
    })
}

/// Resolves FlowPolicy ports, through `service`'s ports when the destination is a Service.
fn flow_ports(ports: &[FlowPort], service: Option<Option<&Service>>) -> PortMatch {
    if ports.is_empty() {
        return PortMatch::Any;
    }
    let mut items = Vec::new();
    for p in ports {
        match (service, &p.port) {
            (Some(svc), Some(port)) => {
                let Some(svc) = svc else { continue };
                // A Service port is (number, protocol): `53` alone means 53/TCP and 53/UDP
                // where both exist, `53` with `protocol: UDP` only the UDP one. A named
                // targetPort stays named: it resolves per destination pod, and a pod on which
                // it does not resolve is not an endpoint of that port (EndpointSlice semantics).
                for sp in svc.ports_matching(port, p.protocol) {
                    items.push(match sp.target() {
                        PortRef::Number(t) => PortItem::Sel(PortSel::Range(sp.protocol, t, t)),
                        PortRef::Name(n) => PortItem::Named {
                            name: n,
                            protocol: Some(sp.protocol),
                        },
                    });
                }
            }
            _ => {
                if let Some(item) = np_port(&NetworkPolicyPort {
                    protocol: p.protocol,
                    port: p.port.clone(),
                    end_port: p.end_port,
                }) {
                    items.push(item);
                }
            }
        }
    }
    PortMatch::Items(items)
}

/// The ports toward Service `svc` on the endpoints of its manual slice `slice`: each Service
/// port a rule port means, at the slice's backend port for it. `None` when none resolves.
fn slice_ports(ports: &[FlowPort], svc: &Service, slice: &EndpointSlice) -> Option<PortMatch> {
    if ports.is_empty() {
        return Some(PortMatch::Any);
    }
    let mut items = Vec::new();
    for p in ports {
        match &p.port {
            Some(port) => items.extend(svc.ports_matching(port, p.protocol).filter_map(|sp| {
                let t = slice.port_for(sp)?;
                Some(PortItem::Sel(PortSel::Range(sp.protocol, t, t)))
            })),
            None => items.extend(np_port(&NetworkPolicyPort {
                protocol: p.protocol,
                port: None,
                end_port: p.end_port,
            })),
        }
    }
    (!items.is_empty()).then_some(PortMatch::Items(items))
}

/// The (peers, ports) groups of a Service peer's manual EndpointSlices: one per slice naming
/// addresses, its addresses as host prefixes. Toward the Service (egress), ports resolve on
/// each slice; from it (ingress), they are the rule's `ingress` ports as for any peer.
fn manual_groups(
    cluster: &Cluster,
    svc: &Service,
    direction: Direction,
    ports: &[FlowPort],
    ingress_ports: &PortMatch,
) -> Vec<(Vec<PeerMatch>, PortMatch)> {
    let key = svc.key();
    cluster
        .manual_slices(&key)
        .filter(|s| !s.addresses.is_empty())
        .filter_map(|s| {
            let ports = match direction {
                Direction::Egress => slice_ports(ports, svc, s)?,
                Direction::Ingress => ingress_ports.clone(),
            };
            let peers = s
                .addresses
                .iter()
                .map(|a| PeerMatch::Cidr {
                    cidr: Cidr::host(*a),
                    except: Vec::new(),
                })
                .collect();
            Some((peers, ports))
        })
        .collect()
}

/// Normalizes a FlowPolicy; the cluster's Services and EndpointSlices resolve Service
/// subjects, peers and ports.
pub fn normalize_flow_policy(
    fp: &FlowPolicy,
    cluster: &Cluster,
    store: &mut dyn AllocationStore,
) -> NormalizedPolicy {
    let services = &cluster.services;
    let policy = PolicyRef {
        kind: PolicyKind::FlowPolicy,
        object: fp.key(),
    };
    let enforce = fp.mode == FlowMode::Enforce;
    let mut out = NormalizedPolicy::default();
    let subject_service = match &fp.subject {
        FlowSubject::Service(name) => Some(services.get(&ObjectKey::new(&fp.namespace, name))),
        _ => None,
    };
    let subject = match &fp.subject {
        FlowSubject::Service(_) => match service_pods(subject_service.flatten()) {
            Some(m) => m,
            None => return out,
        },
        FlowSubject::Pods(sel) => PodMatch {
            namespace: NamespaceMatch::Exact(fp.namespace.clone()),
            pods: sel.clone(),
            service_account: None,
        },
        FlowSubject::ServiceAccount(sa) => PodMatch {
            namespace: NamespaceMatch::Exact(fp.namespace.clone()),
            pods: LabelSelector::everything(),
            service_account: Some(sa.clone()),
        },
    };
    for (direction, rules) in [
        (Direction::Ingress, &fp.ingress),
        (Direction::Egress, &fp.egress),
    ] {
        let Some(rules) = rules else { continue };
        out.isolate(
            store,
            &policy,
            &subject,
            &subject.to_string(),
            direction,
            enforce,
        );
        for (i, r) in rules.iter().enumerate() {
            let index = i as u32;
            let c = rule_cookie(store, &policy, Section::rules(direction), index);
            // Groups of (peers, ports): Service peers of egress rules resolve ports through their
            // own Service, so each gets its own group.
            let mut groups: Vec<(Vec<PeerMatch>, PortMatch)> = Vec::new();
            let default_ports = match direction {
                Direction::Ingress => flow_ports(&r.ports, subject_service),
                Direction::Egress => flow_ports(&r.ports, None),
            };
            let mut plain: Vec<PeerMatch> = Vec::new();
            if r.peers.is_empty() {
                plain.push(PeerMatch::Any);
            }
            for p in &r.peers {
                match p {
                    FlowPeer::Service { namespace, name } => {
                        let key =
                            ObjectKey::new(namespace.as_deref().unwrap_or(&fp.namespace), name);
                        let svc = services.get(&key);
                        if let Some(m) = service_pods(svc) {
                            let ports = match direction {
                                Direction::Egress => flow_ports(&r.ports, Some(svc)),
                                Direction::Ingress => default_ports.clone(),
                            };
                            groups.push((vec![PeerMatch::Pods(m)], ports));
                        }
                        if let Some(svc) = svc {
                            groups.extend(manual_groups(
                                cluster,
                                svc,
                                direction,
                                &r.ports,
                                &default_ports,
                            ));
                        }
                    }
                    FlowPeer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => plain.push(PeerMatch::Pods(PodMatch {
                        namespace: match namespace_selector {
                            None => NamespaceMatch::Exact(fp.namespace.clone()),
                            Some(s) => NamespaceMatch::Selector(s.clone()),
                        },
                        pods: pod_selector.clone().unwrap_or_default(),
                        service_account: None,
                    })),
                    FlowPeer::ServiceAccount { namespace, name } => {
                        plain.push(PeerMatch::Pods(PodMatch {
                            namespace: NamespaceMatch::Exact(
                                namespace.clone().unwrap_or_else(|| fp.namespace.clone()),
                            ),
                            pods: LabelSelector::everything(),
                            service_account: Some(name.clone()),
                        }))
                    }
                    FlowPeer::Cidr { cidr, except } => plain.push(PeerMatch::Cidr {
                        cidr: *cidr,
                        except: except.clone(),
                    }),
                }
            }
            if !plain.is_empty() {
                groups.insert(0, (plain, default_ports.clone()));
            }
            let mut all_peers = Vec::new();
            for (peers, ports) in groups {
                all_peers.extend(peers.iter().cloned());
                out.rules.push(Rule {
                    cookie: c,
                    tier: Tier::Namespaced,
                    order: RuleOrder::default(),
                    enforce,
                    direction,
                    action: RuleAction::Allow,
                    subject: subject.clone(),
                    peers,
                    ports,
                    policy: policy.clone(),
                });
            }
            let summary = Rule {
                cookie: c,
                tier: Tier::Namespaced,
                order: RuleOrder::default(),
                enforce,
                direction,
                action: RuleAction::Allow,
                subject: subject.clone(),
                peers: all_peers,
                ports: default_ports,
                policy: policy.clone(),
            };
            out.descriptions
                .insert(c, describe_rule(&summary, index, ""));
        }
    }
    out
}

/// Whether a FlowPolicy names Service `svc` (as its subject or as a peer), so that a change to
/// the Service changes its rules.
pub fn references_service(fp: &FlowPolicy, svc: &ObjectKey) -> bool {
    let subject = matches!(&fp.subject, FlowSubject::Service(n) if fp.namespace == svc.namespace && n == &svc.name);
    subject
        || fp
            .ingress
            .iter()
            .chain(fp.egress.iter())
            .flatten()
            .flat_map(|r| &r.peers)
            .any(|p| match p {
                FlowPeer::Service { namespace, name } => {
                    namespace.as_deref().unwrap_or(&fp.namespace) == svc.namespace
                        && name == &svc.name
                }
                _ => false,
            })
}
