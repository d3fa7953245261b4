//! Loading multi-document Kubernetes YAML into the policy model. Every problem (bad YAML or
//! bytes, a document that is not an object, an unknown kind or field, a wrong type, an invalid
//! name or label, a contradictory spec, a duplicate object) becomes a [`ManifestError`] naming
//! the file, the document, the object and the field. Loading never panics and loses nothing: a
//! syntax error ends only its own document (documents are split on `---` first), an object
//! reports all its conversion errors, and every other object still loads.

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
use crate::lint;

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
        if self.document == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{} (document {})", self.file, self.document)
        }
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

fn parse_typed<T: DeserializeOwned>(v: &serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        // Name the missing field itself, not its parent.
        let named = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_string());
        let field = match named {
            Some(name) => join_path(&path, &name),
            None if path.is_empty() => "-".to_string(),
            None => path,
        };
        (field, message)
    })
}

/// Short description of a YAML value's type, for messages.
fn type_name(v: &serde_yaml::Value) -> &'static str {
    use serde_yaml::Value as V;
    match v {
        V::Null => "null",
        V::Bool(_) => "a boolean",
        V::Number(_) => "a number",
        V::String(_) => "a string",
        V::Sequence(_) => "a list",
        V::Mapping(_) => "a mapping",
        V::Tagged(_) => "a tagged value",
    }
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Fields of `input` that the typed object dropped (serialized back as `output`): unknown
/// fields, which the API server rejects (or prunes) and which are most often typos.
fn unknown_fields(
    input: &serde_yaml::Value,
    output: &serde_yaml::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_yaml::Value as V;
    match (input, output) {
        (V::Mapping(a), V::Mapping(b)) => {
            for (k, v) in a {
                let key = match k {
                    V::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_else(|_| "?".into()),
                };
                let p = join_path(path, &key);
                match b.get(k) {
                    Some(w) => unknown_fields(v, w, &p, out),
                    None if v.is_null() => {}
                    // Observed state that serializes empty collections away (status.conditions).
                    None if path.starts_with("status")
                        && (v.as_sequence().is_some_and(|x| x.is_empty())
                            || v.as_mapping().is_some_and(|x| x.is_empty())) => {}
                    None => out.push(p),
                }
            }
        }
        (V::Sequence(a), V::Sequence(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The documents of a multi-document YAML text: `(first line, 0-based; text)`. Split on the
/// `---` document markers, so that a syntax error in one document does not hide the rest (YAML
/// forbids a line starting with `---` inside a document's content). A prefix of comments and
/// directives belongs to the first document.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let is_marker = |l: &str| {
        l.strip_prefix("---")
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '\r']))
    };
    let is_preamble = |l: &str| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || l.starts_with('%')
    };
    let mut docs = Vec::new();
    let (mut start, mut start_line) = (0usize, 0usize);
    let mut preamble = true;
    let mut offset = 0usize;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare) {
            if !preamble {
                docs.push((start_line, &text[start..offset]));
                start = offset;
                start_line = n;
            }
            // A preamble (comments, directives) stays with the document it introduces.
            preamble = false;
        } else if preamble && !is_preamble(bare) {
            preamble = false;
        }
        offset += line.len();
    }
    if start < text.len()
        && !(preamble && docs.is_empty() && text[start..].lines().all(is_preamble))
    {
        docs.push((start_line, &text[start..]));
    }
    docs
}

