//! The deployment manifests under `manifests/`: every YAML document parses into the typed
//! k8s-openapi struct of its kind, and serialising that struct again reproduces the document
//! exactly (k8s-openapi ignores unknown fields, so a misspelt `imagePullPolicyy` would otherwise
//! vanish without a word); a kind this test does not know fails it. Then the properties a user
//! relies on: nothing is `privileged: true`; every container has requests and limits; the
//! agent adds exactly the capabilities its DaemonSet justifies; the controller's pod meets the
//! `restricted` Pod Security Standard; the agent mounts bpffs, the CNI directories, its state
//! directory and its socket directory from the host, where the agent's own defaults expect them;
//! the namespace is labelled for Pod Security Admission; images carry the workspace version;
//! every environment variable set is one the binaries read; Services, selectors, ports and
//! probes agree with each other.
//!
//! The RBAC rules are checked against the controller's real calls in `rbac.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, Probe, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// The one image both binaries ship in.
const IMAGE_REPOSITORY: &str = "ghcr.io/septum-dev/septum";
/// Where every namespaced object lives.
const NAMESPACE: &str = "septum-system";
/// The capabilities the agent adds, each justified in `manifests/agent/daemonset.yaml` (and
/// each shown necessary there by running the agent without it).
const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
/// Environment variables read by libraries rather than by a binary's flags.
const LIBRARY_ENV: [(&str, &str); 2] = [
    ("RUST_LOG", "tracing-subscriber's EnvFilter"),
    ("TMPDIR", "SQLite's temporary files"),
];

// ---------------------------------------------------------------------------------------------
// Loading: documents, kinds, lossless parsing

/// One typed manifest object (boxed: the structs differ in size by kilobytes).
#[derive(Debug)]
enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    Deployment(Box<Deployment>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    Secret(Box<Secret>),
    CustomResourceDefinition(Box<CustomResourceDefinition>),
}

impl Object {
    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::ClusterRole(o) => &o.metadata,
            Object::ClusterRoleBinding(o) => &o.metadata,
            Object::Role(o) => &o.metadata,
            Object::RoleBinding(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::CustomResourceDefinition(o) => &o.metadata,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::Deployment(_) => "Deployment",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Service(_) => "Service",
            Object::Secret(_) => "Secret",
            Object::CustomResourceDefinition(_) => "CustomResourceDefinition",
        }
    }

    /// Whether objects of this kind live in a namespace.
    fn namespaced(&self) -> bool {
        !matches!(
            self,
            Object::Namespace(_)
                | Object::ClusterRole(_)
                | Object::ClusterRoleBinding(_)
                | Object::CustomResourceDefinition(_)
        )
    }
}

/// Why a document is refused.
#[derive(Debug)]
enum Problem {
    /// No typed struct for this apiVersion and kind.
    UnknownKind { api_version: String, kind: String },
    /// The typed struct refuses the document (a wrong type, a missing required field).
    Invalid(serde_json::Error),
    /// Fields the typed struct does not reproduce: unknown (misspelt) or altered ones.
    Lost(Vec<String>),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::UnknownKind { api_version, kind } => {
                write!(f, "no typed struct for {api_version} {kind}")
            }
            Problem::Invalid(e) => write!(f, "refused by its typed struct: {e}"),
            Problem::Lost(lost) => write!(f, "not reproduced:\n  {}", lost.join("\n  ")),
        }
    }
}

/// The document parsed into `T`, provided `T` serialises back to exactly the document.
fn lossless<T>(value: &Value) -> Result<T, Problem>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(value.clone()).map_err(Problem::Invalid)?;
    let again = serde_json::to_value(&typed).map_err(Problem::Invalid)?;
    let mut lost = Vec::new();
    differences(value, &again, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(Problem::Lost(lost))
    }
}

/// Every place where `reserialised` differs from `original`.
fn differences(original: &Value, reserialised: &Value, path: &str, out: &mut Vec<String>) {
    match (original, reserialised) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => differences(v, w, &here, out),
                    None => out.push(format!("{here}: not a field of this kind (dropped)")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the typed struct"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} came back as {b}")),
    }
}

