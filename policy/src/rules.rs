//! Normalization: every NetworkPolicy, FlowPolicy and ClusterNetworkPolicy becomes a list of
//! uniform [`Rule`]s (subject, direction, peers, ports, action, tier) plus the [`Isolation`]s of
//! the namespaced tier, each with a cookie and a [`RuleDescription`]. All Kubernetes defaults and
//! traps that can be settled without looking at pods are settled here: `policyTypes` inference,
//! rules of a direction the policy does not isolate being ignored, missing protocol = TCP, empty
//! peer or port lists meaning "all", `podSelector` alone meaning the policy's own namespace,
//! Service names resolved through their selectors and Service ports through their
//! `targetPort`. Malformed parts match nothing (fail closed for allow rules); the validation
//! module reports them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use septum_datapath_common::{DIRECTION_EGRESS, DIRECTION_INGRESS};

use crate::cidr::Cidr;
use crate::identity::{AllocationKey, AllocationStore, RuleId};
use crate::model::{
    Cluster, ClusterNetworkPolicy, CnpAction, CnpPeer, CnpPort, CnpRule, CnpSubject, CnpTier,
    FlowMode, FlowPeer, FlowPolicy, FlowPort, FlowSubject, NetworkPolicy, NetworkPolicyPeer,
    NetworkPolicyPort, ObjectKey, PortRef, Protocol, Service,
};
use crate::ports::PortSel;
use crate::selector::{LabelSelector, Labels};

/// Cookie reported when the node reached one of its pods (always allowed).
pub const COOKIE_HOST: u32 = 1;
/// First cookie number allocated to rules (lower ones are builtin).
pub const FIRST_RULE_COOKIE: u32 = 16;

/// Direction of a rule, from its subject's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic into the subject.
    Ingress,
    /// Traffic out of the subject.
    Egress,
}

impl Direction {
    /// Both directions.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The datapath code (`DIRECTION_*`).
    pub const fn code(self) -> u8 {
        match self {
            Self::Ingress => DIRECTION_INGRESS,
            Self::Egress => DIRECTION_EGRESS,
        }
    }

    /// `ingress` or `egress`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// Evaluation tier, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// ClusterNetworkPolicy tier Admin.
    Admin,
    /// NetworkPolicy and FlowPolicy.
    Namespaced,
    /// ClusterNetworkPolicy tier Baseline.
    Baseline,
    /// Builtin behaviour (the node reaching its pods).
    Builtin,
}

impl Tier {
    /// Lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Namespaced => "namespaced",
            Self::Baseline => "baseline",
            Self::Builtin => "builtin",
        }
    }
}

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleAction {
    /// Allow (NetworkPolicy/FlowPolicy rules, CNP Accept).
    Allow,
    /// Deny (CNP Deny).
    Deny,
    /// Hand the decision to the namespaced tier (CNP Pass, Admin only).
    Pass,
}

/// Which namespaces a [`PodMatch`] covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceMatch {
    /// One namespace by name.
    Exact(String),
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

/// A set of pods: namespace, labels and optionally service account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodMatch {
    /// Namespaces.
    pub namespace: NamespaceMatch,
    /// Pod labels.
    pub pods: LabelSelector,
    /// Service account, when the match is by service account.
    pub service_account: Option<String>,
}

impl PodMatch {
    /// Whether a pod with these attributes is in the set.
    pub fn matches(&self, namespace: &str, ns_labels: &Labels, labels: &Labels, sa: &str) -> bool {
        (match &self.namespace {
            NamespaceMatch::Exact(n) => n == namespace,
            NamespaceMatch::Selector(s) => s.matches(ns_labels),
        }) && self.pods.matches(labels)
            && self.service_account.as_deref().is_none_or(|x| x == sa)
    }
}

impl fmt::Display for PodMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            NamespaceMatch::Exact(n) => write!(f, "pods[{}] in namespace {n}", self.pods)?,
            NamespaceMatch::Selector(s) => write!(f, "pods[{}] in namespaces[{s}]", self.pods)?,
        }
        if let Some(sa) = &self.service_account {
            write!(f, " as serviceaccount {sa}")?;
        }
        Ok(())
    }
}

