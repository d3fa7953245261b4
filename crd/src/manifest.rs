//! Loading multi-document Kubernetes YAML into the policy model. Every problem (bad YAML, a
//! document that is not an object, an unknown kind, a wrong type, a contradictory spec, a
//! duplicate object) becomes a [`ManifestError`] naming the file, the document, the object and
//! the field; loading never panics and keeps going past bad documents.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use septum_policy::k8s;
use septum_policy::model::{Cluster, ObjectKey};
use septum_policy::validate::{Problem, validate_cluster};

use crate::cluster_network_policy::ClusterNetworkPolicy;
use crate::flow_policy::FlowPolicy;

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// File name as given.
    pub file: String,
    /// 1-based document number in the file.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file, self.document)
    }
}

/// One problem in the manifests.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("{origin}: {object}: {field}: {message}")]
pub struct ManifestError {
    /// File and document.
    pub origin: Origin,
    /// `Kind namespace/name` (as much as is known).
    pub object: String,
    /// Field path (`-` when the whole document is at fault).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Only a warning (the model still loads it).
    pub warning: bool,
}

/// Kinds the loader understands.
pub const KINDS: [&str; 7] = [
    "Namespace",
    "Pod",
    "Node",
    "Service",
    "NetworkPolicy",
    "FlowPolicy",
    "ClusterNetworkPolicy",
];

/// The result of loading: the model, and every problem found.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// The model built from every valid object.
    pub cluster: Cluster,
    /// Problems, in load order.
    pub errors: Vec<ManifestError>,
    /// Where each object was defined (`Kind namespace/name`).
    pub origins: BTreeMap<String, Origin>,
}

fn object_label(kind: &str, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn parse_typed<T: DeserializeOwned>(v: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "-".to_string()
        } else {
            path
        };
        (field, e.into_inner().to_string())
    })
}

