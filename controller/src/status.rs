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

/// The condition type.
pub const ACCEPTED: &str = "Accepted";

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

/// The conditions to write, or `None` when `current` already says `accepted` (transition
/// times aside). A condition whose status does not change keeps its transition time.
pub fn updated_conditions(current: &[Condition], accepted: Condition) -> Option<Vec<Condition>> {
    let old = current.iter().find(|c| c.type_ == ACCEPTED);
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
        .filter(|c| c.type_ != ACCEPTED)
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
    let accepted = accepted_condition(&verdict, generation, Time(Timestamp::now()));
    let current = fp
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let Some(conditions) = updated_conditions(current, accepted) else {
        debug!("status up to date");
        return Ok(Action::AwaitChange);
    };
    let api: Api<FlowPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "status": { "conditions": conditions, "observedGeneration": generation }
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
    while let Some(key) = keys.recv().await {
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
}