/// The typed object of a document, by its apiVersion and kind.
fn typed(value: &Value) -> Result<Object, Problem> {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or_default();
    Ok(match (api_version, kind) {
        ("v1", "Namespace") => Object::Namespace(Box::new(lossless(value)?)),
        ("v1", "ServiceAccount") => Object::ServiceAccount(Box::new(lossless(value)?)),
        ("v1", "Service") => Object::Service(Box::new(lossless(value)?)),
        ("v1", "Secret") => Object::Secret(Box::new(lossless(value)?)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            Object::ClusterRole(Box::new(lossless(value)?))
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::ClusterRoleBinding(Box::new(lossless(value)?))
        }
        ("rbac.authorization.k8s.io/v1", "Role") => Object::Role(Box::new(lossless(value)?)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            Object::RoleBinding(Box::new(lossless(value)?))
        }
        ("apps/v1", "Deployment") => Object::Deployment(Box::new(lossless(value)?)),
        ("apps/v1", "DaemonSet") => Object::DaemonSet(Box::new(lossless(value)?)),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            Object::CustomResourceDefinition(Box::new(lossless(value)?))
        }
        _ => {
            return Err(Problem::UnknownKind {
                api_version: api_version.into(),
                kind: kind.into(),
            });
        }
    })
}

/// The documents of one YAML stream (empty documents, e.g. after a trailing `---`, skipped).
fn documents_of(text: &str) -> Result<Vec<Value>, serde_norway::Error> {
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller crate sits in the workspace")
        .to_path_buf()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Every object under `manifests/`, each with its place (`file#document`).
struct Manifests {
    objects: Vec<(String, Object)>,
    raw: Vec<(String, Value)>,
}

fn load() -> Manifests {
    let root = repo_root();
    let mut files = Vec::new();
    yaml_files(&root.join("manifests"), &mut files);
    assert!(!files.is_empty(), "no YAML under manifests/");
    let mut objects = Vec::new();
    let mut raw = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let documents = documents_of(&text).unwrap_or_else(|e| panic!("{name}: bad YAML: {e}"));
        for (i, value) in documents.into_iter().enumerate() {
            let place = format!("{name}#{i}");
            match typed(&value) {
                Ok(o) => objects.push((place.clone(), o)),
                Err(p) => problems.push(format!("{place}: {p}")),
            }
            raw.push((place, value));
        }
    }
    assert!(
        problems.is_empty(),
        "manifests that do not parse losslessly into their kind:\n{}",
        problems.join("\n")
    );
    Manifests { objects, raw }
}