impl Manifests {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every document of one file's text.
    pub fn load_str(&mut self, file: &str, text: &str) {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let origin = Origin {
                file: file.to_string(),
                document: i + 1,
            };
            match serde_yaml::Value::deserialize(doc) {
                Ok(v) => self.load_value(origin, v),
                Err(e) => {
                    self.errors.push(ManifestError {
                        origin,
                        object: "-".into(),
                        field: "-".into(),
                        message: format!("invalid YAML: {e}"),
                        warning: false,
                    });
                    // The YAML stream cannot be resynchronized after a syntax error.
                    break;
                }
            }
        }
    }

    fn push(&mut self, origin: &Origin, object: &str, field: &str, message: impl Into<String>) {
        self.errors.push(ManifestError {
            origin: origin.clone(),
            object: object.to_string(),
            field: field.to_string(),
            message: message.into(),
            warning: false,
        });
    }

    fn load_value(&mut self, origin: Origin, v: serde_yaml::Value) {
        if v.is_null() {
            return;
        }
        let Some(map) = v.as_mapping() else {
            self.push(
                &origin,
                "-",
                "-",
                "a document must be a mapping (a Kubernetes object)",
            );
            return;
        };
        let get = |k: &str| map.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let kind = get("kind");
        let api_version = get("apiVersion");
        let meta = map.get("metadata").and_then(|m| m.as_mapping());
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|x| x.as_str())
            .unwrap_or("<unnamed>")
            .to_string();
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|x| x.as_str())
            .unwrap_or("default")
            .to_string();
        let Some(kind) = kind else {
            self.push(&origin, &name, "kind", "missing (or not a string)");
            return;
        };
        if kind == "List" {
            if let Some(items) = map.get("items").and_then(|x| x.as_sequence()) {
                for item in items.clone() {
                    self.load_value(origin.clone(), item);
                }
            }
            return;
        }
        let namespaced = !matches!(kind.as_str(), "Namespace" | "Node" | "ClusterNetworkPolicy");
        let label = object_label(&kind, namespaced.then_some(ns.as_str()), &name);
        let expected_api = match kind.as_str() {
            "Namespace" | "Pod" | "Node" | "Service" => "v1",
            "NetworkPolicy" => "networking.k8s.io/v1",
            "FlowPolicy" => "septum.dev/v1alpha1",
            "ClusterNetworkPolicy" => "policy.networking.k8s.io/v1alpha2",
            other => {
                self.push(
                    &origin,
                    &label,
                    "kind",
                    format!(
                        "unknown kind {other:?} (expected one of {})",
                        KINDS.join(", ")
                    ),
                );
                return;
            }
        };
        if api_version.as_deref() != Some(expected_api) {
            self.push(
                &origin,
                &label,
                "apiVersion",
                format!(
                    "{kind} must be {expected_api}, got {:?}",
                    api_version.unwrap_or_default()
                ),
            );
            return;
        }
        if meta
            .and_then(|m| m.get("name"))
            .and_then(|x| x.as_str())
            .is_none()
        {
            self.push(
                &origin,
                &label,
                "metadata.name",
                "missing (or not a string)",
            );
            return;
        }
        if let Some(first) = self.origins.get(&label) {
            let msg = format!("duplicate object (first defined in {first})");
            self.push(&origin, &label, "metadata.name", msg);
            return;
        }
        let result: Result<(), (String, String)> = (|| {
            let c = &mut self.cluster;
            match kind.as_str() {
                "Namespace" => {
                    let o: core::Namespace = parse_typed(v)?;
                    let n = k8s::namespace(&o).map_err(conv)?;
                    c.namespaces.insert(n.name.clone(), n);
                }
                "Node" => {
                    let o: core::Node = parse_typed(v)?;
                    let n = k8s::node(&o).map_err(conv)?;
                    c.nodes.insert(n.name.clone(), n);
                }
                "Pod" => {
                    let o: core::Pod = parse_typed(v)?;
                    let p = k8s::pod(&o).map_err(conv)?;
                    c.pods.insert(p.key(), p);
                }
                "Service" => {
                    let o: core::Service = parse_typed(v)?;
                    let s = k8s::service(&o).map_err(conv)?;
                    c.services.insert(s.key(), s);
                }
                "NetworkPolicy" => {
                    let o: net::NetworkPolicy = parse_typed(v)?;
                    let p = k8s::network_policy(&o).map_err(conv)?;
                    c.network_policies.insert(p.key(), p);
                }
                "FlowPolicy" => {
                    let o: FlowPolicy = parse_typed(v)?;
                    let p = o.to_model().map_err(conv)?;
                    c.flow_policies
                        .insert(ObjectKey::new(&p.namespace, &p.name), p);
                }
                _ => {
                    let o: ClusterNetworkPolicy = parse_typed(v)?;
                    let p = o.to_model().map_err(conv)?;
                    c.cluster_network_policies.insert(p.name.clone(), p);
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.origins.insert(label, origin);
            }
            Err((field, message)) => self.push(&origin, &label, &field, message),
        }
    }

    /// Semantic problems of the loaded policies (contradictions, dangling references), with the
    /// file and document of each object.
    pub fn semantic_problems(&self) -> Vec<ManifestError> {
        validate_cluster(&self.cluster)
            .into_iter()
            .map(|p: Problem| ManifestError {
                origin: self.origins.get(&p.object).cloned().unwrap_or(Origin {
                    file: "-".into(),
                    document: 0,
                }),
                object: p.object,
                field: p.field,
                message: p.message,
                warning: p.warning,
            })
            .collect()
    }
}

fn conv(e: k8s::ConversionError) -> (String, String) {
    (e.field, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_and_pods_load() {
        let mut m = Manifests::new();
        m.load_str(
            "t.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {team: x}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a, labels: {app: web}}\nspec:\n  containers:\n  - name: c\n    ports: [{name: http, containerPort: 8080}]\nstatus: {podIP: 10.0.0.5}\n",
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let p = &m.cluster.pods[&ObjectKey::new("a", "p")];
        assert_eq!(
            p.ips,
            vec!["10.0.0.5".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert_eq!(p.ports[0].port, 8080);
    }
}
