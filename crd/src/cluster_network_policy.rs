//! The upstream ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) as we read it: tier
//! Admin or Baseline, priority, subject, ordered ingress/egress rules with Accept/Deny/Pass,
//! `namespaces`/`pods`/`networks` peers and `protocols` with ports, ranges and named ports.
//! `nodes` and `domainNames` peers are refused with a clear error (not supported by septum).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use septum_policy::diagnostic::{Diagnostic, Diagnostics};
use septum_policy::k8s::{name_of, selector_into};
use septum_policy::model as m;

/// Spec of a ClusterNetworkPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    plural = "clusternetworkpolicies",
    status = "ClusterNetworkPolicyStatus"
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

/// Observed state, written by the implementations (read back from a cluster, e.g. `kubectl get
/// -o yaml`, it must load: it is not an unknown field). Septum reads nothing from it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyStatus {
    /// Conditions reported by each implementation.
    #[serde(default)]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
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
    /// `Accept`, `Deny` or `Pass` (skip the rest of the tier).
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
    /// `Accept`, `Deny` or `Pass` (skip the rest of the tier).
    pub action: String,
    /// Destinations.
    pub to: Vec<EgressPeer>,
    /// Ports; omitted = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolEntry>>,
}

fn pods(p: &NamespacedPods, field: &str, errors: &mut Diagnostics) -> m::CnpPeer {
    m::CnpPeer::Pods {
        namespace_selector: selector_into(
            &p.namespace_selector,
            &format!("{field}.namespaceSelector"),
            errors,
        ),
        pod_selector: selector_into(&p.pod_selector, &format!("{field}.podSelector"), errors),
    }
}

fn one_of(count: usize, field: &str, what: &str, errors: &mut Diagnostics) -> bool {
    if count != 1 {
        errors.error(field, format!("set exactly one of {what} (found {count})"));
    }
    count == 1
}

fn port_u16(n: i32, field: &str) -> Result<u16, Diagnostic> {
    u16::try_from(n)
        .ok()
        .filter(|x| *x != 0)
        .ok_or_else(|| Diagnostic::error(field, format!("port {n} is outside 1-65535")))
}

fn protocols(
    list: Option<&Vec<ProtocolEntry>>,
    field: &str,
    errors: &mut Diagnostics,
) -> Vec<m::CnpPort> {
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
        if !one_of(count, &f, "tcp, udp, sctp, destinationNamedPort", errors) {
            continue;
        }
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
                if let Some(n) = errors.ok(port_u16(*n, &format!("{pf}.number"))) {
                    out.push(m::CnpPort::Range {
                        protocol: proto,
                        start: n,
                        end: n,
                    });
                }
            }
            Some(Port {
                number: None,
                range: Some(r),
            }) => {
                let start = errors.ok(port_u16(r.start, &format!("{pf}.range.start")));
                let end = errors.ok(port_u16(r.end, &format!("{pf}.range.end")));
                match (start, end) {
                    (Some(start), Some(end)) if end < start => errors.error(
                        format!("{pf}.range"),
                        format!("end {end} is lower than start {start}"),
                    ),
                    (Some(start), Some(end)) => out.push(m::CnpPort::Range {
                        protocol: proto,
                        start,
                        end,
                    }),
                    _ => {}
                }
            }
            Some(_) => errors.error(pf, "set exactly one of number, range"),
        }
    }
    out
}

fn action(a: &str, tier: m::CnpTier, field: &str) -> Result<m::CnpAction, Diagnostic> {
    match (a, tier) {
        ("Accept", _) => Ok(m::CnpAction::Accept),
        ("Deny", _) => Ok(m::CnpAction::Deny),
        // The upstream CRD takes Pass in both tiers; in Baseline it ends Baseline's say.
        ("Pass", _) => Ok(m::CnpAction::Pass),
        (other, _) => Err(Diagnostic::error(
            field,
            format!("unknown action {other:?} (Accept, Deny, Pass)"),
        )),
    }
}

/// Converts into the policy model, with every error.
impl TryFrom<&ClusterNetworkPolicy> for m::ClusterNetworkPolicy {
    type Error = Vec<Diagnostic>;

