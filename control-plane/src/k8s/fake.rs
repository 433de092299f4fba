//! A fake Kubernetes API server, in process, for the tests and
//! `remora-perf xds-clients --kubernetes` (no API server can run where they
//! do). It speaks what kube-rs's
//! watcher needs: list (with the collection's resource version), watch from
//! a resource version (the events since, then live ones as JSON lines, with
//! bookmarks), `410 Gone` for a version older than the last compaction, and
//! an outage switch that ends every stream and drops every connection
//! meanwhile.
//! Collections that were not registered answer 404, as an API whose CRD is
//! not installed does.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// Where each kind the control plane reads lives in the API.
pub const SERVICES: &str = "/api/v1/services";
pub const PODS: &str = "/api/v1/pods";
pub const ENDPOINT_SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
pub const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
pub const TRAFFIC_POLICIES: &str = "/apis/remora.dev/v1alpha1/trafficpolicies";
pub const AUTHORIZATION_POLICIES: &str = "/apis/remora.dev/v1alpha1/authorizationpolicies";
pub const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";
pub const SECRETS: &str = "/api/v1/secrets";
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
pub const MUTATING_WEBHOOKS: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resource version, event type, object).
    events: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct State {
    version: u64,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    down: bool,
    collections: HashMap<String, Collection>,
    /// Requests seen, by path and whether they watched.
    lists: u64,
    watches: u64,
    gone: u64,
    /// Service-account tokens a TokenReview accepts: token → (username,
    /// pod name, audiences).
    tokens: HashMap<String, (String, String, Vec<String>)>,
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Wakes watch streams: a change, or the end of every stream (outage).
    wake: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Serves the given collections (paths as above); others are 404.
    pub async fn start(collections: &[&str]) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            version: 1,
            collections: collections
                .iter()
                .map(|c| (c.to_string(), Collection::default()))
                .collect(),
            ..State::default()
        }));
        let (wake, _) = broadcast::channel(1024);
        let task = {
            let state = state.clone();
            let wake = wake.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    // Down: the connection is dropped at once, as an API
                    // server that is away (or restarting) does.
                    if state.lock().unwrap().down {
                        drop(socket);
                        continue;
                    }
                    let state = state.clone();
                    let wake = wake.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            // Down: the connection is cut without an answer.
                            let state = state.clone();
                            let wake = wake.clone();
                            async move {
                                if state.lock().unwrap().down {
                                    return Err("the fake API server is down");
                                }
                                Ok(respond(request, state, wake).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    });
                }
            })
        };
        FakeApiServer {
            addr,
            state,
            wake,
            task,
        }
    }

    /// A kubeconfig for it (plain HTTP, no credentials), for a control
    /// plane in another process (`KUBECONFIG=...`).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            self.addr
        )
    }

    /// A kube client for it (plain HTTP).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object (its namespace defaults to `default`).
    pub fn apply(&self, collection: &str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = version.to_string().into();
        if object["metadata"]["namespace"].is_null() {
            object["metadata"]["namespace"] = "default".into();
        }
        let key = key(&object);
        let collection = state
            .collections
            .get_mut(collection)
            .unwrap_or_else(|| panic!("{collection} is not served"));
        let kind = if collection.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        collection.objects.insert(key, object.clone());
        collection.events.push((version, kind, object));
        drop(state);
        let _ = self.wake.send(());
    }

    /// Deletes an object.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let collection = state.collections.get_mut(collection).unwrap();
        let Some(mut object) = collection
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            panic!("no {namespace}/{name} to delete");
        };
        object["metadata"]["resourceVersion"] = version.to_string().into();
        collection.events.push((version, "DELETED", object));
        drop(state);
        let _ = self.wake.send(());
    }

    /// Forgets the history: a watch from an older version gets 410 Gone.
    /// Open watches are ended, so every watcher asks again.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.version;
        for collection in state.collections.values_mut() {
            collection.events.clear();
        }
        drop(state);
        self.end_streams();
    }

    /// An outage: every open stream ends, every connection is cut.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
        self.end_streams();
    }

    fn end_streams(&self) {
        // A generation bump that streams compare against.
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        drop(state);
        let _ = self.wake.send(());
    }

    /// An object as stored (with the status written to it).
    /// Makes `token` a projected service-account token of `namespace/
    /// account`, bound to pod `pod`, for `audience` (POST TokenReview).
    pub fn grant_token(
        &self,
        token: &str,
        namespace: &str,
        account: &str,
        pod: &str,
        audience: &str,
    ) {
        self.state.lock().unwrap().tokens.insert(
            token.into(),
            (
                format!("system:serviceaccount:{namespace}:{account}"),
                pod.into(),
                vec![audience.into()],
            ),
        );
    }

    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state.collections[collection]
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// (lists, watches, 410s answered).
    pub fn counts(&self) -> (u64, u64, u64) {
        let state = self.state.lock().unwrap();
        (state.lists, state.watches, state.gone)
    }
}

