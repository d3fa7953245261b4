//! The controller without a Kubernetes API server: a local object store whose upserts and
//! deletes come from the caller (`septum lab` in cluster mode), served to the unchanged
//! [`Controller`] through an in-process transport, and the node-state stream on the caller's
//! listener. The agents are fed by exactly what a cluster runs: the watch loop, the
//! [`Feed`](crate::feed::Feed) and compiler, identity persistence, FlowPolicy status and
//! [`stream::serve`].
//!
//! Why a transport rather than calls into the [`Context`]: the context's compiler and its
//! publishing loop are private to [`crate::context`] and reached only through the watchers, so
//! feeding them from outside would need a second entry point into that loop. The transport
//! answers the few calls the controller makes, in-process (no socket, no HTTP server):
//! - list and watch of the eight kinds (`resourceVersion`, BOOKMARKs, `timeoutSeconds`, 410 Gone
//!   for a version whose events were dropped), every watch held open until something changes;
//!   label selectors are not applied (the one the controller sends, on EndpointSlices, only
//!   spares it slices derived from selectors, which the engine ignores anyway);
//! - the `IdentityAllocation` read and server-side apply (kept in memory: the numbers live as
//!   long as this process, and a restarted local controller sends each agent a snapshot);
//! - FlowPolicy status patches (merged into the stored object and echoed as a watch event, as
//!   the API server's status subresource does).
//!
//! [`LocalController::settled`] answers "has this change reached the kernels": every event up
//! to a resourceVersion has been taken in (the controller's watcher asked for the next one,
//! which it does only after its loop handled, and so published, the events before), and every
//! named node's agent has acked its current revision.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::client::Body;
use septum_crd::identity_allocation::IdentityAllocation;
use septum_crd::{ClusterNetworkPolicy, FlowPolicy};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::context::{Context, Controller};
use crate::stream;

/// The longest a watch is held open without news (kube asks for 290 s).
const MAX_WATCH: Duration = Duration::from_secs(290);

/// A kind the local store serves.
#[derive(Clone, Copy, Debug)]
struct KindInfo {
    kind: &'static str,
    api_version: &'static str,
    plural: &'static str,
    namespaced: bool,
    check: fn(Value) -> Result<(), serde_json::Error>,
}

fn typed<K: serde::de::DeserializeOwned>(v: Value) -> Result<(), serde_json::Error> {
    serde_json::from_value::<K>(v).map(drop)
}

const KINDS: [KindInfo; 8] = [
    KindInfo {
        kind: "Namespace",
        api_version: "v1",
        plural: "namespaces",
        namespaced: false,
        check: typed::<core::Namespace>,
    },
    KindInfo {
        kind: "Node",
        api_version: "v1",
        plural: "nodes",
        namespaced: false,
        check: typed::<core::Node>,
    },
    KindInfo {
        kind: "Pod",
        api_version: "v1",
        plural: "pods",
        namespaced: true,
        check: typed::<core::Pod>,
    },
    KindInfo {
        kind: "Service",
        api_version: "v1",
        plural: "services",
        namespaced: true,
        check: typed::<core::Service>,
    },
    KindInfo {
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        namespaced: true,
        check: typed::<discovery::EndpointSlice>,
    },
    KindInfo {
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        plural: "networkpolicies",
        namespaced: true,
        check: typed::<net::NetworkPolicy>,
    },
    KindInfo {
        kind: "FlowPolicy",
        api_version: "septum.dev/v1alpha1",
        plural: "flowpolicies",
        namespaced: true,
        check: typed::<FlowPolicy>,
    },
    KindInfo {
        kind: "ClusterNetworkPolicy",
        api_version: "policy.networking.k8s.io/v1alpha2",
        plural: "clusternetworkpolicies",
        namespaced: false,
        check: typed::<ClusterNetworkPolicy>,
    },
];

fn kind_named(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

fn kind_of_plural(plural: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.plural == plural)
}

