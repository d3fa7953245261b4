//! The upstream ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) as we read it: tier
//! Admin or Baseline, priority, subject, ordered ingress/egress rules with Accept/Deny/Pass,
//! `namespaces`/`pods`/`networks` peers and `protocols` with ports, ranges and named ports.
//! `nodes` and `domainNames` peers are refused with a clear error (not supported by septum).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use septum_policy::k8s::{ConversionError, selector};
use septum_policy::model as m;

/// Spec of a ClusterNetworkPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    pub tier: String,
    /// 0..=1000; lower is evaluated first.
    pub priority: i32,
    /// The pods it applies to.
    pub subject: Subject,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// Pods of selected namespaces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedPods {
    /// Namespaces.
    pub namespace_selector: LabelSelector,
    /// Pods.
    pub pod_selector: LabelSelector,
}

/// Exactly one of `namespaces` or `pods`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Every pod of the selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Selected pods of selected namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPods>,
}

/// An ingress peer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressPeer {
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPods>,
}

/// An egress peer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressPeer {
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPods>,
    /// Nodes (not supported by septum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (pod IPs included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Domain names (not supported by septum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// A port range.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    /// First port.
    pub start: i32,
    /// Last port.
    pub end: i32,
}

/// A port or a range.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    /// A range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// Ports of one transport protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtocolPorts {
    /// Destination port; omitted = every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// One `protocols` entry: exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtocolEntry {
    /// TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPorts>,
    /// UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPorts>,
    /// SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPorts>,
    /// A named port of the destination pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// Ingress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass` (Admin only).
    pub action: String,
    /// Sources.
    pub from: Vec<IngressPeer>,
    /// Ports; omitted = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolEntry>>,
}

/// Egress rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass` (Admin only).
    pub action: String,
    /// Destinations.
    pub to: Vec<EgressPeer>,
    /// Ports; omitted = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolEntry>>,
}

fn cerr(field: impl Into<String>, message: impl Into<String>) -> ConversionError {
    ConversionError {
        field: field.into(),
        message: message.into(),
    }
}

fn pods(p: &NamespacedPods, field: &str) -> Result<(m::Protocol, m::CnpPeer), ConversionError> {
    Ok((
        m::Protocol::Tcp,
        m::CnpPeer::Pods {
            namespace_selector: selector(
                &p.namespace_selector,
                &format!("{field}.namespaceSelector"),
            )?,
            pod_selector: selector(&p.pod_selector, &format!("{field}.podSelector"))?,
        },
    ))
}

fn one_of(count: usize, field: &str, what: &str) -> Result<(), ConversionError> {
    if count == 1 {
        Ok(())
    } else {
        Err(cerr(
            field,
            format!("set exactly one of {what} (found {count})"),
        ))
    }
}

fn port_u16(n: i32, field: &str) -> Result<u16, ConversionError> {
    u16::try_from(n)
        .ok()
        .filter(|x| *x != 0)
        .ok_or_else(|| cerr(field, format!("port {n} is outside 1-65535")))
}

fn protocols(
    list: Option<&Vec<ProtocolEntry>>,
    field: &str,
) -> Result<Vec<m::CnpPort>, ConversionError> {
    let mut out = Vec::new();
    for (i, e) in list.into_iter().flatten().enumerate() {
        let f = format!("{field}.protocols[{i}]");
        let count = [
            e.tcp.is_some(),
            e.udp.is_some(),
            e.sctp.is_some(),
            e.destination_named_port.is_some(),
        ]
        .into_iter()
        .filter(|x| *x)
        .count();
        one_of(count, &f, "tcp, udp, sctp, destinationNamedPort")?;
        if let Some(n) = &e.destination_named_port {
            out.push(m::CnpPort::Named(n.clone()));
            continue;
        }
        let (proto, pp, name) = match (&e.tcp, &e.udp, &e.sctp) {
            (Some(p), _, _) => (m::Protocol::Tcp, p, "tcp"),
            (_, Some(p), _) => (m::Protocol::Udp, p, "udp"),
            (_, _, Some(p)) => (m::Protocol::Sctp, p, "sctp"),
            _ => continue,
        };
        let pf = format!("{f}.{name}.destinationPort");
        match &pp.destination_port {
            None => out.push(m::CnpPort::AnyPort(proto)),
            Some(Port {
                number: Some(n),
                range: None,
            }) => {
                let n = port_u16(*n, &format!("{pf}.number"))?;
                out.push(m::CnpPort::Range {
                    protocol: proto,
                    start: n,
                    end: n,
                });
            }
            Some(Port {
                number: None,
                range: Some(r),
            }) => {
                let start = port_u16(r.start, &format!("{pf}.range.start"))?;
                let end = port_u16(r.end, &format!("{pf}.range.end"))?;
                if end < start {
                    return Err(cerr(
                        format!("{pf}.range"),
                        format!("end {end} is lower than start {start}"),
                    ));
                }
                out.push(m::CnpPort::Range {
                    protocol: proto,
                    start,
                    end,
                });
            }
            Some(_) => return Err(cerr(pf, "set exactly one of number, range")),
        }
    }
    Ok(out)
}