impl Manifests {
    fn deployment(&self, name: &str) -> &Deployment {
        self.objects
            .iter()
            .find_map(|(_, o)| match o {
                Object::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(&**d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn daemon_set(&self, name: &str) -> &DaemonSet {
        self.objects
            .iter()
            .find_map(|(_, o)| match o {
                Object::DaemonSet(d) if d.metadata.name.as_deref() == Some(name) => Some(&**d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no DaemonSet {name}"))
    }

    /// Every pod template: (workload, its pod spec).
    fn pods(&self) -> Vec<(String, &PodSpec)> {
        self.objects
            .iter()
            .filter_map(|(_, o)| {
                let (name, template) = match o {
                    Object::Deployment(d) => (
                        format!("Deployment {}", d.metadata.name.clone().unwrap_or_default()),
                        &d.spec.as_ref()?.template,
                    ),
                    Object::DaemonSet(d) => (
                        format!("DaemonSet {}", d.metadata.name.clone().unwrap_or_default()),
                        &d.spec.as_ref()?.template,
                    ),
                    _ => return None,
                };
                Some((name, template.spec.as_ref()?))
            })
            .collect()
    }

    /// Every (kind, namespace, name).
    fn inventory(&self) -> BTreeSet<(String, String, String)> {
        self.objects
            .iter()
            .map(|(_, o)| {
                let m = o.metadata();
                (
                    o.kind().to_string(),
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Init containers and containers alike.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    all_containers(spec)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The plain-valued environment of a container.
fn env(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checker itself

#[test]
fn the_checker_refuses_unknown_kinds_misspelt_fields_and_wrong_types() {
    let parse = |yaml: &str| {
        let docs = documents_of(yaml).expect("YAML");
        assert_eq!(docs.len(), 1);
        typed(&docs[0])
    };
    match parse("apiVersion: example.com/v1\nkind: Frobnicator\nmetadata: {name: x}\n") {
        Err(Problem::UnknownKind { kind, .. }) => assert_eq!(kind, "Frobnicator"),
        other => panic!("an unknown kind must fail: {other:?}"),
    }
    let misspelt = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers:\n        - name: c\n          image: i\n          imagePullPolicyy: Always\n";
    match parse(misspelt) {
        Err(Problem::Lost(lost)) => assert_eq!(
            lost,
            [
                ".spec.template.spec.containers[0].imagePullPolicyy: not a field of this kind (dropped)"
            ]
        ),
        other => panic!("a misspelt field must fail: {other:?}"),
    }
    match parse(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: http}]}\n",
    ) {
        Err(Problem::Invalid(_)) => {}
        other => panic!("a wrong type must fail: {other:?}"),
    }
    // Multi-document streams, empty documents skipped.
    let docs = documents_of("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n").expect("YAML");
    assert_eq!(docs.len(), 2);
    assert!(docs.iter().all(|d| typed(d).is_ok()));
}

// ---------------------------------------------------------------------------------------------
// The manifests

#[test]
fn every_manifest_parses_losslessly_and_the_set_is_complete() {
    let m = load();
    let expected: BTreeSet<(String, String, String)> = [
        ("Namespace", "", NAMESPACE),
        ("ServiceAccount", NAMESPACE, "septum-controller"),
        ("ClusterRole", "", "septum-controller"),
        ("ClusterRoleBinding", "", "septum-controller"),
        ("Role", NAMESPACE, "septum-controller"),
        ("RoleBinding", NAMESPACE, "septum-controller"),
        ("Deployment", NAMESPACE, "septum-controller"),
        ("Service", NAMESPACE, "septum-controller"),
        ("ServiceAccount", NAMESPACE, "septum-agent"),
        ("DaemonSet", NAMESPACE, "septum-agent"),
        ("CustomResourceDefinition", "", "flowpolicies.septum.dev"),
        (
            "CustomResourceDefinition",
            "",
            "identityallocations.septum.dev",
        ),
    ]
    .into_iter()
    .map(|(k, ns, n)| (k.to_string(), ns.to_string(), n.to_string()))
    .collect();
    assert_eq!(m.inventory(), expected);
    assert_eq!(m.raw.len(), expected.len(), "no object twice");
    // Every namespaced object is in septum's namespace (the others have none).
    for (place, o) in &m.objects {
        let expected = o.namespaced().then_some(NAMESPACE);
        assert_eq!(o.metadata().namespace.as_deref(), expected, "{place}");
    }
}

#[test]
fn the_namespace_is_labelled_for_pod_security_admission() {
    let m = load();
    let ns = m
        .objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        })
        .expect("a Namespace");
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    // hostNetwork, hostPath and added capabilities are only admitted at `privileged`.
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged")
    );
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/audit")
            .map(String::as_str),
        Some("restricted")
    );
}

#[test]
fn nothing_is_privileged() {
    let m = load();
    fn scan(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    if k == "privileged" && v == &Value::Bool(true) {
                        out.push(format!("{path}.{k}"));
                    }
                    scan(v, &format!("{path}.{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    scan(v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (place, v) in m
        .raw
        .iter()
        .filter(|(_, v)| v["kind"] != "CustomResourceDefinition")
    {
        scan(v, place, &mut found);
    }
    assert!(found.is_empty(), "privileged: true at {found:?}");
    for (workload, spec) in m.pods() {
        assert_ne!(spec.host_pid, Some(true), "{workload}: hostPID");
        assert_ne!(spec.host_ipc, Some(true), "{workload}: hostIPC");
        for c in all_containers(spec) {
            let sc = c.security_context.as_ref();
            assert_ne!(
                sc.and_then(|s| s.privileged),
                Some(true),
                "{workload}/{}",
                c.name
            );
            assert_eq!(
                sc.and_then(|s| s.allow_privilege_escalation),
                Some(false),
                "{workload}/{}: allowPrivilegeEscalation must be false",
                c.name
            );
            assert_eq!(
                sc.and_then(|s| s.capabilities.as_ref())
                    .and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()]),
                "{workload}/{}: drops every capability",
                c.name
            );
        }
    }
}

/// A CPU or memory quantity in its base unit (cores, bytes).
fn quantity(q: &str) -> f64 {
    const SUFFIXES: [(&str, f64); 9] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("quantity {q:?}"))
        * scale
}

#[test]
fn every_container_has_requests_and_limits() {
    let m = load();
    let mut containers = 0;
    for (workload, spec) in m.pods() {
        for c in all_containers(spec) {
            containers += 1;
            let r = c
                .resources
                .as_ref()
                .unwrap_or_else(|| panic!("{workload}/{}: no resources", c.name));
            let (requests, limits) = (
                r.requests.clone().unwrap_or_default(),
                r.limits.clone().unwrap_or_default(),
            );
            for resource in ["cpu", "memory"] {
                let (Some(request), Some(limit)) = (requests.get(resource), limits.get(resource))
                else {
                    panic!(
                        "{workload}/{}: {resource} needs a request and a limit",
                        c.name
                    );
                };
                // The API server refuses a request above its limit.
                assert!(
                    quantity(&request.0) <= quantity(&limit.0),
                    "{workload}/{}: {resource} request {} above limit {}",
                    c.name,
                    request.0,
                    limit.0
                );
            }
        }
    }
    assert_eq!(containers, 3, "controller, install-cni and agent");
}

#[test]
fn images_are_tagged_with_the_workspace_version() {
    let m = load();
    let image = format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"));
    for (workload, spec) in m.pods() {
        for c in all_containers(spec) {
            assert_eq!(c.image.as_deref(), Some(&*image), "{workload}/{}", c.name);
        }
    }
}

/// The named container port a probe points at, whichever handler it uses.
fn probe_port(p: &Probe) -> Option<&IntOrString> {
    p.http_get
        .as_ref()
        .map(|h| &h.port)
        .or(p.tcp_socket.as_ref().map(|t| &t.port))
}

#[test]
fn ports_are_named_probed_and_served() {
    let m = load();
    for (workload, spec) in m.pods() {
        for c in &spec.containers {
            let ports: BTreeMap<String, i32> = c
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    let name = p
                        .name
                        .clone()
                        .unwrap_or_else(|| panic!("{workload}/{}: unnamed port", c.name));
                    (name, p.container_port)
                })
                .collect();
            assert!(
                ports.contains_key("metrics"),
                "{workload}/{}: a metrics port",
                c.name
            );
            for (what, probe, required) in [
                ("liveness", &c.liveness_probe, true),
                ("readiness", &c.readiness_probe, true),
                ("startup", &c.startup_probe, false),
            ] {
                let Some(probe) = probe else {
                    assert!(!required, "{workload}/{}: no {what} probe", c.name);
                    continue;
                };
                match probe_port(probe) {
                    Some(IntOrString::String(name)) => assert!(
                        ports.contains_key(name),
                        "{workload}/{}: {what} probe on unknown port {name}",
                        c.name
                    ),
                    other => panic!(
                        "{workload}/{}: {what} probe must name its port: {other:?}",
                        c.name
                    ),
                }
            }
        }
    }
    // The agent's probes are its health paths (agent/src/health.rs).
    let agent = m.daemon_set("septum-agent");
    let spec = agent.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let c = container(spec.expect("pod spec"), "agent");
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
}

#[test]
fn selectors_and_services_match_their_pods() {
    let m = load();
    let subset = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
        !want.is_empty() && want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    let controller = m.deployment("septum-controller");
    let agent = m.daemon_set("septum-agent");
    for (what, selector, template) in [
        (
            "Deployment",
            &controller.spec.as_ref().expect("spec").selector,
            &controller.spec.as_ref().expect("spec").template,
        ),
        (
            "DaemonSet",
            &agent.spec.as_ref().expect("spec").selector,
            &agent.spec.as_ref().expect("spec").template,
        ),
    ] {
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        assert!(
            subset(&selector.match_labels.clone().unwrap_or_default(), &labels),
            "{what}: the selector selects its own pods"
        );
    }
    let template = &controller.spec.as_ref().expect("spec").template;
    let pod_labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let pod = template.spec.as_ref().expect("pod spec");
    let ports: BTreeMap<String, i32> = container(pod, "controller")
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    let service = m
        .objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::Service(s) if s.metadata.name.as_deref() == Some("septum-controller") => {
                s.spec.as_ref()
            }
            _ => None,
        })
        .expect("Service septum-controller");
    assert!(subset(
        &service.selector.clone().unwrap_or_default(),
        &pod_labels
    ));
    let service_ports: BTreeMap<String, (i32, Option<IntOrString>)> = service
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                (p.port, p.target_port.clone()),
            )
        })
        .collect();
    assert_eq!(
        service_ports,
        BTreeMap::from([
            (
                "stream".to_string(),
                (4240, Some(IntOrString::String("stream".into())))
            ),
            (
                "relay".to_string(),
                (4245, Some(IntOrString::String("relay".into())))
            ),
            (
                "metrics".to_string(),
                (9090, Some(IntOrString::String("metrics".into())))
            ),
        ])
    );
    assert_eq!(ports.get("stream"), Some(&4240));
    assert_eq!(ports.get("relay"), Some(&4245));
    assert_eq!(ports.get("metrics"), Some(&9090));
    // The agents' controller URL is this Service's stream port.
    let agent_pod = agent.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let agent_container = container(agent_pod.expect("pod spec"), "agent");
    let agent_env = env(agent_container);
    assert_eq!(
        agent_env.get("SEPTUM_CONTROLLER").map(String::as_str),
        Some("https://septum-controller.septum-system.svc:4240")
    );
    // The flow API the agent advertises to the relay is the one it serves, on a named port.
    assert_eq!(
        agent_env.get("SEPTUM_FLOWS_ADDR").map(String::as_str),
        Some("0.0.0.0:4245")
    );
    assert_eq!(
        agent_env.get("SEPTUM_FLOWS_ADVERTISE").map(String::as_str),
        Some("https://$(HOST_IP):4245")
    );
    assert!(
        agent_container
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("flows") && p.container_port == 4245)
    );
}

