//! FlowPolicy status: the `Accepted` condition, computed from the policy's [`Verdict`] (pure),
//! and the reconcile that writes it with a status patch when it differs from what the object
//! carries (idempotent: an unchanged verdict writes nothing, and an unchanged status keeps its
//! `lastTransitionTime`). Other condition types on the object are kept as they are.
//!
//! - `Accepted=True`, reason `Accepted`: valid, every reference resolves, compiled.
//! - `Accepted=False`, reason `Invalid`: the current version is refused; the message names every
//!   field and says whether the last accepted version stays in force.
//! - `Accepted=False`, reason `UnresolvedReferences`: valid, but a Service it names does not
//!   exist (or selects nothing, or lacks the port); enforced as written, the dangling part
//!   matching nothing until it resolves.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use septum_crd::FlowPolicy;
use septum_policy::diagnostic::Diagnostic;
use septum_policy::model::ObjectKey;
use tracing::{Instrument, debug, info_span, warn};

use crate::compiler::Verdict;
use crate::context::{Context, Error};

/// What to do after a reconcile (kube's `controller::Action`, whose delay its own runner alone
/// can read; statuses are driven by verdicts here, not by kube's `Controller`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the verdict or the object changes.
    AwaitChange,
    /// Try again after this long.
    Requeue(Duration),
}

/// The condition type of the policy's validity.
pub const ACCEPTED: &str = "Accepted";
/// The condition type of the policy's enforcement on the nodes.
pub const PROGRAMMED: &str = "Programmed";
/// Pending nodes named in a `Programmed` message.
const NAMED_PENDING: usize = 5;

/// How far the current version of a policy has reached the nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Nodes whose agent has acked a revision containing it.
    pub programmed: usize,
    /// Nodes with a state.
    pub nodes: usize,
    /// Some of the nodes still pending (sorted).
    pub pending: Vec<String>,
}

