//! `explain`: for a (source, destination, port or port name, protocol), the verdict and the rules
//! that decided it on the egress side (the source's policies) and on the ingress side (the
//! destination's), tier by tier. A Service destination is explained for every backend pod after
//! DNAT (Service port -> targetPort). Each side also reports what the compiled datapath entries
//! say, read the way the datapath reads them, which must agree.

use std::net::IpAddr;

use septum_datapath_common::{Cookie, Identity};
use serde::Serialize;

use crate::allocation::AllocationStore;
use crate::compile::{Decision, Engine, Peer};
use crate::lpm;
use crate::model::{
    Cluster, EndpointSlice, ObjectKey, Pod, PortRef, Protocol, Service, ServiceBackend, ServicePort,
};
use crate::rules::{Direction, PeerMatch, RuleAction, Tier};
use crate::state::action_name;

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    /// A pod.
    Pod(ObjectKey),
    /// A Service (destination only): explained for each backend.
    Service(ObjectKey),
    /// An address (a pod's, a node's or outside).
    Ip(IpAddr),
}

/// What to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainQuery {
    /// Source.
    pub from: FlowEnd,
    /// Destination.
    pub to: FlowEnd,
    /// Destination port: a number, a named port of the destination pod, or a Service port.
    pub port: PortRef,
    /// Protocol.
    pub protocol: Protocol,
}

/// Why a query cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The pod is not in the model.
    #[error("pod {0} not found")]
    UnknownPod(ObjectKey),
    /// The Service is not in the model.
    #[error("service {0} not found")]
    UnknownService(ObjectKey),
    /// A Service can only be a destination.
    #[error("a Service ({0}) can only be a destination")]
    ServiceSource(ObjectKey),
    /// The pod has no address (status.podIP(s)).
    #[error("pod {0} has no IP in status.podIP(s)")]
    NoIp(ObjectKey),
    /// The two ends have no address of a common family.
    #[error("{0} and {1} have no address of the same IP family")]
    NoCommonFamily(String, String),
    /// The Service has no such port.
    #[error("service {service} has no port {port}")]
    UnknownServicePort {
        /// Service.
        service: ObjectKey,
        /// Port asked for.
        port: String,
    },
    /// The port name does not resolve on the destination.
    #[error("port name {name:?} does not resolve to a {protocol} port on {destination}")]
    UnresolvedPortName {
        /// Name.
        name: String,
        /// Protocol.
        protocol: Protocol,
        /// Destination.
        destination: String,
    },
    /// The Service selects no pods and no EndpointSlice names endpoints for it.
    #[error(
        "service {0} has no backends (no selected pod, no EndpointSlice naming an endpoint), so septum does not know its endpoints; explain to a backend pod or IP instead"
    )]
    NoBackends(ObjectKey),
    /// The Service has backends, but none for this port toward the source: its targetPort
    /// resolves on none of the selected pods, and its manual EndpointSlices have no port for
    /// it or name only addresses of another IP family, so the flow has no destination.
    #[error(
        "service {service} port {port} has no endpoints: {}, so the flow has no destination",
        no_endpoints_cause(.target, .slices, .other_family)
    )]
    NoEndpoints {
        /// Service.
        service: ObjectKey,
        /// The Service port, `number/protocol`.
        port: String,
        /// Its targetPort, when the Service has a selector.
        target: Option<String>,
        /// The Service's manual EndpointSlices that name addresses (those with a port for it
        /// when `other_family`).
        slices: Vec<String>,
        /// Whether the slices with a port for it name only addresses of an IP family the
        /// source lacks.
        other_family: bool,
    },
}

/// What [`ExplainError::NoEndpoints`] says of the selector's pods and of the slices.
fn no_endpoints_cause(target: &Option<String>, slices: &[String], other_family: &bool) -> String {
    let mut causes = Vec::new();
    if let Some(target) = target {
        causes.push(format!(
            "its targetPort {target:?} resolves on none of the selected pods"
        ));
    }
    if !slices.is_empty() {
        let slices = slices.join(", ");
        causes.push(if *other_family {
            format!(
                "its EndpointSlices with a port for it ({slices}) name no address of the source's IP family"
            )
        } else {
            format!(
                "none of its EndpointSlices ({slices}) has a port with this port's name and protocol"
            )
        });
    }
    causes.join(", and ")
}