fn key(object: &Value) -> (String, String) {
    (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string(),
        object["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, value: Value) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// `/api/v1/namespaces/NS/PLURAL/NAME/status` → (`/api/v1/PLURAL`, NS,
/// NAME, status). A cluster-wide collection path is returned as it is.
fn locate(path: &str) -> (String, Option<String>, Option<String>, bool) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let prefix = if parts.first() == Some(&"api") { 2 } else { 3 };
    if parts.get(prefix) != Some(&"namespaces") && parts.len() == prefix + 2 {
        // A cluster-scoped object (a MutatingWebhookConfiguration); kept
        // under "default", where `apply` puts an object without a namespace.
        let collection = format!("/{}", parts[..=prefix].join("/"));
        return (
            collection,
            Some("default".into()),
            Some(parts[prefix + 1].to_string()),
            false,
        );
    }
    if parts.get(prefix) != Some(&"namespaces") || parts.len() < prefix + 3 {
        return (path.to_string(), None, None, false);
    }
    let collection = format!("/{}/{}", parts[..prefix].join("/"), parts[prefix + 2]);
    let namespace = Some(parts[prefix + 1].to_string());
    let name = parts.get(prefix + 3).map(|n| n.to_string());
    let status = parts.get(prefix + 4) == Some(&"status");
    (collection, namespace, name, status)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Create, read, replace and patch one object (leases, status).
fn object_request(
    method: &http::Method,
    body: Option<Value>,
    (collection, namespace, name, status_only): (String, String, Option<String>, bool),
    state: &mut State,
) -> (u16, Value, bool) {
    // The version a write gets (reads leave it).
    let version = state.version + 1;
    let Some(objects) = state.collections.get_mut(&collection) else {
        return (404, status(404, "NotFound", "no such collection"), false);
    };
    let changed = |objects: &mut Collection, kind: &'static str, object: &Value| {
        objects.events.push((version, kind, object.clone()));
    };
    let answer = match (method.as_str(), name) {
        ("GET", Some(name)) => match objects.objects.get(&(namespace, name.clone())) {
            Some(object) => (200, object.clone(), false),
            None => (
                404,
                status(404, "NotFound", &format!("{name} not found")),
                false,
            ),
        },
        ("POST", None) => {
            let mut object = body.unwrap_or_default();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let key = (namespace.clone(), name.clone());
            if objects.objects.contains_key(&key) {
                return (
                    409,
                    status(409, "AlreadyExists", &format!("{name} exists")),
                    false,
                );
            }
            object["metadata"]["namespace"] = namespace.into();
            object["metadata"]["resourceVersion"] = version.to_string().into();
            objects.objects.insert(key, object.clone());
            changed(objects, "ADDED", &object);
            (201, object, true)
        }
        ("PUT", Some(name)) => {
            let mut object = body.unwrap_or_default();
            let key = (namespace.clone(), name.clone());
            let Some(stored) = objects.objects.get(&key) else {
                return (
                    404,
                    status(404, "NotFound", &format!("{name} not found")),
                    false,
                );
            };
            if object["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                return (
                    409,
                    status(409, "Conflict", "the object has been modified"),
                    false,
                );
            }
            object["metadata"]["namespace"] = namespace.into();
            object["metadata"]["resourceVersion"] = version.to_string().into();
            objects.objects.insert(key, object.clone());
            changed(objects, "MODIFIED", &object);
            (200, object, true)
        }
        ("PATCH", Some(name)) => {
            let patch = body.unwrap_or_default();
            let key = (namespace, name.clone());
            let Some(stored) = objects.objects.get_mut(&key) else {
                return (
                    404,
                    status(404, "NotFound", &format!("{name} not found")),
                    false,
                );
            };
            if status_only {
                merge(&mut stored["status"], &patch["status"]);
            } else {
                merge(stored, &patch);
            }
            stored["metadata"]["resourceVersion"] = version.to_string().into();
            let object = stored.clone();
            changed(objects, "MODIFIED", &object);
            (200, object, true)
        }
        _ => (405, status(405, "MethodNotAllowed", "not here"), false),
    };
    if answer.2 {
        state.version = version;
    }
    answer
}

async fn respond(
    request: http::Request<Incoming>,
    state: Arc<Mutex<State>>,
    wake: broadcast::Sender<()>,
) -> http::Response<Body> {
    if request.uri().path() == TOKEN_REVIEWS && request.method() == http::Method::POST {
        let bytes = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let review: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let wanted: Vec<String> =
            serde_json::from_value(review["spec"]["audiences"].clone()).unwrap_or_default();
        let known = state.lock().unwrap().tokens.get(token).cloned();
        let status = match known {
            Some((username, pod, audiences)) if wanted.iter().all(|a| audiences.contains(a)) => {
                json!({
                    "authenticated": true, "audiences": wanted,
                    "user": {"username": username, "extra": {"authentication.kubernetes.io/pod-name": [pod]}},
                })
            }
            Some(_) => {
                json!({"authenticated": false, "error": "token audiences are invalid for the target audiences"})
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        return full(
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": review["spec"], "status": status}),
        );
    }
    let (located, namespace, name, status_only) = locate(request.uri().path());
    if let Some(namespace) = namespace
        && (name.is_some() || request.method() != http::Method::GET)
    {
        let method = request.method().clone();
        let bytes = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).ok();
        let (code, value, changed) = object_request(
            &method,
            body,
            (located, namespace, name, status_only),
            &mut state.lock().unwrap(),
        );
        if changed {
            let _ = wake.send(());
        }
        return full(code, value);
    }
    let path = located;
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut guard = state.lock().unwrap();
    if !guard.collections.contains_key(&path) {
        return full(
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    }
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        guard.lists += 1;
        let version = guard.version;
        let items: Vec<Value> = guard.collections[&path].objects.values().cloned().collect();
        return full(
            200,
            json!({"apiVersion": "v1", "kind": "List",
                   "metadata": {"resourceVersion": version.to_string()}, "items": items}),
        );
    }
    guard.watches += 1;
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let line = |value: Value| Ok(Frame::data(Bytes::from(format!("{value}\n"))));
    if from < guard.compacted {
        guard.gone += 1;
        let event = json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {from} ({})", guard.compacted))});
        let _ = tx.try_send(line(event));
        drop(tx);
    } else {
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        drop(guard);
        let mut woken = wake.subscribe();
        tokio::spawn(async move {
            let mut sent = from;
            loop {
                let (events, ended, version) = {
                    let state = state.lock().unwrap();
                    let mut events = Vec::new();
                    for (v, kind, object) in &state.collections[&path].events {
                        if *v > sent {
                            events.push(json!({"type": kind, "object": object}));
                            sent = *v;
                        }
                    }
                    // The outage switch and compaction end the stream.
                    let ended = state.down || state.compacted > from;
                    (events, ended, state.version)
                };
                if ended {
                    return;
                }
                for event in events {
                    if tx.send(line(event)).await.is_err() {
                        return;
                    }
                }
                if bookmarks && version > sent {
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "apiVersion": "v1", "kind": "Bookmark",
                        "metadata": {"resourceVersion": version.to_string()}}});
                    if tx.send(line(bookmark)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = woken.recv() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        return http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(body))
            .unwrap();
    }
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .unwrap()
}