/// A rule peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerMatch {
    /// Every peer: pods, nodes and addresses outside the cluster.
    Any,
    /// Pods (never nodes or outside addresses; hostNetwork pods are not endpoints).
    Pods(PodMatch),
    /// Addresses in `cidr` but in none of `except` (pod and node addresses included).
    Cidr {
        /// The prefix.
        cidr: Cidr,
        /// Carve-outs.
        except: Vec<Cidr>,
    },
}

impl PeerMatch {
    /// Whether addresses whose most specific policy prefix is `class` match (Cilium's
    /// carve-out rule: inside the prefix and not inside any carve-out).
    pub fn matches_cidr_class(&self, class: &Cidr) -> bool {
        match self {
            PeerMatch::Cidr { cidr, except } => {
                cidr.contains(class) && !except.iter().any(|e| e.contains(class))
            }
            _ => false,
        }
    }
}

/// A port item of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortItem {
    /// Numeric ports.
    Sel(PortSel),
    /// A named port, resolved on the destination pod; with a protocol it must match too.
    Named {
        /// The port name.
        name: String,
        /// Required protocol (`None`: any).
        protocol: Option<Protocol>,
    },
}

/// The ports of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Every protocol and port.
    Any,
    /// These items (an empty list matches nothing).
    Items(Vec<PortItem>),
}

impl PortMatch {
    /// Whether any item is a named port.
    pub fn has_named(&self) -> bool {
        match self {
            PortMatch::Any => false,
            PortMatch::Items(items) => items.iter().any(|i| matches!(i, PortItem::Named { .. })),
        }
    }
}

/// The object a rule came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    /// `NetworkPolicy`, `FlowPolicy` or `ClusterNetworkPolicy`.
    pub kind: &'static str,
    /// Namespace (empty for cluster-scoped) and name.
    pub object: ObjectKey,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.object.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.object.name)
        } else {
            write!(f, "{} {}", self.kind, self.object)
        }
    }
}

/// One normalized rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Cookie (shared by the parts of one source rule).
    pub cookie: u32,
    /// Tier.
    pub tier: Tier,
    /// Position in evaluation order inside its tier (lower first).
    pub order: (u32, String, u32),
    /// False for rules of an Audit-mode FlowPolicy.
    pub enforce: bool,
    /// Direction.
    pub direction: Direction,
    /// Action.
    pub action: RuleAction,
    /// Subject pods.
    pub subject: PodMatch,
    /// Peers (any of them); empty matches nothing.
    pub peers: Vec<PeerMatch>,
    /// Ports.
    pub ports: PortMatch,
    /// Source object.
    pub policy: PolicyRef,
}

/// A namespaced policy isolating its subject pods in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// Cookie of the default deny it causes.
    pub cookie: u32,
    /// Direction.
    pub direction: Direction,
    /// False for Audit-mode FlowPolicies.
    pub enforce: bool,
    /// Subject pods.
    pub subject: PodMatch,
    /// Source object.
    pub policy: PolicyRef,
}

/// A human-readable account of what a cookie stands for (flow logs, explain).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleDescription {
    /// Tier.
    pub tier: Tier,
    /// Source object (kind `builtin` for builtin cookies).
    pub policy: PolicyRef,
    /// `ingress`, `egress`, `ingress isolation`, ...
    pub section: String,
    /// Rule index in its list.
    pub index: u32,
    /// One-line summary.
    pub text: String,
}

impl fmt::Display for RuleDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.tier.as_str(), self.text)
    }
}

/// The normalized form of one policy object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NormalizedPolicy {
    /// Its rules, in its own order.
    pub rules: Vec<Rule>,
    /// Its isolations.
    pub isolations: Vec<Isolation>,
    /// Descriptions of its cookies.
    pub descriptions: BTreeMap<u32, RuleDescription>,
}

impl NormalizedPolicy {
    /// Every prefix its rules name (ipBlock cidrs, carve-outs, networks).
    pub fn cidrs(&self) -> BTreeSet<Cidr> {
        let mut out = BTreeSet::new();
        for r in &self.rules {
            for p in &r.peers {
                if let PeerMatch::Cidr { cidr, except } = p {
                    out.insert(*cidr);
                    out.extend(except.iter().copied());
                }
            }
        }
        out
    }
}

