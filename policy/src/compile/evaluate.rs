//! Tier semantics: the final decision of one subject, in one direction, toward one peer, over
//! the whole (protocol, port) space. Admin rules decide first (in order; Accept and Deny decide,
//! Pass hands over to the namespaced tier); then, if a NetworkPolicy or FlowPolicy isolates the
//! subject, only a namespaced allow lets a flow through (an Audit-mode policy turns its would-be
//! denies into audits); otherwise Baseline rules decide, and nothing else allows.

use septum_datapath_common::{Action, Cookie};

use super::index::{Index, RuleData};
use super::{Decision, IdentityInfo, Peer};
use crate::model::Protocol;
use crate::ports::{PortSel, Segmented};
use crate::rules::{Direction, PortItem, PortMatch, Rule, RuleAction, Tier};

/// Port selections of a rule for one destination (`named`: the destination pod's named ports).
fn port_sels(ports: &PortMatch, named: Option<&[(String, Protocol, u16)]>) -> Vec<PortSel> {
    match ports {
        PortMatch::Any => vec![PortSel::All],
        PortMatch::Items(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    PortItem::Sel(s) => out.push(*s),
                    PortItem::Named { name, protocol } => {
                        for (n, p, port) in named.unwrap_or(&[]) {
                            if n == name && protocol.is_none_or(|x| x == *p) {
                                out.push(PortSel::Range(*p, *port, *port));
                            }
                        }
                    }
                }
            }
            out
        }
    }
}

/// Whether a rule's ports cover (protocol, port) for a destination with these named ports.
pub fn port_matches(
    ports: &PortMatch,
    named: Option<&[(String, Protocol, u16)]>,
    protocol: Protocol,
    port: u16,
) -> bool {
    port_sels(ports, named).iter().any(|s| match s {
        PortSel::All => true,
        PortSel::Protocol(p) => *p == protocol,
        PortSel::Range(p, lo, hi) => *p == protocol && *lo <= port && port <= *hi,
    })
}

/// Admin-tier paint value: accept, deny or pass, with cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdminVal {
    None,
    Verdict(Decision),
    Pass,
}

/// The cookies of the isolations of a subject in one direction ([`Cookie::NONE`]: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct IsolationCookies {
    /// The first enforcing isolation (its default deny drops).
    pub(super) enforce: Cookie,
    /// The first isolation, enforcing or audit (its default deny at least audits).
    pub(super) any: Cookie,
}

/// The tiers painted over the (protocol, port) space by the rules that match one peer. Rules
/// are painted last first, so that an earlier rule overwrites a later one where both match.
#[derive(Clone, Debug)]
pub(super) struct TierPaint {
    admin: Segmented<AdminVal>,
    baseline: Segmented<Decision>,
    /// Cookie of the first enforcing namespaced allow (none: no allow).
    allow_enforce: Segmented<Cookie>,
    /// Cookie of the first namespaced allow, audit-mode ones included (none: no allow).
    allow_any: Segmented<Cookie>,
}

impl TierPaint {
    /// Nothing painted: every tier is silent.
    pub(super) fn new() -> Self {
        Self {
            admin: Segmented::constant(AdminVal::None),
            baseline: Segmented::constant(Decision::UNPOLICED),
            allow_enforce: Segmented::constant(Cookie::NONE),
            allow_any: Segmented::constant(Cookie::NONE),
        }
    }

    /// Paints what `rule` says on `sel` (call in reverse evaluation order).
    pub(super) fn paint(&mut self, rule: &Rule, sel: PortSel) {
        match rule.tier {
            Tier::Admin => self.admin.paint(
                sel,
                match rule.action {
                    RuleAction::Allow => AdminVal::Verdict(Decision::allow(rule.cookie)),
                    RuleAction::Deny => AdminVal::Verdict(Decision::deny(rule.cookie)),
                    RuleAction::Pass => AdminVal::Pass,
                },
            ),
            Tier::Namespaced => {
                if rule.enforce {
                    self.allow_enforce.paint(sel, rule.cookie);
                }
                self.allow_any.paint(sel, rule.cookie);
            }
            Tier::Baseline => self.baseline.paint(
                sel,
                match rule.action {
                    RuleAction::Deny => Decision::deny(rule.cookie),
                    _ => Decision::allow(rule.cookie),
                },
            ),
            Tier::Builtin => {}
        }
    }

