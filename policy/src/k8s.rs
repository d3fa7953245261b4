//! Conversions from Kubernetes API objects (k8s-openapi) into the model. Every failure names the
//! field and the offending value; nothing panics on API input.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cidr::Cidr;
use crate::model::{
    ContainerPort, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicyRule, Node, Pod, PolicyType, PortRef, Protocol, Service, ServicePort,
};
use crate::selector::{LabelSelector, Operator, Requirement};

/// A Kubernetes object that does not convert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConversionError {
    /// Field path.
    pub field: String,
    /// What is wrong, with the value.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConversionError {
    ConversionError {
        field: field.into(),
        message: message.into(),
    }
}

/// Converts a label selector.
pub fn selector(s: &meta::LabelSelector, field: &str) -> Result<LabelSelector, ConversionError> {
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
                return Err(err(
                    format!("{field}.matchExpressions[{i}].operator"),
                    format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
                ));
            }
        };
        let r = Requirement {
            key: e.key.clone(),
            operator,
            values: e.values.clone().unwrap_or_default(),
        };
        r.validate()
            .map_err(|m| err(format!("{field}.matchExpressions[{i}]"), m))?;
        out.match_expressions.push(r);
    }
    Ok(out)
}

/// Parses a protocol name.
pub fn protocol(p: Option<&str>, field: &str) -> Result<Protocol, ConversionError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s)
            .ok_or_else(|| err(field, format!("unknown protocol {s:?} (TCP, UDP, SCTP)"))),
    }
}

fn port_number(n: i32, field: &str) -> Result<u16, ConversionError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(field, format!("port {n} is outside 1-65535")))
}

/// Converts an `IntOrString` port.
pub fn port_ref(p: &IntOrString, field: &str) -> Result<PortRef, ConversionError> {
    match p {
        IntOrString::Int(n) => Ok(PortRef::Number(port_number(*n, field)?)),
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => Ok(PortRef::Number(port_number(n, field)?)),
            Err(_) if !s.is_empty() => Ok(PortRef::Name(s.clone())),
            Err(_) => Err(err(field, "empty port name")),
        },
    }
}

fn ip(s: &str, field: &str) -> Result<IpAddr, ConversionError> {
    s.parse()
        .map_err(|_| err(field, format!("{s:?} is not an IP address")))
}

fn name_of(m: &meta::ObjectMeta) -> Result<String, ConversionError> {
    m.name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name", "missing"))
}

fn namespace_of(m: &meta::ObjectMeta) -> String {
    m.namespace.clone().unwrap_or_else(|| "default".to_string())
}

/// Converts a Namespace.
pub fn namespace(n: &core::Namespace) -> Result<Namespace, ConversionError> {
    Ok(Namespace {
        name: name_of(&n.metadata)?,
        labels: n.metadata.labels.clone().unwrap_or_default(),
    })
}

/// Converts a Node (its InternalIP/ExternalIP addresses).
pub fn node(n: &core::Node) -> Result<Node, ConversionError> {
    let mut ips = Vec::new();
    for (i, a) in n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            ips.push(ip(&a.address, &format!("status.addresses[{i}].address"))?);
        }
    }
    Ok(Node {
        name: name_of(&n.metadata)?,
        ips,
    })
}

/// Converts a Pod (IPs from `status.podIPs`, else `status.podIP`).
pub fn pod(p: &core::Pod) -> Result<Pod, ConversionError> {
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
            ports.push(ContainerPort {
                name: cp.name.clone(),
                port: port_number(cp.container_port, &format!("{field}.containerPort"))?,
                protocol: protocol(cp.protocol.as_deref(), &format!("{field}.protocol"))?,
            });
        }
    }
    let mut ips = Vec::new();
    if let Some(status) = &p.status {
        if let Some(list) = status.pod_ips.as_ref().filter(|l| !l.is_empty()) {
            for (i, a) in list.iter().enumerate() {
                ips.push(ip(&a.ip, &format!("status.podIPs[{i}].ip"))?);
            }
        } else if let Some(a) = &status.pod_ip {
            ips.push(ip(a, "status.podIP")?);
        }
    }
    Ok(Pod {
        namespace: namespace_of(&p.metadata),
        name: name_of(&p.metadata)?,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        ports,
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
    })
}