/// Errors of the local controller.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The object is of a kind septum does not read.
    #[error(
        "{label}: kind {kind:?} is not one septum reads (Namespace, Node, Pod, Service, EndpointSlice, NetworkPolicy, FlowPolicy, ClusterNetworkPolicy)"
    )]
    UnknownKind {
        /// The object.
        label: String,
        /// Its kind.
        kind: String,
    },
    /// The object has no name.
    #[error("{label}: metadata.name is missing")]
    NoName {
        /// The object.
        label: String,
    },
    /// The object does not read as its kind.
    #[error("{label}: not a valid {kind}: {source}")]
    Invalid {
        /// The object.
        label: String,
        /// Its kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The controller did not take the change in.
    #[error("the controller did not take in resourceVersion {resource_version} within {timeout:?}")]
    NotObserved {
        /// The version waited for.
        resource_version: u64,
        /// How long.
        timeout: Duration,
    },
    /// A node's agent did not ack.
    #[error(
        "node {node:?}: its agent has not acked revision {revision} within {timeout:?} (it acked {acked})"
    )]
    NotAcked {
        /// The node.
        node: String,
        /// The revision published for it.
        revision: u64,
        /// The revision it acked.
        acked: u64,
        /// How long.
        timeout: Duration,
    },
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// plural -> "namespace/name" -> object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// plural -> events not yet taken in by its watcher, with their versions.
    events: BTreeMap<&'static str, Vec<(u64, Value)>>,
    /// plural -> the version of its last event.
    last_event: BTreeMap<&'static str, u64>,
    /// plural -> the highest version a watch of it started from.
    watched: BTreeMap<&'static str, u64>,
    /// plural -> the highest version whose events were dropped.
    dropped: BTreeMap<&'static str, u64>,
    identity: Option<Value>,
}

impl Store {
    fn emit(&mut self, plural: &'static str, kind: &str, object: Value) {
        let rv = self.rv;
        self.events
            .entry(plural)
            .or_default()
            .push((rv, json!({"type": kind, "object": object})));
        self.last_event.insert(plural, rv);
    }

    fn bump(&mut self, object: &mut Value) -> u64 {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.rv
    }

    fn bookmark(&self, k: &KindInfo) -> Value {
        json!({"type": "BOOKMARK", "object": {"apiVersion": k.api_version, "kind": k.kind,
            "metadata": {"resourceVersion": self.rv.to_string()}}})
    }

