//! The RBAC in `manifests/` grants exactly what septum's code calls.
//!
//! Controller: the real controller (and its leader election) runs against the scripted API
//! server, which logs every request. Each request is mapped to the attributes the API server
//! authorizes (API group, resource[/subresource], verb, namespace, name), the way its request
//! info resolver does: a GET of a collection is `list`, with `watch=true` it is `watch`, a GET
//! of a named object `get`, POST `create`, PUT `update`, PATCH `patch`, DELETE `delete`; a
//! server-side apply (PATCH with `application/apply-patch+yaml`) is `patch` and, because it
//! creates a missing object, `create` of that name too (apiserver's patch handler authorizes
//! it). Then:
//!
//! - `EXPECTED`, the explicit list below, is exactly what the manifests grant the controller's
//!   ServiceAccount (nothing missing, nothing extra: no grant without a reason written here);
//! - every observed request is allowed by `EXPECTED` (a call the role would refuse fails);
//! - every grant in `EXPECTED` is used by some observed request (a grant no code path uses
//!   fails). So the list cannot silently rot: a new call fails the test until it is granted and
//!   listed, and a call that goes away fails it until its grant is removed.
//!
//! The scenarios cover every code path that talks to the API: the initial list+watch of every
//! kind (once with ClusterNetworkPolicy's CRD absent, answering 404, once present), identity
//! numbers read when absent and present and persisted by server-side apply, a FlowPolicy status
//! patch, and the Lease taken (created), renewed (updated) and read.
//!
//! Agent: it never calls the API server. Its ServiceAccount has no binding of any kind, its
//! token is not mounted (checked in `manifests.rs`), and the agent crate does not depend on a
//! Kubernetes client at all (read from its Cargo.toml), which is how "exactly what its code
//! calls" holds for it.

mod fake_api;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_api::{FakeApi, LoggedRequest};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::{Value, json};

const NAMESPACE: &str = "septum-system";
const CONTROLLER_SA: &str = "septum-controller";
const AGENT_SA: &str = "septum-agent";
/// The Lease name, `--lease-name`'s default.
const LEASE: &str = "septum-controller";

/// A permission as RBAC expresses it: `namespace: None` is cluster-wide (a ClusterRole bound by
/// a ClusterRoleBinding), `name: None` any object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// What the controller needs, and why. Keep in step with `manifests/controller/*role.yaml`.
fn expected() -> BTreeSet<Grant> {
    let g = |group: &str, resource: &str, verb: &str, ns: Option<&str>, name: Option<&str>| Grant {
        group: group.into(),
        resource: resource.into(),
        verb: verb.into(),
        namespace: ns.map(Into::into),
        name: name.map(Into::into),
    };
    let mut out = BTreeSet::new();
    // The watched kinds (context.rs: kube-rs watchers, list then watch; relist after 410).
    for (group, resource) in [
        ("", "namespaces"),
        ("", "nodes"),
        ("", "pods"),
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "networkpolicies"),
        ("septum.dev", "flowpolicies"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
    ] {
        for verb in ["list", "watch"] {
            out.insert(g(group, resource, verb, None, None));
        }
    }
    // status.rs: the FlowPolicy conditions, a merge patch of the status subresource.
    out.insert(g("septum.dev", "flowpolicies/status", "patch", None, None));
    // identities.rs: the one IdentityAllocation, read at start, written by server-side apply
    // (which creates it the first time).
    for verb in ["get", "patch", "create"] {
        out.insert(g(
            "septum.dev",
            "identityallocations",
            verb,
            None,
            Some(septum_crd::identity_allocation::OBJECT_NAME),
        ));
    }
    // leader.rs: the Lease in the controller's namespace: read and renewed by name; created by
    // a POST, whose name the authorizer does not see, so not narrowed by name.
    for verb in ["get", "update"] {
        out.insert(g(
            "coordination.k8s.io",
            "leases",
            verb,
            Some(NAMESPACE),
            Some(LEASE),
        ));
    }
    out.insert(g(
        "coordination.k8s.io",
        "leases",
        "create",
        Some(NAMESPACE),
        None,
    ));
    out
}

/// What one request asks the authorizer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Grant {
    fn allows(&self, a: &Access) -> bool {
        self.group == a.group
            && self.resource == a.resource
            && self.verb == a.verb
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| a.namespace.as_ref() == Some(n))
            && self
                .name
                .as_ref()
                .is_none_or(|n| a.name.as_ref() == Some(n))
    }
}

