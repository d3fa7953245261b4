//! The `IdentityAllocation` CRD (septum.dev/v1alpha1, cluster-scoped): the numbers the policy
//! engine allocated (pod, CIDR and pod-in-CIDR identities, Service ids, rule cookies) and the
//! keys they stand for, so that a controller restart allocates every number again to the same
//! key. One object (named [`OBJECT_NAME`]) holds the whole allocation; the controller is its only
//! writer (leader election keeps it single).
//!
//! Records are flat (a `kind` and the fields of that kind) rather than a tagged union so that the
//! schema stays structural, as the API server demands of CRDs. [`AllocationRecord::from_entry`]
//! and [`AllocationRecord::to_entry`] convert to and from the engine's
//! [`AllocationKey`]; a record that does not convert names its field.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use septum_datapath_common::Identity;
use septum_policy::allocation::{AllocationKey, PolicyKind, RuleId, Section};
use septum_policy::cidr::Cidr;
use septum_policy::diagnostic::Diagnostic;
use septum_policy::identity::IdentityKey;
use septum_policy::model::{ObjectKey, Protocol};

/// The name of the one object holding the allocation.
pub const OBJECT_NAME: &str = "septum";

/// Spec of the IdentityAllocation: every number allocated so far.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "septum.dev",
    version = "v1alpha1",
    kind = "IdentityAllocation",
    plural = "identityallocations"
)]
#[serde(rename_all = "camelCase")]
pub struct IdentityAllocationSpec {
    /// Every allocation, sorted by kind and key.
    #[serde(default)]
    pub entries: Vec<AllocationRecord>,
}

/// What kind of key a number was allocated for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecordKind {
    /// A pod identity (namespace, labels, service account, named ports).
    Identity,
    /// A policy prefix.
    Cidr,
    /// The addresses of one pod identity inside one policy prefix.
    PodInCidr,
    /// A Service id.
    Service,
    /// A rule cookie.
    Rule,
}

/// A named container port that is part of a pod identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedPortRecord {
    /// Port name.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Port number.
    pub port: u16,
}

/// One allocated number and its key; which fields are set depends on `kind`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRecord {
    /// The number.
    pub number: u32,
    /// The kind of key.
    pub kind: RecordKind,
    /// Namespace (Identity, Service, Rule; empty for cluster-scoped rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name (Service, Rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Security-relevant labels (Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Service account (Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Named container ports (Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_ports: Option<Vec<NamedPortRecord>>,
    /// Prefix (Cidr, PodInCidr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Pod identity number (PodInCidr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
    /// `NetworkPolicy`, `FlowPolicy`, `ClusterNetworkPolicy` or `builtin` (Rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_kind: Option<String>,
    /// `ingress`, `egress`, `ingress-isolation` or `egress-isolation` (Rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    /// Index of the rule in its list (Rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

impl AllocationRecord {
    fn empty(number: u32, kind: RecordKind) -> Self {
        Self {
            number,
            kind,
            namespace: None,
            name: None,
            labels: None,
            service_account: None,
            named_ports: None,
            cidr: None,
            identity: None,
            policy_kind: None,
            section: None,
            index: None,
        }
    }

    /// The record of one allocation.
    pub fn from_entry(key: &AllocationKey, number: u32) -> Self {
        match key {
            AllocationKey::Identity(k) => Self {
                namespace: Some(k.namespace.clone()),
                labels: Some(k.labels.clone()),
                service_account: Some(k.service_account.clone()),
                named_ports: Some(
                    k.named_ports
                        .iter()
                        .map(|(name, protocol, port)| NamedPortRecord {
                            name: name.clone(),
                            protocol: protocol.as_str().to_string(),
                            port: *port,
                        })
                        .collect(),
                ),
                ..Self::empty(number, RecordKind::Identity)
            },
            AllocationKey::Cidr(c) => Self {
                cidr: Some(c.to_string()),
                ..Self::empty(number, RecordKind::Cidr)
            },
            AllocationKey::PodInCidr { identity, cidr } => Self {
                cidr: Some(cidr.to_string()),
                identity: Some(identity.get()),
                ..Self::empty(number, RecordKind::PodInCidr)
            },
            AllocationKey::Service(k) => Self {
                namespace: Some(k.namespace.clone()),
                name: Some(k.name.clone()),
                ..Self::empty(number, RecordKind::Service)
            },
            AllocationKey::Rule(r) => Self {
                namespace: Some(r.object.namespace.clone()),
                name: Some(r.object.name.clone()),
                policy_kind: Some(r.kind.as_str().to_string()),
                section: Some(r.section.as_str().to_string()),
                index: Some(r.index),
                ..Self::empty(number, RecordKind::Rule)
            },
        }
    }

