//! Semantic validation of model objects: the problems a schema cannot catch (contradictory port
//! ranges, carve-outs outside their prefix, references to missing Services, Service ports or
//! backends, malformed selectors). Each problem is a [`Diagnostic`] naming the object and the field; these become status
//! conditions on our CRDs and `septum policy check` messages.

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::model::{
    Cluster, ClusterNetworkPolicy, CnpPeer, CnpPort, CnpSubject, FlowPeer, FlowPolicy, FlowPort,
    FlowSubject, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, ObjectKey, PolicyType,
    PortRef, Service,
};
use crate::selector::LabelSelector;

/// Selector problems recorded at a field.
trait SelectorChecks {
    fn selector(&mut self, field: &str, s: &LabelSelector);
}

impl SelectorChecks for Diagnostics {
    fn selector(&mut self, field: &str, s: &LabelSelector) {
        for m in s.validate() {
            self.error(format!("{field}.matchExpressions"), m);
        }
    }
}

fn check_port(sink: &mut Diagnostics, field: &str, port: &Option<PortRef>, end_port: Option<u16>) {
    match (port, end_port) {
        (Some(PortRef::Number(0)), _) => sink.error(
            format!("{field}.port"),
            "port 0 is not a valid port (1-65535)",
        ),
        (Some(PortRef::Name(n)), Some(e)) => sink.error(
            format!("{field}.endPort"),
            format!("endPort {e} cannot be used with named port {n:?}"),
        ),
        (None, Some(e)) => sink.error(
            format!("{field}.endPort"),
            format!("endPort {e} requires a numeric port"),
        ),
        (Some(PortRef::Number(p)), Some(e)) if e < *p => sink.error(
            format!("{field}.endPort"),
            format!("endPort {e} is lower than port {p}"),
        ),
        _ => {}
    }
}

fn check_np_ports(sink: &mut Diagnostics, field: &str, ports: &[NetworkPolicyPort]) {
    for (i, p) in ports.iter().enumerate() {
        check_port(sink, &format!("{field}.ports[{i}]"), &p.port, p.end_port);
    }
}

fn check_cidr_except(
    sink: &mut Diagnostics,
    field: &str,
    cidr: &crate::cidr::Cidr,
    except: &[crate::cidr::Cidr],
) {
    for (j, e) in except.iter().enumerate() {
        if !cidr.contains(e) || e == cidr {
            sink.error(
                format!("{field}.except[{j}]"),
                format!("except {e} must be strictly inside cidr {cidr}"),
            );
        }
    }
}

/// Problems of a NetworkPolicy.
pub fn validate_network_policy(np: &NetworkPolicy) -> Vec<Diagnostic> {
    let mut sink = Diagnostics::for_object(format!("NetworkPolicy {}", np.key()));
    sink.selector("spec.podSelector", &np.pod_selector);
    // An empty list is defaulted like a missing one (see `NetworkPolicy::isolates`). The API
    // server refuses more than two entries but lets duplicates through (`[Ingress, Ingress]`).
    if let Some(types) = np.policy_types.as_ref().filter(|t| !t.is_empty()) {
        if types.len() > 2 {
            sink.error(
                "spec.policyTypes",
                format!("may not specify more than two policyTypes: {types:?}"),
            );
        }
        if !types.contains(&PolicyType::Egress) && !np.egress.is_empty() {
            sink.warn(
                "spec.egress",
                "egress rules are ignored because spec.policyTypes does not include Egress",
            );
        }
        if !types.contains(&PolicyType::Ingress) && !np.ingress.is_empty() {
            sink.warn(
                "spec.ingress",
                "ingress rules are ignored because spec.policyTypes does not include Ingress",
            );
        }
    }
    for (dir, rules, peer_word) in [
        ("ingress", &np.ingress, "from"),
        ("egress", &np.egress, "to"),
    ] {
        for (i, r) in rules.iter().enumerate() {
            let field = format!("spec.{dir}[{i}]");
            check_np_ports(&mut sink, &field, &r.ports);
            for (j, p) in r.peers.iter().enumerate() {
                let pf = format!("{field}.{peer_word}[{j}]");
                match p {
                    NetworkPolicyPeer::Pods {
                        pod_selector: None,
                        namespace_selector: None,
                    } => sink.error(pf, "a peer needs podSelector, namespaceSelector or ipBlock"),
                    NetworkPolicyPeer::Pods {
                        pod_selector,
                        namespace_selector,
                    } => {
                        if let Some(s) = pod_selector {
                            sink.selector(&format!("{pf}.podSelector"), s);
                        }
                        if let Some(s) = namespace_selector {
                            sink.selector(&format!("{pf}.namespaceSelector"), s);
                        }
                    }
                    NetworkPolicyPeer::IpBlock { cidr, except } => {
                        check_cidr_except(&mut sink, &format!("{pf}.ipBlock"), cidr, except)
                    }
                }
            }
        }
    }
    sink.into_vec()
}