/// The authorizer's attributes of a request, as the API server's request info resolver
/// derives them (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go).
fn accesses(r: &LoggedRequest) -> Vec<Access> {
    let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("a non-resource request, which this RBAC does not grant: {r:?}"),
    };
    let mut rest = rest.to_vec();
    let mut namespace = None;
    // /namespaces/NS/<resource>...: a namespaced request (but /namespaces/NS[/status|finalize]
    // is the Namespace object itself).
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest.drain(..2);
        }
    }
    let resource = match rest.as_slice() {
        [resource] | [resource, _] => resource.to_string(),
        [resource, _, sub] => format!("{resource}/{sub}"),
        _ => panic!("cannot map {r:?}"),
    };
    // A Namespace addressed as /namespaces/NS is cluster-scoped, named NS.
    let (namespace, name) = if rest.first() == Some(&"namespaces") {
        (None, rest.get(1).map(|s| s.to_string()))
    } else {
        (namespace, rest.get(1).map(|s| s.to_string()))
    };
    let watch = r
        .query
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1");
    let verbs: &[&str] = match (r.method.as_str(), name.is_some()) {
        ("GET", _) if watch => &["watch"],
        ("GET", true) => &["get"],
        ("GET", false) => &["list"],
        ("POST", _) => &["create"],
        ("PUT", _) => &["update"],
        ("PATCH", _)
            if r.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/apply-patch")) =>
        {
            &["patch", "create"]
        }
        ("PATCH", _) => &["patch"],
        ("DELETE", true) => &["delete"],
        ("DELETE", false) => &["deletecollection"],
        _ => panic!("cannot map {r:?}"),
    };
    // A POST names its object in the body: the authorizer sees no name.
    let name = if r.method == "POST" { None } else { name };
    verbs
        .iter()
        .map(|verb| Access {
            group: group.to_string(),
            resource: resource.clone(),
            verb: verb.to_string(),
            namespace: namespace.clone(),
            name: name.clone(),
        })
        .collect()
}

#[test]
fn the_request_mapping_follows_the_api_server() {
    let req = |method: &str, path: &str, query: &[(&str, &str)], ct: Option<&str>| LoggedRequest {
        method: method.into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        content_type: ct.map(Into::into),
    };
    let one = |r: LoggedRequest| {
        let a = accesses(&r);
        assert_eq!(a.len(), 1, "{a:?}");
        let a = a.into_iter().next().expect("one");
        (a.group, a.resource, a.verb, a.namespace, a.name)
    };
    let s = |v: &str| v.to_string();
    assert_eq!(
        one(req("GET", "/api/v1/pods", &[("watch", "true")], None)),
        (s(""), s("pods"), s("watch"), None, None)
    );
    assert_eq!(
        one(req("GET", "/api/v1/namespaces", &[("limit", "500")], None)),
        (s(""), s("namespaces"), s("list"), None, None)
    );
    assert_eq!(
        one(req("GET", "/api/v1/namespaces/shop", &[], None)),
        (s(""), s("namespaces"), s("get"), None, Some(s("shop")))
    );
    assert_eq!(
        one(req("GET", "/api/v1/namespaces/shop/pods/web", &[], None)),
        (s(""), s("pods"), s("get"), Some(s("shop")), Some(s("web")))
    );
    assert_eq!(
        one(req(
            "PATCH",
            "/apis/septum.dev/v1alpha1/namespaces/shop/flowpolicies/p/status",
            &[],
            Some("application/merge-patch+json")
        )),
        (
            s("septum.dev"),
            s("flowpolicies/status"),
            s("patch"),
            Some(s("shop")),
            Some(s("p"))
        )
    );
    assert_eq!(
        one(req(
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/septum-system/leases",
            &[],
            Some("application/json")
        )),
        (
            s("coordination.k8s.io"),
            s("leases"),
            s("create"),
            Some(s("septum-system")),
            None
        )
    );
    let apply = accesses(&req(
        "PATCH",
        "/apis/septum.dev/v1alpha1/identityallocations/septum",
        &[("fieldManager", "septum-controller"), ("force", "true")],
        Some("application/apply-patch+yaml"),
    ));
    assert_eq!(
        apply.iter().map(|a| a.verb.as_str()).collect::<Vec<_>>(),
        ["patch", "create"],
        "an apply may create, and is authorized for both"
    );
    assert!(apply.iter().all(|a| a.name.as_deref() == Some("septum")));
}