#[test]
fn the_controller_pod_meets_the_restricted_profile() {
    let m = load();
    let d = m.deployment("septum-controller");
    let spec = d.spec.as_ref().expect("spec");
    // One replica; see the Deployment's comment (a standby opens no port to probe).
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("septum-controller")
    );
    // Baseline: no host namespaces, no hostPath, no host ports.
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    // Restricted: only these volume types.
    for v in pod.volumes.iter().flatten() {
        let allowed = v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some();
        assert!(allowed, "volume {} is not allowed by restricted", v.name);
    }
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u != 0));
    for c in all_containers(pod) {
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.run_as_non_root.or(psc.run_as_non_root), Some(true));
        assert_ne!(sc.run_as_user, Some(0));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        // Restricted admits NET_BIND_SERVICE only; the controller needs none.
        assert!(caps.add.as_deref().unwrap_or_default().is_empty());
        assert!(
            sc.seccomp_profile
                .as_ref()
                .is_none_or(|s| s.type_ == "RuntimeDefault")
        );
        for p in c.ports.iter().flatten() {
            assert_eq!(p.host_port, None, "{}: host port", c.name);
        }
    }
}

#[test]
fn the_agent_adds_exactly_its_documented_capabilities_and_no_api_access() {
    let m = load();
    let ds = m.daemon_set("septum-agent");
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "the controller's Service name must resolve from the host network"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("septum-agent"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let added = |c: &Container| -> BTreeSet<String> {
        c.security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    assert_eq!(
        added(container(pod, "agent")),
        AGENT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        "the agent's capabilities are the ones its DaemonSet justifies"
    );
    assert!(
        added(container(pod, "install-cni")).is_empty(),
        "installing the plugin is plain file work"
    );
    let sa = m
        .objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::ServiceAccount(s) if s.metadata.name.as_deref() == Some("septum-agent") => {
                Some(s)
            }
            _ => None,
        })
        .expect("ServiceAccount septum-agent");
    assert_eq!(sa.automount_service_account_token, Some(false));
}

