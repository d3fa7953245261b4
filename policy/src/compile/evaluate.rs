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
                    RuleAction::Allow => Decision::allow(rule.cookie),
                    // Pass skips Baseline's later rules: nothing decides, the default allows.
                    RuleAction::Pass => Decision::UNPOLICED,
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

#[cfg(test)]
mod tests {
    use septum_datapath_common::proto;

    use super::*;
    use crate::allocation::PolicyKind;
    use crate::model::ObjectKey;
    use crate::rules::{NamespaceMatch, PeerMatch, PodMatch, PolicyRef, RuleOrder};
    use crate::selector::LabelSelector;

    const ALL: PortSel = PortSel::All;

    fn port(p: u16) -> PortSel {
        PortSel::Range(Protocol::Tcp, p, p)
    }

    fn rule(tier: Tier, action: RuleAction, enforce: bool, cookie: u32) -> Rule {
        Rule {
            cookie: Cookie::new(cookie),
            tier,
            order: RuleOrder::default(),
            enforce,
            direction: Direction::Ingress,
            action,
            subject: PodMatch {
                namespace: NamespaceMatch::Exact("ns".into()),
                pods: LabelSelector::everything(),
                service_account: None,
            },
            peers: vec![PeerMatch::Any],
            ports: PortMatch::Any,
            policy: PolicyRef {
                kind: PolicyKind::ClusterNetworkPolicy,
                object: ObjectKey::new("", "p"),
            },
        }
    }

    fn admin(action: RuleAction, cookie: u32) -> Rule {
        rule(Tier::Admin, action, true, cookie)
    }

    fn baseline(action: RuleAction, cookie: u32) -> Rule {
        rule(Tier::Baseline, action, true, cookie)
    }

    /// A NetworkPolicy or FlowPolicy allow (`enforce` false: an Audit-mode FlowPolicy's).
    fn namespaced(enforce: bool, cookie: u32) -> Rule {
        rule(Tier::Namespaced, RuleAction::Allow, enforce, cookie)
    }

    fn isolated(enforce: u32, any: u32) -> IsolationCookies {
        IsolationCookies {
            enforce: Cookie::new(enforce),
            any: Cookie::new(any),
        }
    }

    const NOT_ISOLATED: IsolationCookies = IsolationCookies {
        enforce: Cookie::NONE,
        any: Cookie::NONE,
    };

    /// The decision of rules given in evaluation order (painted last first, as `evaluate`
    /// does), at each TCP port of `ports`.
    fn decide(rules: &[(Rule, PortSel)], iso: IsolationCookies, ports: &[u16]) -> Vec<Decision> {
        let mut tiers = TierPaint::new();
        for (r, sel) in rules.iter().rev() {
            tiers.paint(r, *sel);
        }
        let f = tiers.decide(iso);
        ports.iter().map(|p| f.get(proto::TCP, *p)).collect()
    }

    fn allow(c: u32) -> Decision {
        Decision::allow(Cookie::new(c))
    }

    fn deny(c: u32) -> Decision {
        Decision::deny(Cookie::new(c))
    }

    fn audit(c: u32) -> Decision {
        Decision::audit(Cookie::new(c))
    }

    #[test]
    fn admin_decides_before_the_namespaced_tier_and_baseline() {
        let rules = [
            (admin(RuleAction::Deny, 10), port(80)),
            (admin(RuleAction::Allow, 11), port(81)),
            (namespaced(true, 20), ALL),
            (baseline(RuleAction::Deny, 40), ALL),
        ];
        assert_eq!(
            decide(&rules, isolated(30, 30), &[80, 81, 82]),
            vec![deny(10), allow(11), allow(20)]
        );
    }

    #[test]
    fn the_first_matching_admin_rule_wins() {
        let accept_first = [
            (admin(RuleAction::Allow, 10), port(80)),
            (
                admin(RuleAction::Deny, 11),
                PortSel::Range(Protocol::Tcp, 80, 90),
            ),
        ];
        assert_eq!(
            decide(&accept_first, NOT_ISOLATED, &[80, 85, 91]),
            vec![allow(10), deny(11), Decision::UNPOLICED]
        );
        let deny_first = [
            (
                admin(RuleAction::Deny, 11),
                PortSel::Range(Protocol::Tcp, 80, 90),
            ),
            (admin(RuleAction::Allow, 10), port(80)),
        ];
        assert_eq!(decide(&deny_first, NOT_ISOLATED, &[80]), vec![deny(11)]);
    }

