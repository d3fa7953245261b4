//! The `FlowPolicy` CRD: allowed service-to-service flows in operators' words. Subjects and peers
//! by Service (resolved through its selector; ports by Service port name or number, meaning the
//! `targetPort`), by pod and namespace selector, by service account, or by CIDR; TCP/UDP/SCTP
//! ports and ranges; `mode: Enforce | Audit`. The schema and CEL rules reject what they can at
//! admission; [`FlowPolicy::to_model`] rejects the rest with the field named, and
//! [`status_conditions`] turns problems into status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use septum_policy::diagnostic::{Diagnostic, Diagnostics};
use septum_policy::k8s::{name_of, namespace_of, port_ref, selector_into};
use septum_policy::model as m;

/// Spec of a FlowPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "septum.dev",
    version = "v1alpha1",
    kind = "FlowPolicy",
    plural = "flowpolicies",
    shortname = "flowpol",
    namespaced,
    status = "FlowPolicyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.ingress) || has(self.egress)", "message": "set ingress, egress or both"}
]))]
pub struct FlowPolicySpec {
    /// `Enforce` (default) drops what is not allowed; `Audit` lets it pass and reports it.
    #[serde(default)]
    pub mode: Mode,
    /// The pods this policy applies to (in the policy's namespace).
    pub subject: Subject,
    /// Allowed inbound flows. Present (even empty) = the subject is isolated for ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Allowed outbound flows. Present (even empty) = the subject is isolated for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// Enforcement mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    /// Deny what no rule allows.
    #[default]
    Enforce,
    /// Report what would be denied; drop nothing.
    Audit,
}

/// Exactly one way of naming the subject pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.service), has(self.podSelector), has(self.serviceAccount)].filter(x, x).size() == 1",
     "message": "set exactly one of service, podSelector, serviceAccount"}
]))]
pub struct Subject {
    /// The backends of this Service (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub service: Option<String>,
    /// Pods matching this selector (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Pods running as this service account (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account: Option<String>,
}

/// A reference to a namespaced object (namespace defaults to the policy's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace (the policy's when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A prefix with carve-outs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "isCIDR(self.cidr)", "message": "cidr must be a CIDR such as 10.0.0.0/8"},
    {"rule": "!has(self.except) || self.except.all(e, isCIDR(e) && cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength())",
     "message": "every except must be a CIDR strictly inside cidr"}
]))]
pub struct CidrBlock {
    /// The prefix (matches pod IPs too).
    pub cidr: String,
    /// Carve-outs inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// Exactly one way of naming peers (podSelector and namespaceSelector may be combined: AND).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.service), has(self.podSelector) || has(self.namespaceSelector), has(self.serviceAccount), has(self.cidr)].filter(x, x).size() == 1",
     "message": "set exactly one of service, podSelector/namespaceSelector, serviceAccount, cidr"}
]))]
pub struct Peer {
    /// The backends of a Service; rule ports then name Service ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ObjectRef>,
    /// Pods by labels (in the policy's namespace unless namespaceSelector is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods running as a service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ObjectRef>,
    /// Addresses in a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<CidrBlock>,
}

/// Protocols.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl From<Protocol> for m::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => m::Protocol::Tcp,
            Protocol::Udp => m::Protocol::Udp,
            Protocol::Sctp => m::Protocol::Sctp,
        }
    }
}

/// A port, a named port, a Service port, or a range.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.endPort) || (has(self.port) && type(self.port) == int && self.endPort >= self.port)",
     "message": "endPort needs a numeric port and must not be lower than it"}
]))]
pub struct Port {
    /// TCP (default), UDP or SCTP. Toward a Service, a Service port is its number and
    /// protocol together: with a protocol, only that protocol's port; without one, every
    /// Service port with that number (53/TCP and 53/UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["TCP", "UDP", "SCTP"]))]
    pub protocol: Option<String>,
    /// Number or name. Toward a Service: a Service port (name or number), meaning its
    /// targetPort. Otherwise a container port number or name. Omitted: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of a range (numeric `port` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
}

/// Allowed inbound flows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Sources (at least one).
    #[schemars(length(min = 1))]
    pub from: Vec<Peer>,
    /// Ports; omitted = every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
}