/// The agent's flags: environment key -> default value.
fn agent_flags() -> BTreeMap<String, Option<String>> {
    use clap::Args as _;
    let cmd = septum_agent::AgentConfig::augment_args(clap::Command::new("septum-agent"));
    cmd.get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_string_lossy().into_owned();
            let default = a
                .get_default_values()
                .first()
                .map(|d| d.to_string_lossy().into_owned());
            Some((env, default))
        })
        .collect()
}

#[test]
fn the_agent_mounts_bpffs_cni_dirs_and_its_state_from_the_host() {
    let m = load();
    let ds = m.daemon_set("septum-agent");
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let host_paths: BTreeMap<String, (String, Option<String>)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let h = v.host_path.as_ref()?;
            Some((v.name.clone(), (h.path.clone(), h.type_.clone())))
        })
        .collect();
    // Container path -> host path, for one container's hostPath mounts.
    let mounts = |c: &Container| -> BTreeMap<String, String> {
        c.volume_mounts
            .iter()
            .flatten()
            .filter_map(|vm| {
                let (host, _) = host_paths.get(&vm.name)?;
                Some((vm.mount_path.clone(), host.clone()))
            })
            .collect()
    };
    let agent = container(pod, "agent");
    let flags = agent_flags();
    let setting = |key: &str| -> String {
        env(agent)
            .get(key)
            .cloned()
            .or_else(|| flags.get(key).cloned().flatten())
            .unwrap_or_else(|| panic!("{key}: neither set nor defaulted"))
    };
    // The manifest spells the agent's paths out; they are the agent's own defaults.
    for key in ["SEPTUM_STATE_DIR", "SEPTUM_AGENT_SOCKET", "SEPTUM_PIN_ROOT"] {
        assert_eq!(
            Some(setting(key)),
            flags.get(key).cloned().flatten(),
            "{key} differs from the agent's default"
        );
    }
    assert_eq!(
        setting("SEPTUM_PIN_ROOT"),
        septum_datapath::DEFAULT_PIN_ROOT
    );
    let agent_mounts = mounts(agent);
    let state_dir = setting("SEPTUM_STATE_DIR");
    let socket_dir = Path::new(&setting("SEPTUM_AGENT_SOCKET"))
        .parent()
        .expect("socket dir")
        .display()
        .to_string();
    // The same path inside and outside: the host's bpffs, state dir and socket dir.
    for path in ["/sys/fs/bpf", state_dir.as_str(), socket_dir.as_str()] {
        assert_eq!(
            agent_mounts.get(path).map(String::as_str),
            Some(path),
            "the agent mounts the host's {path} at {path}: {agent_mounts:?}"
        );
    }
    let bpffs = host_paths
        .values()
        .find(|(p, _)| p == "/sys/fs/bpf")
        .expect("bpffs volume");
    assert_eq!(
        bpffs.1.as_deref(),
        Some("Directory"),
        "pins must land on the host's bpffs, never a directory created in its place"
    );
    assert!(
        Path::new(septum_datapath::DEFAULT_PIN_ROOT).starts_with("/sys/fs/bpf"),
        "the pins are under the mounted bpffs"
    );
    let bpffs_mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.mount_path == "/sys/fs/bpf")
        .expect("bpffs mount");
    assert_eq!(
        bpffs_mount.mount_propagation.as_deref(),
        Some("HostToContainer"),
        "Bidirectional would need a privileged container"
    );
    // The installer writes the host's CNI directories, named in its arguments.
    let install = container(pod, "install-cni");
    let args = install.command.clone().unwrap_or_default();
    let arg = |flag: &str| -> String {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("install-cni has no {flag}: {args:?}"));
        args[i + 1].clone()
    };
    assert_eq!(
        args.get(..2),
        Some(&["septum-agent".into(), "install-cni".into()][..])
    );
    let install_mounts = mounts(install);
    for (flag, key, host) in [
        ("--cni-conf-dir", "SEPTUM_CNI_CONF_DIR", "/etc/cni/net.d"),
        ("--cni-bin-dir", "SEPTUM_CNI_BIN_DIR", "/opt/cni/bin"),
    ] {
        assert_eq!(
            install_mounts.get(&arg(flag)).map(String::as_str),
            Some(host),
            "install-cni's {flag} is the host's {host}"
        );
        // The agent keeps the plugin installed in the same directories.
        assert_eq!(
            agent_mounts.get(&setting(key)).map(String::as_str),
            Some(host),
            "the agent's {key} is the host's {host}"
        );
    }
    // Its client certificate comes from the node (see the DaemonSet's comment).
    let tls = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.mount_path == "/etc/septum/agent-tls")
        .expect("agent TLS mount");
    assert_eq!(tls.read_only, Some(true));
    assert_eq!(
        host_paths.get(&tls.name),
        Some(&(
            "/etc/septum/agent-tls".to_string(),
            Some("Directory".into())
        ))
    );
    for key in [
        "SEPTUM_CONTROLLER_CA",
        "SEPTUM_CONTROLLER_TLS_CERT",
        "SEPTUM_CONTROLLER_TLS_KEY",
    ] {
        assert!(
            setting(key).starts_with("/etc/septum/agent-tls/"),
            "{key} is read from the mounted directory"
        );
    }
    // The node name, from the downward API.
    let node = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SEPTUM_NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node, Some("spec.nodeName"));
}

