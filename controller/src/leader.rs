//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! a replica takes the Lease when it is free or expired (optimistic concurrency on its
//! resourceVersion, so two replicas racing get one 409), renews it every `retry`, and gives up
//! leadership when it cannot renew within `renew_deadline`: the process then exits, so a
//! replica never acts on a Lease it may have lost. Only the leader watches, writes status and
//! serves the node-state stream; the others wait (and are not ready).
//!
//! [`decide`] is the pure part: what a replica may do with the Lease as it reads it now.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};

/// Timing, as client-go's defaults.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica (the pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// Time between attempts.
    pub retry: Duration,
}

impl LeaseSettings {
    /// client-go's defaults (15 s, 10 s, 2 s) for `identity` on `namespace/name`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a replica may do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Take,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it until then.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Whether `me` may take or renew `spec` at `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Take;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(t) if t.checked_add(duration).is_ok_and(|end| end > now) => Decision::Wait { holder },
        _ => Decision::Take,
    }
}

fn spec_for(s: &LeaseSettings, old: Option<&LeaseSpec>, now: Timestamp, taking: bool) -> LeaseSpec {
    let transitions = old.and_then(|o| o.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(s.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(s.duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if taking {
            Some(MicroTime(now))
        } else {
            old.and_then(|o| o.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taking && old.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One attempt: `Ok(true)` when this replica holds the Lease afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    s: &LeaseSettings,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&s.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let decision = decide(spec, &s.identity, now);
    let taking = match &decision {
        Decision::Wait { holder } => {
            debug!(%holder, "the Lease is held");
            return Ok(false);
        }
        Decision::Take => true,
        Decision::Renew => false,
    };
    let result = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec_for(s, None, now, true)),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // The resourceVersion read above makes this a compare-and-swap: a replica that
            // raced us gets a 409.
            lease.spec = Some(spec_for(s, lease.spec.as_ref(), now, taking));
            api.replace(&s.name, &PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(_) => {
            if taking {
                info!(lease = %s.name, identity = %s.identity, "became the leader");
            }
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until this replica leads.
pub async fn acquire(api: &Api<Lease>, s: &LeaseSettings) {
    loop {
        match try_acquire_or_renew(api, s).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot read or write the Lease"),
        }
        tokio::time::sleep(s.retry).await;
    }
}

/// Renews the Lease until renewing fails for `renew_deadline`; returns when leadership is lost.
pub async fn hold(api: &Api<Lease>, s: &LeaseSettings) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(s.retry).await;
        match try_acquire_or_renew(api, s).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                warn!("another replica holds the Lease");
                return;
            }
            Err(e) => warn!(error = %e, "cannot renew the Lease"),
        }
        if last_renewed.elapsed() > s.renew_deadline {
            warn!(deadline = ?s.renew_deadline, "could not renew the Lease in time");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("test time")
    }

    fn held(by: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_is_waited_for_an_expired_one_is_taken() {
        let now = t("2026-01-01T00:00:20Z");
        assert_eq!(decide(None, "me", now), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "me", now),
            Decision::Take
        );
        assert_eq!(
            decide(Some(&held("other", "2026-01-01T00:00:10Z")), "me", now),
            Decision::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&held("other", "2026-01-01T00:00:04Z")), "me", now),
            Decision::Take,
            "renewed 16 s ago with a 15 s duration: expired"
        );
        assert_eq!(
            decide(Some(&held("me", "2026-01-01T00:00:01Z")), "me", now),
            Decision::Renew
        );
        let no_time = LeaseSpec {
            holder_identity: Some("other".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(decide(Some(&no_time), "me", now), Decision::Take);
    }

    #[test]
    fn taking_counts_a_transition_renewing_keeps_the_acquire_time() {
        let s = LeaseSettings::new("septum-system", "septum-controller", "me");
        let old = held("other", "2026-01-01T00:00:04Z");
        let taken = spec_for(&s, Some(&old), t("2026-01-01T00:00:20Z"), true);
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(1));
        let renewed = spec_for(&s, Some(&taken), t("2026-01-01T00:00:22Z"), false);
        assert_eq!(renewed.acquire_time, taken.acquire_time);
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(
            renewed.renew_time,
            Some(MicroTime(t("2026-01-01T00:00:22Z")))
        );
    }
}