    /// A watch of `k` from `from` begins: what it should get now, if anything. Events at or
    /// below the highest version a watch started from are taken in and dropped.
    fn watch_from(&mut self, k: &'static KindInfo, from: u64) -> Option<Vec<Value>> {
        if from < self.dropped.get(k.plural).copied().unwrap_or(0) {
            return Some(vec![json!({"type": "ERROR", "object": {"kind": "Status",
                "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}})]);
        }
        let watched = self.watched.entry(k.plural).or_default();
        *watched = (*watched).max(from);
        let upto = *watched;
        let events = self.events.entry(k.plural).or_default();
        let before = events.len();
        events.retain(|(rv, _)| *rv > upto);
        if events.len() != before {
            let d = self.dropped.entry(k.plural).or_default();
            *d = (*d).max(upto);
        }
        let news: Vec<Value> = self.events[k.plural]
            .iter()
            .filter(|(rv, _)| *rv > from)
            .map(|(_, e)| e.clone())
            .collect();
        if news.is_empty() {
            return None;
        }
        let mut out = news;
        out.push(self.bookmark(k));
        Some(out)
    }

    /// Whether every watcher has taken in every event up to `rv`.
    fn observed(&self, rv: u64) -> bool {
        self.last_event
            .iter()
            .all(|(plural, last)| self.watched.get(plural).copied().unwrap_or(0) >= (*last).min(rv))
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string().into_bytes()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404}),
    )
}

fn lines(events: &[Value]) -> Response<Body> {
    let mut out = Vec::new();
    for e in events {
        out.extend(e.to_string().into_bytes());
        out.push(b'\n');
    }
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The store and the news of its changes.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, rv: u64) {
        self.changed.send_replace(rv);
    }
}

/// The in-process API the controller's client talks to.
#[derive(Clone, Debug)]
struct Transport {
    shared: Arc<Shared>,
}

impl Transport {
    async fn serve(self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let path = uri.path().to_string();
        let q = query(&uri);
        let body = match request.into_body().collect_bytes().await {
            Ok(b) => b.to_vec(),
            Err(_) => return respond(StatusCode::BAD_REQUEST, &json!({"kind": "Status"})),
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if path.starts_with("/apis/septum.dev/v1alpha1/identityallocations/") {
            let mut s = self.shared.lock();
            return match method.as_str() {
                "GET" => match &s.identity {
                    Some(o) => respond(StatusCode::OK, o),
                    None => not_found(),
                },
                "PATCH" => match serde_json::from_slice::<Value>(&body) {
                    Ok(mut object) if typed::<IdentityAllocation>(object.clone()).is_ok() => {
                        s.bump(&mut object);
                        s.identity = Some(object.clone());
                        respond(StatusCode::OK, &object)
                    }
                    _ => respond(StatusCode::BAD_REQUEST, &json!({"kind": "Status"})),
                },
                _ => not_found(),
            };
        }
        if method == "PATCH" && path.ends_with("/status") && segments.len() >= 4 {
            // /apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME/status
            let n = segments.len();
            let (ns, plural, name) = (segments[n - 4], segments[n - 3], segments[n - 2]);
            let Some(k) = kind_of_plural(plural) else {
                return not_found();
            };
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return respond(StatusCode::BAD_REQUEST, &json!({"kind": "Status"}));
            };
            let mut s = self.shared.lock();
            let key = format!("{ns}/{name}");
            let Some(mut object) = s.objects.get(k.plural).and_then(|m| m.get(&key)).cloned()
            else {
                return not_found();
            };
            merge(&mut object["status"], &patch["status"]);
            s.bump(&mut object);
            s.objects
                .entry(k.plural)
                .or_default()
                .insert(key, object.clone());
            s.emit(k.plural, "MODIFIED", object.clone());
            let rv = s.rv;
            drop(s);
            self.shared.notify(rv);
            return respond(StatusCode::OK, &object);
        }
        let plural = segments.last().copied().unwrap_or("");
        let Some(k) = kind_of_plural(plural) else {
            return not_found();
        };
        if method != "GET" {
            return not_found();
        }
        if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let wait = q
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .map_or(MAX_WATCH, Duration::from_secs)
                .min(MAX_WATCH);
            return self.watch(k, from, wait).await;
        }
        let s = self.shared.lock();
        let items: Vec<Value> = s
            .objects
            .get(k.plural)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        respond(
            StatusCode::OK,
            &json!({"apiVersion": k.api_version, "kind": format!("{}List", k.kind),
                "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        )
    }

    async fn watch(self, k: &'static KindInfo, from: u64, wait: Duration) -> Response<Body> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = self.shared.changed.subscribe();
        loop {
            // Seen before the store is read: a change after the read wakes the wait below.
            changed.borrow_and_update();
            {
                let mut s = self.shared.lock();
                if let Some(events) = s.watch_from(k, from) {
                    return lines(&events);
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let s = self.shared.lock();
                    return lines(&[s.bookmark(k)]);
                }
            }
        }
    }
}

/// JSON merge patch (RFC 7386) of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl tower::Service<Request<Body>> for Transport {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pending;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Pending {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(request).await) })
    }
}

/// The controller over a local object store. Dropping it stops the controller and its stream.
#[derive(Debug)]
pub struct LocalController {
    shared: Arc<Shared>,
    ctx: Arc<Context>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for LocalController {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What [`LocalController::apply`] and [`LocalController::delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The store's resourceVersion after the change (what [`LocalController::settled`] waits
    /// for).
    pub resource_version: u64,
    /// Whether the object existed before.
    pub existed: bool,
}

impl LocalController {
    /// Starts the controller over an empty store (inside a Tokio runtime). Its identity
    /// numbers start empty and live in memory.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: watch::channel(0).0,
        });
        let transport = Transport {
            shared: shared.clone(),
        };
        let controller = Controller::new(kube::Client::new(transport, "default"));
        let ctx = controller.context();
        let run = tokio::spawn(async move {
            if let Err(e) = controller.run().await {
                warn!(error = %e, "the local controller stopped");
            }
        });
        Self {
            shared,
            ctx,
            tasks: vec![run],
        }
    }

    /// Serves the node-state stream on `listener` (mutual TLS with `tls`), until dropped.
    pub fn serve_stream(
        &mut self,
        listener: tokio::net::TcpListener,
        tls: tonic::transport::ServerTlsConfig,
    ) {
        let ctx = self.ctx.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = stream::serve(ctx, listener, tls).await {
                warn!(error = %e, "the node-state stream stopped");
            }
        }));
    }

    /// The controller's context (node states, acks, metrics).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Creates or replaces an object (a Kubernetes object as JSON, with `apiVersion`, `kind`
    /// and `metadata`). Its `status` is kept from the stored version when it carries none, as
    /// the API server keeps a status subresource.
    pub fn apply(&self, mut object: Value) -> Result<Written, LocalError> {
        let (k, key) = checked(&mut object)?;
        let mut s = self.shared.lock();
        let old = s.objects.get(k.plural).and_then(|m| m.get(&key)).cloned();
        let generation = old
            .as_ref()
            .and_then(|o| o["metadata"]["generation"].as_i64())
            .unwrap_or(0)
            + 1;
        object["metadata"]["generation"] = json!(generation);
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("local-{}-{key}", k.plural));
        }
        if object.get("status").is_none_or(Value::is_null)
            && let Some(status) = old.as_ref().and_then(|o| o.get("status"))
        {
            object["status"] = status.clone();
        }
        let rv = s.bump(&mut object);
        s.objects
            .entry(k.plural)
            .or_default()
            .insert(key, object.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        s.emit(k.plural, kind, object);
        drop(s);
        self.shared.notify(rv);
        Ok(Written {
            resource_version: rv,
            existed: old.is_some(),
        })
    }

    /// Deletes the object `object` names (its kind, namespace and name).
    pub fn delete(&self, object: &Value) -> Result<Written, LocalError> {
        let mut named = object.clone();
        let (k, key) = checked_name(&mut named)?;
        let mut s = self.shared.lock();
        let Some(mut old) = s.objects.get_mut(k.plural).and_then(|m| m.remove(&key)) else {
            return Ok(Written {
                resource_version: s.rv,
                existed: false,
            });
        };
        let rv = s.bump(&mut old);
        s.emit(k.plural, "DELETED", old);
        drop(s);
        self.shared.notify(rv);
        Ok(Written {
            resource_version: rv,
            existed: true,
        })
    }

    /// The stored version of an object (`namespace` empty for cluster-scoped kinds).
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let k = kind_named(kind)?;
        let ns = if k.namespaced { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(k.plural)?
            .get(&format!("{ns}/{name}"))
            .cloned()
    }

    /// Waits until the controller has taken in every change up to `resource_version` and each
    /// of `nodes` has acked its current revision; returns those revisions.
    pub async fn settled(
        &self,
        resource_version: u64,
        nodes: &[String],
        timeout: Duration,
    ) -> Result<BTreeMap<String, u64>, LocalError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.lock().observed(resource_version) {
            if tokio::time::Instant::now() >= deadline {
                return Err(LocalError::NotObserved {
                    resource_version,
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut out = BTreeMap::new();
        for node in nodes {
            loop {
                let (revision, acked) = {
                    let p = self.ctx.published();
                    (p.revision(node), p.acked(node))
                };
                if acked >= revision {
                    out.insert(node.clone(), revision);
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(LocalError::NotAcked {
                        node: node.clone(),
                        revision,
                        acked,
                        timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(out)
    }
}

fn label(object: &Value) -> String {
    let m = &object["metadata"];
    let kind = object["kind"].as_str().unwrap_or("(no kind)");
    match (m["namespace"].as_str(), m["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => format!("{kind} (unnamed)"),
    }
}

/// The object's kind and store key; defaults its namespace (`default`) and `apiVersion`.
fn checked_name(object: &mut Value) -> Result<(&'static KindInfo, String), LocalError> {
    let label = label(object);
    let kind = object["kind"].as_str().unwrap_or("").to_string();
    let k = kind_named(&kind).ok_or_else(|| LocalError::UnknownKind {
        label: label.clone(),
        kind,
    })?;
    if !object.is_object() || !object["metadata"].is_object() {
        return Err(LocalError::NoName { label });
    }
    let name = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| LocalError::NoName {
            label: label.clone(),
        })?
        .to_string();
    let ns = if k.namespaced {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        object["metadata"]["namespace"] = json!(ns);
        ns
    } else {
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        String::new()
    };
    if object["apiVersion"].is_null() {
        object["apiVersion"] = json!(k.api_version);
    }
    Ok((k, format!("{ns}/{name}")))
}

fn checked(object: &mut Value) -> Result<(&'static KindInfo, String), LocalError> {
    let (k, key) = checked_name(object)?;
    (k.check)(object.clone()).map_err(|source| LocalError::Invalid {
        label: label(object),
        kind: k.kind,
        source,
    })?;
    Ok((k, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use septum_policy::model::ObjectKey;

    fn pod(name: &str, app: &str, ip: &str, node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn objects_reach_the_node_states_and_deletes_remove_them() {
        let local = LocalController::start();
        let ctx = local.context();
        let nodes = ["node-a".to_string(), "node-b".to_string()];
        for n in &nodes {
            local
                .apply(json!({"kind": "Node", "metadata": {"name": n}}))
                .expect("node");
        }
        local
            .apply(pod("web", "web", "10.231.0.2", "node-a"))
            .expect("web");
        let w = local
            .apply(pod("db", "db", "10.231.1.2", "node-b"))
            .expect("db");
        // No agent acks here: wait only for the controller to take the objects in.
        local
            .settled(w.resource_version, &[], T)
            .await
            .expect("observed");
        let a = ctx.node_state("node-a").expect("node-a's state");
        assert!(
            a.state
                .endpoints
                .contains_key(&ObjectKey::new("shop", "web"))
        );
        let b = ctx.node_state("node-b").expect("node-b's state");
        assert!(
            b.state
                .endpoints
                .contains_key(&ObjectKey::new("shop", "db"))
        );
        assert!(
            !b.state
                .endpoints
                .contains_key(&ObjectKey::new("shop", "web"))
        );

        let w = local
            .delete(&json!({"kind": "Pod", "metadata": {"name": "db", "namespace": "shop"}}))
            .expect("delete");
        assert!(w.existed);
        local
            .settled(w.resource_version, &[], T)
            .await
            .expect("observed");
        let b2 = ctx.node_state("node-b").expect("node-b's state");
        assert!(b2.revision > b.revision);
        assert!(b2.state.endpoints.is_empty());
        let again = local
            .delete(&json!({"kind": "Pod", "metadata": {"name": "db", "namespace": "shop"}}))
            .expect("delete again");
        assert!(!again.existed);

        // Nobody acks for node-a: settling on it times out with the reason.
        let e = local
            .settled(w.resource_version, &nodes[..1], Duration::from_millis(200))
            .await
            .expect_err("no agent");
        assert!(e.to_string().contains("node-a"), "{e}");
    }

    #[tokio::test]
    async fn a_flow_policy_gets_its_status_and_keeps_it_across_updates() {
        let local = LocalController::start();
        let fp = json!({"apiVersion": "septum.dev/v1alpha1", "kind": "FlowPolicy",
            "metadata": {"name": "web-in", "namespace": "shop"},
            "spec": {"subject": {"podSelector": {"matchLabels": {"app": "web"}}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}});
        local.apply(fp.clone()).expect("flow policy");
        let deadline = tokio::time::Instant::now() + T;
        let accepted = |v: &Value| {
            v["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Accepted"))
        };
        while !local
            .get("FlowPolicy", "shop", "web-in")
            .is_some_and(|v| accepted(&v))
        {
            assert!(tokio::time::Instant::now() < deadline, "no status written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        local.apply(fp).expect("same policy again");
        let stored = local.get("FlowPolicy", "shop", "web-in").expect("stored");
        assert!(accepted(&stored), "{stored}");
        assert_eq!(stored["metadata"]["generation"], 2);
    }

    #[test]
    fn objects_that_do_not_read_as_their_kind_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let local = LocalController::start();
            let e = local
                .apply(json!({"kind": "Deployment", "metadata": {"name": "x"}}))
                .expect_err("unknown kind");
            assert!(e.to_string().contains("Deployment"), "{e}");
            let e = local
                .apply(json!({"kind": "Pod", "metadata": {"namespace": "shop"}}))
                .expect_err("no name");
            assert!(e.to_string().contains("metadata.name"), "{e}");
            let e = local
                .apply(json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": 7}}))
                .expect_err("bad spec");
            assert!(e.to_string().contains("Pod default/p"), "{e}");
            let e = local
                .apply(json!("just a string"))
                .expect_err("not an object");
            assert!(e.to_string().contains("is not one septum reads"), "{e}");
        });
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut t, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