/// Shifts the `line N` positions in a YAML error message by `offset` lines.
fn shift_lines(message: &str, offset: usize) -> String {
    if offset == 0 {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    while let Some(i) = rest.find("line ") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) if digits > 0 => {
                out.push_str(&(n + offset).to_string());
                rest = &rest[digits..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

/// 1-based line and column (in characters) of byte `at`.
fn line_col(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

impl Manifests {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads one file's raw bytes. Bytes that are not UTF-8 are an error naming the line and
    /// column of the first one; the rest of the file is still checked (with the bad bytes
    /// replaced), so no other problem is hidden.
    pub fn load_bytes(&mut self, file: &str, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.load_str(file, text),
            Err(e) => {
                let (line, col) = line_col(bytes, e.valid_up_to());
                let text = String::from_utf8_lossy(bytes);
                let document = split_documents(&text)
                    .iter()
                    .take_while(|(start, _)| *start < line)
                    .count();
                self.push(
                    &Origin {
                        file: file.to_string(),
                        document,
                    },
                    "-",
                    "-",
                    format!(
                        "not UTF-8 text: invalid byte 0x{:02x} at line {line} column {col}",
                        bytes[e.valid_up_to()]
                    ),
                );
                self.load_str(file, &text);
            }
        }
    }

    /// Loads every document of one file's text.
    pub fn load_str(&mut self, file: &str, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut document = 0usize;
        for (first_line, chunk) in split_documents(text) {
            let before = document;
            for doc in serde_yaml::Deserializer::from_str(chunk) {
                document += 1;
                let origin = Origin {
                    file: file.to_string(),
                    document,
                };
                match serde_yaml::Value::deserialize(doc) {
                    Ok(v) => self.load_document(origin, v),
                    Err(e) => {
                        let msg = shift_lines(&e.to_string(), first_line);
                        let msg = if msg.starts_with("recursion limit exceeded") {
                            format!("{msg} (nested deeper than the YAML parser allows)")
                        } else if msg.starts_with("repetition limit exceeded") {
                            format!("{msg} (aliases expand to too many nodes)")
                        } else {
                            msg
                        };
                        self.push(&origin, "-", "-", format!("invalid YAML: {msg}"));
                        // The rest of this document cannot be read; the next one can.
                        break;
                    }
                }
            }
            if document == before {
                document += 1;
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

    fn warn(&mut self, origin: &Origin, object: &str, field: &str, message: impl Into<String>) {
        self.errors.push(ManifestError {
            origin: origin.clone(),
            object: object.to_string(),
            field: field.to_string(),
            message: message.into(),
            warning: true,
        });
    }

    fn load_document(&mut self, origin: Origin, mut v: serde_yaml::Value) {
        if let Err(e) = v.apply_merge() {
            self.push(
                &origin,
                "-",
                "-",
                format!("invalid YAML merge key (<<): {e}"),
            );
            return;
        }
        self.load_value(origin, v, "");
    }

    fn load_value(&mut self, origin: Origin, v: serde_yaml::Value, at: &str) {
        let here = |f: &str| {
            if at.is_empty() {
                f.to_string()
            } else if f == "-" {
                at.to_string()
            } else {
                format!("{at}.{f}")
            }
        };
        if v.is_null() {
            if !at.is_empty() {
                self.push(
                    &origin,
                    "List",
                    at,
                    "a list item must be an object, got null",
                );
            }
            return;
        }
        let Some(map) = v.as_mapping() else {
            let what = type_name(&v);
            self.push(
                &origin,
                if at.is_empty() { "-" } else { "List" },
                &here("-"),
                format!("a document must be a mapping (a Kubernetes object), got {what}"),
            );
            return;
        };
        let meta = map.get("metadata");
        let meta_map = meta.and_then(|m| m.as_mapping());
        let name_value = meta_map.and_then(|m| m.get("name"));
        let name = name_value
            .and_then(|x| x.as_str())
            .unwrap_or("<unnamed>")
            .to_string();
        let ns_value = meta_map.and_then(|m| m.get("namespace"));
        let ns = ns_value
            .and_then(|x| x.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        let kind = match map.get("kind") {
            None | Some(serde_yaml::Value::Null) => {
                self.push(&origin, &name, &here("kind"), "missing");
                return;
            }
            Some(k) => match k.as_str() {
                Some(k) if !k.is_empty() => k.to_string(),
                Some(_) => {
                    self.push(&origin, &name, &here("kind"), "must not be empty");
                    return;
                }
                None => {
                    let what = type_name(k);
                    self.push(
                        &origin,
                        &name,
                        &here("kind"),
                        format!("must be a string, got {what}"),
                    );
                    return;
                }
            },
        };
        let api_version = map.get("apiVersion");
        if kind == "List" {
            if api_version.and_then(|a| a.as_str()) != Some("v1") {
                self.push(&origin, "List", &here("apiVersion"), "List must be v1");
            }
            match map.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.load_value(
                            origin.clone(),
                            item.clone(),
                            &here(&format!("items[{i}]")),
                        );
                    }
                }
                None | Some(serde_yaml::Value::Null) => {}
                Some(other) => {
                    let what = type_name(other);
                    self.push(
                        &origin,
                        "List",
                        &here("items"),
                        format!("must be a list of objects, got {what}"),
                    );
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
                let hint = match other {
                    "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
                        " (replaced upstream by ClusterNetworkPolicy, policy.networking.k8s.io/v1alpha2)"
                    }
                    _ => "",
                };
                self.push(
                    &origin,
                    &label,
                    &here("kind"),
                    format!(
                        "unknown kind {other:?} (expected one of {}){hint}",
                        KINDS.join(", ")
                    ),
                );
                return;
            }
        };
        match api_version {
            Some(a) if a.as_str() == Some(expected_api) => {}
            None | Some(serde_yaml::Value::Null) => {
                self.push(
                    &origin,
                    &label,
                    &here("apiVersion"),
                    format!("missing ({kind} is {expected_api})"),
                );
                return;
            }
            Some(a) => {
                let got = match a.as_str() {
                    Some(s) => format!("{s:?}"),
                    None => type_name(a).to_string(),
                };
                self.push(
                    &origin,
                    &label,
                    &here("apiVersion"),
                    format!("{kind} must be {expected_api}, got {got}"),
                );
                return;
            }
        }
        match (meta, meta_map) {
            (None | Some(serde_yaml::Value::Null), _) => {
                self.push(&origin, &label, &here("metadata"), "missing");
                return;
            }
            (Some(m), None) => {
                let what = type_name(m);
                self.push(
                    &origin,
                    &label,
                    &here("metadata"),
                    format!("must be a mapping, got {what}"),
                );
                return;
            }
            _ => {}
        }
        match name_value {
            Some(serde_yaml::Value::String(n)) if !n.is_empty() => {}
            None | Some(serde_yaml::Value::Null) => {
                self.push(&origin, &label, &here("metadata.name"), "missing");
                return;
            }
            Some(serde_yaml::Value::String(_)) => {
                self.push(&origin, &label, &here("metadata.name"), "must not be empty");
                return;
            }
            Some(other) => {
                let what = type_name(other);
                self.push(
                    &origin,
                    &label,
                    &here("metadata.name"),
                    format!("must be a string, got {what}"),
                );
                return;
            }
        }
        if let Some(first) = self.origins.get(&label) {
            let msg = format!("duplicate object (first defined in {first})");
            self.push(&origin, &label, &here("metadata.name"), msg);
            return;
        }
        // Unknown fields in policies change what is allowed: errors. In the inventory (pods,
        // services, ...) they are most often fields newer than our API version: warnings.
        let policy_kind = matches!(
            kind.as_str(),
            "NetworkPolicy" | "FlowPolicy" | "ClusterNetworkPolicy"
        );
        let mut findings: Vec<lint::Finding> = Vec::new();
        let check_unknown = |typed: Result<serde_yaml::Value, serde_yaml::Error>| {
            let mut unknown = Vec::new();
            if let Ok(back) = typed {
                unknown_fields(&v, &back, "", &mut unknown);
            }
            unknown.into_iter().map(|f| lint::Finding {
                field: f,
                message: "unknown field (ignored; a typo?)".into(),
                warning: !policy_kind,
            })
        };
        let result: Result<(), Vec<(String, String)>> = (|| {
            let c = &mut self.cluster;
            match kind.as_str() {
                "Namespace" => {
                    let o: core::Namespace = parse_typed(&v).map_err(|e| vec![e])?;
                    findings.extend(check_unknown(serde_yaml::to_value(&o)));
                    findings.extend(lint::namespace(&o));
                    let n = k8s::namespace(&o).map_err(conv)?;
                    c.namespaces.insert(n.name.clone(), n);
                }
                "Node" => {
                    let o: core::Node = parse_typed(&v).map_err(|e| vec![e])?;
                    findings.extend(check_unknown(serde_yaml::to_value(&o)));
                    findings.extend(lint::node(&o));
                    let n = k8s::node(&o).map_err(conv)?;
                    c.nodes.insert(n.name.clone(), n);
                }
                "Pod" => {
                    let o: core::Pod = parse_typed(&v).map_err(|e| vec![e])?;
                    findings.extend(check_unknown(serde_yaml::to_value(&o)));
                    findings.extend(lint::pod(&o));
                    let p = k8s::pod(&o).map_err(conv)?;
                    c.pods.insert(p.key(), p);
                }
                "Service" => {
                    let o: core::Service = parse_typed(&v).map_err(|e| vec![e])?;
                    findings.extend(check_unknown(serde_yaml::to_value(&o)));
                    findings.extend(lint::service(&o));
                    let s = k8s::service(&o).map_err(conv)?;
                    c.services.insert(s.key(), s);
                }
                "NetworkPolicy" => {
                    let o: net::NetworkPolicy = parse_typed(&v).map_err(|e| vec![e])?;
                    findings.extend(check_unknown(serde_yaml::to_value(&o)));
                    findings.extend(lint::network_policy(&o));
                    let p = k8s::network_policy(&o).map_err(conv)?;
                    c.network_policies.insert(p.key(), p);
                }
                "FlowPolicy" => {
                    let o: FlowPolicy = parse_typed(&v).map_err(|e| vec![e])?;
                    findings.extend(check_unknown(serde_yaml::to_value(&o)));
                    findings.extend(lint::flow_policy(&o));
                    let p = o.to_model().map_err(conv)?;
                    c.flow_policies
                        .insert(ObjectKey::new(&p.namespace, &p.name), p);
                }
                _ => {
                    let o: ClusterNetworkPolicy = parse_typed(&v).map_err(|e| vec![e])?;
                    findings.extend(check_unknown(serde_yaml::to_value(&o)));
                    findings.extend(lint::cluster_network_policy(&o));
                    let p = o.to_model().map_err(conv)?;
                    c.cluster_network_policies.insert(p.name.clone(), p);
                }
            }
            Ok(())
        })();
        for f in findings {
            if f.warning {
                self.warn(&origin, &label, &here(&f.field), f.message);
            } else {
                self.push(&origin, &label, &here(&f.field), f.message);
            }
        }
        match result {
            Ok(()) => {
                self.origins.insert(label, origin);
            }
            Err(errors) => {
                for (field, message) in errors {
                    self.push(&origin, &label, &here(&field), message);
                }
            }
        }
    }

    /// Semantic problems of the loaded policies (contradictions, dangling references), with the
    /// file and document of each object; also addresses claimed by two pods and
    /// ClusterNetworkPolicies of one tier sharing a priority (their order is undefined).
    pub fn semantic_problems(&self) -> Vec<ManifestError> {
        let origin_of = |object: &str| {
            self.origins.get(object).cloned().unwrap_or(Origin {
                file: "-".into(),
                document: 0,
            })
        };
        let mut out: Vec<ManifestError> = validate_cluster(&self.cluster)
            .into_iter()
            .map(|p: Problem| ManifestError {
                origin: origin_of(&p.object),
                object: p.object,
                field: p.field,
                message: p.message,
                warning: p.warning,
            })
            .collect();
        // A warning about a field the loader already rejected (an empty name, a bad namespace)
        // only repeats it.
        out.retain(|p| {
            !self.errors.iter().any(|e| {
                !e.warning
                    && e.object == p.object
                    && ((e.field == p.field && e.message == p.message)
                        || (p.warning
                            && (e.field == p.field
                                || e.field.starts_with(&format!("{}.", p.field)))))
            })
        });
        let mut owners: BTreeMap<std::net::IpAddr, &ObjectKey> = BTreeMap::new();
        for (key, pod) in &self.cluster.pods {
            if pod.host_network {
                continue;
            }
            for ip in &pod.ips {
                if let Some(first) = owners.get(ip) {
                    let object = format!("Pod {key}");
                    out.push(ManifestError {
                        origin: origin_of(&object),
                        object,
                        field: "status.podIPs".into(),
                        message: format!("address {ip} is also the address of pod {first}"),
                        warning: true,
                    });
                } else {
                    owners.insert(*ip, key);
                }
            }
        }
        let mut priorities: BTreeMap<(String, u32), &str> = BTreeMap::new();
        for (name, cnp) in &self.cluster.cluster_network_policies {
            let slot = (format!("{:?}", cnp.tier), cnp.priority);
            if let Some(first) = priorities.get(&slot) {
                let object = format!("ClusterNetworkPolicy {name}");
                out.push(ManifestError {
                    origin: origin_of(&object),
                    object,
                    field: "spec.priority".into(),
                    message: format!(
                        "same tier and priority ({}) as ClusterNetworkPolicy {first}: their order is undefined",
                        cnp.priority
                    ),
                    warning: true,
                });
            } else {
                priorities.insert(slot, name);
            }
        }
        out
    }
}

fn conv(errors: Vec<k8s::ConversionError>) -> Vec<(String, String)> {
    errors.into_iter().map(|e| (e.field, e.message)).collect()
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

    #[test]
    fn documents_split_on_markers_only() {
        let docs = split_documents(
            "# c\n%YAML 1.2\n---\na: 1\n---- not a marker\n--- \nb: 2\n---\r\nc: 3\n",
        );
        assert_eq!(
            docs,
            vec![
                (0, "# c\n%YAML 1.2\n---\na: 1\n---- not a marker\n"),
                (5, "--- \nb: 2\n"),
                (7, "---\r\nc: 3\n"),
            ]
        );
        assert_eq!(split_documents("a: 1\n"), vec![(0, "a: 1\n")]);
        assert!(split_documents("# only a comment\n\n").is_empty());
        assert!(split_documents("").is_empty());
    }

    #[test]
    fn yaml_error_positions_are_file_lines() {
        assert_eq!(
            shift_lines(
                "bad at line 2 column 1, while parsing at line 1 column 3",
                10
            ),
            "bad at line 12 column 1, while parsing at line 11 column 3"
        );
        assert_eq!(shift_lines("no position", 3), "no position");
        assert_eq!(line_col(b"ab\ncd\xffe", 5), (2, 3));
    }

    #[test]
    fn a_broken_document_does_not_hide_the_next() {
        let mut m = Manifests::new();
        m.load_bytes(
            "t.yaml",
            b"\xef\xbb\xbfapiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nx: [\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b, labels: {k: \"\xff\"}}\n",
        );
        assert!(m.cluster.namespaces.contains_key("a"), "{:?}", m.errors);
        assert!(m.cluster.namespaces.contains_key("b"), "{:?}", m.errors);
        let text: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(
                |e| e.starts_with("t.yaml (document 2): -: -: invalid YAML:")
                    && e.contains("line 6")
            ),
            "{text:#?}"
        );
        assert!(
            text.iter()
                .any(|e| e
                    .contains("(document 3): -: -: not UTF-8 text: invalid byte 0xff at line 9")),
            "{text:#?}"
        );
    }
}