/// The `Programmed` condition: whether every node's kernel enforces the current version.
pub fn programmed_condition(
    verdict: &Verdict,
    rollout: &Rollout,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = if !verdict.errors.is_empty() {
        (
            "False",
            "NotAccepted",
            if verdict.in_force {
                "the current version is refused (see Accepted); the last accepted version stays programmed".to_string()
            } else {
                "the current version is refused (see Accepted); nothing of it is programmed"
                    .to_string()
            },
        )
    } else if rollout.nodes == 0 {
        ("False", "NoNodes", "no node has a state yet".to_string())
    } else if rollout.programmed >= rollout.nodes {
        (
            "True",
            "Programmed",
            format!(
                "enforced on all {} nodes (their agents acked the revision that carries this version)",
                rollout.nodes
            ),
        )
    } else {
        let more = rollout.nodes - rollout.programmed;
        let mut names = rollout
            .pending
            .iter()
            .take(NAMED_PENDING)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if more > NAMED_PENDING {
            names.push_str(&format!(" and {} more", more - NAMED_PENDING));
        }
        (
            "False",
            "Pending",
            format!(
                "enforced on {} of {} nodes; waiting for {names}",
                rollout.programmed, rollout.nodes
            ),
        )
    };
    Condition {
        type_: PROGRAMMED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

fn describe(ds: &[Diagnostic]) -> String {
    ds.iter()
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `Accepted` condition for a verdict.
pub fn accepted_condition(verdict: &Verdict, generation: Option<i64>, now: Time) -> Condition {
    let (status, reason, message) = if !verdict.errors.is_empty() {
        let consequence = if verdict.in_force {
            "the last accepted version stays in force"
        } else {
            "nothing of this policy is enforced"
        };
        (
            "False",
            "Invalid",
            format!("{} ({consequence})", describe(&verdict.errors)),
        )
    } else if !verdict.unresolved.is_empty() {
        (
            "False",
            "UnresolvedReferences",
            format!(
                "{} (enforced as written; what does not resolve matches nothing)",
                describe(&verdict.unresolved)
            ),
        )
    } else {
        (
            "True",
            "Accepted",
            "valid, every reference resolves, compiled".to_string(),
        )
    };
    Condition {
        type_: ACCEPTED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// The conditions to write, or `None` when `current` already holds `accepted` (a condition of
/// any type; transition times aside). A condition whose status does not change keeps its transition time.
pub fn updated_conditions(current: &[Condition], accepted: Condition) -> Option<Vec<Condition>> {
    let old = current.iter().find(|c| c.type_ == accepted.type_);
    let mut accepted = accepted;
    if let Some(old) = old {
        if old.status == accepted.status
            && old.reason == accepted.reason
            && old.message == accepted.message
            && old.observed_generation == accepted.observed_generation
        {
            return None;
        }
        if old.status == accepted.status {
            accepted.last_transition_time = old.last_transition_time.clone();
        }
    }
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| c.type_ != accepted.type_)
        .cloned()
        .collect();
    out.push(accepted);
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    Some(out)
}

/// Writes one FlowPolicy's status from its verdict (the controller-rs `reconcile`).
pub async fn reconcile(fp: Arc<FlowPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = ObjectKey::new(fp.namespace().unwrap_or_default(), fp.name_any());
    let Some(verdict) = ctx.verdict(&key) else {
        // Not compiled yet (or deleted meanwhile): the next verdict triggers us again.
        return Ok(Action::AwaitChange);
    };
    let generation = fp.meta().generation;
    let now = Time(Timestamp::now());
    let rollout = ctx.rollout(&key);
    let status = fp.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.clone();
    let mut changed = false;
    for c in [
        accepted_condition(&verdict, generation, now.clone()),
        programmed_condition(&verdict, &rollout, generation, now),
    ] {
        if let Some(next) = updated_conditions(&conditions, c) {
            conditions = next;
            changed = true;
        }
    }
    let counts = (
        u32::try_from(rollout.programmed).unwrap_or(u32::MAX),
        u32::try_from(rollout.nodes).unwrap_or(u32::MAX),
    );
    if !changed && (status.programmed_nodes, status.nodes) == (Some(counts.0), Some(counts.1)) {
        debug!("status up to date");
        return Ok(Action::AwaitChange);
    }
    let api: Api<FlowPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "status": {
            "conditions": conditions,
            "observedGeneration": generation,
            "programmedNodes": counts.0,
            "nodes": counts.1,
        }
    });
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    ctx.metrics.status_patches.inc();
    Ok(Action::AwaitChange)
}

/// What to do after a failed reconcile (the controller-rs `error_policy`): retry later.
pub fn error_policy(fp: Arc<FlowPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.status_patch_errors.inc();
    warn!(policy.namespace = fp.namespace().unwrap_or_default(), policy.name = fp.name_any(), %error, "cannot write FlowPolicy status");
    Action::Requeue(Duration::from_secs(5))
}

/// Reconciles the FlowPolicies named on `keys` one by one, as their verdicts change, with the
/// object as the reflector last saw it; failures are retried per [`error_policy`].
pub async fn run_status(
    ctx: Arc<Context>,
    mut keys: tokio::sync::mpsc::UnboundedReceiver<ObjectKey>,
) {
    let retry = ctx.status_queue.clone();
    while let Some(first) = keys.recv().await {
        // Coalesce a burst (a full sync's acks queue each policy once per node): one reconcile
        // per policy per burst.
        let mut batch = std::collections::BTreeSet::from([first]);
        while let Ok(k) = keys.try_recv() {
            batch.insert(k);
        }
        for key in batch {
            let Some(fp) = ctx.flow_policy(&key) else {
                continue;
            };
            let span =
                info_span!("reconcile", policy.namespace = %key.namespace, policy.name = %key.name);
            let result = reconcile(fp.clone(), ctx.clone()).instrument(span).await;
            if let Err(e) = result
                && let Action::Requeue(after) = error_policy(fp, &e, ctx.clone())
            {
                let retry = retry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = retry.send(key);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().expect("test time"))
    }

    #[test]
    fn invalid_policies_say_what_and_whether_anything_is_enforced() {
        let verdict = Verdict {
            errors: vec![Diagnostic::error(
                "spec.ingress[0].ports[0].endPort",
                "endPort 70 is lower than port 80",
            )],
            unresolved: Vec::new(),
            in_force: false,
        };
        let c = accepted_condition(&verdict, Some(2), t("2026-01-01T00:00:00Z"));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        assert_eq!(
            c.message,
            "spec.ingress[0].ports[0].endPort: endPort 70 is lower than port 80 (nothing of this policy is enforced)"
        );
        assert_eq!(c.observed_generation, Some(2));
        let dangling = Verdict {
            unresolved: vec![Diagnostic::warning(
                "spec.subject.service",
                "Service shop/web does not exist",
            )],
            in_force: true,
            ..Verdict::default()
        };
        let c = accepted_condition(&dangling, Some(1), t("2026-01-01T00:00:00Z"));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "UnresolvedReferences")
        );
        assert!(
            c.message
                .starts_with("spec.subject.service: Service shop/web does not exist")
        );
    }

    #[test]
    fn unchanged_conditions_are_not_rewritten_and_keep_their_transition_time() {
        let ok = Verdict {
            in_force: true,
            ..Verdict::default()
        };
        let first = accepted_condition(&ok, Some(1), t("2026-01-01T00:00:00Z"));
        let other = Condition {
            type_: "Programmed".into(),
            ..first.clone()
        };
        let current = vec![first.clone(), other.clone()];
        assert_eq!(
            updated_conditions(
                &current,
                accepted_condition(&ok, Some(1), t("2026-02-01T00:00:00Z"))
            ),
            None
        );
        let next = updated_conditions(
            &current,
            accepted_condition(&ok, Some(2), t("2026-02-01T00:00:00Z")),
        )
        .expect("generation moved");
        assert_eq!(next.len(), 2);
        assert_eq!(next[1], other, "other conditions are kept");
        assert_eq!(next[0].observed_generation, Some(2));
        assert_eq!(next[0].last_transition_time, first.last_transition_time);
    }

    #[test]
    fn programmed_says_how_many_nodes_enforce_the_version_and_names_the_rest() {
        let ok = Verdict {
            in_force: true,
            ..Verdict::default()
        };
        let now = t("2026-01-01T00:00:00Z");
        let pending: Vec<String> = (0..7).map(|i| format!("node-{i}")).collect();
        let c = programmed_condition(
            &ok,
            &Rollout {
                programmed: 3,
                nodes: 10,
                pending: pending.clone(),
            },
            Some(4),
            now.clone(),
        );
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Pending"));
        assert_eq!(
            c.message,
            "enforced on 3 of 10 nodes; waiting for node-0, node-1, node-2, node-3, node-4 and 2 more"
        );
        assert_eq!(c.observed_generation, Some(4));
        let c = programmed_condition(
            &ok,
            &Rollout {
                programmed: 10,
                nodes: 10,
                pending: Vec::new(),
            },
            Some(4),
            now.clone(),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Programmed")
        );
        let refused = Verdict {
            errors: vec![Diagnostic::error("spec.subject", "bad")],
            unresolved: Vec::new(),
            in_force: false,
        };
        let c = programmed_condition(&refused, &Rollout::default(), None, now.clone());
        assert_eq!(c.reason, "NotAccepted");
        assert!(c.message.contains("nothing of it is programmed"));
        let c = programmed_condition(&ok, &Rollout::default(), None, now);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "NoNodes"));
    }
}