// ---------------------------------------------------------------------------------------------
// What the manifests grant

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Every YAML document under `manifests/` (their typed, lossless parsing is `manifests.rs`'s).
fn manifest_documents() -> Vec<Value> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("manifests dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_root().join("manifests"), &mut files);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        for d in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["apiVersion"] == "rbac.authorization.k8s.io/v1" && d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).expect("RBAC object"))
        .collect()
}

fn names_service_account(
    subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>,
    sa: &str,
) -> bool {
    subjects.into_iter().flatten().any(|s| {
        (s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(NAMESPACE))
            // A group that contains every ServiceAccount of the namespace (or of the cluster).
            || (s.kind == "Group"
                && (s.name == "system:serviceaccounts"
                    || s.name == format!("system:serviceaccounts:{NAMESPACE}")))
            || (s.kind == "User" && s.name == format!("system:serviceaccount:{NAMESPACE}:{sa}"))
    })
}

fn expand(rules: &[PolicyRule], namespace: Option<&str>, out: &mut BTreeSet<Grant>) {
    for rule in rules {
        assert!(
            rule.non_resource_urls.as_ref().is_none_or(|u| u.is_empty()),
            "no non-resource URLs: {rule:?}"
        );
        let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
            None | Some([]) => vec![None],
            Some(n) => n.iter().cloned().map(Some).collect(),
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for w in [group, resource, verb] {
                        assert!(!w.contains('*'), "no wildcards: {rule:?}");
                    }
                    for name in &names {
                        out.insert(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                            namespace: namespace.map(Into::into),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }
}

/// Everything the manifests grant to `sa`, through every kind of binding.
fn granted(docs: &[Value], sa: &str) -> BTreeSet<Grant> {
    let cluster_roles: Vec<ClusterRole> = of_kind(docs, "ClusterRole");
    let roles: Vec<Role> = of_kind(docs, "Role");
    let cluster_role = |name: &str| {
        let r = cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no ClusterRole {name}"));
        assert!(r.aggregation_rule.is_none(), "no aggregated roles");
        r.rules.clone().unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for b in of_kind::<ClusterRoleBinding>(docs, "ClusterRoleBinding") {
        if names_service_account(b.subjects.as_ref(), sa) {
            assert_eq!(b.role_ref.kind, "ClusterRole");
            expand(&cluster_role(&b.role_ref.name), None, &mut out);
        }
    }
    for b in of_kind::<RoleBinding>(docs, "RoleBinding") {
        if names_service_account(b.subjects.as_ref(), sa) {
            let ns = b
                .metadata
                .namespace
                .clone()
                .expect("a RoleBinding's namespace");
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => cluster_role(&b.role_ref.name),
                "Role" => roles
                    .iter()
                    .find(|r| {
                        r.metadata.name.as_deref() == Some(&b.role_ref.name)
                            && r.metadata.namespace.as_deref() == Some(&ns)
                    })
                    .unwrap_or_else(|| panic!("no Role {ns}/{}", b.role_ref.name))
                    .rules
                    .clone()
                    .unwrap_or_default(),
                other => panic!("roleRef kind {other}"),
            };
            expand(&rules, Some(&ns), &mut out);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What the controller calls

fn seed(api: &FakeApi) {
    api.put_silently(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    api.put_silently(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}),
    );
    api.put_silently(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "a", "containers": [{"name": "c",
                "ports": [{"containerPort": 8080, "name": "http"}]}]},
            "status": {"podIP": "10.0.0.1"}}),
    );
    api.put_silently(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                "ports": [{"port": 80, "targetPort": "http"}]}}),
    );
}

fn flow_policy() -> Value {
    json!({"apiVersion": "septum.dev/v1alpha1", "kind": "FlowPolicy",
        "metadata": {"name": "web-in", "namespace": "shop", "generation": 1},
        "spec": {"subject": {"service": "web"}, "ingress": [{"from": [{"podSelector": {}}]}]}})
}

const WATCHED: [&str; 7] = [
    "namespaces",
    "nodes",
    "pods",
    "services",
    "networkpolicies",
    "flowpolicies",
    "clusternetworkpolicies",
];

/// Runs the controller until it has watched every served kind, persisted its numbers and
/// written the FlowPolicy's status; returns every request it made.
async fn controller_requests(absent: &[&str], identity: Option<Value>) -> Vec<LoggedRequest> {
    let (api, client) = FakeApi::start(absent);
    seed(&api);
    if let Some(o) = identity {
        api.set_identity(o);
    }
    let controller = septum_controller::Controller::new(client);
    let task = tokio::spawn(async move {
        let _ = controller.run().await;
    });
    api.put("flowpolicies", flow_policy());
    let status = "/apis/septum.dev/v1alpha1/namespaces/shop/flowpolicies/web-in/status";
    api.wait_for("the FlowPolicy status patch", |a| {
        !a.patches(status).is_empty()
    })
    .await;
    api.wait_for("the identity numbers persisted", |a| a.identity().is_some())
        .await;
    let watching: Vec<&str> = WATCHED
        .into_iter()
        .filter(|k| !absent.contains(k))
        .collect();
    api.wait_for("a watch of every served kind", |a| {
        watching.iter().all(|k| !a.watch_versions(k).is_empty())
    })
    .await;
    // A 404 kind is retried: at least its list was asked for.
    api.wait_for("a list of every kind", |a| {
        WATCHED.iter().all(|k| a.lists(k) >= 1)
    })
    .await;
    task.abort();
    api.requests()
}