    fn try_from(o: &ClusterNetworkPolicy) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let name = name_of(&o.metadata, &mut errors);
        let tier = match o.spec.tier.as_str() {
            "Admin" => Some(m::CnpTier::Admin),
            "Baseline" => Some(m::CnpTier::Baseline),
            other => {
                errors.error(
                    "spec.tier",
                    format!("unknown tier {other:?} (Admin, Baseline)"),
                );
                None
            }
        };
        let priority = errors.ok(u32::try_from(o.spec.priority)
            .ok()
            .filter(|p| *p <= 1000)
            .ok_or_else(|| {
                Diagnostic::error(
                    "spec.priority",
                    format!("priority {} is outside 0-1000", o.spec.priority),
                )
            }));
        let s = &o.spec.subject;
        one_of(
            usize::from(s.namespaces.is_some()) + usize::from(s.pods.is_some()),
            "spec.subject",
            "namespaces, pods",
            &mut errors,
        );
        let subject = match (&s.namespaces, &s.pods) {
            (Some(ns), _) => Some(m::CnpSubject::Namespaces(selector_into(
                ns,
                "spec.subject.namespaces",
                &mut errors,
            ))),
            (_, Some(p)) => Some(m::CnpSubject::Pods {
                namespace_selector: selector_into(
                    &p.namespace_selector,
                    "spec.subject.pods.namespaceSelector",
                    &mut errors,
                ),
                pod_selector: selector_into(
                    &p.pod_selector,
                    "spec.subject.pods.podSelector",
                    &mut errors,
                ),
            }),
            _ => None,
        };
        // Rule actions are checked against the tier; an unknown tier reads as Admin here (the
        // tier itself is already an error).
        let rule_tier = tier.unwrap_or(m::CnpTier::Admin);
        let mut ingress = Vec::new();
        for (i, r) in o.spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{i}]");
            if r.from.is_empty() {
                errors.error(format!("{field}.from"), "must name at least one peer");
            }
            let mut peers = Vec::new();
            for (j, p) in r.from.iter().enumerate() {
                let pf = format!("{field}.from[{j}]");
                if !one_of(
                    usize::from(p.namespaces.is_some()) + usize::from(p.pods.is_some()),
                    &pf,
                    "namespaces, pods",
                    &mut errors,
                ) {
                    continue;
                }
                match (&p.namespaces, &p.pods) {
                    (Some(ns), _) => peers.push(m::CnpPeer::Namespaces(selector_into(
                        ns,
                        &format!("{pf}.namespaces"),
                        &mut errors,
                    ))),
                    (_, Some(x)) => peers.push(pods(x, &format!("{pf}.pods"), &mut errors)),
                    _ => {}
                }
            }
            let action = errors.ok(action(&r.action, rule_tier, &format!("{field}.action")));
            let ports = protocols(r.protocols.as_ref(), &field, &mut errors);
            if let Some(action) = action {
                ingress.push(m::CnpRule {
                    name: r.name.clone().unwrap_or_default(),
                    action,
                    peers,
                    ports,
                });
            }
        }
        let mut egress = Vec::new();
        for (i, r) in o.spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{i}]");
            if r.to.is_empty() {
                errors.error(format!("{field}.to"), "must name at least one peer");
            }
            let mut peers = Vec::new();
            for (j, p) in r.to.iter().enumerate() {
                let pf = format!("{field}.to[{j}]");
                if p.nodes.is_some() {
                    errors.error(
                        format!("{pf}.nodes"),
                        "nodes peers are not supported by septum",
                    );
                    continue;
                }
                if p.domain_names.is_some() {
                    errors.error(
                        format!("{pf}.domainNames"),
                        "domainNames peers are not supported by septum",
                    );
                    continue;
                }
                if !one_of(
                    usize::from(p.namespaces.is_some())
                        + usize::from(p.pods.is_some())
                        + usize::from(p.networks.is_some()),
                    &pf,
                    "namespaces, pods, networks",
                    &mut errors,
                ) {
                    continue;
                }
                match (&p.namespaces, &p.pods, &p.networks) {
                    (Some(ns), _, _) => peers.push(m::CnpPeer::Namespaces(selector_into(
                        ns,
                        &format!("{pf}.namespaces"),
                        &mut errors,
                    ))),
                    (_, Some(x), _) => peers.push(pods(x, &format!("{pf}.pods"), &mut errors)),
                    (_, _, Some(nets)) => {
                        if nets.is_empty() {
                            errors.error(format!("{pf}.networks"), "must list at least one CIDR");
                            continue;
                        }
                        let mut cidrs = Vec::new();
                        for (k, n) in nets.iter().enumerate() {
                            cidrs.extend(errors.ok(
                                n.parse::<septum_policy::cidr::Cidr>().map_err(|e| {
                                    Diagnostic::error(format!("{pf}.networks[{k}]"), format!("{e}"))
                                }),
                            ));
                        }
                        peers.push(m::CnpPeer::Networks(cidrs));
                    }
                    _ => {}
                }
            }
            let action = errors.ok(action(&r.action, rule_tier, &format!("{field}.action")));
            let ports = protocols(r.protocols.as_ref(), &field, &mut errors);
            if let Some(action) = action {
                egress.push(m::CnpRule {
                    name: r.name.clone().unwrap_or_default(),
                    action,
                    peers,
                    ports,
                });
            }
        }
        let (Some(tier), Some(priority), Some(subject)) = (tier, priority, subject) else {
            return Err(errors.into_vec());
        };
        errors.finish(m::ClusterNetworkPolicy {
            name,
            tier,
            priority,
            subject,
            ingress,
            egress,
        })
    }
}
