//! Shared by the in-process HTTPS tests: certificates published the way the kubelet does it,
//! a webhook server on a loopback port, and clients (hyper over TLS, or raw TLS bytes); and by
//! the tests against the stub API server: the webhook's bindings side as `serve` runs it.
#![allow(dead_code, reason = "each test file uses its own subset")]

pub mod apiserver;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use rolebridge_webhook::admission::mutate::Config;
use rolebridge_webhook::bindings::cache::BindingCache;
use rolebridge_webhook::bindings::lease::Leadership;
use rolebridge_webhook::bindings::live::{LiveReadLimits, LiveSource};
use rolebridge_webhook::bindings::status_controller::{self, StatusArgs};
use rolebridge_webhook::domain::convert::{bindings_from_yaml, service_accounts_from_yaml};
use rolebridge_webhook::metrics::Metrics;
use rolebridge_webhook::server::limits::Limits;
use rolebridge_webhook::server::tls::{CertStore, server_config};
use rolebridge_webhook::server::{AppState, routes, serve_tls};

pub const REVIEW: &str = include_str!("../fixtures/admissionreview-v1-pod-from-apiserver.json");
pub const BINDINGS: &str = "
apiVersion: rolebridge.io/v1alpha1
kind: AWSRoleBinding
metadata: {name: checkout, namespace: default}
spec: {serviceAccountName: app-sa, roleArn: 'arn:aws:iam::123456789012:role/checkout', region: eu-west-1}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: app-sa
  namespace: default
  annotations: {iam.gke.io/gcp-service-account: checkout@project.iam.gserviceaccount.com}
";

/// The bindings side of `serve` on `client`: the cache fed by the watches (and by live reads
/// on a miss, if given), and the status controller writing while `leadership` leads.
pub fn run_bindings(
    client: kube::Client,
    live: Option<(LiveSource, LiveReadLimits)>,
    leadership: Leadership,
    status_concurrency: usize,
) -> Arc<BindingCache> {
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(BindingCache::new(metrics.clone(), live));
    cache.run_watches(client.clone());
    tokio::spawn(status_controller::run(
        client,
        cache.clone(),
        metrics,
        leadership,
        StatusArgs {
            status_concurrency,
            issuer: None,
        },
    ));
    cache
}

pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn self_signed(cn: &str) -> Pair {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Writes a pair the way the kubelet updates a Secret volume: a fresh timestamped directory,
/// then an atomic rename of the `..data` symlink onto it.
pub fn publish(dir: &Path, pair: &Pair, generation: u32) {
    let versioned = dir.join(format!("..2026_11_22_{generation}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(versioned.join("tls.key"), &pair.key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if !dir.join(f).exists() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub certs: Arc<CertStore>,
    pub state: Arc<AppState>,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn start(dir: &Path) -> Server {
    start_with(dir, Limits::default()).await
}

/// A webhook on a loopback port serving [`BINDINGS`] under `limits`.
pub async fn start_with(dir: &Path, limits: Limits) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = Arc::new(CertStore::new(
        dir.join("tls.crt"),
        dir.join("tls.key"),
        provider.clone(),
    ));
    certs.reload().unwrap();
    let metrics = Arc::new(Metrics::new());
    let bindings = bindings_from_yaml(BINDINGS, "default").unwrap();
    let accounts = service_accounts_from_yaml(BINDINGS, "default").unwrap();
    let state = Arc::new(AppState {
        cache: Arc::new(BindingCache::fixed(metrics.clone(), bindings, &accounts)),
        config: ArcSwap::from_pointee(Config::default()),
        metrics,
        certs: certs.clone(),
        shutting_down: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = Arc::new(server_config(&certs, provider).unwrap());
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve_tls(
        listener,
        tls,
        routes(state.clone()),
        limits,
        state.metrics.clone(),
        rx,
        Duration::from_secs(5),
    ));
    Server {
        addr,
        certs,
        state,
        stop,
        task,
    }
}

pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

fn client_config(trusted: &CertificateDer<'static>, h2: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    config
}

/// A TCP connection to `addr` from the loopback address `from` (the kernel routes all of
/// 127/8 to lo, so tests can play several clients).
pub async fn tcp_from(addr: SocketAddr, from: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// A raw TLS stream (ALPN h2 or http/1.1) from `from`, for clients that misbehave.
pub async fn tls_from(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    h2: bool,
    from: IpAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(addr, from).await?;
    tokio_rustls::TlsConnector::from(Arc::new(client_config(trusted, h2)))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Connects trusting only `trusted`, returns the connection and the certificate presented.
pub async fn connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    h2: bool,
) -> (Conn, CertificateDer<'static>) {
    let (conn, presented, _) = connect_from(addr, trusted, h2, IpAddr::from([127, 0, 0, 1])).await;
    (conn, presented)
}

/// As [`connect`], from `from`; the handle ends when the server closes the connection.
pub async fn connect_from(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    h2: bool,
    from: IpAddr,
) -> (Conn, CertificateDer<'static>, tokio::task::JoinHandle<()>) {
    let tls = tls_from(addr, trusted, h2, from)
        .await
        .expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let io = TokioIo::new(tls);
    let (conn, task) = if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        (
            Conn::H2(send),
            tokio::spawn(async move {
                let _ = conn.await;
            }),
        )
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        (
            Conn::H1(send),
            tokio::spawn(async move {
                let _ = conn.await;
            }),
        )
    };
    (conn, presented, task)
}

pub async fn post(conn: &mut Conn, path: &str, body: &[u8]) -> (u16, Value) {
    let req = Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .header("host", "localhost")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = match conn {
        Conn::H1(s) => s.send_request(req).await.unwrap().map(|b| b.boxed()),
        Conn::H2(s) => s.send_request(req).await.unwrap().map(|b| b.boxed()),
    };
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}
