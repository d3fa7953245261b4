//! Checks of parsed objects that neither the types nor the conversions into the model make, the
//! ones the API server makes for objects that come through it: names (DNS labels and
//! subdomains), label keys and values (in metadata and in every selector), port names
//! (IANA service names), unique Service ports, CIDRs with host bits set, a namespace on a
//! cluster-scoped object. Unlike a conversion error, a finding does not stop the object from
//! loading, so every finding of one object is reported together. The name rules themselves
//! live in [`septum_policy::names`], their one home, shared with the semantic validation of
//! policy port names.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use septum_policy::diagnostic::{Diagnostic, Diagnostics};

use crate::cluster_network_policy::ClusterNetworkPolicy;
use crate::flow_policy::{FlowPolicy, Peer};

pub use septum_policy::names::{
    dns_label, dns_subdomain, dns1035_label, label_key, label_value, port_name, service_port_name,
};

fn labels(
    sink: &mut Diagnostics,
    field: &str,
    l: Option<&std::collections::BTreeMap<String, String>>,
) {
    for (k, v) in l.into_iter().flatten() {
        sink.check(field, label_key(k));
        sink.check(format!("{field}.{k}"), label_value(v));
    }
}

fn selector(sink: &mut Diagnostics, field: &str, s: &LabelSelector) {
    labels(
        sink,
        &format!("{field}.matchLabels"),
        s.match_labels.as_ref(),
    );
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        sink.check(format!("{f}.key"), label_key(&e.key));
        for (j, v) in e.values.iter().flatten().enumerate() {
            sink.check(format!("{f}.values[{j}]"), label_value(v));
        }
    }
}

/// Name checks by kind: which rule the API server applies to `metadata.name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 label.
    Label,
    /// DNS-1035 label.
    Label1035,
    /// DNS-1123 subdomain.
    Subdomain,
}

fn metadata(sink: &mut Diagnostics, m: &ObjectMeta, rule: NameRule, namespaced: bool) {
    if let Some(n) = &m.name {
        let r = match rule {
            NameRule::Label => dns_label(n),
            NameRule::Label1035 => dns1035_label(n),
            NameRule::Subdomain => dns_subdomain(n),
        };
        sink.check("metadata.name", r);
    }
    match (&m.namespace, namespaced) {
        // Empty means the default namespace, as for kubectl.
        (Some(ns), _) if ns.is_empty() => {}
        (Some(ns), true) => sink.check("metadata.namespace", dns_label(ns)),
        (Some(ns), false) => sink.warn(
            "metadata.namespace",
            format!("this kind is cluster-scoped: namespace {ns:?} is ignored"),
        ),
        (None, _) => {}
    }
    labels(sink, "metadata.labels", m.labels.as_ref());
}

fn named_port(sink: &mut Diagnostics, field: &str, p: Option<&IntOrString>) {
    if let Some(IntOrString::String(s)) = p {
        // A string is a name even when it spells a number (`"80"` is refused by the API
        // server's `IsValidPortName`); empty names are conversion errors.
        if !s.is_empty() {
            sink.check(field, port_name(s));
        }
    }
}

fn cidr_host_bits(sink: &mut Diagnostics, field: &str, raw: &str) {
    if let (Ok(c), Some((addr, _))) = (
        raw.parse::<septum_policy::cidr::Cidr>(),
        raw.split_once('/'),
    ) && septum_policy::cidr::parse_ip_sloppy(addr) != Some(c.addr())
    {
        sink.warn(
            field,
            format!("{raw:?} has host bits set: it means {c} (write {c})"),
        );
    }
}

/// Findings for a Namespace.
pub fn namespace(o: &core::Namespace) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Label, false);
    s.into_vec()
}

/// Findings for a Node.
pub fn node(o: &core::Node) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Subdomain, false);
    s.into_vec()
}

/// Findings for a Pod.
pub fn pod(o: &core::Pod) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Subdomain, true);
    let mut names = BTreeSet::new();
    for (ci, c) in o
        .spec
        .iter()
        .flat_map(|sp| sp.containers.iter())
        .enumerate()
    {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            // An empty name is no name (`validateContainerPorts` checks only non-empty ones).
            if let Some(n) = p.name.as_ref().filter(|n| !n.is_empty()) {
                let f = format!("spec.containers[{ci}].ports[{pi}].name");
                s.check(&f, port_name(n));
                if !names.insert(n.clone()) {
                    s.warn(
                        f,
                        format!("duplicate port name {n:?} in the pod: the name is ambiguous"),
                    );
                }
            }
        }
    }
    if let Some(st) = &o.status
        && let (Some(ip), Some(first)) = (&st.pod_ip, st.pod_ips.as_ref().and_then(|l| l.first()))
        && ip != &first.ip
    {
        s.warn(
            "status.podIPs[0].ip",
            format!(
                "{:?} differs from status.podIP {ip:?} (podIPs is used)",
                first.ip
            ),
        );
    }
    s.into_vec()
}

