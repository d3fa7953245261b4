//! NetworkPolicy (networking.k8s.io/v1): `policyTypes` inference, a direction's rules only when
//! it isolates, `podSelector` alone meaning the policy's namespace, empty lists meaning "all".

use super::describe::describe_rule;
use super::{
    Direction, NamespaceMatch, NormalizedPolicy, PeerMatch, PodMatch, PolicyKind, PolicyRef,
    PortItem, PortMatch, Rule, RuleAction, RuleOrder, Section, Tier, rule_cookie,
};
use crate::allocation::AllocationStore;
use crate::model::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, PortRef, Protocol};
use crate::ports::PortSel;

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

pub(super) fn np_port(p: &NetworkPolicyPort) -> Option<PortItem> {
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
        kind: PolicyKind::NetworkPolicy,
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
        let subject_text = format!("pods[{}]", np.pod_selector);
        out.isolate(store, &policy, &subject, &subject_text, direction, true);
        for (i, r) in rules.iter().enumerate() {
            let index = i as u32;
            let c = rule_cookie(store, &policy, Section::rules(direction), index);
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
                order: RuleOrder::default(),
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