    /// The allocation this record stands for; `field` prefixes the field paths of errors.
    pub fn to_entry(&self, field: &str) -> Result<(AllocationKey, u32), Diagnostic> {
        fn need<'a, T>(v: &'a Option<T>, field: &str, name: &str) -> Result<&'a T, Diagnostic> {
            v.as_ref().ok_or_else(|| {
                Diagnostic::error(format!("{field}.{name}"), "missing for this kind")
            })
        }
        let cidr = |field: &str| -> Result<Cidr, Diagnostic> {
            let s = need(&self.cidr, field, "cidr")?;
            s.parse::<Cidr>()
                .map_err(|e| Diagnostic::error(format!("{field}.cidr"), e.to_string()))
        };
        let key = match self.kind {
            RecordKind::Identity => {
                let mut named_ports = Vec::new();
                for (i, p) in self.named_ports.iter().flatten().enumerate() {
                    let protocol = Protocol::from_api(&p.protocol).ok_or_else(|| {
                        Diagnostic::error(
                            format!("{field}.namedPorts[{i}].protocol"),
                            format!("unknown protocol {:?}", p.protocol),
                        )
                    })?;
                    named_ports.push((p.name.clone(), protocol, p.port));
                }
                AllocationKey::Identity(IdentityKey {
                    namespace: need(&self.namespace, field, "namespace")?.clone(),
                    labels: self.labels.clone().unwrap_or_default(),
                    service_account: need(&self.service_account, field, "serviceAccount")?.clone(),
                    named_ports,
                })
            }
            RecordKind::Cidr => AllocationKey::Cidr(cidr(field)?),
            RecordKind::PodInCidr => AllocationKey::PodInCidr {
                identity: Identity::new(*need(&self.identity, field, "identity")?),
                cidr: cidr(field)?,
            },
            RecordKind::Service => AllocationKey::Service(ObjectKey::new(
                need(&self.namespace, field, "namespace")?,
                need(&self.name, field, "name")?,
            )),
            RecordKind::Rule => {
                let kind = need(&self.policy_kind, field, "policyKind")?;
                let section = need(&self.section, field, "section")?;
                AllocationKey::Rule(RuleId {
                    kind: kind.parse::<PolicyKind>().map_err(|e| {
                        Diagnostic::error(format!("{field}.policyKind"), e.to_string())
                    })?,
                    object: ObjectKey::new(
                        self.namespace.clone().unwrap_or_default(),
                        need(&self.name, field, "name")?,
                    ),
                    section: section.parse::<Section>().map_err(|e| {
                        Diagnostic::error(format!("{field}.section"), e.to_string())
                    })?,
                    index: *need(&self.index, field, "index")?,
                })
            }
        };
        Ok((key, self.number))
    }
}

impl IdentityAllocationSpec {
    /// The spec holding these allocations.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a AllocationKey, u32)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(k, n)| AllocationRecord::from_entry(k, n))
                .collect(),
        }
    }

    /// Every allocation, or every record that does not convert. A number claimed by two keys
    /// of one range is refused too: loading it would hand one number to two keys.
    pub fn to_entries(&self) -> Result<Vec<(AllocationKey, u32)>, Vec<Diagnostic>> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut seen: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        for (i, r) in self.entries.iter().enumerate() {
            let field = format!("spec.entries[{i}]");
            match r.to_entry(&field) {
                Ok((k, n)) => {
                    let range = k.first_number();
                    if let Some(first) = seen.insert((range, n), i) {
                        errors.push(Diagnostic::error(
                            format!("{field}.number"),
                            format!("number {n} is also allocated by spec.entries[{first}]"),
                        ));
                    }
                    out.push((k, n));
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septum_policy::allocation::{AllocationStore, InMemoryAllocations};

    #[test]
    fn every_kind_of_key_round_trips_through_json() {
        let mut store = InMemoryAllocations::new();
        let identity = IdentityKey {
            namespace: "shop".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            service_account: "default".into(),
            named_ports: vec![("http".into(), Protocol::Tcp, 8080)],
        };
        let id = store.allocate_identity(identity);
        let cidr: Cidr = "10.0.0.0/8".parse().expect("test CIDR");
        store.allocate_cidr(cidr);
        store.allocate_pod_in_cidr(id, cidr);
        store.allocate_service(ObjectKey::new("shop", "web"));
        store.allocate_cookie(RuleId {
            kind: PolicyKind::ClusterNetworkPolicy,
            object: ObjectKey::new("", "admin"),
            section: Section::EgressIsolation,
            index: 3,
        });
        let spec = IdentityAllocationSpec::from_entries(store.entries());
        let json = serde_json::to_string(&spec).expect("serialize");
        let back: IdentityAllocationSpec = serde_json::from_str(&json).expect("deserialize");
        let entries = back.to_entries().expect("valid records");
        let restored = InMemoryAllocations::from_entries(entries);
        assert_eq!(restored, store);
    }

    #[test]
    fn broken_records_name_their_field() {
        let mut r = AllocationRecord::empty(5, RecordKind::Cidr);
        r.cidr = Some("10.0.0.0/33".into());
        let spec = IdentityAllocationSpec {
            entries: vec![
                AllocationRecord::empty(4, RecordKind::Service),
                r,
                AllocationRecord {
                    namespace: Some("a".into()),
                    name: Some("b".into()),
                    ..AllocationRecord::empty(4, RecordKind::Service)
                },
                AllocationRecord {
                    namespace: Some("a".into()),
                    name: Some("c".into()),
                    ..AllocationRecord::empty(4, RecordKind::Service)
                },
            ],
        };
        let errors = spec.to_entries().expect_err("broken records");
        let fields: Vec<&str> = errors.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.entries[0].namespace",
                "spec.entries[1].cidr",
                "spec.entries[3].number"
            ]
        );
    }
}