/// Converts a Service (every ClusterIP and externalIP is a VIP).
pub fn service(s: &core::Service) -> Result<Service, ConversionError> {
    let spec = s.spec.as_ref();
    let mut ports = Vec::new();
    for (i, p) in spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.ports[{i}]");
        ports.push(ServicePort {
            name: p.name.clone(),
            port: port_number(p.port, &format!("{field}.port"))?,
            protocol: protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?,
            target_port: p
                .target_port
                .as_ref()
                .map(|t| port_ref(t, &format!("{field}.targetPort")))
                .transpose()?,
        });
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
            cluster_ips.push(ip(&a, &field)?);
        }
    }
    Ok(Service {
        namespace: namespace_of(&s.metadata),
        name: name_of(&s.metadata)?,
        selector: spec.and_then(|s| s.selector.clone()),
        ports,
        cluster_ips,
    })
}

fn np_peer(p: &net::NetworkPolicyPeer, field: &str) -> Result<NetworkPolicyPeer, ConversionError> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(err(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        let cidr: Cidr = b
            .cidr
            .parse()
            .map_err(|e| err(format!("{field}.ipBlock.cidr"), format!("{e}")))?;
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            except.push(
                e.parse()
                    .map_err(|x| err(format!("{field}.ipBlock.except[{i}]"), format!("{x}")))?,
            );
        }
        return Ok(NetworkPolicyPeer::IpBlock { cidr, except });
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err(err(
            field,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        ));
    }
    Ok(NetworkPolicyPeer::Pods {
        pod_selector: p
            .pod_selector
            .as_ref()
            .map(|s| selector(s, &format!("{field}.podSelector")))
            .transpose()?,
        namespace_selector: p
            .namespace_selector
            .as_ref()
            .map(|s| selector(s, &format!("{field}.namespaceSelector")))
            .transpose()?,
    })
}

fn np_ports(
    ports: Option<&Vec<net::NetworkPolicyPort>>,
    field: &str,
) -> Result<Vec<NetworkPolicyPort>, ConversionError> {
    let mut out = Vec::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let f = format!("{field}.ports[{i}]");
        out.push(NetworkPolicyPort {
            protocol: p
                .protocol
                .as_deref()
                .map(|x| protocol(Some(x), &format!("{f}.protocol")))
                .transpose()?,
            port: p
                .port
                .as_ref()
                .map(|x| port_ref(x, &format!("{f}.port")))
                .transpose()?,
            end_port: p
                .end_port
                .map(|e| port_number(e, &format!("{f}.endPort")))
                .transpose()?,
        });
    }
    Ok(out)
}

/// Converts a NetworkPolicy.
pub fn network_policy(np: &net::NetworkPolicy) -> Result<NetworkPolicy, ConversionError> {
    let spec = np.spec.clone().unwrap_or_default();
    let policy_types = match &spec.policy_types {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                out.push(match t.as_str() {
                    "Ingress" => PolicyType::Ingress,
                    "Egress" => PolicyType::Egress,
                    other => {
                        return Err(err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (Ingress, Egress)"),
                        ));
                    }
                });
            }
            Some(out)
        }
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        let mut peers = Vec::new();
        for (j, p) in r.from.iter().flatten().enumerate() {
            peers.push(np_peer(p, &format!("{field}.from[{j}]"))?);
        }
        ingress.push(NetworkPolicyRule {
            peers,
            ports: np_ports(r.ports.as_ref(), &field)?,
        });
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        let mut peers = Vec::new();
        for (j, p) in r.to.iter().flatten().enumerate() {
            peers.push(np_peer(p, &format!("{field}.to[{j}]"))?);
        }
        egress.push(NetworkPolicyRule {
            peers,
            ports: np_ports(r.ports.as_ref(), &field)?,
        });
    }
    Ok(NetworkPolicy {
        namespace: namespace_of(&np.metadata),
        name: name_of(&np.metadata)?,
        pod_selector: spec
            .pod_selector
            .as_ref()
            .map(|s| selector(s, "spec.podSelector"))
            .transpose()?
            .unwrap_or_default(),
        policy_types,
        ingress,
        egress,
    })
}