/// Why Service port `sp` of `svc` has no backend toward the source.
fn no_endpoints(cluster: &Cluster, svc: &Service, sp: &ServicePort) -> ExplainError {
    let key = svc.key();
    let (with_port, without_port): (Vec<&EndpointSlice>, Vec<&EndpointSlice>) = cluster
        .manual_slices(&key)
        .filter(|s| !s.addresses.is_empty())
        .partition(|s| s.port_for(sp).is_some());
    // Slices with a port for it name addresses, so those were all of the other family.
    let other_family = !with_port.is_empty();
    let named = if other_family {
        with_port
    } else {
        without_port
    };
    let slices = named.iter().map(|s| s.name.clone()).collect();
    ExplainError::NoEndpoints {
        service: svc.key(),
        port: format!("{}/{}", sp.port, sp.protocol),
        target: svc
            .selector
            .as_ref()
            .is_some_and(|s| !s.is_empty())
            .then(|| sp.target().to_string()),
        slices,
        other_family,
    }
}

/// One rule considered on one side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleReport {
    /// Cookie.
    pub cookie: Cookie,
    /// `allow`, `deny`, `pass`, `isolate`.
    pub action: String,
    /// Description.
    #[serde(rename = "rule")]
    pub description: String,
    /// Whether this rule decided the side.
    pub decisive: bool,
}

/// What one tier said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierReport {
    /// Tier name.
    pub tier: String,
    /// One-line outcome.
    pub outcome: String,
    /// Rules of this tier that match the flow (and isolations), in order.
    pub rules: Vec<RuleReport>,
}

/// One side (egress or ingress) of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SideReport {
    /// `egress` or `ingress`.
    pub direction: String,
    /// Subject pod and identity (none when that end is not a pod endpoint).
    pub subject: Option<String>,
    /// Identity of the subject.
    pub identity: Option<Identity>,
    /// Whether anything polices this side.
    pub policed: bool,
    /// `allow`, `deny` or `audit`.
    pub action: String,
    /// Decisive cookie ([`Cookie::NONE`]: not policed).
    pub cookie: Cookie,
    /// Decisive rule.
    pub decisive_rule: Option<String>,
    /// Tier by tier.
    pub tiers: Vec<TierReport>,
    /// Action and cookie read from the compiled entries like the datapath does.
    #[serde(serialize_with = "datapath_reading")]
    pub datapath: (String, Cookie),
}

/// The explanation of one flow (one backend, for Services).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowExplanation {
    /// Source, readable.
    pub from: String,
    /// Destination, readable (the backend pod for Services).
    pub to: String,
    /// Service the destination was reached through.
    pub service: Option<String>,
    /// Source address.
    #[serde(rename = "srcIP")]
    pub src_ip: IpAddr,
    /// Destination address (after DNAT).
    #[serde(rename = "dstIP")]
    pub dst_ip: IpAddr,
    /// Destination port (after DNAT and name resolution).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// `allow` or `deny` (audit passes: `allow` with `audit` set).
    pub verdict: String,
    /// Whether an Audit-mode policy would have denied it.
    pub audit: bool,
    /// Egress side.
    pub egress: SideReport,
    /// Ingress side.
    pub ingress: SideReport,
}

/// `{"action": ..., "cookie": ...}` for the datapath's reading of a side.
fn datapath_reading<S: serde::Serializer>(
    reading: &(String, Cookie),
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("DatapathReading", 2)?;
    st.serialize_field("action", &reading.0)?;
    st.serialize_field("cookie", &reading.1)?;
    st.end()
}

struct End<'a> {
    label: String,
    ip: IpAddr,
    pod: Option<&'a Pod>,
}

fn pick_ip(ips: &[IpAddr], v4: Option<bool>) -> Option<IpAddr> {
    match v4 {
        None => ips.first().copied(),
        Some(v4) => ips.iter().find(|i| i.is_ipv4() == v4).copied(),
    }
}