/// Allowed outbound flows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Destinations (at least one).
    #[schemars(length(min = 1))]
    pub to: Vec<Peer>,
    /// Ports; omitted = every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
}

/// Observed state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowPolicyStatus {
    /// `Accepted` (valid, every reference resolves, compiled) and `Programmed` (every node's
    /// agent enforces the current version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes whose agent enforces the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programmed_nodes: Option<u32>,
    /// Nodes septum computes a state for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
}

fn convert_peer(p: &Peer, field: &str, errors: &mut Diagnostics) -> Option<m::FlowPeer> {
    let count = [
        p.service.is_some(),
        p.pod_selector.is_some() || p.namespace_selector.is_some(),
        p.service_account.is_some(),
        p.cidr.is_some(),
    ]
    .into_iter()
    .filter(|x| *x)
    .count();
    if count != 1 {
        errors.error(
            field,
            format!(
                "set exactly one of service, podSelector/namespaceSelector, serviceAccount, cidr (found {count})"
            ),
        );
        return None;
    }
    if let Some(s) = &p.service {
        return Some(m::FlowPeer::Service {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        });
    }
    if let Some(s) = &p.service_account {
        return Some(m::FlowPeer::ServiceAccount {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        });
    }
    if let Some(b) = &p.cidr {
        let cidr = errors.ok(b
            .cidr
            .parse::<septum_policy::cidr::Cidr>()
            .map_err(|e| Diagnostic::error(format!("{field}.cidr.cidr"), format!("{e}"))));
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let f = format!("{field}.cidr.except[{i}]");
            let Some(c) = errors.ok(e
                .parse::<septum_policy::cidr::Cidr>()
                .map_err(|x| Diagnostic::error(&f, format!("{x}"))))
            else {
                continue;
            };
            if let Some(cidr) = cidr
                && (!cidr.contains(&c) || c == cidr)
            {
                errors.error(f, format!("except {c} must be strictly inside cidr {cidr}"));
                continue;
            }
            except.push(c);
        }
        return cidr.map(|cidr| m::FlowPeer::Cidr { cidr, except });
    }
    Some(m::FlowPeer::Pods {
        namespace_selector: p
            .namespace_selector
            .as_ref()
            .map(|s| selector_into(s, &format!("{field}.namespaceSelector"), errors)),
        pod_selector: p
            .pod_selector
            .as_ref()
            .map(|s| selector_into(s, &format!("{field}.podSelector"), errors)),
    })
}

fn convert_ports(
    ports: Option<&Vec<Port>>,
    field: &str,
    errors: &mut Diagnostics,
) -> Vec<m::FlowPort> {
    let mut out = Vec::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let f = format!("{field}.ports[{i}]");
        let port = errors.optional(p.port.as_ref(), |x| port_ref(x, &format!("{f}.port")));
        let end_port = match p.end_port {
            None => Some(None),
            Some(e) => {
                let e = errors.ok(u16::try_from(e).ok().filter(|x| *x != 0).ok_or_else(|| {
                    Diagnostic::error(
                        format!("{f}.endPort"),
                        format!("endPort {e} is outside 1-65535"),
                    )
                }));
                match (e, &port) {
                    (None, _) | (_, None) => None,
                    (Some(e), Some(Some(m::PortRef::Number(n)))) if e >= *n => Some(Some(e)),
                    (Some(e), Some(Some(m::PortRef::Number(n)))) => {
                        errors.error(
                            format!("{f}.endPort"),
                            format!("endPort {e} is lower than port {n}"),
                        );
                        None
                    }
                    (Some(e), Some(_)) => {
                        errors.error(
                            format!("{f}.endPort"),
                            format!("endPort {e} needs a numeric port"),
                        );
                        None
                    }
                }
            }
        };
        let protocol = errors.optional(p.protocol.as_deref(), |x| {
            septum_policy::k8s::protocol(Some(x), &format!("{f}.protocol"))
        });
        if let (Some(port), Some(end_port), Some(protocol)) = (port, end_port, protocol) {
            out.push(m::FlowPort {
                protocol,
                port,
                end_port,
            });
        }
    }
    out
}