/// Findings for a Service.
pub fn service(o: &core::Service) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Label1035, true);
    let Some(spec) = &o.spec else {
        return s.into_vec();
    };
    if let Some(sel) = &spec.selector {
        labels(&mut s, "spec.selector", Some(sel));
    }
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        match &p.name {
            // Service port names are DNS-1123 labels of up to 63 characters
            // (`validateServicePort`), not the 15-character IANA names of container ports.
            Some(n) if !n.is_empty() => {
                s.check(format!("{f}.name"), service_port_name(n));
                if !names.insert(n.clone()) {
                    s.error(format!("{f}.name"), format!("duplicate port name {n:?}"));
                }
            }
            _ if ports.len() > 1 => s.error(
                format!("{f}.name"),
                "required when the Service has more than one port",
            ),
            _ => {}
        }
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !numbers.insert((p.port, proto.clone())) {
            s.error(
                format!("{f}.port"),
                format!("duplicate port {}/{proto}", p.port),
            );
        }
        named_port(&mut s, &format!("{f}.targetPort"), p.target_port.as_ref());
    }
    s.into_vec()
}

/// Findings for an EndpointSlice: port names (DNS labels, unique), and slices whose endpoints
/// septum does not read (FQDN addresses; no `kubernetes.io/service-name` label).
pub fn endpoint_slice(o: &discovery::EndpointSlice) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Subdomain, true);
    let mut names = BTreeSet::new();
    for (i, p) in o.ports.iter().flatten().enumerate() {
        let name = p.name.clone().unwrap_or_default();
        let f = format!("ports[{i}].name");
        if !name.is_empty() {
            s.check(&f, dns_label(&name));
        }
        if !names.insert(name.clone()) {
            s.error(f, format!("duplicate port name {name:?}"));
        }
    }
    if o.address_type == "FQDN" && !o.endpoints.is_empty() {
        s.warn(
            "addressType",
            "FQDN endpoints name no address septum can enforce: they add no backend to the Service",
        );
    }
    let service = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(septum_policy::model::SERVICE_NAME_LABEL));
    if service.is_none() {
        s.warn(
            "metadata.labels",
            format!(
                "no {} label: the slice belongs to no Service",
                septum_policy::model::SERVICE_NAME_LABEL
            ),
        );
    }
    s.into_vec()
}

fn np_ports(s: &mut Diagnostics, field: &str, ports: Option<&Vec<net::NetworkPolicyPort>>) {
    for (i, p) in ports.into_iter().flatten().enumerate() {
        named_port(s, &format!("{field}.ports[{i}].port"), p.port.as_ref());
    }
}

fn np_peer(s: &mut Diagnostics, field: &str, p: &net::NetworkPolicyPeer) {
    if let Some(sel) = &p.pod_selector {
        selector(s, &format!("{field}.podSelector"), sel);
    }
    if let Some(sel) = &p.namespace_selector {
        selector(s, &format!("{field}.namespaceSelector"), sel);
    }
    if let Some(b) = &p.ip_block {
        cidr_host_bits(s, &format!("{field}.ipBlock.cidr"), &b.cidr);
        for (i, e) in b.except.iter().flatten().enumerate() {
            cidr_host_bits(s, &format!("{field}.ipBlock.except[{i}]"), e);
        }
    }
}

/// Findings for a NetworkPolicy.
pub fn network_policy(o: &net::NetworkPolicy) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Subdomain, true);
    let Some(spec) = &o.spec else {
        return s.into_vec();
    };
    if let Some(sel) = &spec.pod_selector {
        selector(&mut s, "spec.podSelector", sel);
    }
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        np_ports(&mut s, &f, r.ports.as_ref());
        for (j, p) in r.from.iter().flatten().enumerate() {
            np_peer(&mut s, &format!("{f}.from[{j}]"), p);
        }
    }
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        np_ports(&mut s, &f, r.ports.as_ref());
        for (j, p) in r.to.iter().flatten().enumerate() {
            np_peer(&mut s, &format!("{f}.to[{j}]"), p);
        }
    }
    s.into_vec()
}

fn flow_peer(s: &mut Diagnostics, field: &str, p: &Peer) {
    if let Some(r) = &p.service {
        s.check(format!("{field}.service.name"), dns1035_label(&r.name));
        if let Some(ns) = &r.namespace {
            s.check(format!("{field}.service.namespace"), dns_label(ns));
        }
    }
    if let Some(r) = &p.service_account {
        s.check(
            format!("{field}.serviceAccount.name"),
            dns_subdomain(&r.name),
        );
        if let Some(ns) = &r.namespace {
            s.check(format!("{field}.serviceAccount.namespace"), dns_label(ns));
        }
    }
    if let Some(sel) = &p.pod_selector {
        selector(s, &format!("{field}.podSelector"), sel);
    }
    if let Some(sel) = &p.namespace_selector {
        selector(s, &format!("{field}.namespaceSelector"), sel);
    }
    if let Some(b) = &p.cidr {
        cidr_host_bits(s, &format!("{field}.cidr.cidr"), &b.cidr);
        for (i, e) in b.except.iter().flatten().enumerate() {
            cidr_host_bits(s, &format!("{field}.cidr.except[{i}]"), e);
        }
    }
}