/// Explains a flow (one explanation per Service backend).
pub fn explain<S: AllocationStore>(
    engine: &Engine<S>,
    query: &ExplainQuery,
) -> Result<Vec<FlowExplanation>, ExplainError> {
    let cluster = engine.cluster();
    let pod = |k: &ObjectKey| {
        cluster
            .pods
            .get(k)
            .ok_or_else(|| ExplainError::UnknownPod(k.clone()))
    };
    // Destinations: (pod or ip, port ref resolved against the Service, service label).
    #[allow(clippy::type_complexity)]
    let mut dests: Vec<(FlowEnd, PortRef, Option<(String, Protocol)>)> = Vec::new();
    match &query.to {
        FlowEnd::Service(k) => {
            let svc = cluster
                .services
                .get(k)
                .ok_or_else(|| ExplainError::UnknownService(k.clone()))?;
            // A Service port is (number, protocol) or its unique name, of the query's protocol.
            let sp = svc
                .ports_matching(&query.port, Some(query.protocol))
                .next()
                .ok_or_else(|| ExplainError::UnknownServicePort {
                    service: k.clone(),
                    port: format!("{}/{}", query.port, query.protocol),
                })?;
            let source_v4: Vec<bool> = match &query.from {
                FlowEnd::Pod(p) => pod(p)?.ips.iter().map(IpAddr::is_ipv4).collect(),
                FlowEnd::Ip(ip) => vec![ip.is_ipv4()],
                FlowEnd::Service(_) => Vec::new(),
            };
            let has_manual = cluster.manual_slices(k).any(|s| !s.addresses.is_empty());
            if !has_manual && !cluster.pods.values().any(|p| svc.selects(p)) {
                return Err(ExplainError::NoBackends(k.clone()));
            }
            // The selected pods on which the targetPort resolves (EndpointSlice semantics),
            // then the addresses the manual EndpointSlices name, those of the source's family
            // only.
            let backends: Vec<ServiceBackend> = cluster
                .service_backends(svc, sp)
                .filter(|b| match b {
                    ServiceBackend::Pod { .. } => true,
                    ServiceBackend::Address { ip, .. } => {
                        source_v4.is_empty() || source_v4.contains(&ip.is_ipv4())
                    }
                })
                .collect();
            if backends.is_empty() {
                return Err(no_endpoints(cluster, svc, sp));
            }
            for b in backends {
                let (end, target) = match b {
                    ServiceBackend::Pod { pod, port } => (FlowEnd::Pod(pod.key()), port),
                    ServiceBackend::Address { ip, port } => (FlowEnd::Ip(ip), port),
                };
                dests.push((
                    end,
                    PortRef::Number(target),
                    Some((format!("service/{k}"), sp.protocol)),
                ));
            }
        }
        other => dests.push((other.clone(), query.port.clone(), None)),
    }
    let mut out = Vec::new();
    for (dest, port_ref, service) in dests {
        let protocol = service.as_ref().map_or(query.protocol, |s| s.1);
        let dst = match &dest {
            FlowEnd::Pod(k) => {
                let p = pod(k)?;
                let ip = pick_ip(&p.ips, None).ok_or_else(|| ExplainError::NoIp(k.clone()))?;
                End {
                    label: format!("pod/{k}"),
                    ip,
                    pod: Some(p),
                }
            }
            FlowEnd::Ip(ip) => End {
                label: ip.to_string(),
                ip: *ip,
                pod: cluster
                    .pods
                    .values()
                    .find(|p| !p.host_network && p.ips.contains(ip)),
            },
            FlowEnd::Service(k) => return Err(ExplainError::ServiceSource(k.clone())),
        };
        let src = match &query.from {
            FlowEnd::Pod(k) => {
                let p = pod(k)?;
                let ip = pick_ip(&p.ips, Some(dst.ip.is_ipv4())).ok_or_else(|| {
                    if p.ips.is_empty() {
                        ExplainError::NoIp(k.clone())
                    } else {
                        ExplainError::NoCommonFamily(format!("pod/{k}"), dst.label.clone())
                    }
                })?;
                End {
                    label: format!("pod/{k}"),
                    ip,
                    pod: Some(p),
                }
            }
            FlowEnd::Ip(ip) => End {
                label: ip.to_string(),
                ip: *ip,
                pod: cluster
                    .pods
                    .values()
                    .find(|p| !p.host_network && p.ips.contains(ip)),
            },
            FlowEnd::Service(k) => return Err(ExplainError::ServiceSource(k.clone())),
        };
        let port = match &port_ref {
            PortRef::Number(n) => *n,
            PortRef::Name(name) => dst
                .pod
                .and_then(|p| {
                    p.ports.iter().find(|cp| {
                        cp.name.as_deref() == Some(name.as_str()) && cp.protocol == protocol
                    })
                })
                .map(|cp| cp.port)
                .ok_or_else(|| ExplainError::UnresolvedPortName {
                    name: name.clone(),
                    protocol,
                    destination: dst.label.clone(),
                })?,
        };
        let egress = side(engine, Direction::Egress, &src, &dst, protocol, port);
        let ingress = side(engine, Direction::Ingress, &dst, &src, protocol, port);
        let deny = egress.action == "deny" || ingress.action == "deny";
        let audit = !deny && (egress.action == "audit" || ingress.action == "audit");
        out.push(FlowExplanation {
            from: src.label.clone(),
            to: dst.label.clone(),
            service: service.map(|s| s.0),
            src_ip: src.ip,
            dst_ip: dst.ip,
            port,
            protocol,
            verdict: if deny { "deny" } else { "allow" }.to_string(),
            audit,
            egress,
            ingress,
        });
    }
    Ok(out)
}

