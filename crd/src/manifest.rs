//! Loading multi-document Kubernetes YAML into the policy model. Every problem (bad YAML or
//! bytes, a document that is not an object, an unknown kind or field, a wrong type, an invalid
//! name or label, a contradictory spec, a duplicate object) becomes a [`Diagnostic`] naming
//! the file, the document, the object and the field. Loading never panics and loses nothing: a
//! syntax error ends only its own document (documents are split on `---` first), an object
//! reports all its conversion errors, and every other object still loads.
//!
//! The YAML stack is serde_norway (the maintained fork of serde_yaml); positions in syntax
//! errors are the parser's own; unknown fields are the ones the typed object's deserializer
//! ignored (serde_ignored); a document's kind is matched against each type's own
//! [`kube::Resource`] kind, API version and scope, not against strings of ours.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_norway::Value;

use septum_policy::diagnostic::Diagnostics;
pub use septum_policy::diagnostic::{Diagnostic, Origin, Severity};
use septum_policy::model::{self as m, Cluster, ObjectKey};
use septum_policy::validate::validate_cluster;

use crate::cluster_network_policy::ClusterNetworkPolicy;
use crate::flow_policy::FlowPolicy;
use crate::lint;

/// A kind the loader reads: its Kubernetes type (kind, API version and scope come from its
/// [`kube::Resource`] impl), the API server's checks the types and the conversion do not make,
/// and where its model object goes.
trait Kind: kube::Resource<DynamicType = (), Scope: 'static> + DeserializeOwned {
    /// Unknown fields in policies change what is allowed: errors. In the inventory (pods,
    /// services, ...) they are most often fields newer than our API version: warnings.
    const POLICY: bool = false;

    /// The checks of [`lint`].
    fn lint(&self) -> Vec<Diagnostic>;

    /// Converts into the model and stores it.
    fn insert(&self, cluster: &mut Cluster) -> Result<(), Vec<Diagnostic>>;
}

