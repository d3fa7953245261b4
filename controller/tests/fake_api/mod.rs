//! A scripted Kubernetes API server behind kube's tower-test mock service: list with a
//! resourceVersion, watches held open until the test changes something and answered with the
//! events plus a BOOKMARK, 410 Gone on demand, 404 for kinds it does not serve, status and
//! server-side-apply patches recorded (and, like a real server, echoed as watch events).
//!
//! Requests arrive concurrently from every watcher, so they are routed by path, not by order.
//! Every request is also logged, in arrival order ([`FakeApi::requests`]), for tests that ask
//! what the controller called (the RBAC test maps each to the verb the API server authorizes).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, SendResponse};

type Send = SendResponse<Response<Body>>;

#[derive(Default)]
struct Shared {
    rv: u64,
    /// plural -> "ns/name" -> object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    absent: BTreeSet<String>,
    lists: BTreeMap<String, usize>,
    watch_rvs: BTreeMap<String, Vec<String>>,
    patches: Vec<(String, Value)>,
    identity: Option<Value>,
    /// Leases by name (coordination.k8s.io), with compare-and-swap on resourceVersion.
    leases: BTreeMap<String, Value>,
    queued: BTreeMap<String, Vec<Value>>,
    pending: BTreeMap<String, Vec<Send>>,
    /// The `labelSelector` of each kind's last list or watch (one watcher per kind), applied
    /// to lists and watch events as the API server does.
    selectors: BTreeMap<String, String>,
    requests: Vec<LoggedRequest>,
}

/// One request as it arrived (before it was answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`.
    pub method: String,
    /// The URL path, e.g. `/api/v1/pods`.
    pub path: String,
    /// The query parameters (`watch=true`, `fieldManager=...`).
    pub query: BTreeMap<String, String>,
    /// The `content-type` header, which tells a server-side apply from other patches.
    pub content_type: Option<String>,
}

/// The fake server; clone freely.
#[derive(Clone)]
pub struct FakeApi {
    shared: Arc<Mutex<Shared>>,
}

fn key_of(o: &Value) -> String {
    let m = &o["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or("")
    )
}

fn respond(send: Send, status: StatusCode, body: Vec<u8>) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("response");
    send.send_response(response);
}

fn not_found(send: Send) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
    respond(send, StatusCode::NOT_FOUND, body.to_string().into_bytes());
}

fn lines(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend(e.to_string().into_bytes());
        out.push(b'\n');
    }
    out
}

fn plural_kind(plural: &str) -> (&'static str, &'static str) {
    match plural {
        "namespaces" => ("v1", "Namespace"),
        "nodes" => ("v1", "Node"),
        "pods" => ("v1", "Pod"),
        "services" => ("v1", "Service"),
        "endpointslices" => ("discovery.k8s.io/v1", "EndpointSlice"),
        "networkpolicies" => ("networking.k8s.io/v1", "NetworkPolicy"),
        "flowpolicies" => ("septum.dev/v1alpha1", "FlowPolicy"),
        "clusternetworkpolicies" => ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy"),
        _ => ("v1", "Unknown"),
    }
}