fn cookie(store: &mut dyn AllocationStore, id: RuleId) -> u32 {
    store.allocate(&AllocationKey::Rule(id))
}

/// The description of the builtin host cookie.
pub fn host_description() -> RuleDescription {
    RuleDescription {
        tier: Tier::Builtin,
        policy: PolicyRef {
            kind: "builtin",
            object: ObjectKey::new("", "node-to-pod"),
        },
        section: "ingress".into(),
        index: 0,
        text: "the node may always reach its own pods".into(),
    }
}

fn ports_text(p: &PortMatch) -> String {
    match p {
        PortMatch::Any => "any port".to_string(),
        PortMatch::Items(items) if items.is_empty() => "no port".to_string(),
        PortMatch::Items(items) => items
            .iter()
            .map(|i| match i {
                PortItem::Sel(PortSel::All) => "any".to_string(),
                PortItem::Sel(PortSel::Protocol(p)) => format!("{p}/*"),
                PortItem::Sel(PortSel::Range(p, lo, hi)) if lo == hi => format!("{p}/{lo}"),
                PortItem::Sel(PortSel::Range(p, lo, hi)) => format!("{p}/{lo}-{hi}"),
                PortItem::Named {
                    name,
                    protocol: Some(p),
                } => format!("{p}/{name}"),
                PortItem::Named {
                    name,
                    protocol: None,
                } => format!("*/{name}"),
            })
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn peers_text(peers: &[PeerMatch]) -> String {
    if peers.is_empty() {
        return "nothing".to_string();
    }
    peers
        .iter()
        .map(|p| match p {
            PeerMatch::Any => "anywhere".to_string(),
            PeerMatch::Pods(m) => m.to_string(),
            PeerMatch::Cidr { cidr, except } if except.is_empty() => cidr.to_string(),
            PeerMatch::Cidr { cidr, except } => format!(
                "{cidr} except {}",
                except
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn describe_rule(rule: &Rule, index: u32, label: &str) -> RuleDescription {
    let verb = match rule.action {
        RuleAction::Allow if rule.tier == Tier::Namespaced => "allow",
        RuleAction::Allow => "accept",
        RuleAction::Deny => "deny",
        RuleAction::Pass => "pass",
    };
    let dir_word = match rule.direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    RuleDescription {
        tier: rule.tier,
        policy: rule.policy.clone(),
        section: rule.direction.as_str().to_string(),
        index,
        text: format!(
            "{} {}[{}]{}: {verb} {dir_word} {} on {}{}",
            rule.policy,
            rule.direction.as_str(),
            index,
            label,
            peers_text(&rule.peers),
            ports_text(&rule.ports),
            if rule.enforce { "" } else { " (audit)" }
        ),
    }
}

fn np_peer(ns: &str, peer: &NetworkPolicyPeer) -> Option<PeerMatch> {
    match peer {
        NetworkPolicyPeer::Pods {
            pod_selector: None,
            namespace_selector: None,
        } => None,
        NetworkPolicyPeer::Pods {
            pod_selector,
            namespace_selector,
        } => Some(PeerMatch::Pods(PodMatch {
            namespace: match namespace_selector {
                None => NamespaceMatch::Exact(ns.to_string()),
                Some(s) => NamespaceMatch::Selector(s.clone()),
            },
            pods: pod_selector.clone().unwrap_or_default(),
            service_account: None,
        })),
        NetworkPolicyPeer::IpBlock { cidr, except } => Some(PeerMatch::Cidr {
            cidr: *cidr,
            except: except.clone(),
        }),
    }
}

fn np_port(p: &NetworkPolicyPort) -> Option<PortItem> {
    let protocol = p.protocol.unwrap_or(Protocol::Tcp);
    match (&p.port, p.end_port) {
        (None, None) => Some(PortItem::Sel(PortSel::Protocol(protocol))),
        (None, Some(_)) => None,
        (Some(PortRef::Number(0)), _) => None,
        (Some(PortRef::Number(n)), None) => Some(PortItem::Sel(PortSel::Range(protocol, *n, *n))),
        (Some(PortRef::Number(n)), Some(e)) if e >= *n => {
            Some(PortItem::Sel(PortSel::Range(protocol, *n, e)))
        }
        (Some(PortRef::Number(_)), Some(_)) => None,
        (Some(PortRef::Name(name)), None) => Some(PortItem::Named {
            name: name.clone(),
            protocol: Some(protocol),
        }),
        (Some(PortRef::Name(_)), Some(_)) => None,
    }
}

/// Normalizes a NetworkPolicy.
pub fn normalize_network_policy(
    np: &NetworkPolicy,
    store: &mut dyn AllocationStore,
) -> NormalizedPolicy {
    let policy = PolicyRef {
        kind: "NetworkPolicy",
        object: np.key(),
    };
    let subject = PodMatch {
        namespace: NamespaceMatch::Exact(np.namespace.clone()),
        pods: np.pod_selector.clone(),
        service_account: None,
    };
    let mut out = NormalizedPolicy::default();
    let (iso_in, iso_out) = np.isolates();
    for (direction, isolated, rules) in [
        (Direction::Ingress, iso_in, &np.ingress),
        (Direction::Egress, iso_out, &np.egress),
    ] {
        if !isolated {
            // Rules of a direction the policy does not isolate have no effect.
            continue;
        }
        let section = match direction {
            Direction::Ingress => "ingress-isolation",
            Direction::Egress => "egress-isolation",
        };
        let c = cookie(
            store,
            RuleId {
                kind: policy.kind,
                object: policy.object.clone(),
                section,
                index: 0,
            },
        );
        out.isolations.push(Isolation {
            cookie: c,
            direction,
            enforce: true,
            subject: subject.clone(),
            policy: policy.clone(),
        });
        out.descriptions.insert(
            c,
            RuleDescription {
                tier: Tier::Namespaced,
                policy: policy.clone(),
                section: section.to_string(),
                index: 0,
                text: format!(
                    "{policy} isolates pods[{}] for {} (default deny)",
                    np.pod_selector,
                    direction.as_str()
                ),
            },
        );
        for (i, r) in rules.iter().enumerate() {
            let index = i as u32;
            let c = cookie(
                store,
                RuleId {
                    kind: policy.kind,
                    object: policy.object.clone(),
                    section: direction.as_str(),
                    index,
                },
            );
            let peers = if r.peers.is_empty() {
                vec![PeerMatch::Any]
            } else {
                r.peers
                    .iter()
                    .filter_map(|p| np_peer(&np.namespace, p))
                    .collect()
            };
            let ports = if r.ports.is_empty() {
                PortMatch::Any
            } else {
                PortMatch::Items(r.ports.iter().filter_map(np_port).collect())
            };
            let rule = Rule {
                cookie: c,
                tier: Tier::Namespaced,
                order: (0, String::new(), 0),
                enforce: true,
                direction,
                action: RuleAction::Allow,
                subject: subject.clone(),
                peers,
                ports,
                policy: policy.clone(),
            };
            out.descriptions.insert(c, describe_rule(&rule, index, ""));
            out.rules.push(rule);
        }
    }
    out
}

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

/// Normalizes a FlowPolicy; `services` resolves Service subjects, peers and ports.
pub fn normalize_flow_policy(
    fp: &FlowPolicy,
    services: &BTreeMap<ObjectKey, Service>,
    store: &mut dyn AllocationStore,
) -> NormalizedPolicy {
    let policy = PolicyRef {
        kind: "FlowPolicy",
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
        let section = match direction {
            Direction::Ingress => "ingress-isolation",
            Direction::Egress => "egress-isolation",
        };
        let c = cookie(
            store,
            RuleId {
                kind: policy.kind,
                object: policy.object.clone(),
                section,
                index: 0,
            },
        );
        out.isolations.push(Isolation {
            cookie: c,
            direction,
            enforce,
            subject: subject.clone(),
            policy: policy.clone(),
        });
        out.descriptions.insert(
            c,
            RuleDescription {
                tier: Tier::Namespaced,
                policy: policy.clone(),
                section: section.to_string(),
                index: 0,
                text: format!(
                    "{policy} isolates {subject} for {} (default deny{})",
                    direction.as_str(),
                    if enforce { "" } else { ", audit" }
                ),
            },
        );
        for (i, r) in rules.iter().enumerate() {
            let index = i as u32;
            let c = cookie(
                store,
                RuleId {
                    kind: policy.kind,
                    object: policy.object.clone(),
                    section: direction.as_str(),
                    index,
                },
            );
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
                    order: (0, String::new(), 0),
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
                order: (0, String::new(), 0),
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

fn cnp_pods(namespace_selector: &LabelSelector, pod_selector: &LabelSelector) -> PodMatch {
    PodMatch {
        namespace: NamespaceMatch::Selector(namespace_selector.clone()),
        pods: pod_selector.clone(),
        service_account: None,
    }
}

fn cnp_rule_peers(rule: &CnpRule) -> Vec<PeerMatch> {
    let mut out = Vec::new();
    for p in &rule.peers {
        match p {
            CnpPeer::Namespaces(sel) => {
                out.push(PeerMatch::Pods(cnp_pods(sel, &LabelSelector::everything())))
            }
            CnpPeer::Pods {
                namespace_selector,
                pod_selector,
            } => out.push(PeerMatch::Pods(cnp_pods(namespace_selector, pod_selector))),
            CnpPeer::Networks(cidrs) => out.extend(cidrs.iter().map(|c| PeerMatch::Cidr {
                cidr: *c,
                except: Vec::new(),
            })),
        }
    }
    out
}

fn cnp_ports(ports: &[CnpPort]) -> PortMatch {
    if ports.is_empty() {
        return PortMatch::Any;
    }
    PortMatch::Items(
        ports
            .iter()
            .filter_map(|p| match p {
                CnpPort::AnyPort(proto) => Some(PortItem::Sel(PortSel::Protocol(*proto))),
                CnpPort::Range {
                    protocol,
                    start,
                    end,
                } if start <= end => Some(PortItem::Sel(PortSel::Range(*protocol, *start, *end))),
                CnpPort::Range { .. } => None,
                CnpPort::Named(n) => Some(PortItem::Named {
                    name: n.clone(),
                    protocol: None,
                }),
            })
            .collect(),
    )
}

/// Normalizes a ClusterNetworkPolicy.
pub fn normalize_cluster_network_policy(
    cnp: &ClusterNetworkPolicy,
    store: &mut dyn AllocationStore,
) -> NormalizedPolicy {
    let policy = PolicyRef {
        kind: "ClusterNetworkPolicy",
        object: ObjectKey::new("", &cnp.name),
    };
    let subject = match &cnp.subject {
        CnpSubject::Namespaces(sel) => cnp_pods(sel, &LabelSelector::everything()),
        CnpSubject::Pods {
            namespace_selector,
            pod_selector,
        } => cnp_pods(namespace_selector, pod_selector),
    };
    let tier = match cnp.tier {
        CnpTier::Admin => Tier::Admin,
        CnpTier::Baseline => Tier::Baseline,
    };
    let mut out = NormalizedPolicy::default();
    for (direction, rules) in [
        (Direction::Ingress, &cnp.ingress),
        (Direction::Egress, &cnp.egress),
    ] {
        for (i, r) in rules.iter().enumerate() {
            let index = i as u32;
            let action = match (r.action, tier) {
                (CnpAction::Accept, _) => RuleAction::Allow,
                (CnpAction::Deny, _) => RuleAction::Deny,
                (CnpAction::Pass, Tier::Admin) => RuleAction::Pass,
                // Pass is not a Baseline action; validation reports it and it matches nothing.
                (CnpAction::Pass, _) => continue,
            };
            let c = cookie(
                store,
                RuleId {
                    kind: policy.kind,
                    object: policy.object.clone(),
                    section: direction.as_str(),
                    index,
                },
            );
            let rule = Rule {
                cookie: c,
                tier,
                order: (cnp.priority, cnp.name.clone(), index),
                enforce: true,
                direction,
                action,
                subject: subject.clone(),
                peers: cnp_rule_peers(r),
                ports: cnp_ports(&r.ports),
                policy: policy.clone(),
            };
            let label = if r.name.is_empty() {
                String::new()
            } else {
                format!(" {:?}", r.name)
            };
            let mut d = describe_rule(&rule, index, &label);
            d.text = format!("{} (priority {})", d.text, cnp.priority);
            out.descriptions.insert(c, d);
            out.rules.push(rule);
        }
    }
    out
}

/// Which policy object a [`NormalizedPolicy`] came from (its slot in a [`RuleSet`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicySlot {
    /// A ClusterNetworkPolicy by name.
    Cluster(String),
    /// A NetworkPolicy.
    Network(ObjectKey),
    /// A FlowPolicy.
    Flow(ObjectKey),
}

/// Every normalized policy of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Per source object.
    pub policies: BTreeMap<PolicySlot, NormalizedPolicy>,
}

impl RuleSet {
    /// Normalizes every policy of the cluster, in sorted order (so a fresh store allocates the
    /// same cookies for the same model).
    pub fn build(cluster: &Cluster, store: &mut dyn AllocationStore) -> Self {
        let mut policies = BTreeMap::new();
        for (name, p) in &cluster.cluster_network_policies {
            policies.insert(
                PolicySlot::Cluster(name.clone()),
                normalize_cluster_network_policy(p, store),
            );
        }
        for (k, p) in &cluster.network_policies {
            policies.insert(
                PolicySlot::Network(k.clone()),
                normalize_network_policy(p, store),
            );
        }
        for (k, p) in &cluster.flow_policies {
            policies.insert(
                PolicySlot::Flow(k.clone()),
                normalize_flow_policy(p, &cluster.services, store),
            );
        }
        Self { policies }
    }

    /// Renormalizes one slot from the cluster (removing it if the object is gone).
    pub fn refresh(
        &mut self,
        cluster: &Cluster,
        slot: &PolicySlot,
        store: &mut dyn AllocationStore,
    ) {
        let n = match slot {
            PolicySlot::Cluster(name) => cluster
                .cluster_network_policies
                .get(name)
                .map(|p| normalize_cluster_network_policy(p, store)),
            PolicySlot::Network(k) => cluster
                .network_policies
                .get(k)
                .map(|p| normalize_network_policy(p, store)),
            PolicySlot::Flow(k) => cluster
                .flow_policies
                .get(k)
                .map(|p| normalize_flow_policy(p, &cluster.services, store)),
        };
        match n {
            Some(n) => {
                self.policies.insert(slot.clone(), n);
            }
            None => {
                self.policies.remove(slot);
            }
        }
    }

    /// Every prefix named by any rule.
    pub fn cidrs(&self) -> BTreeSet<Cidr> {
        self.policies.values().flat_map(|p| p.cidrs()).collect()
    }

    /// Every cookie description, plus the builtin ones.
    pub fn descriptions(&self) -> BTreeMap<u32, RuleDescription> {
        let mut out: BTreeMap<u32, RuleDescription> = self
            .policies
            .values()
            .flat_map(|p| p.descriptions.iter().map(|(k, v)| (*k, v.clone())))
            .collect();
        out.insert(COOKIE_HOST, host_description());
        out
    }

    /// Every rule, in evaluation order: Admin (by priority, name, index), namespaced (by kind,
    /// namespace, name, index: the first allowing rule is the one reported), Baseline.
    pub fn ordered_rules(&self) -> Vec<&Rule> {
        let mut rules: Vec<&Rule> = self.policies.values().flat_map(|p| &p.rules).collect();
        rules.sort_by(|a, b| {
            (a.tier, &a.order.0, &a.order.1, a.order.2)
                .cmp(&(b.tier, &b.order.0, &b.order.1, b.order.2))
        });
        rules
    }

    /// Every isolation, in the namespaced order.
    pub fn isolations(&self) -> Vec<&Isolation> {
        self.policies.values().flat_map(|p| &p.isolations).collect()
    }
}
