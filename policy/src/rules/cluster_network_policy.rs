//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2): Admin and Baseline tiers ordered by
//! priority, Accept/Deny/Pass actions (Pass in Baseline ends that tier: default allow), namespace and pod peers, networks.

use super::describe::describe_rule;
use super::{
    Direction, NamespaceMatch, NormalizedPolicy, PeerMatch, PodMatch, PolicyKind, PolicyRef,
    PortItem, PortMatch, Rule, RuleAction, RuleOrder, Section, Tier, rule_cookie,
};
use crate::allocation::AllocationStore;
use crate::model::{
    ClusterNetworkPolicy, CnpAction, CnpPeer, CnpPort, CnpRule, CnpSubject, CnpTier, ObjectKey,
};
use crate::ports::PortSel;
use crate::selector::LabelSelector;

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
        kind: PolicyKind::ClusterNetworkPolicy,
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
                // In Baseline, Pass ends Baseline's say: the default allow follows.
                (CnpAction::Pass, _) => RuleAction::Pass,
            };
            let c = rule_cookie(store, &policy, Section::rules(direction), index);
            let rule = Rule {
                cookie: c,
                tier,
                order: RuleOrder {
                    priority: cnp.priority,
                    index,
                },
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