impl Shared {
    fn bookmark(&self, plural: &str) -> Value {
        let (api_version, kind) = plural_kind(plural);
        json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
            "metadata": {"resourceVersion": self.rv.to_string()}}})
    }

    /// Delivers `event` to a waiting watch of `plural`, or queues it for the next one.
    fn emit(&mut self, plural: &str, event: Value) {
        self.queued.entry(plural.into()).or_default().push(event);
        self.flush(plural);
    }

    fn flush(&mut self, plural: &str) {
        let has_events = self.queued.get(plural).is_some_and(|q| !q.is_empty());
        if !has_events {
            return;
        }
        let Some(send) = self.pending.get_mut(plural).and_then(|p| p.pop()) else {
            return;
        };
        let mut events = self.queued.remove(plural).unwrap_or_default();
        if let Some(sel) = self.selectors.get(plural) {
            events.retain(|e| e["type"] == "ERROR" || selected(sel, &e["object"]));
        }
        let gone = events.iter().any(|e| e["type"] == "ERROR");
        if !gone {
            events.push(self.bookmark(plural));
        }
        respond(send, StatusCode::OK, lines(&events));
    }

    fn upsert(&mut self, plural: &str, mut object: Value, silently: bool) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = key_of(&object);
        let map = self.objects.entry(plural.into()).or_default();
        let kind = if map.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        map.insert(key, object.clone());
        if !silently {
            self.emit(plural, json!({"type": kind, "object": object}));
        }
    }

    fn remove(&mut self, plural: &str, key: &str, silently: bool) {
        self.rv += 1;
        let Some(mut object) = self.objects.get_mut(plural).and_then(|m| m.remove(key)) else {
            return;
        };
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if !silently {
            self.emit(plural, json!({"type": "DELETED", "object": object}));
        }
    }
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decoded(v)))
        .collect()
}

