//! Conversions from Kubernetes API objects (k8s-openapi) into the model. Every failure names the
//! field and the offending value; nothing panics on API input.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cidr::Cidr;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::model::{
    ContainerPort, EndpointPort, EndpointSlice, MANAGED_BY_LABEL, Namespace, NetworkPolicy,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicyRule, Node, Pod, PolicyType, PortRef,
    Protocol, SERVICE_NAME_LABEL, Service, ServicePort,
};
use crate::selector::{LabelSelector, Operator, Requirement};

fn err(field: impl Into<String>, message: impl Into<String>) -> Diagnostic {
    Diagnostic::error(field, message)
}

/// Converts a label selector, recording every malformed expression.
pub fn selector_into(
    s: &meta::LabelSelector,
    field: &str,
    errors: &mut Diagnostics,
) -> LabelSelector {
    let mut out = LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                errors.error(
                    format!("{field}.matchExpressions[{i}].operator"),
                    format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
                );
                continue;
            }
        };
        let r = Requirement {
            key: e.key.clone(),
            operator,
            values: e.values.clone().unwrap_or_default(),
        };
        match r.validate() {
            Ok(()) => out.match_expressions.push(r),
            Err(m) => errors.error(format!("{field}.matchExpressions[{i}]"), m),
        }
    }
    out
}

/// Parses a protocol name: TCP when missing; otherwise exactly `TCP`, `UDP` or `SCTP`, as the
/// API server validates it (`tcp` is refused there too).
pub fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, Diagnostic> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::from_api(s).ok_or_else(|| {
            err(
                field,
                format!("unknown protocol {s:?} (TCP, UDP or SCTP, upper case)"),
            )
        }),
    }
}

/// A Service or container port's protocol: the API server defaults an empty string to TCP
/// there too (`SetDefaults_ServicePort`, `SetDefaults_ContainerPort`), unlike NetworkPolicy
/// ports, whose defaulting only fills a missing one.
fn defaulted_protocol(p: Option<&str>, field: &str) -> Result<Protocol, Diagnostic> {
    protocol(p.filter(|s| !s.is_empty()), field)
}

fn port_number(n: i32, field: &str) -> Result<u16, Diagnostic> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field, format!("port {n} is outside 1-65535")))
}

/// Converts an `IntOrString` port.
pub fn port_ref(p: &IntOrString, field: &str) -> Result<PortRef, Diagnostic> {
    match p {
        IntOrString::Int(n) => Ok(PortRef::Number(port_number(*n, field)?)),
        // A string is always a name, as for the API server, which validates it with
        // `IsValidPortName` (so `"80"` is refused there, and by the name checks here).
        IntOrString::String(s) if !s.is_empty() => Ok(PortRef::Name(s.clone())),
        IntOrString::String(_) => Err(err(field, "empty port name")),
    }
}

/// A Service port's `targetPort`: `0` and `""` are defaulted to `port` by the API server
/// (`SetDefaults_Service`), so they mean the same as a missing one.
fn target_port(p: &IntOrString, field: &str) -> Result<Option<PortRef>, Diagnostic> {
    match p {
        IntOrString::Int(0) => Ok(None),
        IntOrString::String(s) if s.is_empty() => Ok(None),
        other => port_ref(other, field).map(Some),
    }
}

fn ip(s: &str, field: &str) -> Result<IpAddr, Diagnostic> {
    crate::cidr::parse_ip_sloppy(s).ok_or_else(|| err(field, format!("{s:?} is not an IP address")))
}

/// The object's name; a missing or empty one is recorded as an error.
pub fn name_of(m: &meta::ObjectMeta, errors: &mut Diagnostics) -> String {
    let name = m.name.clone().filter(|n| !n.is_empty());
    errors
        .ok(name.ok_or_else(|| err("metadata.name", "missing")))
        .unwrap_or_default()
}