impl Kind for core::Namespace {
    fn lint(&self) -> Vec<Diagnostic> {
        lint::namespace(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let n = m::Namespace::try_from(self)?;
        c.namespaces.insert(n.name.clone(), n);
        Ok(())
    }
}

impl Kind for core::Node {
    fn lint(&self) -> Vec<Diagnostic> {
        lint::node(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let n = m::Node::try_from(self)?;
        c.nodes.insert(n.name.clone(), n);
        Ok(())
    }
}

impl Kind for core::Pod {
    fn lint(&self) -> Vec<Diagnostic> {
        lint::pod(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let p = m::Pod::try_from(self)?;
        c.pods.insert(p.key(), p);
        Ok(())
    }
}

impl Kind for core::Service {
    fn lint(&self) -> Vec<Diagnostic> {
        lint::service(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let s = m::Service::try_from(self)?;
        c.services.insert(s.key(), s);
        Ok(())
    }
}

impl Kind for discovery::EndpointSlice {
    fn lint(&self) -> Vec<Diagnostic> {
        lint::endpoint_slice(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let s = m::EndpointSlice::try_from(self)?;
        c.endpoint_slices.insert(s.key(), s);
        Ok(())
    }
}

impl Kind for net::NetworkPolicy {
    const POLICY: bool = true;
    fn lint(&self) -> Vec<Diagnostic> {
        lint::network_policy(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let p = m::NetworkPolicy::try_from(self)?;
        c.network_policies.insert(p.key(), p);
        Ok(())
    }
}

impl Kind for FlowPolicy {
    const POLICY: bool = true;
    fn lint(&self) -> Vec<Diagnostic> {
        lint::flow_policy(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let p = m::FlowPolicy::try_from(self)?;
        c.flow_policies
            .insert(ObjectKey::new(&p.namespace, &p.name), p);
        Ok(())
    }
}

impl Kind for ClusterNetworkPolicy {
    const POLICY: bool = true;
    fn lint(&self) -> Vec<Diagnostic> {
        lint::cluster_network_policy(self)
    }
    fn insert(&self, c: &mut Cluster) -> Result<(), Vec<Diagnostic>> {
        let p = m::ClusterNetworkPolicy::try_from(self)?;
        c.cluster_network_policies.insert(p.name.clone(), p);
        Ok(())
    }
}

/// What the loader knows of a kind, read off its type.
struct KindEntry {
    kind: String,
    api_version: String,
    namespaced: bool,
    load: fn(&mut Manifests, &Origin, &str, &str, &Value),
}

fn entry<K: Kind>() -> KindEntry {
    KindEntry {
        kind: K::kind(&()).into_owned(),
        api_version: K::api_version(&()).into_owned(),
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<k8s_openapi::NamespaceResourceScope>(),
        load: Manifests::load_typed::<K>,
    }
}

/// Every kind the loader reads, read off the types once (not per document).
static KINDS: LazyLock<[KindEntry; 8]> = LazyLock::new(|| {
    [
        entry::<core::Namespace>(),
        entry::<core::Pod>(),
        entry::<core::Node>(),
        entry::<core::Service>(),
        entry::<discovery::EndpointSlice>(),
        entry::<net::NetworkPolicy>(),
        entry::<FlowPolicy>(),
        entry::<ClusterNetworkPolicy>(),
    ]
});

fn kinds() -> &'static [KindEntry; 8] {
    &KINDS
}

/// The names of the kinds the loader reads.
pub fn kind_names() -> Vec<String> {
    kinds().iter().map(|k| k.kind.clone()).collect()
}

/// The result of loading: the model, and every problem found.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// The model built from every valid object.
    pub cluster: Cluster,
    /// Errors and warnings, in load order.
    pub diagnostics: Vec<Diagnostic>,
    /// Where each object was defined (`Kind namespace/name`).
    pub origins: BTreeMap<String, Origin>,
}

fn object_label(kind: &str, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// One step of a field path.
enum Step {
    Key(String),
    Index(usize),
}

/// The path of a field the deserializer ignored, in the API's notation (`spec.ingress[0].x`).
fn ignored_path(path: &serde_ignored::Path<'_>, out: &mut Vec<Step>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push(Step::Index(*index));
        }
        P::Map { parent, key } => {
            ignored_path(parent, out);
            out.push(Step::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent, out);
        }
    }
}

fn render(steps: &[Step]) -> String {
    let mut s = String::new();
    for step in steps {
        match step {
            Step::Key(k) if s.is_empty() => s.push_str(k),
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The value at `steps` in `v`.
fn lookup<'a>(v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

/// Short description of a YAML value's type, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
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

/// The parser's message for the syntax error in document `index` of `chunk`, which starts at
/// line `first_line` of its file: the chunk is parsed again behind that many empty lines, so
/// that every position the parser reports is a position in the file. Only failing documents
/// pay for this.
fn syntax_error_in_file(chunk: &str, first_line: usize, index: usize) -> Option<String> {
    let padded = format!("{}{chunk}", "\n".repeat(first_line));
    serde_norway::Deserializer::from_str(&padded)
        .nth(index)
        .and_then(|doc| Value::deserialize(doc).err())
        .map(|e| e.to_string())
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

    /// Whether any error (not just warnings) was found while loading.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
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
                let origin = Origin {
                    file: file.to_string(),
                    document,
                };
                self.push(
                    &origin,
                    Diagnostic::error(
                        "-",
                        format!(
                            "not UTF-8 text: invalid byte 0x{:02x} at line {line} column {col}",
                            bytes[e.valid_up_to()]
                        ),
                    )
                    .of("-"),
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
            for (index, doc) in serde_norway::Deserializer::from_str(chunk).enumerate() {
                document += 1;
                let origin = Origin {
                    file: file.to_string(),
                    document,
                };
                match Value::deserialize(doc) {
                    Ok(v) => self.load_document(&origin, v),
                    Err(e) => {
                        let msg = syntax_error_in_file(chunk, first_line, index)
                            .unwrap_or_else(|| e.to_string());
                        let msg = if msg.starts_with("recursion limit exceeded") {
                            format!("{msg} (nested deeper than the YAML parser allows)")
                        } else if msg.starts_with("repetition limit exceeded") {
                            format!("{msg} (aliases expand to too many nodes)")
                        } else {
                            msg
                        };
                        self.push(
                            &origin,
                            Diagnostic::error("-", format!("invalid YAML: {msg}")).of("-"),
                        );
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

    fn push(&mut self, origin: &Origin, d: Diagnostic) {
        self.diagnostics.push(d.at(origin.clone()));
    }

    fn load_document(&mut self, origin: &Origin, mut v: Value) {
        if let Err(e) = v.apply_merge() {
            self.push(
                origin,
                Diagnostic::error("-", format!("invalid YAML merge key (<<): {e}")).of("-"),
            );
            return;
        }
        self.load_value(origin, &v, "");
    }

    fn load_value(&mut self, origin: &Origin, v: &Value, at: &str) {
        let mut fail = |object: &str, field: &str, message: String| {
            let d = Diagnostic::error(field, message).of(object).within(at);
            self.diagnostics.push(d.at(origin.clone()));
        };
        if v.is_null() {
            if !at.is_empty() {
                fail(
                    "List",
                    "-",
                    "a list item must be an object, got null".into(),
                );
            }
            return;
        }
        let Some(map) = v.as_mapping() else {
            let what = type_name(v);
            fail(
                if at.is_empty() { "-" } else { "List" },
                "-",
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
            None | Some(Value::Null) => {
                fail(&name, "kind", "missing".into());
                return;
            }
            Some(k) => match k.as_str() {
                Some(k) if !k.is_empty() => k.to_string(),
                Some(_) => {
                    fail(&name, "kind", "must not be empty".into());
                    return;
                }
                None => {
                    let what = type_name(k);
                    fail(&name, "kind", format!("must be a string, got {what}"));
                    return;
                }
            },
        };
        let api_version = map.get("apiVersion");
        if kind == "List" {
            if api_version.and_then(|a| a.as_str()) != Some("v1") {
                fail("List", "apiVersion", "List must be v1".into());
            }
            match map.get("items") {
                Some(Value::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.load_value(origin, item, &join_path(at, &format!("items[{i}]")));
                    }
                }
                None | Some(Value::Null) => {}
                Some(other) => {
                    let what = type_name(other);
                    fail(
                        "List",
                        "items",
                        format!("must be a list of objects, got {what}"),
                    );
                }
            }
            return;
        }
        let known = kinds();
        let Some(entry) = known.iter().find(|k| k.kind == kind) else {
            let hint = match kind.as_str() {
                "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
                    " (replaced upstream by ClusterNetworkPolicy, policy.networking.k8s.io/v1alpha2)"
                }
                _ => "",
            };
            let names: Vec<&str> = known.iter().map(|k| k.kind.as_str()).collect();
            fail(
                &object_label(&kind, Some(&ns), &name),
                "kind",
                format!(
                    "unknown kind {kind:?} (expected one of {}){hint}",
                    names.join(", ")
                ),
            );
            return;
        };
        let label = object_label(&kind, entry.namespaced.then_some(ns.as_str()), &name);
        let expected_api = entry.api_version.as_str();
        match api_version {
            Some(a) if a.as_str() == Some(expected_api) => {}
            None | Some(Value::Null) => {
                fail(
                    &label,
                    "apiVersion",
                    format!("missing ({kind} is {expected_api})"),
                );
                return;
            }
            Some(a) => {
                let got = match a.as_str() {
                    Some(s) => format!("{s:?}"),
                    None => type_name(a).to_string(),
                };
                fail(
                    &label,
                    "apiVersion",
                    format!("{kind} must be {expected_api}, got {got}"),
                );
                return;
            }
        }
        match (meta, meta_map) {
            (None | Some(Value::Null), _) => {
                fail(&label, "metadata", "missing".into());
                return;
            }
            (Some(m), None) => {
                let what = type_name(m);
                fail(&label, "metadata", format!("must be a mapping, got {what}"));
                return;
            }
            _ => {}
        }
        match name_value {
            Some(Value::String(n)) if !n.is_empty() => {}
            None | Some(Value::Null) => {
                fail(&label, "metadata.name", "missing".into());
                return;
            }
            Some(Value::String(_)) => {
                fail(&label, "metadata.name", "must not be empty".into());
                return;
            }
            Some(other) => {
                let what = type_name(other);
                fail(
                    &label,
                    "metadata.name",
                    format!("must be a string, got {what}"),
                );
                return;
            }
        }
        if let Some(first) = self.origins.get(&label) {
            let msg = format!("duplicate object (first defined in {first})");
            fail(&label, "metadata.name", msg);
            return;
        }
        (entry.load)(self, origin, &label, at, v);
    }

    /// Reads one object of kind `K`: its type, its unknown fields, the API server's checks and
    /// its conversion into the model, every diagnostic with file, document, object and field.
    fn load_typed<K: Kind>(&mut self, origin: &Origin, label: &str, at: &str, v: &Value) {
        let mut ds = Diagnostics::for_object(label);
        let mut ignored: Vec<Vec<Step>> = Vec::new();
        let mut note = |path: serde_ignored::Path<'_>| {
            let mut steps = Vec::new();
            ignored_path(&path, &mut steps);
            ignored.push(steps);
        };
        let typed: Result<K, _> =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(v, &mut note));
        match typed {
            Err(e) => {
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
                ds.error(field, message);
            }
            Ok(object) => {
                for steps in &ignored {
                    // An unknown field set to null says nothing (kubectl drops it too); the
                    // type meta was checked above (kube's derived CRD types do not keep it).
                    let type_meta = matches!(
                        steps.as_slice(),
                        [Step::Key(k)] if k == "apiVersion" || k == "kind"
                    );
                    if type_meta || lookup(v, steps).is_none_or(Value::is_null) {
                        continue;
                    }
                    let message = "unknown field (ignored; a typo?)";
                    ds.push(if K::POLICY {
                        Diagnostic::error(render(steps), message)
                    } else {
                        Diagnostic::warning(render(steps), message)
                    });
                }
                ds.extend(object.lint());
                match object.insert(&mut self.cluster) {
                    Ok(()) => {
                        self.origins.insert(label.to_string(), origin.clone());
                    }
                    Err(errors) => ds.extend(errors),
                }
            }
        }
        for d in ds.into_vec() {
            self.push(origin, d.within(at));
        }
    }

    /// Semantic problems of the loaded policies (contradictions, dangling references), with the
    /// file and document of each object; also addresses claimed by two pods and
    /// ClusterNetworkPolicies of one tier sharing a priority (their order is undefined).
    pub fn semantic_problems(&self) -> Vec<Diagnostic> {
        let place = |d: Diagnostic| match self.origins.get(&d.object) {
            Some(origin) => d.at(origin.clone()),
            None => d,
        };
        let mut out: Vec<Diagnostic> = validate_cluster(&self.cluster)
            .into_iter()
            .map(place)
            .collect();
        // A warning about a field the loader already rejected (an empty name, a bad namespace)
        // only repeats it.
        out.retain(|p| {
            !self.diagnostics.iter().any(|e| {
                e.is_error()
                    && e.object == p.object
                    && ((e.field == p.field && e.message == p.message)
                        || (p.is_warning()
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
                    out.push(place(
                        Diagnostic::warning(
                            "status.podIPs",
                            format!("address {ip} is also the address of pod {first}"),
                        )
                        .of(format!("Pod {key}")),
                    ));
                } else {
                    owners.insert(*ip, key);
                }
            }
        }
        let mut priorities: BTreeMap<(String, u32), &str> = BTreeMap::new();
        for (name, cnp) in &self.cluster.cluster_network_policies {
            let slot = (format!("{:?}", cnp.tier), cnp.priority);
            if let Some(first) = priorities.get(&slot) {
                out.push(place(
                    Diagnostic::warning(
                        "spec.priority",
                        format!(
                            "same tier and priority ({}) as ClusterNetworkPolicy {first}: their order is undefined",
                            cnp.priority
                        ),
                    )
                    .of(format!("ClusterNetworkPolicy {name}")),
                ));
            } else {
                priorities.insert(slot, name);
            }
        }
        out
    }
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
        assert!(m.diagnostics.is_empty(), "{:?}", m.diagnostics);
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
        // The broken flow sequence is on line 7 of the file, in its third document; the parser
        // itself reports that line (no message is rewritten).
        let mut m = Manifests::new();
        m.load_str(
            "t.yaml",
            "a: 1\n---\nb: 2\n---\n# c\nkind: Namespace\nx: [1,\n",
        );
        let text: Vec<String> = m.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[2].starts_with("error: t.yaml (document 3): -: -: invalid YAML:")
                && text[2].contains("line 8"),
            "{text:#?}"
        );
        assert_eq!(line_col(b"ab\ncd\xffe", 5), (2, 3));
    }

    #[test]
    fn unknown_fields_are_named_where_they_are() {
        let mut m = Manifests::new();
        m.load_str(
            "t.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelectr: {}\n  nothing: null\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: a}\nspec:\n  containers: [{name: c, image: x, futureField: 1}]\n",
        );
        let text: Vec<String> = m.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "error: t.yaml (document 1): NetworkPolicy a/p: spec.ingress[0].from[0].podSelectr: unknown field (ignored; a typo?)",
                "error: t.yaml (document 1): NetworkPolicy a/p: spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock",
                "warning: t.yaml (document 2): Pod a/q: spec.containers[0].futureField: unknown field (ignored; a typo?)",
            ]
        );
    }

    #[test]
    fn objects_read_back_from_a_cluster_load() {
        // A ClusterNetworkPolicy with the status its implementations write, and legacy IP
        // fields with leading zeros (the API server reads them as decimal).
        let mut m = Manifests::new();
        m.load_str(
            "t.yaml",
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\nstatus:\n  conditions: [{type: Accepted, status: 'True', reason: Ok, message: ok, lastTransitionTime: '2026-01-01T00:00:00Z'}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec: {containers: [{name: c, image: x}]}\nstatus: {podIP: 010.000.001.002}\n",
        );
        assert!(m.diagnostics.is_empty(), "{:#?}", m.diagnostics);
        assert!(m.cluster.cluster_network_policies.contains_key("c"));
        let p = &m.cluster.pods[&ObjectKey::new("a", "p")];
        assert_eq!(
            p.ips,
            vec!["10.0.1.2".parse::<std::net::IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn kinds_come_from_the_types() {
        let names = kind_names();
        assert_eq!(
            names,
            [
                "Namespace",
                "Pod",
                "Node",
                "Service",
                "EndpointSlice",
                "NetworkPolicy",
                "FlowPolicy",
                "ClusterNetworkPolicy"
            ]
        );
        let scoped: Vec<bool> = kinds().iter().map(|k| k.namespaced).collect();
        assert_eq!(scoped, [false, true, false, true, true, true, true, false]);
        let apis: Vec<&str> = kinds().iter().map(|k| k.api_version.as_str()).collect();
        assert_eq!(
            apis,
            [
                "v1",
                "v1",
                "v1",
                "v1",
                "discovery.k8s.io/v1",
                "networking.k8s.io/v1",
                "septum.dev/v1alpha1",
                "policy.networking.k8s.io/v1alpha2"
            ]
        );
    }

    #[test]
    fn endpoint_slices_load_and_bad_ones_say_which_field() {
        let mut m = Manifests::new();
        m.load_str(
            "s.yaml",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: legacy-1\n  namespace: a\n  labels: {kubernetes.io/service-name: legacy}\naddressType: IPv4\nendpoints:\n- addresses: [203.0.113.7]\n  conditions: {ready: false}\n- addresses: [203.0.113.5]\nports: [{name: pg, port: 6432}]\n",
        );
        assert!(m.diagnostics.is_empty(), "{:#?}", m.diagnostics);
        let s = &m.cluster.endpoint_slices[&ObjectKey::new("a", "legacy-1")];
        assert_eq!(s.service.as_deref(), Some("legacy"));
        assert_eq!(
            s.addresses,
            ["203.0.113.5", "203.0.113.7"]
                .map(|a| a.parse::<std::net::IpAddr>().expect("ip"))
                .to_vec(),
            "every endpoint, whatever its conditions"
        );
        assert_eq!(s.ports[0].port, Some(6432));

        let mut m = Manifests::new();
        m.load_str(
            "bad.yaml",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: b, namespace: a, labels: {kubernetes.io/service-name: legacy}}\naddressType: IPv4\nendpoints: [{addresses: ['fd00::1']}, {addresses: [nonsense]}]\nports: [{name: pg, port: 0, protocol: tcp}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: c, namespace: a}\naddressType: IP\nendpoints: []\n",
        );
        let got: Vec<String> = m
            .diagnostics
            .iter()
            .map(|d| format!("{} {}: {}", d.object, d.field, d.message))
            .collect();
        for want in [
            "EndpointSlice a/b endpoints[0].addresses[0]: \"fd00::1\" is not an IPv4 address",
            "EndpointSlice a/b endpoints[1].addresses[0]: \"nonsense\" is not an IP address",
            "EndpointSlice a/b ports[0].port: port 0 is outside 1-65535",
            "EndpointSlice a/c addressType: unknown address type \"IP\" (IPv4, IPv6 or FQDN)",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "{want} in {got:#?}"
            );
        }
        assert!(
            got.iter()
                .any(|g| g.starts_with("EndpointSlice a/b ports[0].protocol")),
            "{got:#?}"
        );
        assert!(
            m.cluster.endpoint_slices.is_empty(),
            "refused slices are not loaded"
        );
    }

    #[test]
    fn a_broken_document_does_not_hide_the_next() {
        let mut m = Manifests::new();
        m.load_bytes(
            "t.yaml",
            b"\xef\xbb\xbfapiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nx: [\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b, labels: {k: \"\xff\"}}\n",
        );
        assert!(
            m.cluster.namespaces.contains_key("a"),
            "{:?}",
            m.diagnostics
        );
        assert!(
            m.cluster.namespaces.contains_key("b"),
            "{:?}",
            m.diagnostics
        );
        let text: Vec<String> = m.diagnostics.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(
                |e| e.starts_with("error: t.yaml (document 2): -: -: invalid YAML:")
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