fn check_service_ports(sink: &mut Diagnostics, field: &str, ports: &[FlowPort], svc: &Service) {
    for (i, p) in ports.iter().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        if let Some(port) = &p.port {
            // A Service port is (number, protocol): 53/UDP is not found on a 53/TCP-only Service.
            if svc.ports_matching(port, p.protocol).next().is_none() {
                let proto = p.protocol.map(|p| format!("/{p}")).unwrap_or_default();
                sink.warn(
                    format!("{pf}.port"),
                    format!("Service {} has no port {port}{proto}", svc.key()),
                );
            }
        }
        if let Some(e) = p.end_port {
            sink.error(
                format!("{pf}.endPort"),
                format!("endPort {e} cannot be used with Service ports"),
            );
        }
    }
}

fn has_selector(s: &Service) -> bool {
    s.selector.as_ref().is_some_and(|x| !x.is_empty())
}

/// A Service peer's backends: a warning when it has none (no selector and no EndpointSlice
/// naming addresses for it), or when a rule port toward it resolves on none of its slices.
fn check_service_backends(
    sink: &mut Diagnostics,
    (field, rule_field): (&str, &str),
    cluster: &Cluster,
    svc: &Service,
    egress_ports: Option<&[FlowPort]>,
) {
    if has_selector(svc) {
        return;
    }
    let key = svc.key();
    let slices: Vec<_> = cluster
        .manual_slices(&key)
        .filter(|s| !s.addresses.is_empty())
        .collect();
    if slices.is_empty() {
        sink.warn(
            field,
            format!(
                "Service {key} has no selector and no EndpointSlice names endpoints for it, so it has no backends"
            ),
        );
        return;
    }
    for (i, p) in egress_ports.into_iter().flatten().enumerate() {
        let Some(port) = &p.port else { continue };
        let mut matching = svc.ports_matching(port, p.protocol).peekable();
        // A port the Service lacks is reported elsewhere.
        let exists = matching.peek().is_some();
        if exists && !matching.any(|sp| slices.iter().any(|s| s.port_for(sp).is_some())) {
            sink.warn(
                format!("{rule_field}.ports[{i}].port"),
                format!("no EndpointSlice of Service {key} has a port for its port {port}"),
            );
        }
    }
}

/// Problems of a FlowPolicy, including references to missing Services, Service ports and
/// backends.
pub fn validate_flow_policy(fp: &FlowPolicy, cluster: &Cluster) -> Vec<Diagnostic> {
    let services = &cluster.services;
    let mut sink = Diagnostics::for_object(format!("FlowPolicy {}", fp.key()));
    let mut subject_service = None;
    match &fp.subject {
        FlowSubject::Service(name) => match services.get(&ObjectKey::new(&fp.namespace, name)) {
            None => sink.warn(
                "spec.subject.service",
                format!("Service {}/{name} does not exist", fp.namespace),
            ),
            Some(s) if !has_selector(s) => sink.warn(
                "spec.subject.service",
                format!(
                    "Service {}/{name} has no selector, so the policy applies to no pod (a subject is pods; its EndpointSlices may name any address): select the pods with podSelector",
                    fp.namespace
                ),
            ),
            Some(s) => subject_service = Some(s),
        },
        FlowSubject::Pods(sel) => sink.selector("spec.subject.podSelector", sel),
        FlowSubject::ServiceAccount(sa) if sa.is_empty() => {
            sink.error("spec.subject.serviceAccount", "must not be empty")
        }
        FlowSubject::ServiceAccount(_) => {}
    }
    if fp.ingress.is_none() && fp.egress.is_none() {
        sink.warn(
            "spec",
            "neither ingress nor egress is set: the policy does nothing",
        );
    }
    for (dir, rules, word) in [
        ("ingress", &fp.ingress, "from"),
        ("egress", &fp.egress, "to"),
    ] {
        for (i, r) in rules.iter().flatten().enumerate() {
            let field = format!("spec.{dir}[{i}]");
            let service_peers: Vec<&FlowPeer> = r
                .peers
                .iter()
                .filter(|p| matches!(p, FlowPeer::Service { .. }))
                .collect();
            if dir == "ingress" {
                if let Some(svc) = subject_service {
                    check_service_ports(&mut sink, &field, &r.ports, svc);
                } else {
                    for (j, p) in r.ports.iter().enumerate() {
                        check_port(
                            &mut sink,
                            &format!("{field}.ports[{j}]"),
                            &p.port,
                            p.end_port,
                        );
                    }
                }
            } else if service_peers.is_empty() {
                for (j, p) in r.ports.iter().enumerate() {
                    check_port(
                        &mut sink,
                        &format!("{field}.ports[{j}]"),
                        &p.port,
                        p.end_port,
                    );
                }
            }
            for (j, p) in r.peers.iter().enumerate() {
                let pf = format!("{field}.{word}[{j}]");
                match p {
                    FlowPeer::Service { namespace, name } => {
                        let key =
                            ObjectKey::new(namespace.as_deref().unwrap_or(&fp.namespace), name);
                        match services.get(&key) {
                            None => sink.warn(
                                format!("{pf}.service"),
                                format!("Service {key} does not exist"),
                            ),
                            Some(s) => {
                                check_service_backends(
                                    &mut sink,
                                    (&format!("{pf}.service"), &field),
                                    cluster,
                                    s,
                                    (dir == "egress").then_some(r.ports.as_slice()),
                                );
                                if dir == "egress" {
                                    check_service_ports(&mut sink, &field, &r.ports, s);
                                }
                            }
                        }
                    }
                    FlowPeer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => {
                        if let Some(s) = namespace_selector {
                            sink.selector(&format!("{pf}.namespaceSelector"), s);
                        }
                        if let Some(s) = pod_selector {
                            sink.selector(&format!("{pf}.podSelector"), s);
                        }
                    }
                    FlowPeer::ServiceAccount { name, .. } if name.is_empty() => {
                        sink.error(format!("{pf}.serviceAccount.name"), "must not be empty")
                    }
                    FlowPeer::ServiceAccount { .. } => {}
                    FlowPeer::Cidr { cidr, except } => {
                        check_cidr_except(&mut sink, &format!("{pf}.cidr"), cidr, except)
                    }
                }
            }
        }
    }
    sink.into_vec()
}