fn percent_decoded(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object`'s labels satisfy a label selector of `k=v`, `k==v` and `k!=v` terms (the
/// forms the controller sends).
fn selected(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

impl FakeApi {
    /// A server and the kube client talking to it. `absent` kinds (plurals) answer 404.
    pub fn start(absent: &[&str]) -> (Self, kube::Client) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi {
            shared: Arc::new(Mutex::new(Shared {
                absent: absent.iter().map(|s| s.to_string()).collect(),
                ..Shared::default()
            })),
        };
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                server.serve(request, send).await;
            }
        });
        (api, kube::Client::new(service, "default"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn serve(&self, request: Request<Body>, send: Send) {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let path = uri.path().to_string();
        let q = query(&uri);
        let logged = LoggedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: q.clone(),
            content_type: request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut s = self.lock();
        s.requests.push(logged);
        if path.starts_with("/apis/coordination.k8s.io/v1/") {
            let conflict = |send: Send| {
                let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "the object has been modified", "reason": "Conflict", "code": 409});
                respond(send, StatusCode::CONFLICT, body.to_string().into_bytes());
            };
            let mut object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let name = if method == "POST" {
                object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            } else {
                segments.last().copied().unwrap_or("").to_string()
            };
            match method.as_str() {
                "GET" => match s.leases.get(&name) {
                    Some(o) => respond(send, StatusCode::OK, o.to_string().into_bytes()),
                    None => not_found(send),
                },
                "POST" if s.leases.contains_key(&name) => conflict(send),
                "PUT"
                    if s.leases
                        .get(&name)
                        .map(|o| &o["metadata"]["resourceVersion"])
                        != Some(&object["metadata"]["resourceVersion"]) =>
                {
                    conflict(send)
                }
                "POST" | "PUT" => {
                    s.rv += 1;
                    object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    s.leases.insert(name, object.clone());
                    respond(send, StatusCode::OK, object.to_string().into_bytes());
                }
                _ => not_found(send),
            }
            return;
        }
        if path.starts_with("/apis/septum.dev/v1alpha1/identityallocations/") {
            match method.as_str() {
                "GET" => match &s.identity {
                    Some(o) => respond(send, StatusCode::OK, o.to_string().into_bytes()),
                    None => not_found(send),
                },
                "PATCH" => {
                    let mut object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    s.rv += 1;
                    object["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    s.patches.push((path.clone(), object.clone()));
                    s.identity = Some(object.clone());
                    respond(send, StatusCode::OK, object.to_string().into_bytes());
                }
                _ => not_found(send),
            }
            return;
        }
        if method == "PATCH" && path.ends_with("/status") {
            // /apis/septum.dev/v1alpha1/namespaces/NS/flowpolicies/NAME/status
            let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            s.patches.push((path.clone(), patch.clone()));
            let n = segments.len();
            let (ns, plural, name) = (segments[n - 4], segments[n - 3], segments[n - 2]);
            let key = format!("{ns}/{name}");
            let Some(mut object) = s.objects.get(plural).and_then(|m| m.get(&key)).cloned() else {
                not_found(send);
                return;
            };
            object["status"] = patch["status"].clone();
            s.upsert(plural, object.clone(), false);
            let stored = s.objects[plural][&key].clone();
            respond(send, StatusCode::OK, stored.to_string().into_bytes());
            return;
        }
        let plural = segments.last().copied().unwrap_or("").to_string();
        let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
        if method == "GET" && !watch {
            *s.lists.entry(plural.clone()).or_default() += 1;
        }
        if method != "GET" || s.absent.contains(&plural) {
            not_found(send);
            return;
        }
        match q.get("labelSelector") {
            Some(sel) => s.selectors.insert(plural.clone(), sel.clone()),
            None => s.selectors.remove(&plural),
        };
        if watch {
            let rv = q.get("resourceVersion").cloned().unwrap_or_default();
            s.watch_rvs.entry(plural.clone()).or_default().push(rv);
            s.pending.entry(plural.clone()).or_default().push(send);
            s.flush(&plural);
            return;
        }
        let (api_version, kind) = plural_kind(&plural);
        let items: Vec<Value> = s
            .objects
            .get(&plural)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let items: Vec<Value> = match s.selectors.get(&plural) {
            Some(sel) => items.into_iter().filter(|o| selected(sel, o)).collect(),
            None => items,
        };
        let list = json!({"apiVersion": api_version, "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
        respond(send, StatusCode::OK, list.to_string().into_bytes());
    }

    /// A Lease as stored.
    pub fn lease(&self, name: &str) -> Option<Value> {
        self.lock().leases.get(name).cloned()
    }

    /// Creates or replaces an object, announcing it on the watch.
    pub fn put(&self, plural: &str, object: impl serde::Serialize) {
        let v = serde_json::to_value(object).expect("object to JSON");
        self.lock().upsert(plural, v, false);
    }

    /// Creates or replaces an object without a watch event (a change the watch missed).
    pub fn put_silently(&self, plural: &str, object: impl serde::Serialize) {
        let v = serde_json::to_value(object).expect("object to JSON");
        self.lock().upsert(plural, v, true);
    }

    /// Deletes an object, announcing it.
    pub fn delete(&self, plural: &str, key: &str) {
        self.lock().remove(plural, key, false);
    }

    /// Deletes an object without a watch event.
    pub fn delete_silently(&self, plural: &str, key: &str) {
        self.lock().remove(plural, key, true);
    }

    /// Ends the current (or next) watch of `plural` with 410 Gone.
    pub fn gone(&self, plural: &str) {
        let event = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "message": "too old resource version",
            "reason": "Expired", "code": 410}});
        self.lock().emit(plural, event);
    }

    /// Seeds the persisted identity object.
    pub fn set_identity(&self, object: Value) {
        self.lock().identity = Some(object);
    }

    /// The persisted identity object.
    pub fn identity(&self) -> Option<Value> {
        self.lock().identity.clone()
    }

    /// Every object of a kind.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(plural)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many times `plural` was listed.
    pub fn lists(&self, plural: &str) -> usize {
        self.lock().lists.get(plural).copied().unwrap_or(0)
    }

    /// The resourceVersion of every watch of `plural`, in order.
    pub fn watch_versions(&self, plural: &str) -> Vec<String> {
        self.lock()
            .watch_rvs
            .get(plural)
            .cloned()
            .unwrap_or_default()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().requests.clone()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The patch bodies sent to `path`.
    pub fn patches(&self, path: &str) -> Vec<Value> {
        self.lock()
            .patches
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits (up to 10 s) until `f` holds.
    pub async fn wait_for(&self, what: &str, f: impl Fn(&FakeApi) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
