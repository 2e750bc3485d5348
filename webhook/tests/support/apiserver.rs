//! A stub Kubernetes API server over plain HTTP: just enough of list, watch, create, status
//! patch and update for `awsrolebindings` (rolebridge.io/v1alpha1), metadata-only
//! `serviceaccounts`, `leases` (coordination.k8s.io/v1) and (cluster-scoped) `nodes` for a
//! `kube::Client` pointed at it.
//! Used by the watch-recovery and leader-election tests and by the scale benchmark (through
//! `examples/bench_apiserver.rs`).
//!
//! It can fail the way a real control plane does during an upgrade: [`StubApi::outage`] closes
//! every connection and refuses new ones; [`StubApi::restore`] listens again with its watch
//! history compacted, so a watch resumed from an old `resourceVersion` gets `410 Gone`
//! ("too old resource version"), as from a restarted API server's fresh watch cache.
#![allow(dead_code, reason = "each user needs a subset")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub const GROUP_VERSION: &str = "rolebridge.io/v1alpha1";
/// Watch events kept for resumed watches; older ones are compacted away (410 Gone).
const HISTORY: usize = 50_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Kind {
    Binding,
    ServiceAccount,
    Lease,
    Node,
}

struct Event {
    rv: u64,
    kind: Kind,
    type_: &'static str,
    object: Bytes,
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
pub struct Stats {
    pub bindings: usize,
    /// Bindings whose status has a Ready condition for their current generation.
    pub converged: usize,
    pub status_writes: u64,
    pub lease_writes: u64,
    pub lists: u64,
    pub watches: u64,
    pub requests: u64,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Objects as JSON, by kind and (namespace, name).
    objects: HashMap<Kind, BTreeMap<(String, String), Value>>,
    history: std::collections::VecDeque<Event>,
    /// The oldest resourceVersion a watch may resume from.
    oldest: u64,
    /// Answer an expired watch with HTTP 410 instead of a 410 ERROR event (API servers do
    /// both, depending on where the watch is served from).
    gone_as_http: bool,
    stats: Stats,
    /// The RBAC verbs of every call served, by (API group, resource[/subresource]).
    calls: Calls,
    /// The non-resource URLs called, with their verbs.
    non_resource_calls: BTreeMap<String, BTreeSet<String>>,
}

/// RBAC verbs by (API group, resource[/subresource]).
pub type Calls = BTreeMap<(String, String), BTreeSet<String>>;

/// The service account issuer the stub's discovery document names.
pub const ISSUER: &str = "https://stub.rolebridge.test";

impl State {
    fn store(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        mut object: Value,
        type_: &'static str,
    ) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let bytes = Bytes::from(serde_json::to_vec(&object).unwrap());
        let key = (ns.to_owned(), name.to_owned());
        let objects = self.objects.entry(kind).or_default();
        if type_ == "DELETED" {
            objects.remove(&key);
        } else {
            objects.insert(key, object.clone());
        }
        self.history.push_back(Event {
            rv: self.rv,
            kind,
            type_,
            object: bytes,
        });
        while self.history.len() > HISTORY {
            let e = self.history.pop_front().unwrap();
            self.oldest = e.rv;
        }
        object
    }

    fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }
}

struct Shared {
    state: Mutex<State>,
    /// The current resourceVersion, for watches waiting on changes.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct StubApi {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

fn binding_object(ns: &str, name: &str, spec: Value, generation: i64) -> Value {
    // What a real API server stores for a `kubectl apply`: managed fields and the
    // last-applied annotation, which the webhook must not keep.
    let applied = json!({"apiVersion": GROUP_VERSION, "kind": "AWSRoleBinding",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": "AWSRoleBinding",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("00000000-0000-4000-8000-{:012x}", fxhash(ns, name)),
            "generation": generation,
            "creationTimestamp": "2026-11-22T10:00:00Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied.to_string()},
            "managedFields": [{
                "apiVersion": GROUP_VERSION,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
                             "f:spec": {".": {}, "f:roleArn": {}, "f:serviceAccountName": {}}},
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "time": "2026-11-22T10:00:00Z"
            }]
        },
        "spec": spec
    })
}