/// Problems of a ClusterNetworkPolicy.
pub fn validate_cluster_network_policy(cnp: &ClusterNetworkPolicy) -> Vec<Diagnostic> {
    let mut sink = Diagnostics::for_object(format!("ClusterNetworkPolicy {}", cnp.name));
    if cnp.priority > 1000 {
        sink.error(
            "spec.priority",
            format!("priority {} is above 1000", cnp.priority),
        );
    }
    match &cnp.subject {
        CnpSubject::Namespaces(s) => sink.selector("spec.subject.namespaces", s),
        CnpSubject::Pods {
            namespace_selector,
            pod_selector,
        } => {
            sink.selector("spec.subject.pods.namespaceSelector", namespace_selector);
            sink.selector("spec.subject.pods.podSelector", pod_selector);
        }
    }
    for (dir, rules, word) in [
        ("ingress", &cnp.ingress, "from"),
        ("egress", &cnp.egress, "to"),
    ] {
        for (i, r) in rules.iter().enumerate() {
            let field = format!("spec.{dir}[{i}]");
            if r.peers.is_empty() {
                sink.error(format!("{field}.{word}"), "must name at least one peer");
            }
            for (j, p) in r.peers.iter().enumerate() {
                let pf = format!("{field}.{word}[{j}]");
                match p {
                    CnpPeer::Networks(c) if dir == "ingress" => sink.error(
                        format!("{pf}.networks"),
                        format!(
                            "networks ({} prefixes) are only allowed in egress rules",
                            c.len()
                        ),
                    ),
                    CnpPeer::Networks(c) if c.is_empty() => {
                        sink.error(format!("{pf}.networks"), "must list at least one CIDR")
                    }
                    CnpPeer::Namespaces(s) => sink.selector(&format!("{pf}.namespaces"), s),
                    CnpPeer::Pods {
                        namespace_selector,
                        pod_selector,
                    } => {
                        sink.selector(&format!("{pf}.pods.namespaceSelector"), namespace_selector);
                        sink.selector(&format!("{pf}.pods.podSelector"), pod_selector);
                    }
                    CnpPeer::Networks(_) => {}
                }
            }
            for (j, p) in r.ports.iter().enumerate() {
                if let CnpPort::Range { start, end, .. } = p {
                    if *start == 0 {
                        sink.error(
                            format!("{field}.protocols[{j}]"),
                            "port 0 is not a valid port",
                        );
                    }
                    if end < start {
                        sink.error(
                            format!("{field}.protocols[{j}]"),
                            format!("range end {end} is lower than start {start}"),
                        );
                    }
                }
            }
        }
    }
    sink.into_vec()
}

/// Every problem of every policy in the cluster, sorted.
pub fn validate_cluster(cluster: &Cluster) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for np in cluster.network_policies.values() {
        out.extend(validate_network_policy(np));
    }
    for fp in cluster.flow_policies.values() {
        out.extend(validate_flow_policy(fp, cluster));
    }
    for cnp in cluster.cluster_network_policies.values() {
        out.extend(validate_cluster_network_policy(cnp));
    }
    out.sort();
    out
}
