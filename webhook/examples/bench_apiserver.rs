//! The stub API server of the tests (`tests/support/apiserver.rs`) as a process, for
//! `bench/reliability.sh`: the webhook under test connects to it through a kubeconfig, and the
//! script drives it through a control port.
//!
//! `bench_apiserver API_ADDR CONTROL_ADDR BINDINGS NAMESPACES` serves BINDINGS bindings (each
//! with its own Workload-Identity service account) spread over NAMESPACES namespaces. Control
//! (plain HTTP, curl-friendly):
//! - `GET /stats`: JSON counts (bindings, converged = with a Ready condition for their
//!   generation, status writes, lease writes, lists, watches, requests);
//! - `POST /outage?seconds=S`: closes every connection and refuses new ones for S seconds, then
//!   listens again with the watch history compacted (old resourceVersions get 410 Gone);
//! - `POST /binding?ns=NS&name=NAME`: creates a binding and its service account;
//! - `POST /bindings?count=N&namespaces=M`: creates N more bindings at once (as `kubectl apply`
//!   of a directory would), with watch events.

#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use apiserver::StubApi;

fn query(req: &Request<hyper::body::Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn control(stub: Arc<StubApi>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let q = query(&req);
    let body = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/stats") => serde_json::to_string(&stub.stats()).unwrap(),
        ("POST", "/outage") => {
            let secs: u64 = q.get("seconds").and_then(|s| s.parse().ok()).unwrap_or(20);
            stub.outage();
            let stub = stub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                stub.restore().await;
            });
            "{}".into()
        }
        ("POST", "/binding") => {
            let ns = q.get("ns").cloned().unwrap_or_else(|| "team-000".into());
            let name = q.get("name").cloned().unwrap_or_else(|| "late".into());
            stub.create_service_account(
                &ns,
                &name,
                Some(&format!("{name}@project.iam.gserviceaccount.com")),
            );
            stub.create_binding(
                &ns,
                &name,
                json!({"serviceAccountName": name, "roleArn": "arn:aws:iam::123456789012:role/late"}),
            );
            "{}".into()
        }
        ("POST", "/bindings") => {
            let n: usize = q.get("count").and_then(|s| s.parse().ok()).unwrap_or(0);
            let m: usize = q
                .get("namespaces")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            stub.add_many(n, m);
            "{}".into()
        }
        _ => "{\"error\": \"unknown\"}".into(),
    };
    Response::new(Full::new(Bytes::from(body)))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [api, ctl, bindings, namespaces] = args.as_slice() else {
        eprintln!("usage: bench_apiserver API_ADDR CONTROL_ADDR BINDINGS NAMESPACES");
        std::process::exit(2);
    };
    let api: SocketAddr = api.parse().expect("API_ADDR");
    let ctl: SocketAddr = ctl.parse().expect("CONTROL_ADDR");
    let (bindings, namespaces): (usize, usize) =
        (bindings.parse().unwrap(), namespaces.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let stub = StubApi::start_on(api).await;
        stub.populate(bindings, namespaces);
        let listener = tokio::net::TcpListener::bind(ctl).await.unwrap();
        println!("ready");
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let stub = stub.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let stub = stub.clone();
                    async move { Ok::<_, Infallible>(control(stub, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}