fn fxhash(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([b'/']).chain(b.bytes()) {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h & 0xffff_ffff_ffff
}

impl StubApi {
    /// Listens on a free loopback port.
    pub async fn start() -> Arc<StubApi> {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Arc<StubApi> {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (changed, _) = watch::channel(0);
        let stub = Arc::new(StubApi {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed,
            }),
            addr,
            server: Mutex::new(None),
        });
        stub.serve(listener);
        stub
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let shared = shared.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// A kube client for this server (plain HTTP, no credentials).
    pub fn client(&self) -> kube::Client {
        // kube builds its rustls config even for http://; in a workspace-wide test build the
        // e2e crate's AWS SDK enables rustls' aws-lc-rs too, and with two providers rustls
        // picks none by itself.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Closes every connection (watches included) and refuses new ones.
    pub fn outage(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port, its watch history compacted.
    pub async fn restore(&self) {
        self.shared.lock().compact();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }

    /// Drops all watch history: watches resumed from an older resourceVersion get 410.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Whether an expired watch is refused with HTTP 410 (else: a 410 ERROR event).
    pub fn gone_as_http(&self, yes: bool) {
        self.shared.lock().gone_as_http = yes;
    }

    pub fn create_binding(&self, ns: &str, name: &str, spec: Value) {
        let object = binding_object(ns, name, spec, 1);
        self.put(Kind::Binding, ns, name, object, "ADDED");
    }

    /// Creates `n` bindings across `namespaces` namespaces, each with its own service account
    /// (annotated for Workload Identity), without watch history: as if they existed before the
    /// webhook started.
    pub fn populate(&self, n: usize, namespaces: usize) {
        self.add(n, namespaces, false);
    }

    /// Creates `n` more bindings (and service accounts) at once, with watch events: a
    /// `kubectl apply` of a whole directory.
    pub fn add_many(&self, n: usize, namespaces: usize) {
        self.add(n, namespaces, true);
    }

    fn add(&self, n: usize, namespaces: usize, events: bool) {
        let mut state = self.shared.lock();
        let first = state.objects.get(&Kind::Binding).map_or(0, BTreeMap::len);
        for i in first..first + n {
            let ns = format!("team-{:03}", i % namespaces.max(1));
            let (name, sa) = (format!("binding-{i:06}"), format!("app-{i:06}"));
            let spec = json!({"serviceAccountName": sa,
                "roleArn": format!("arn:aws:iam::123456789012:role/app-{i:06}"),
                "region": "eu-west-1"});
            let gsa = format!("app-{i:06}@project.iam.gserviceaccount.com");
            state.store(
                Kind::ServiceAccount,
                &ns,
                &sa,
                service_account(&ns, &sa, Some(&gsa)),
                "ADDED",
            );
            state.store(
                Kind::Binding,
                &ns,
                &name,
                binding_object(&ns, &name, spec, 1),
                "ADDED",
            );
        }
        if !events {
            state.compact();
        }
        let rv = state.rv;
        drop(state);
        self.shared.changed.send_replace(rv);
    }

    /// Creates a node, or updates it (a kubelet's status heartbeat, or an in-place upgrade),
    /// with `kubelet_version` as its `status.nodeInfo.kubeletVersion`.
    pub fn put_node(&self, name: &str, kubelet_version: &str) {
        let exists = self.get(Kind::Node, "", name).is_some();
        let heartbeat = self.shared.lock().rv.to_string();
        let object = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": heartbeat}],
                "nodeInfo": {"kubeletVersion": kubelet_version, "operatingSystem": "linux"},
                "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320_000}]}});
        let type_ = if exists { "MODIFIED" } else { "ADDED" };
        self.put(Kind::Node, "", name, object, type_);
    }

    pub fn delete_node(&self, name: &str) {
        if let Some(object) = self.get(Kind::Node, "", name) {
            self.put(Kind::Node, "", name, object, "DELETED");
        }
    }

    pub fn create_service_account(&self, ns: &str, name: &str, gsa: Option<&str>) {
        self.put(
            Kind::ServiceAccount,
            ns,
            name,
            service_account(ns, name, gsa),
            "ADDED",
        );
    }

    fn put(&self, kind: Kind, ns: &str, name: &str, object: Value, type_: &'static str) {
        let rv = {
            let mut state = self.shared.lock();
            state.store(kind, ns, name, object, type_);
            state.rv
        };
        self.shared.changed.send_replace(rv);
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&kind)?
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn status_of(&self, ns: &str, name: &str) -> Option<Value> {
        let status = self.get(Kind::Binding, ns, name)?.get("status")?.clone();
        Some(status)
    }

    /// The RBAC verbs the calls served so far needed.
    pub fn calls(&self) -> Calls {
        self.shared.lock().calls.clone()
    }

    /// The non-resource URLs called so far, with their verbs.
    pub fn non_resource_calls(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.shared.lock().non_resource_calls.clone()
    }

    pub fn stats(&self) -> Stats {
        let state = self.shared.lock();
        let mut stats = state.stats;
        let bindings = state.objects.get(&Kind::Binding);
        stats.bindings = bindings.map_or(0, BTreeMap::len);
        stats.converged = bindings.map_or(0, |b| b.values().filter(|o| converged(o)).count());
        stats
    }
}

fn converged(object: &Value) -> bool {
    let generation = &object["metadata"]["generation"];
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && &c["observedGeneration"] == generation)
    })
}

