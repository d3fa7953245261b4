//! One-line, human-readable accounts of what a cookie stands for (flow logs, explain, the
//! compiled cookie table).

use super::{
    Direction, PeerMatch, PolicyKind, PolicyRef, PortItem, PortMatch, Rule, RuleAction,
    RuleDescription, Section, Tier,
};
use crate::model::ObjectKey;
use crate::ports::PortSel;

/// The description of the builtin host cookie.
pub fn host_description() -> RuleDescription {
    RuleDescription {
        tier: Tier::Builtin,
        policy: PolicyRef {
            kind: PolicyKind::Builtin,
            object: ObjectKey::new("", "node-to-pod"),
        },
        section: Section::Ingress,
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

pub(super) fn describe_rule(rule: &Rule, index: u32, label: &str) -> RuleDescription {
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
        section: Section::rules(rule.direction),
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

/// The text of an isolation's default deny.
pub(super) fn isolation_text(
    policy: &PolicyRef,
    subject_text: &str,
    direction: Direction,
    enforce: bool,
) -> String {
    format!(
        "{policy} isolates {subject_text} for {} (default deny{})",
        direction.as_str(),
        if enforce { "" } else { ", audit" }
    )
}