    #[test]
    fn a_baseline_pass_skips_the_rest_of_baseline() {
        // Upstream takes Pass in the Baseline tier: it skips Baseline's later rules, and the
        // default (allow, unpoliced) follows.
        let rules = [
            (baseline(RuleAction::Pass, 40), port(80)),
            (baseline(RuleAction::Deny, 41), ALL),
        ];
        assert_eq!(
            decide(&rules, NOT_ISOLATED, &[80, 81]),
            vec![Decision::UNPOLICED, deny(41)]
        );
        // The namespaced tier, when it isolates, still decides before Baseline.
        assert_eq!(decide(&rules, isolated(30, 30), &[80]), vec![deny(30)]);
    }

    #[test]
    fn pass_hands_the_decision_to_the_namespaced_tier() {
        let rules = [
            (admin(RuleAction::Pass, 10), port(80)),
            (admin(RuleAction::Pass, 12), port(82)),
            (admin(RuleAction::Deny, 11), ALL),
            (namespaced(true, 20), port(82)),
            (baseline(RuleAction::Deny, 40), ALL),
        ];
        // Isolated: a passed flow no namespaced rule allows meets the default deny; one a
        // namespaced rule allows is allowed; a flow Pass does not cover meets the Admin deny.
        assert_eq!(
            decide(&rules, isolated(30, 30), &[80, 81, 82]),
            vec![deny(30), deny(11), allow(20)]
        );
        // Not isolated: the passed flow goes on to Baseline.
        assert_eq!(
            decide(&rules, NOT_ISOLATED, &[80, 81]),
            vec![deny(40), deny(11)]
        );
        // With no Baseline rule either, nothing polices it.
        assert_eq!(
            decide(&rules[..3], NOT_ISOLATED, &[80]),
            vec![Decision::UNPOLICED]
        );
    }

    #[test]
    fn an_isolated_subject_is_allowed_only_by_namespaced_rules() {
        let rules = [
            (namespaced(true, 20), port(80)),
            (namespaced(true, 21), PortSel::Range(Protocol::Tcp, 80, 81)),
            (baseline(RuleAction::Allow, 40), ALL),
        ];
        // The first allowing rule is reported; Baseline is never reached.
        assert_eq!(
            decide(&rules, isolated(30, 30), &[80, 81, 82]),
            vec![allow(20), allow(21), deny(30)]
        );
    }

    #[test]
    fn without_isolation_baseline_decides_in_order() {
        let rules = [
            (baseline(RuleAction::Deny, 41), port(80)),
            (baseline(RuleAction::Allow, 40), ALL),
        ];
        assert_eq!(
            decide(&rules, NOT_ISOLATED, &[80, 81]),
            vec![deny(41), allow(40)]
        );
        assert_eq!(decide(&[], NOT_ISOLATED, &[80]), vec![Decision::UNPOLICED]);
    }

    #[test]
    fn in_the_namespaced_tier_an_enforced_deny_wins_over_audit() {
        // An enforcing isolation and an Audit-mode one; the Audit-mode policy allows port 80,
        // the enforcing one allows port 82.
        let rules = [
            (namespaced(false, 21), port(80)),
            (namespaced(true, 20), port(82)),
        ];
        assert_eq!(
            decide(&rules, isolated(30, 31), &[80, 81, 82]),
            vec![deny(30), deny(30), allow(20)]
        );
    }

    #[test]
    fn an_audit_mode_isolation_alone_audits_what_it_would_deny() {
        let rules = [(namespaced(false, 21), port(80))];
        let iso = IsolationCookies {
            enforce: Cookie::NONE,
            any: Cookie::new(31),
        };
        assert_eq!(
            decide(&rules, iso, &[80, 81]),
            vec![Decision::UNPOLICED, audit(31)]
        );
        // Where Baseline denies, the deny stands; the audit only reports would-be denies.
        let with_baseline = [
            (namespaced(false, 21), port(80)),
            (baseline(RuleAction::Deny, 41), port(81)),
        ];
        assert_eq!(
            decide(&with_baseline, iso, &[81, 82]),
            vec![deny(41), audit(31)]
        );
    }
}