fn service_account(ns: &str, name: &str, gsa: Option<&str>) -> Value {
    let mut object = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "uid": format!("00000000-0000-4000-9000-{:012x}", fxhash(ns, name)),
            "creationTimestamp": "2026-11-22T10:00:00Z"}});
    if let Some(gsa) = gsa {
        object["metadata"]["annotations"] = json!({"iam.gke.io/gcp-service-account": gsa});
    }
    object
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status_error(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                match u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a path names: (kind, namespace, name, subresource).
type Route = (Kind, Option<String>, Option<String>, Option<String>);

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (kind, rest) = match parts.as_slice() {
        ["apis", "rolebridge.io", "v1alpha1", rest @ ..] => (Kind::Binding, rest),
        ["api", "v1", rest @ ..] if rest.first() == Some(&"nodes") => (Kind::Node, rest),
        ["api", "v1", rest @ ..] => (Kind::ServiceAccount, rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => (Kind::Lease, rest),
        _ => return None,
    };
    let plural = match kind {
        Kind::Binding => "awsrolebindings",
        Kind::ServiceAccount => "serviceaccounts",
        Kind::Lease => "leases",
        Kind::Node => "nodes",
    };
    let own = |s: &&str| Some((*s).to_owned());
    match rest {
        [p] if *p == plural => Some((kind, None, None, None)),
        // Cluster-scoped objects (nodes).
        [p, name] if *p == plural => Some((kind, None, own(name), None)),
        [p, name, sub] if *p == plural => Some((kind, None, own(name), own(sub))),
        ["namespaces", ns, p] if *p == plural => Some((kind, own(ns), None, None)),
        ["namespaces", ns, p, name] if *p == plural => Some((kind, own(ns), own(name), None)),
        ["namespaces", ns, p, name, sub] if *p == plural => {
            Some((kind, own(ns), own(name), own(sub)))
        }
        _ => None,
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    shared.lock().stats.requests += 1;
    if req.uri().path() == "/version" {
        return full(
            StatusCode::OK,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-stub"}),
        );
    }
    if req.uri().path() == "/.well-known/openid-configuration" {
        shared
            .lock()
            .non_resource_calls
            .entry(req.uri().path().to_owned())
            .or_default()
            .insert(req.method().as_str().to_lowercase());
        return full(
            StatusCode::OK,
            json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
                   "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                   "id_token_signing_alg_values_supported": ["RS256"]}),
        );
    }
    let Some((kind, ns, name, sub)) = route(req.uri().path()) else {
        return status_error(404, "NotFound", "the stub does not serve this path");
    };
    let metadata_only = req
        .headers()
        .get("accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let q = query(&req);
    record_call(shared, kind, &req, name.is_some(), sub.as_deref(), &q);
    match (req.method().clone(), name, sub) {
        (Method::GET, None, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            shared.lock().stats.watches += 1;
            watch_stream(shared, kind, ns, &q, metadata_only)
        }
        (Method::GET, None, None) => {
            shared.lock().stats.lists += 1;
            list(shared, kind, ns.as_deref(), &q, metadata_only)
        }
        (Method::GET, Some(name), None) => {
            let state = shared.lock();
            match state
                .objects
                .get(&kind)
                .and_then(|o| o.get(&(ns.unwrap_or_default(), name.clone())))
            {
                Some(o) => full(StatusCode::OK, o.clone()),
                None => status_error(404, "NotFound", &format!("{name} not found")),
            }
        }
        (Method::POST, None, None) => {
            let body: Value = read_json(req).await;
            let ns = ns.unwrap_or_default();
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut state = shared.lock();
            if state
                .objects
                .get(&kind)
                .is_some_and(|o| o.contains_key(&(ns.clone(), name.clone())))
            {
                return status_error(409, "AlreadyExists", &format!("{name} already exists"));
            }
            if kind == Kind::Lease {
                state.stats.lease_writes += 1;
            }
            let stored = state.store(kind, &ns, &name, body, "ADDED");
            let rv = state.rv;
            drop(state);
            shared.changed.send_replace(rv);
            full(StatusCode::CREATED, stored)
        }
        (Method::PUT, Some(name), None) => {
            let body: Value = read_json(req).await;
            let key = (ns.clone().unwrap_or_default(), name.clone());
            let mut state = shared.lock();
            let Some(current) = state.objects.get(&kind).and_then(|o| o.get(&key)) else {
                return status_error(404, "NotFound", &format!("{name} not found"));
            };
            if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status_error(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            if kind == Kind::Lease {
                state.stats.lease_writes += 1;
            }
            let stored = state.store(kind, &key.0, &name, body, "MODIFIED");
            let rv = state.rv;
            drop(state);
            shared.changed.send_replace(rv);
            full(StatusCode::OK, stored)
        }
        (Method::PATCH, Some(name), Some(sub)) if sub == "status" && kind == Kind::Binding => {
            let body: Value = read_json(req).await;
            let key = (ns.clone().unwrap_or_default(), name.clone());
            let mut state = shared.lock();
            let Some(current) = state.objects.get(&kind).and_then(|o| o.get(&key)).cloned() else {
                return status_error(404, "NotFound", &format!("{name} not found"));
            };
            state.stats.status_writes += 1;
            let mut updated = current;
            updated["status"] = body["status"].clone();
            let stored = state.store(kind, &key.0, &name, updated, "MODIFIED");
            let rv = state.rv;
            drop(state);
            shared.changed.send_replace(rv);
            full(StatusCode::OK, stored)
        }
        _ => status_error(405, "MethodNotAllowed", "not supported by the stub"),
    }
}

/// Records the RBAC verb a request needs: what the webhook's RBAC declaration must list.
fn record_call(
    shared: &Shared,
    kind: Kind,
    req: &Request<Incoming>,
    named: bool,
    sub: Option<&str>,
    q: &HashMap<String, String>,
) {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match *req.method() {
        Method::GET if named => "get",
        Method::GET if watch => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    let (group, plural) = match kind {
        Kind::Binding => ("rolebridge.io", "awsrolebindings"),
        Kind::ServiceAccount => ("", "serviceaccounts"),
        Kind::Lease => ("coordination.k8s.io", "leases"),
        Kind::Node => ("", "nodes"),
    };
    let resource = match sub {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_owned(),
    };
    shared
        .lock()
        .calls
        .entry((group.to_owned(), resource))
        .or_default()
        .insert(verb.to_owned());
}

async fn read_json(req: Request<Incoming>) -> Value {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn as_metadata(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
}

fn list_kind(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Binding => (GROUP_VERSION, "AWSRoleBindingList"),
        Kind::ServiceAccount => ("v1", "ServiceAccountList"),
        Kind::Lease => ("coordination.k8s.io/v1", "LeaseList"),
        Kind::Node => ("v1", "NodeList"),
    }
}

fn list(
    shared: &Shared,
    kind: Kind,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let state = shared.lock();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let start = q.get("continue").cloned().unwrap_or_default();
    let empty = BTreeMap::new();
    let objects = state.objects.get(&kind).unwrap_or(&empty);
    let mut items = Vec::new();
    let mut next = None;
    let after = start
        .split_once('|')
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
    let range = match &after {
        Some(k) => objects.range((
            std::ops::Bound::Excluded(k.clone()),
            std::ops::Bound::Unbounded,
        )),
        None => objects.range::<(String, String), _>(..),
    };
    for ((o_ns, o_name), object) in range {
        if ns.is_some_and(|n| n != o_ns) {
            continue;
        }
        if items.len() == limit {
            next = Some(format!("{o_ns}|{o_name}"));
            break;
        }
        items.push(if metadata_only {
            as_metadata(object)
        } else {
            object.clone()
        });
    }
    // The continue token names the last item returned.
    let next = next.and_then(|_| {
        items.last().map(|i| {
            format!(
                "{}|{}",
                i["metadata"]["namespace"].as_str().unwrap_or(""),
                i["metadata"]["name"].as_str().unwrap_or("")
            )
        })
    });
    let (api_version, list_kind) = if metadata_only {
        ("meta.k8s.io/v1", "PartialObjectMetadataList")
    } else {
        list_kind(kind)
    };
    let mut metadata = json!({"resourceVersion": state.rv.to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(next);
    }
    full(
        StatusCode::OK,
        json!({"apiVersion": api_version, "kind": list_kind, "metadata": metadata, "items": items}),
    )
}

fn watch_stream(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    q: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    {
        let state = shared.lock();
        if state.gone_as_http && from < state.oldest {
            return status_error(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", state.oldest),
            );
        }
    }
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290),
    );
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut changed = shared.changed.subscribe();
        let mut seen = from;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let events = pending(&shared, kind, ns.as_deref(), metadata_only, &mut seen);
            let events = match events {
                Ok(events) => events,
                Err(gone) => {
                    let _ = tx.send(Ok(Frame::data(gone))).await;
                    return;
                }
            };
            for e in events {
                if tx.send(Ok(Frame::data(e))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let mut rx = rx;
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

/// The events after `seen` (advanced to the current resourceVersion), or the 410 ERROR event
/// when `seen` is older than the kept history.
fn pending(
    shared: &Shared,
    kind: Kind,
    ns: Option<&str>,
    metadata_only: bool,
    seen: &mut u64,
) -> Result<Vec<Bytes>, Bytes> {
    let state = shared.lock();
    if *seen < state.oldest {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {seen} ({})", state.oldest)}});
        return Err(Bytes::from(format!("{gone}\n")));
    }
    let mut out = Vec::new();
    for e in state
        .history
        .iter()
        .filter(|e| e.rv > *seen && e.kind == kind)
    {
        let object: Value = serde_json::from_slice(&e.object).unwrap();
        if ns.is_some_and(|n| object["metadata"]["namespace"] != n) {
            continue;
        }
        let object = if metadata_only {
            as_metadata(&object)
        } else {
            object
        };
        out.push(Bytes::from(format!(
            "{}\n",
            json!({"type": e.type_, "object": object})
        )));
    }
    *seen = state.rv;
    Ok(out)
}