/// FlowPolicy ports name Service ports (DNS-1123 labels up to 63 characters) toward a Service,
/// and container ports (IANA service names) otherwise.
fn flow_ports(
    s: &mut Diagnostics,
    field: &str,
    ports: Option<&Vec<crate::flow_policy::Port>>,
    toward_service: bool,
) {
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let f = format!("{field}.ports[{i}].port");
        match p.port.as_ref() {
            Some(IntOrString::String(n)) if toward_service && !n.is_empty() => {
                s.check(f, service_port_name(n))
            }
            other => named_port(s, &f, other),
        }
    }
}

/// Findings for a FlowPolicy.
pub fn flow_policy(o: &FlowPolicy) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Subdomain, true);
    let subject = &o.spec.subject;
    if let Some(n) = &subject.service {
        s.check("spec.subject.service", dns1035_label(n));
    }
    if let Some(n) = &subject.service_account {
        s.check("spec.subject.serviceAccount", dns_subdomain(n));
    }
    if let Some(sel) = &subject.pod_selector {
        selector(&mut s, "spec.subject.podSelector", sel);
    }
    for (i, r) in o.spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        flow_ports(&mut s, &f, r.ports.as_ref(), subject.service.is_some());
        for (j, p) in r.from.iter().enumerate() {
            flow_peer(&mut s, &format!("{f}.from[{j}]"), p);
        }
    }
    for (i, r) in o.spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        let toward_service = r.to.iter().any(|p| p.service.is_some());
        flow_ports(&mut s, &f, r.ports.as_ref(), toward_service);
        for (j, p) in r.to.iter().enumerate() {
            flow_peer(&mut s, &format!("{f}.to[{j}]"), p);
        }
    }
    s.into_vec()
}

fn cnp_pods(s: &mut Diagnostics, field: &str, p: &crate::cluster_network_policy::NamespacedPods) {
    selector(
        s,
        &format!("{field}.namespaceSelector"),
        &p.namespace_selector,
    );
    selector(s, &format!("{field}.podSelector"), &p.pod_selector);
}

fn cnp_protocols(
    s: &mut Diagnostics,
    field: &str,
    list: Option<&Vec<crate::cluster_network_policy::ProtocolEntry>>,
) {
    for (i, e) in list.into_iter().flatten().enumerate() {
        // The upstream CRD takes any string here; one that is not a port name can never match a
        // container port, which is worth a warning, not a refusal.
        if let Some(n) = &e.destination_named_port
            && let Err(m) = port_name(n)
        {
            s.warn(
                format!("{field}.protocols[{i}].destinationNamedPort"),
                format!("{m}: it matches no container port"),
            );
        }
    }
}

/// Findings for a ClusterNetworkPolicy.
pub fn cluster_network_policy(o: &ClusterNetworkPolicy) -> Vec<Diagnostic> {
    let mut s = Diagnostics::new();
    metadata(&mut s, &o.metadata, NameRule::Subdomain, false);
    let subject = &o.spec.subject;
    if let Some(sel) = &subject.namespaces {
        selector(&mut s, "spec.subject.namespaces", sel);
    }
    if let Some(p) = &subject.pods {
        cnp_pods(&mut s, "spec.subject.pods", p);
    }
    for (i, r) in o.spec.ingress.iter().flatten().enumerate() {
        let f = format!("spec.ingress[{i}]");
        cnp_protocols(&mut s, &f, r.protocols.as_ref());
        for (j, p) in r.from.iter().enumerate() {
            let pf = format!("{f}.from[{j}]");
            if let Some(sel) = &p.namespaces {
                selector(&mut s, &format!("{pf}.namespaces"), sel);
            }
            if let Some(x) = &p.pods {
                cnp_pods(&mut s, &format!("{pf}.pods"), x);
            }
        }
    }
    for (i, r) in o.spec.egress.iter().flatten().enumerate() {
        let f = format!("spec.egress[{i}]");
        cnp_protocols(&mut s, &f, r.protocols.as_ref());
        for (j, p) in r.to.iter().enumerate() {
            let pf = format!("{f}.to[{j}]");
            if let Some(sel) = &p.namespaces {
                selector(&mut s, &format!("{pf}.namespaces"), sel);
            }
            if let Some(x) = &p.pods {
                cnp_pods(&mut s, &format!("{pf}.pods"), x);
            }
            for (k, n) in p.networks.iter().flatten().enumerate() {
                cidr_host_bits(&mut s, &format!("{pf}.networks[{k}]"), n);
            }
        }
    }
    s.into_vec()
}
