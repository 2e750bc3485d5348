//! Helpers for the bench scripts: `cert DIR` writes a CA (`ca.crt`) and a localhost serving
//! pair signed by it (`tls.crt`, `tls.key`), `rotate DIR` replaces that pair with a new one the
//! way the kubelet updates a Secret volume (a `..data` symlink swap), and
//! `baseline LISTEN CERT KEY` serves `POST /mutate` with a fixed "allowed" review on exactly the
//! webhook's TLS stack (same accept loop, rustls config and hyper builder). The ratio of the
//! webhook's throughput to the baseline's shows how close the admission logic is to the cost
//! of TLS + HTTP alone. `baseline-read` does the same after reading the body once with
//! serde_json (`IgnoredAny`): what reading a review costs before deciding anything.
//! `baseline-reply LISTEN CERT KEY RESPONSE` reads the body once too and answers with the bytes
//! of RESPONSE (the webhook's own response to the benchmark review, its base64 patch included):
//! what carrying the real answer through the stack costs, before deciding anything.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use warp::Filter;
use warp::http::Response;

use rolebridge_webhook::metrics::Metrics;
use rolebridge_webhook::server::limits::Limits;
use rolebridge_webhook::server::serve_tls;
use rolebridge_webhook::server::tls::{CertStore, server_config};

const ALLOWED: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["cert", dir] => {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = ca_params().self_signed(&key).unwrap();
            std::fs::write(format!("{dir}/ca.crt"), cert.pem()).unwrap();
            std::fs::write(format!("{dir}/ca.key"), key.serialize_pem()).unwrap();
            rotate(dir);
        }
        ["rotate", dir] => rotate(dir),
        [mode @ ("baseline" | "baseline-read"), listen, cert, key] => {
            // `baseline-read` also reads the body once with serde_json, keeping nothing: the
            // floor of any admission that reads the review with it.
            baseline(
                listen,
                cert,
                key,
                *mode == "baseline-read",
                ALLOWED.to_vec(),
            );
        }
        ["baseline-reply", listen, cert, key, response] => {
            let reply = std::fs::read(response).expect("reading the response to answer with");
            baseline(listen, cert, key, true, reply);
        }
        _ => {
            eprintln!(
                "usage: bench_support cert DIR | rotate DIR | baseline|baseline-read LISTEN CERT KEY \
                 | baseline-reply LISTEN CERT KEY RESPONSE"
            );
            std::process::exit(2);
        }
    }
}

/// Serves `POST /mutate` on the webhook's TLS stack, answering every request with `reply`
/// (after reading the body once with serde_json when `read`).
fn baseline(listen: &str, cert: &str, key: &str, read: bool, reply: Vec<u8>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let store = Arc::new(CertStore::new(cert.into(), key.into(), provider.clone()));
        store.reload().expect("certificate");
        let tls = Arc::new(server_config(&store, provider).unwrap());
        let routes = warp::path("mutate")
            .and(warp::post())
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                if read {
                    let skipped = serde_json::from_slice::<serde::de::IgnoredAny>(&body);
                    std::hint::black_box(skipped.is_ok());
                }
                Response::builder()
                    .header("content-type", "application/json")
                    // A copy per request, as the webhook writes a new body for every answer.
                    .body(reply.clone())
                    .unwrap()
            })
            .recover(|_| async {
                Ok::<_, Infallible>(Response::builder().status(404).body(Vec::new()).unwrap())
            })
            .unify();
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        serve_tls(
            listener,
            tls,
            routes,
            Limits::default(),
            Arc::new(Metrics::new()),
            rx,
            Duration::from_secs(1),
        )
        .await;
    });
}

fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rolebridge bench CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
}

/// Issues a new serving pair from `DIR/ca.key` and swaps it in atomically.
fn rotate(dir: &str) {
    let dir = std::path::Path::new(dir);
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params(), ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let versioned = dir.join(format!("..{nanos}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(versioned.join("tls.key"), key.serialize_pem()).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(f)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}