/// The object's namespace; missing or empty means `default`, as kubectl reads manifests.
pub fn namespace_of(m: &meta::ObjectMeta) -> String {
    m.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// Converts a Namespace, with every error.
impl TryFrom<&core::Namespace> for Namespace {
    type Error = Vec<Diagnostic>;

    fn try_from(n: &core::Namespace) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let name = name_of(&n.metadata, &mut errors);
        errors.finish(Namespace {
            name,
            labels: n.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

/// Converts a Node (its InternalIP/ExternalIP addresses), with every error.
impl TryFrom<&core::Node> for Node {
    type Error = Vec<Diagnostic>;

    fn try_from(n: &core::Node) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let mut ips = Vec::new();
        for (i, a) in n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            // The API server does not validate node address formats: an address that is not an
            // IP cannot be a node address on the wire, so it is skipped rather than refusing the
            // whole Node.
            if (a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                && let Ok(addr) = ip(&a.address, &format!("status.addresses[{i}].address"))
            {
                ips.push(addr);
            }
        }
        let name = name_of(&n.metadata, &mut errors);
        errors.finish(Node { name, ips })
    }
}

/// Converts a Pod (IPs from `status.podIPs`, else `status.podIP`), with every error.
impl TryFrom<&core::Pod> for Pod {
    type Error = Vec<Diagnostic>;

    fn try_from(p: &core::Pod) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let spec = p.spec.as_ref();
        let mut ports = Vec::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            for (pi, cp) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                let port = errors.ok(port_number(
                    cp.container_port,
                    &format!("{field}.containerPort"),
                ));
                let protocol = errors.ok(defaulted_protocol(
                    cp.protocol.as_deref(),
                    &format!("{field}.protocol"),
                ));
                if let (Some(port), Some(protocol)) = (port, protocol) {
                    ports.push(ContainerPort {
                        name: cp.name.clone(),
                        port,
                        protocol,
                    });
                }
            }
        }
        let mut ips = Vec::new();
        if let Some(status) = &p.status {
            if let Some(list) = status.pod_ips.as_ref().filter(|l| !l.is_empty()) {
                for (i, a) in list.iter().enumerate() {
                    ips.extend(errors.ok(ip(&a.ip, &format!("status.podIPs[{i}].ip"))));
                }
            } else if let Some(a) = &status.pod_ip {
                ips.extend(errors.ok(ip(a, "status.podIP")));
            }
        }
        let name = name_of(&p.metadata, &mut errors);
        errors.finish(Pod {
            namespace: namespace_of(&p.metadata),
            name,
            labels: p.metadata.labels.clone().unwrap_or_default(),
            ips,
            ports,
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_string()),
            workload: workload_of(&p.metadata),
        })
    }
}

/// The workload a pod belongs to, `Kind/name`, from its controlling owner reference. A
/// ReplicaSet whose name is `<deployment>-<pod-template-hash>` is a Deployment's, so the pods of
/// one Deployment group together across rollouts, as `kubectl` shows them.
pub fn workload_of(meta: &meta::ObjectMeta) -> Option<String> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(h)) if !h.is_empty() => {
            if let Some(deployment) = owner.name.strip_suffix(&format!("-{h}")) {
                return Some(format!("Deployment/{deployment}"));
            }
        }
        _ => {}
    }
    Some(format!("{}/{}", owner.kind, owner.name))
}

/// Converts a Service (every ClusterIP and externalIP is a VIP), with every error.
impl TryFrom<&core::Service> for Service {
    type Error = Vec<Diagnostic>;

    fn try_from(s: &core::Service) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let spec = s.spec.as_ref();
        let mut ports = Vec::new();
        for (i, p) in spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("spec.ports[{i}]");
            let port = errors.ok(port_number(p.port, &format!("{field}.port")));
            let protocol = errors.ok(defaulted_protocol(
                p.protocol.as_deref(),
                &format!("{field}.protocol"),
            ));
            let target_port = match p.target_port.as_ref() {
                None => Some(None),
                Some(t) => errors.ok(target_port(t, &format!("{field}.targetPort"))),
            };
            if let (Some(port), Some(protocol), Some(target_port)) = (port, protocol, target_port) {
                ports.push(ServicePort {
                    name: p.name.clone(),
                    port,
                    protocol,
                    target_port,
                });
            }
        }
        let mut cluster_ips = Vec::new();
        if let Some(spec) = spec {
            let mut raw: Vec<(String, String)> = Vec::new();
            match &spec.cluster_ips {
                Some(list) if !list.is_empty() => raw.extend(
                    list.iter()
                        .enumerate()
                        .map(|(i, a)| (format!("spec.clusterIPs[{i}]"), a.clone())),
                ),
                _ => raw.extend(
                    spec.cluster_ip
                        .iter()
                        .map(|a| ("spec.clusterIP".to_string(), a.clone())),
                ),
            }
            raw.extend(
                spec.external_ips
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, a)| (format!("spec.externalIPs[{i}]"), a.clone())),
            );
            for (field, a) in raw {
                if a.is_empty() || a == "None" {
                    continue;
                }
                cluster_ips.extend(errors.ok(ip(&a, &field)));
            }
        }
        let name = name_of(&s.metadata, &mut errors);
        errors.finish(Service {
            namespace: namespace_of(&s.metadata),
            name,
            selector: spec.and_then(|s| s.selector.clone()),
            ports,
            cluster_ips,
        })
    }
}

/// Converts an EndpointSlice, with every error the API server would refuse it for
/// (`ValidateEndpointSlice`): an unknown `addressType`, an address that is not one of its type,
/// a port outside 1-65535, an unknown protocol. `FQDN` slices convert with no addresses.
impl TryFrom<&discovery::EndpointSlice> for EndpointSlice {
    type Error = Vec<Diagnostic>;