/// Takes the Lease (create), renews it (update), and lets a second replica find it held (get).
async fn leader_requests() -> Vec<LoggedRequest> {
    use septum_controller::leader::{self, LeaseSettings};
    let (api, client) = FakeApi::start(&[]);
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, NAMESPACE);
    let settings = |id: &str| LeaseSettings {
        retry: Duration::from_millis(20),
        ..LeaseSettings::new(NAMESPACE, LEASE, id)
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        leader::acquire(&leases, &settings("a")),
    )
    .await
    .expect("the free Lease is taken");
    assert!(
        leader::try_acquire_or_renew(&leases, &settings("a"))
            .await
            .expect("renewed")
    );
    assert!(
        !leader::try_acquire_or_renew(&leases, &settings("b"))
            .await
            .expect("read")
    );
    api.requests()
}

#[tokio::test]
async fn the_controller_role_grants_exactly_what_the_controller_calls() {
    let docs = manifest_documents();
    let granted = granted(&docs, CONTROLLER_SA);
    let expected = expected();
    let missing: Vec<_> = expected.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the manifests' grants differ from EXPECTED:\nnot granted: {missing:#?}\ngranted but not expected: {extra:#?}"
    );

    let mut requests = Vec::new();
    // A first start: no CRD for ClusterNetworkPolicy, no identity numbers yet.
    requests.extend(controller_requests(&["clusternetworkpolicies"], None).await);
    // A restart with the CRD installed and the numbers persisted.
    let persisted = json!({"apiVersion": "septum.dev/v1alpha1", "kind": "IdentityAllocation",
        "metadata": {"name": septum_crd::identity_allocation::OBJECT_NAME, "resourceVersion": "1"},
        "spec": {"entries": []}});
    requests.extend(controller_requests(&[], Some(persisted)).await);
    requests.extend(leader_requests().await);

    let observed: BTreeSet<Access> = requests.iter().flat_map(accesses).collect();
    let refused: Vec<_> = observed
        .iter()
        .filter(|a| !expected.iter().any(|g| g.allows(a)))
        .collect();
    assert!(
        refused.is_empty(),
        "calls the role would refuse (grant them in manifests/ and list them in EXPECTED): {refused:#?}"
    );
    let unused: Vec<_> = expected
        .iter()
        .filter(|g| !observed.iter().any(|a| g.allows(a)))
        .collect();
    assert!(
        unused.is_empty(),
        "grants no call used (remove them, or drive the code path that needs them): {unused:#?}\nobserved: {observed:#?}"
    );
}

#[test]
fn nothing_binds_the_agent_and_the_agent_has_no_kubernetes_client() {
    let docs = manifest_documents();
    assert_eq!(
        granted(&docs, AGENT_SA),
        BTreeSet::new(),
        "the agent never calls the API server"
    );
    // Not even a binding to an empty role: no RoleBinding or ClusterRoleBinding names it.
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        for d in docs.iter().filter(|d| d["kind"] == kind) {
            let subjects: Option<Vec<k8s_openapi::api::rbac::v1::Subject>> =
                serde_json::from_value(d["subjects"].clone()).expect("subjects");
            assert!(
                !names_service_account(subjects.as_ref(), AGENT_SA),
                "{kind} {} binds the agent",
                d["metadata"]["name"]
            );
        }
    }
    let manifest =
        std::fs::read_to_string(repo_root().join("agent/Cargo.toml")).expect("agent/Cargo.toml");
    let manifest: toml_edit::DocumentMut = manifest.parse().expect("agent/Cargo.toml parses");
    let mut tables: Vec<&dyn toml_edit::TableLike> = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(t) = manifest.get(section).and_then(|t| t.as_table_like()) {
            tables.push(t);
        }
    }
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table_like()) {
        for (_, target) in targets.iter() {
            for section in ["dependencies", "build-dependencies"] {
                if let Some(t) = target.get(section).and_then(|t| t.as_table_like()) {
                    tables.push(t);
                }
            }
        }
    }
    assert!(!tables.is_empty(), "agent/Cargo.toml has dependencies");
    for t in tables {
        for (name, spec) in t.iter() {
            // `foo = { package = "kube" }` renames count too.
            let package = spec
                .as_table_like()
                .and_then(|s| s.get("package"))
                .and_then(|p| p.as_str())
                .unwrap_or(name);
            assert!(
                !matches!(
                    package,
                    "kube" | "kube-client" | "kube-runtime" | "kube-core"
                ),
                "septum-agent depends on {package}: the agent must not call the API server"
            );
        }
    }
}