#[test]
fn the_controller_reads_its_tls_from_the_secret() {
    let m = load();
    let d = m.deployment("septum-controller");
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let c = container(pod, "controller");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.mount_path == "/etc/septum/tls")
        .expect("TLS mount");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("TLS volume");
    assert_eq!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("septum-controller-tls")
    );
    let env = env(c);
    for (key, file) in [
        ("SEPTUM_STREAM_TLS_CERT", "tls.crt"),
        ("SEPTUM_STREAM_TLS_KEY", "tls.key"),
        ("SEPTUM_STREAM_TLS_CLIENT_CA", "ca.crt"),
    ] {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(&*format!("/etc/septum/tls/{file}")),
            "{key}"
        );
    }
}

#[test]
fn every_environment_variable_is_one_the_binaries_read() {
    let m = load();
    // The controller's keys, from its real `--help` (clap prints `[env: KEY=...]`).
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_septum-controller"))
        .arg("--help")
        .output()
        .expect("septum-controller --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let agent = agent_flags();
    let library: BTreeMap<&str, &str> = LIBRARY_ENV.into_iter().collect();
    for (workload, spec) in m.pods() {
        for c in all_containers(spec) {
            let referenced: BTreeSet<String> = c
                .env
                .iter()
                .flatten()
                .filter_map(|e| e.value.as_deref())
                .flat_map(|v| v.split("$(").skip(1).filter_map(|r| r.split_once(')')))
                .map(|(name, _)| name.to_string())
                .collect();
            for e in c.env.iter().flatten() {
                // Kubernetes reads a variable another one expands (`$(HOST_IP)`).
                let known = referenced.contains(&e.name)
                    || library.contains_key(e.name.as_str())
                    || match c.name.as_str() {
                        "controller" => help.contains(&format!("[env: {}=", e.name)),
                        "agent" => agent.contains_key(&e.name),
                        _ => false,
                    };
                assert!(
                    known,
                    "{workload}/{}: {} is read by nothing",
                    c.name, e.name
                );
            }
        }
    }
    // The help text really lists the keys (so the check above can fail).
    assert!(help.contains("[env: SEPTUM_STREAM_ADDR="), "{help}");
}