    fn try_from(s: &discovery::EndpointSlice) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let family = match s.address_type.as_str() {
            "IPv4" => Some(Some(true)),
            "IPv6" => Some(Some(false)),
            "FQDN" => Some(None),
            other => {
                errors.error(
                    "addressType",
                    format!("unknown address type {other:?} (IPv4, IPv6 or FQDN)"),
                );
                None
            }
        };
        let mut addresses = Vec::new();
        if let Some(Some(v4)) = family {
            for (i, e) in s.endpoints.iter().enumerate() {
                for (j, a) in e.addresses.iter().enumerate() {
                    let field = format!("endpoints[{i}].addresses[{j}]");
                    let Some(addr) = errors.ok(ip(a, &field)) else {
                        continue;
                    };
                    if addr.is_ipv4() == v4 {
                        addresses.push(addr);
                    } else {
                        errors.error(field, format!("{a:?} is not an {} address", s.address_type));
                    }
                }
            }
        }
        addresses.sort();
        addresses.dedup();
        let mut ports = Vec::new();
        for (i, p) in s.ports.iter().flatten().enumerate() {
            let field = format!("ports[{i}]");
            let port = match p.port {
                None => Some(None),
                Some(n) => errors
                    .ok(port_number(n, &format!("{field}.port")))
                    .map(Some),
            };
            let protocol = errors.ok(protocol(
                p.protocol.as_deref(),
                &format!("{field}.protocol"),
            ));
            if let (Some(port), Some(protocol)) = (port, protocol) {
                ports.push(EndpointPort {
                    name: p.name.clone().unwrap_or_default(),
                    port,
                    protocol,
                });
            }
        }
        let name = name_of(&s.metadata, &mut errors);
        let label = |k: &str| s.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned();
        errors.finish(EndpointSlice {
            namespace: namespace_of(&s.metadata),
            name,
            service: label(SERVICE_NAME_LABEL),
            managed_by: label(MANAGED_BY_LABEL),
            addresses,
            ports,
        })
    }
}

fn np_peer(
    p: &net::NetworkPolicyPeer,
    field: &str,
    errors: &mut Diagnostics,
) -> Option<NetworkPolicyPeer> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            errors.error(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            );
            return None;
        }
        let cidr: Option<Cidr> = errors.ok(b
            .cidr
            .parse()
            .map_err(|e| err(format!("{field}.ipBlock.cidr"), format!("{e}"))));
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            except.extend(
                errors.ok(e
                    .parse::<Cidr>()
                    .map_err(|x| err(format!("{field}.ipBlock.except[{i}]"), format!("{x}")))),
            );
        }
        return cidr.map(|cidr| NetworkPolicyPeer::IpBlock { cidr, except });
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        errors.error(
            field,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        );
        return None;
    }
    Some(NetworkPolicyPeer::Pods {
        pod_selector: p
            .pod_selector
            .as_ref()
            .map(|s| selector_into(s, &format!("{field}.podSelector"), errors)),
        namespace_selector: p
            .namespace_selector
            .as_ref()
            .map(|s| selector_into(s, &format!("{field}.namespaceSelector"), errors)),
    })
}

fn np_ports(
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    field: &str,
    errors: &mut Diagnostics,
) -> Vec<NetworkPolicyPort> {
    let mut out = Vec::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let f = format!("{field}.ports[{i}]");
        let protocol = errors.optional(p.protocol.as_deref(), |x| {
            protocol(Some(x), &format!("{f}.protocol"))
        });
        let port = errors.optional(p.port.as_ref(), |x| port_ref(x, &format!("{f}.port")));
        let end_port = errors.optional(p.end_port, |e| port_number(e, &format!("{f}.endPort")));
        if let (Some(protocol), Some(port), Some(end_port)) = (protocol, port, end_port) {
            out.push(NetworkPolicyPort {
                protocol,
                port,
                end_port,
            });
        }
    }
    out
}

/// Converts a NetworkPolicy, with every error.
impl TryFrom<&net::NetworkPolicy> for NetworkPolicy {
    type Error = Vec<Diagnostic>;

    fn try_from(np: &net::NetworkPolicy) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let spec = np.spec.clone().unwrap_or_default();
        let policy_types = spec.policy_types.as_ref().map(|list| {
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => out.push(PolicyType::Ingress),
                    "Egress" => out.push(PolicyType::Egress),
                    other => errors.error(
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {other:?} (Ingress, Egress)"),
                    ),
                }
            }
            out
        });
        let pod_selector = spec
            .pod_selector
            .as_ref()
            .map(|s| selector_into(s, "spec.podSelector", &mut errors))
            .unwrap_or_default();
        let mut ingress = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{i}]");
            let mut peers = Vec::new();
            for (j, p) in r.from.iter().flatten().enumerate() {
                peers.extend(np_peer(p, &format!("{field}.from[{j}]"), &mut errors));
            }
            ingress.push(NetworkPolicyRule {
                peers,
                ports: np_ports(r.ports.as_ref(), &field, &mut errors),
            });
        }
        let mut egress = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{i}]");
            let mut peers = Vec::new();
            for (j, p) in r.to.iter().flatten().enumerate() {
                peers.extend(np_peer(p, &format!("{field}.to[{j}]"), &mut errors));
            }
            egress.push(NetworkPolicyRule {
                peers,
                ports: np_ports(r.ports.as_ref(), &field, &mut errors),
            });
        }
        let name = name_of(&np.metadata, &mut errors);
        errors.finish(NetworkPolicy {
            namespace: namespace_of(&np.metadata),
            name,
            pod_selector,
            policy_types,
            ingress,
            egress,
        })
    }
}