fn action(a: &str, tier: m::CnpTier, field: &str) -> Result<m::CnpAction, ConversionError> {
    match (a, tier) {
        ("Accept", _) => Ok(m::CnpAction::Accept),
        ("Deny", _) => Ok(m::CnpAction::Deny),
        ("Pass", m::CnpTier::Admin) => Ok(m::CnpAction::Pass),
        ("Pass", m::CnpTier::Baseline) => {
            Err(cerr(field, "Pass is not allowed in the Baseline tier"))
        }
        (other, _) => Err(cerr(
            field,
            format!("unknown action {other:?} (Accept, Deny, Pass)"),
        )),
    }
}

impl ClusterNetworkPolicy {
    /// Converts into the policy model.
    pub fn to_model(&self) -> Result<m::ClusterNetworkPolicy, ConversionError> {
        let name = self
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| cerr("metadata.name", "missing"))?;
        let tier = match self.spec.tier.as_str() {
            "Admin" => m::CnpTier::Admin,
            "Baseline" => m::CnpTier::Baseline,
            other => {
                return Err(cerr(
                    "spec.tier",
                    format!("unknown tier {other:?} (Admin, Baseline)"),
                ));
            }
        };
        let priority = u32::try_from(self.spec.priority)
            .ok()
            .filter(|p| *p <= 1000)
            .ok_or_else(|| {
                cerr(
                    "spec.priority",
                    format!("priority {} is outside 0-1000", self.spec.priority),
                )
            })?;
        let s = &self.spec.subject;
        one_of(
            usize::from(s.namespaces.is_some()) + usize::from(s.pods.is_some()),
            "spec.subject",
            "namespaces, pods",
        )?;
        let subject = match (&s.namespaces, &s.pods) {
            (Some(ns), _) => m::CnpSubject::Namespaces(selector(ns, "spec.subject.namespaces")?),
            (_, Some(p)) => m::CnpSubject::Pods {
                namespace_selector: selector(
                    &p.namespace_selector,
                    "spec.subject.pods.namespaceSelector",
                )?,
                pod_selector: selector(&p.pod_selector, "spec.subject.pods.podSelector")?,
            },
            _ => return Err(cerr("spec.subject", "set exactly one of namespaces, pods")),
        };
        let mut ingress = Vec::new();
        for (i, r) in self.spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{i}]");
            if r.from.is_empty() {
                return Err(cerr(format!("{field}.from"), "must name at least one peer"));
            }
            let mut peers = Vec::new();
            for (j, p) in r.from.iter().enumerate() {
                let pf = format!("{field}.from[{j}]");
                one_of(
                    usize::from(p.namespaces.is_some()) + usize::from(p.pods.is_some()),
                    &pf,
                    "namespaces, pods",
                )?;
                peers.push(match (&p.namespaces, &p.pods) {
                    (Some(ns), _) => {
                        m::CnpPeer::Namespaces(selector(ns, &format!("{pf}.namespaces"))?)
                    }
                    (_, Some(x)) => pods(x, &format!("{pf}.pods"))?.1,
                    _ => unreachable_peer(&pf)?,
                });
            }
            ingress.push(m::CnpRule {
                name: r.name.clone().unwrap_or_default(),
                action: action(&r.action, tier, &format!("{field}.action"))?,
                peers,
                ports: protocols(r.protocols.as_ref(), &field)?,
            });
        }
        let mut egress = Vec::new();
        for (i, r) in self.spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{i}]");
            if r.to.is_empty() {
                return Err(cerr(format!("{field}.to"), "must name at least one peer"));
            }
            let mut peers = Vec::new();
            for (j, p) in r.to.iter().enumerate() {
                let pf = format!("{field}.to[{j}]");
                if p.nodes.is_some() {
                    return Err(cerr(
                        format!("{pf}.nodes"),
                        "nodes peers are not supported by septum",
                    ));
                }
                if p.domain_names.is_some() {
                    return Err(cerr(
                        format!("{pf}.domainNames"),
                        "domainNames peers are not supported by septum",
                    ));
                }
                one_of(
                    usize::from(p.namespaces.is_some())
                        + usize::from(p.pods.is_some())
                        + usize::from(p.networks.is_some()),
                    &pf,
                    "namespaces, pods, networks",
                )?;
                peers.push(match (&p.namespaces, &p.pods, &p.networks) {
                    (Some(ns), _, _) => {
                        m::CnpPeer::Namespaces(selector(ns, &format!("{pf}.namespaces"))?)
                    }
                    (_, Some(x), _) => pods(x, &format!("{pf}.pods"))?.1,
                    (_, _, Some(nets)) => {
                        if nets.is_empty() {
                            return Err(cerr(
                                format!("{pf}.networks"),
                                "must list at least one CIDR",
                            ));
                        }
                        let mut cidrs = Vec::new();
                        for (k, n) in nets.iter().enumerate() {
                            cidrs.push(n.parse().map_err(|e| {
                                cerr(format!("{pf}.networks[{k}]"), format!("{e}"))
                            })?);
                        }
                        m::CnpPeer::Networks(cidrs)
                    }
                    _ => unreachable_peer(&pf)?,
                });
            }
            egress.push(m::CnpRule {
                name: r.name.clone().unwrap_or_default(),
                action: action(&r.action, tier, &format!("{field}.action"))?,
                peers,
                ports: protocols(r.protocols.as_ref(), &field)?,
            });
        }
        Ok(m::ClusterNetworkPolicy {
            name,
            tier,
            priority,
            subject,
            ingress,
            egress,
        })
    }
}

fn unreachable_peer(field: &str) -> Result<m::CnpPeer, ConversionError> {
    Err(cerr(field, "empty peer"))
}
