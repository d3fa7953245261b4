//! Security identities: what makes two pods the same identity.
//!
//! A pod's identity is its namespace, its security-relevant labels (volatile labels that change
//! on every rollout, like `pod-template-hash`, are left out), its service account and its named
//! container ports. Named ports are part of the identity because policies resolve port names on
//! the destination pod: pods sharing an identity must resolve every name the same way, or
//! per-identity entries could not be exact. Replicas of one workload share one identity.
//!
//! Identity numbers come from an [`crate::allocation::AllocationStore`].

use crate::model::{Pod, Protocol};
use crate::selector::Labels;

/// Labels that never take part in an identity (they change on every rollout or revision and
/// would split replicas into identities of their own).
pub const VOLATILE_LABELS: [&str; 4] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
];

/// Whether a label key is excluded from identities.
pub fn is_volatile_label(key: &str) -> bool {
    VOLATILE_LABELS.contains(&key)
}

/// What makes two pods the same security identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    /// Namespace.
    pub namespace: String,
    /// Security-relevant labels.
    pub labels: Labels,
    /// Service account.
    pub service_account: String,
    /// Named container ports (name, protocol, number), sorted.
    pub named_ports: Vec<(String, Protocol, u16)>,
}

impl IdentityKey {
    /// The identity of a pod.
    pub fn of_pod(pod: &Pod) -> Self {
        let mut named_ports: Vec<(String, Protocol, u16)> = pod
            .ports
            .iter()
            .filter_map(|p| p.name.clone().map(|n| (n, p.protocol, p.port)))
            .collect();
        named_ports.sort();
        named_ports.dedup();
        Self {
            namespace: pod.namespace.clone(),
            labels: pod
                .labels
                .iter()
                .filter(|(k, _)| !is_volatile_label(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            service_account: pod.service_account.clone(),
            named_ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)]) -> Pod {
        Pod {
            namespace: "ns".into(),
            name: "p".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            ..Pod::default()
        }
    }

    #[test]
    fn volatile_labels_do_not_split_replicas() {
        let a = IdentityKey::of_pod(&pod(&[("app", "web"), ("pod-template-hash", "abc")]));
        let b = IdentityKey::of_pod(&pod(&[("app", "web"), ("pod-template-hash", "def")]));
        assert_eq!(a, b);
        let c = IdentityKey::of_pod(&pod(&[("app", "db")]));
        assert_ne!(a, c);
    }
}