fn side<S: AllocationStore>(
    engine: &Engine<S>,
    direction: Direction,
    subject_end: &End<'_>,
    peer_end: &End<'_>,
    protocol: Protocol,
    port: u16,
) -> SideReport {
    let not_policed = |subject: Option<String>, identity: Option<Identity>| SideReport {
        direction: direction.as_str().to_string(),
        subject,
        identity,
        policed: false,
        action: "allow".to_string(),
        cookie: Cookie::NONE,
        decisive_rule: None,
        tiers: Vec::new(),
        datapath: ("allow".to_string(), Cookie::NONE),
    };
    let Some(subject_pod) = subject_end.pod.filter(|p| !p.host_network) else {
        return not_policed(None, None);
    };
    let Some(subject) = engine.pod_identity(&subject_pod.key()) else {
        return not_policed(None, None);
    };
    let label = Some(format!("pod/{}", subject_pod.key()));
    let state = engine.state();
    let rules_table = &state.rules;
    // The node reaching its own pod.
    let from_own_node = direction == Direction::Ingress
        && subject_pod.node.as_ref().is_some_and(|n| {
            engine
                .cluster()
                .nodes
                .get(n)
                .is_some_and(|node| node.ips.contains(&peer_end.ip))
                || engine.cluster().pods.values().any(|p| {
                    p.host_network && p.node.as_ref() == Some(n) && p.ips.contains(&peer_end.ip)
                })
        });
    let class = engine.class_of(peer_end.ip);
    let peer_info = peer_end
        .pod
        .filter(|p| !p.host_network)
        .and_then(|p| engine.pod_identity(&p.key()))
        .and_then(|id| engine.identities().get(&id));
    let peer = match peer_info {
        Some(identity) => Peer::Pod { identity, class },
        None => match class {
            Some(c) => Peer::Class(c),
            None => Peer::Outside,
        },
    };
    let f = engine.decide(subject, direction, &peer);
    let decision: Decision = if from_own_node {
        Decision::allow(crate::rules::COOKIE_HOST)
    } else {
        f.get(protocol.number(), port)
    };
    // Datapath reading.
    let (peer_id, peer_cidr) = match lpm::ipcache_lookup(&state.ipcache, peer_end.ip) {
        Some(e) => (
            Identity::new(e.identity),
            (e.cidr_identity != 0).then_some(Identity::new(e.cidr_identity)),
        ),
        None => (Identity::WORLD, None),
    };
    let peer_id = if from_own_node {
        Identity::HOST
    } else {
        peer_id
    };
    let dp = lpm::policy_decision(
        &state.policy,
        subject,
        direction,
        peer_id,
        peer_cidr,
        protocol.number(),
        port,
    );
    let datapath = match dp {
        Some(e) => (action_name(e.action).to_string(), Cookie::new(e.cookie)),
        None => ("allow".to_string(), Cookie::NONE),
    };
    // Tier by tier.
    let point_matches = |r: &crate::rules::Rule| -> bool {
        let peer_ok = r.peers.iter().any(|p| match (p, &peer) {
            (PeerMatch::Any, _) => true,
            (PeerMatch::Pods(m), Peer::Pod { identity, .. }) => m.matches(
                &identity.key.namespace,
                &engine.cluster().namespace_labels(&identity.key.namespace),
                &identity.key.labels,
                &identity.key.service_account,
            ),
            (PeerMatch::Cidr { .. }, Peer::Pod { class: Some(c), .. })
            | (PeerMatch::Cidr { .. }, Peer::Class(c)) => p.matches_cidr_class(c),
            _ => false,
        });
        if !peer_ok {
            return false;
        }
        let dest_named: Option<&[(String, Protocol, u16)]> = match (direction, &peer) {
            (Direction::Ingress, _) => engine
                .identities()
                .get(&subject)
                .map(|i| i.key.named_ports.as_slice()),
            (Direction::Egress, Peer::Pod { identity, .. }) => {
                Some(identity.key.named_ports.as_slice())
            }
            _ => None,
        };
        crate::compile::port_matches(&r.ports, dest_named, protocol, port)
    };
    let mut tiers = Vec::new();
    for tier in [Tier::Admin, Tier::Namespaced, Tier::Baseline] {
        let mut rules = Vec::new();
        for r in engine.rules_of(subject, direction) {
            if r.tier != tier || !point_matches(r) {
                continue;
            }
            rules.push(RuleReport {
                cookie: r.cookie,
                action: match r.action {
                    RuleAction::Allow if !r.enforce => "allow (audit)".into(),
                    RuleAction::Allow => "allow".into(),
                    RuleAction::Deny => "deny".into(),
                    RuleAction::Pass => "pass".into(),
                },
                description: rules_table
                    .get(&r.cookie)
                    .map(|d| d.text.clone())
                    .unwrap_or_default(),
                decisive: r.cookie == decision.cookie,
            });
        }
        rules.dedup_by(|a, b| a.cookie == b.cookie);
        if tier == Tier::Namespaced {
            for iso in engine.isolations_of(subject, direction) {
                rules.push(RuleReport {
                    cookie: iso.cookie,
                    action: if iso.enforce {
                        "isolate"
                    } else {
                        "isolate (audit)"
                    }
                    .into(),
                    description: rules_table
                        .get(&iso.cookie)
                        .map(|d| d.text.clone())
                        .unwrap_or_default(),
                    decisive: iso.cookie == decision.cookie,
                });
            }
        }
        let outcome = match tier {
            Tier::Admin => match rules.first() {
                None => "no rule matches: next tier".to_string(),
                Some(r) if r.action == "pass" => "pass: the namespaced tier decides".to_string(),
                Some(r) => format!("{} by the first matching rule", r.action),
            },
            Tier::Namespaced => {
                let isolated = rules.iter().any(|r| r.action.starts_with("isolate"));
                let allowed = rules.iter().any(|r| r.action.starts_with("allow"));
                match (isolated, allowed) {
                    (false, _) => "not isolated: next tier".to_string(),
                    (true, true) => "isolated; allowed by a rule".to_string(),
                    (true, false) => "isolated; no rule allows (default deny)".to_string(),
                }
            }
            _ => match rules.first() {
                None => "no rule matches: allowed".to_string(),
                Some(r) => format!("{} by the first matching rule", r.action),
            },
        };
        tiers.push(TierReport {
            tier: tier.as_str().to_string(),
            outcome,
            rules,
        });
    }
    if from_own_node {
        tiers.push(TierReport {
            tier: Tier::Builtin.as_str().to_string(),
            outcome: "the node may always reach its own pods".to_string(),
            rules: Vec::new(),
        });
    }
    SideReport {
        direction: direction.as_str().to_string(),
        subject: label,
        identity: Some(subject),
        policed: decision.cookie != Cookie::NONE
            || f != crate::ports::Segmented::constant(Decision::UNPOLICED),
        action: decision.action.as_str().to_string(),
        cookie: decision.cookie,
        decisive_rule: rules_table.get(&decision.cookie).map(|d| d.text.clone()),
        tiers,
        datapath,
    }
}