/// Converts into the policy model, rejecting what the CEL rules reject (for objects that did
/// not pass through an API server, like files), with every error.
impl TryFrom<&FlowPolicy> for m::FlowPolicy {
    type Error = Vec<Diagnostic>;

    fn try_from(o: &FlowPolicy) -> Result<Self, Self::Error> {
        let mut errors = Diagnostics::new();
        let name = name_of(&o.metadata, &mut errors);
        let namespace = namespace_of(&o.metadata);
        let s = &o.spec.subject;
        let count = [
            s.service.is_some(),
            s.pod_selector.is_some(),
            s.service_account.is_some(),
        ]
        .into_iter()
        .filter(|x| *x)
        .count();
        let subject = if count != 1 {
            errors.error(
                "spec.subject",
                format!("set exactly one of service, podSelector, serviceAccount (found {count})"),
            );
            None
        } else if let Some(svc) = &s.service {
            Some(m::FlowSubject::Service(svc.clone()))
        } else if let Some(sel) = &s.pod_selector {
            Some(m::FlowSubject::Pods(selector_into(
                sel,
                "spec.subject.podSelector",
                &mut errors,
            )))
        } else {
            Some(m::FlowSubject::ServiceAccount(
                s.service_account.clone().unwrap_or_default(),
            ))
        };
        if o.spec.ingress.is_none() && o.spec.egress.is_none() {
            errors.error("spec", "set ingress, egress or both");
        }
        let mut ingress = None;
        if let Some(rules) = &o.spec.ingress {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                let field = format!("spec.ingress[{i}]");
                if r.from.is_empty() {
                    errors.error(format!("{field}.from"), "must name at least one peer");
                }
                let mut peers = Vec::new();
                for (j, p) in r.from.iter().enumerate() {
                    peers.extend(convert_peer(p, &format!("{field}.from[{j}]"), &mut errors));
                }
                out.push(m::FlowRule {
                    peers,
                    ports: convert_ports(r.ports.as_ref(), &field, &mut errors),
                });
            }
            ingress = Some(out);
        }
        let mut egress = None;
        if let Some(rules) = &o.spec.egress {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                let field = format!("spec.egress[{i}]");
                if r.to.is_empty() {
                    errors.error(format!("{field}.to"), "must name at least one peer");
                }
                let mut peers = Vec::new();
                for (j, p) in r.to.iter().enumerate() {
                    peers.extend(convert_peer(p, &format!("{field}.to[{j}]"), &mut errors));
                }
                out.push(m::FlowRule {
                    peers,
                    ports: convert_ports(r.ports.as_ref(), &field, &mut errors),
                });
            }
            egress = Some(out);
        }
        let Some(subject) = subject else {
            return Err(errors.into_vec());
        };
        errors.finish(m::FlowPolicy {
            namespace,
            name,
            mode: match o.spec.mode {
                Mode::Enforce => m::FlowMode::Enforce,
                Mode::Audit => m::FlowMode::Audit,
            },
            subject,
            ingress,
            egress,
        })
    }
}

/// Status conditions for a FlowPolicy: `Valid` (False with every problem when the spec is
/// invalid or references something missing) and `Ready`.
pub fn status_conditions(
    problems: &[Diagnostic],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let errors: Vec<&Diagnostic> = problems.iter().filter(|p| p.is_error()).collect();
    let warnings: Vec<&Diagnostic> = problems.iter().filter(|p| p.is_warning()).collect();
    let describe = |ps: &[&Diagnostic]| {
        ps.iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let valid = if !errors.is_empty() {
        ("False", "InvalidSpec", describe(&errors))
    } else if !warnings.is_empty() {
        ("True", "ValidWithWarnings", describe(&warnings))
    } else {
        ("True", "Valid", "the spec is valid".to_string())
    };
    let ready = if errors.is_empty() {
        (
            "True",
            "Compiled",
            "compiled into the datapath state".to_string(),
        )
    } else {
        (
            "False",
            "InvalidSpec",
            "not compiled until the spec is fixed".to_string(),
        )
    };
    [("Valid", valid), ("Ready", ready)]
        .into_iter()
        .map(|(t, (status, reason, message))| Condition {
            type_: t.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        })
        .collect()
}
