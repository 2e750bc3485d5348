//! In-process HTTPS: real TLS handshakes and real AdmissionReview bodies against the running
//! server, over HTTP/1.1 and h2, plus certificate rotation the way Kubernetes does it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use rolebridge_webhook::cache::BindingCache;
use rolebridge_webhook::index::bindings_from_yaml;
use rolebridge_webhook::metrics::Metrics;
use rolebridge_webhook::mutate::Config;
use rolebridge_webhook::server::{AppState, routes, serve_tls};
use rolebridge_webhook::tls::{CertStore, server_config};

const REVIEW: &str = include_str!("fixtures/admissionreview-v1-pod-from-apiserver.json");
const BINDINGS: &str = "
apiVersion: rolebridge.io/v1alpha1
kind: AWSRoleBinding
metadata: {name: checkout, namespace: default}
spec: {serviceAccountName: app-sa, roleArn: 'arn:aws:iam::123456789012:role/checkout', region: eu-west-1}
";

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed(cn: &str) -> Pair {
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
fn publish(dir: &Path, pair: &Pair, generation: u32) {
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

struct Server {
    addr: std::net::SocketAddr,
    certs: Arc<CertStore>,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path) -> Server {
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
    let state = Arc::new(AppState {
        cache: Arc::new(BindingCache::fixed(metrics.clone(), bindings)),
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
        Duration::from_secs(5),
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

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// Connects trusting only `trusted`, returns the connection and the certificate presented.
async fn connect(
    addr: std::net::SocketAddr,
    trusted: &CertificateDer<'static>,
    h2: bool,
) -> (Conn, CertificateDer<'static>) {
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
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let io = TokioIo::new(tls);
    let conn = if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Conn::H1(send)
    };
    (conn, presented)
}

async fn post(conn: &mut Conn, path: &str, body: &[u8]) -> (u16, Value) {
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

fn applied(review: &Value, response: &Value) -> Value {
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

#[tokio::test]
async fn real_review_over_http1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed("one");
    publish(dir.path(), &pair, 1);
    let server = start(dir.path()).await;
    let review: Value = serde_json::from_str(REVIEW).unwrap();
    for h2 in [false, true] {
        let (mut conn, _) = connect(server.addr, &pair.der, h2).await;
        let (status, resp) = post(&mut conn, "/mutate", REVIEW.as_bytes()).await;
        assert_eq!(status, 200);
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(resp["kind"], "AdmissionReview");
        assert_eq!(resp["response"]["uid"], review["request"]["uid"]);
        assert_eq!(resp["response"]["allowed"], true);
        assert_eq!(resp["response"]["patchType"], "JSONPatch");
        let pod = applied(&review, &resp);
        let app = &pod["spec"]["containers"][0];
        let env: Vec<&str> = app["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"AWS_ROLE_ARN") && env.contains(&"AWS_REGION"),
            "{env:?}"
        );
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "rolebridge-agent");
        // Several requests on one kept-alive connection.
        let (status, _) = post(&mut conn, "/mutate", REVIEW.as_bytes()).await;
        assert_eq!(status, 200);
    }
    let _ = server.stop.send(true);
    server.task.await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_an_invalid_review_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed("one");
    publish(dir.path(), &pair, 1);
    let server = start(dir.path()).await;
    let (mut conn, _) = connect(server.addr, &pair.der, false).await;
    for body in [
        &b"not json"[..],
        b"",
        b"{\"kind\":\"AdmissionReview\",\"apiVersion\":\"admission.k8s.io/v1\"}",
    ] {
        let (status, resp) = post(&mut conn, "/mutate", body).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["response"]["allowed"], false);
        assert_eq!(resp["response"]["status"]["code"], 400);
    }
    let too_big = vec![b' '; rolebridge_webhook::server::MAX_BODY + 1];
    let (status, resp) = post(&mut conn, "/mutate", &too_big).await;
    assert_eq!(status, 200);
    assert!(
        resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds")
    );
    let (status, _) = post(&mut conn, "/other", b"{}").await;
    assert_eq!(status, 404);
    let metrics = server.state.metrics.encode();
    assert!(
        metrics.contains("rolebridge_admissions_total{outcome=\"error\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn certificate_rotation_through_the_data_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let one = self_signed("one");
    publish(dir.path(), &one, 1);
    let server = start(dir.path()).await;
    let (mut old_conn, presented) = connect(server.addr, &one.der, false).await;
    assert_eq!(presented, one.der);

    let two = self_signed("two");
    publish(dir.path(), &two, 2);
    assert!(server.certs.reload().unwrap(), "rotation must be noticed");
    let (mut new_conn, presented) = connect(server.addr, &two.der, true).await;
    assert_eq!(
        presented, two.der,
        "new connections see the new certificate"
    );
    let (status, _) = post(&mut new_conn, "/mutate", REVIEW.as_bytes()).await;
    assert_eq!(status, 200);
    // The connection opened before the rotation keeps working.
    let (status, _) = post(&mut old_conn, "/mutate", REVIEW.as_bytes()).await;
    assert_eq!(status, 200);

    // A broken pair (key of another certificate) is refused; the last good one stays.
    let three = self_signed("three");
    let broken = Pair {
        cert_pem: three.cert_pem.clone(),
        key_pem: one.key_pem.clone(),
        der: three.der.clone(),
    };
    publish(dir.path(), &broken, 3);
    assert!(server.certs.reload().is_err());
    let (_, presented) = connect(server.addr, &two.der, false).await;
    assert_eq!(presented, two.der);
    assert!(server.state.readiness().is_ok());
}

#[tokio::test]
async fn graceful_shutdown_finishes_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pair = self_signed("one");
    publish(dir.path(), &pair, 1);
    let server = start(dir.path()).await;
    let (mut conn, _) = connect(server.addr, &pair.der, false).await;
    let (status, _) = post(&mut conn, "/mutate", REVIEW.as_bytes()).await;
    assert_eq!(status, 200);
    let _ = server.stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server stops promptly")
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
}