    /// The final decision: Admin where it decides; else, when isolated, the namespaced tier
    /// (allowed by some rule, or the isolation's default deny; where only an Audit-mode policy
    /// would deny, audit); else Baseline.
    pub(super) fn decide(&self, iso: IsolationCookies) -> Segmented<Decision> {
        let tier = |allow: &Segmented<Cookie>, iso: Cookie| -> Segmented<Decision> {
            if iso == Cookie::NONE {
                self.baseline.clone()
            } else {
                allow.map(|c| {
                    if c != Cookie::NONE {
                        Decision::allow(c)
                    } else {
                        Decision::deny(iso)
                    }
                })
            }
        };
        let enforced = tier(&self.allow_enforce, iso.enforce);
        let namespaced = if iso.any == iso.enforce {
            enforced
        } else {
            let hypothetical = tier(&self.allow_any, iso.any);
            enforced.zip(&hypothetical, |e, h| {
                if e.action == Action::Deny {
                    e
                } else if h.action == Action::Deny {
                    Decision::audit(h.cookie)
                } else {
                    e
                }
            })
        };
        self.admin.zip(&namespaced, |a, n| match a {
            AdminVal::Verdict(d) => d,
            AdminVal::Pass | AdminVal::None => n,
        })
    }
}

/// What evaluation reads of one subject in one direction.
pub(super) struct SubjectCtx<'a> {
    pub(super) subject: &'a IdentityInfo,
    pub(super) direction: Direction,
    /// Its rules of that direction, in evaluation order.
    pub(super) rules: Vec<&'a RuleData>,
    pub(super) isolation: IsolationCookies,
}

impl Index {
    /// The rules and isolations of subject `s` in `direction`.
    pub(super) fn subject_ctx<'a>(
        &'a self,
        s: &'a IdentityInfo,
        direction: Direction,
    ) -> SubjectCtx<'a> {
        let rules: Vec<&RuleData> = self
            .subject_rules
            .get(&s.number)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|h| &self.rules[h])
            .filter(|d| d.rule.direction == direction)
            .collect();
        let mut isolation = IsolationCookies::default();
        for iso in self
            .subject_isos
            .get(&s.number)
            .into_iter()
            .flat_map(|m| m.values())
        {
            if iso.direction != direction {
                continue;
            }
            if isolation.any == Cookie::NONE {
                isolation.any = iso.cookie;
            }
            if iso.enforce && isolation.enforce == Cookie::NONE {
                isolation.enforce = iso.cookie;
            }
        }
        SubjectCtx {
            subject: s,
            direction,
            rules,
            isolation,
        }
    }

    /// The decision of the subject toward `peer` over the (protocol, port) space.
    pub(super) fn evaluate(&self, ctx: &SubjectCtx<'_>, peer: &Peer<'_>) -> Segmented<Decision> {
        // Named ports resolve on the destination: the subject for ingress, a pod peer for egress.
        let named: Option<&[(String, Protocol, u16)]> = match (ctx.direction, peer) {
            (Direction::Ingress, _) => Some(&ctx.subject.key.named_ports),
            (Direction::Egress, Peer::Pod { identity, .. }) => Some(&identity.key.named_ports),
            (Direction::Egress, _) => None,
        };
        let mut tiers = TierPaint::new();
        for d in ctx.rules.iter().rev() {
            if !self.peer_matches(d, peer) {
                continue;
            }
            for sel in port_sels(&d.rule.ports, named) {
                tiers.paint(&d.rule, sel);
            }
        }
        tiers.decide(ctx.isolation)
    }
}
