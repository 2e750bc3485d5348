//! Hostile and well-behaved clients for `bench/reliability.sh`, run as their own process so
//! that the webhook's RSS is measured alone. Every client trusts CERT (a PEM file).
//!
//! - `bodies ADDR CERT N MODE HOLD_SECS SOURCES`: N HTTP/1.1 connections from SOURCES
//!   loopback addresses (pods) each send the head of a `POST /mutate` and most of a body they
//!   never finish, hold it for HOLD_SECS, then leave.
//!   MODE `under`: Content-Length just under the webhook's default limit, 64 KiB short of it
//!   sent; `over`: Content-Length 4,194,304 and ~4 MB sent; `chunked`: ~4 MB chunked.
//! - `slow ADDR CERT head|body`: one request sent at 1 byte/s; prints when and how it was cut.
//! - `hold ADDR CERT N h1|h2 SECS SOURCES`: N connections holding the most the server buffers
//!   for a connection without a body (h1: a 15 KiB partial head; h2: 32 stalled streams).
//! - `idle ADDR CERT REVIEW`: one admission on a keep-alive connection, then silence; prints
//!   when the webhook closed it.
//! - `probe ADDR CERT REVIEW SECS`: a fresh h2 connection and one admission every 100 ms, as
//!   the API server would; prints the answered count, errors and the slowest answer.
//!
//! Prints figures; asserts nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const DEFAULT_MAX_BODY: usize = 3584 << 10;

fn connector(cert: &str, h2: bool) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("CERT") {
        roots.add(c.expect("PEM")).unwrap();
    }
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
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects from 127.0.0.`from` (all of 127/8 is loopback): one address per simulated pod.
async fn tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    from: u8,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, from], 0)))?;
    let tcp = socket.connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn head(length: Option<usize>) -> String {
    let length = match length {
        Some(n) => format!("content-length: {n}\r\n"),
        None => "transfer-encoding: chunked\r\n".into(),
    };
    format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{length}\r\n"
    )
}

/// Sends the head and `sent` body bytes, then holds the connection until `until`.
async fn unfinished(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    mode: String,
    until: Instant,
    from: u8,
) -> &'static str {
    let Ok(mut s) = tls(addr, &connector, from).await else {
        return "refused";
    };
    let (length, sent, chunked) = match mode.as_str() {
        "under" => (
            Some(DEFAULT_MAX_BODY - 1),
            DEFAULT_MAX_BODY - (64 << 10),
            false,
        ),
        "over" => (Some(4 << 20), 4_000_000, false),
        "chunked" => (None, 4_000_000, true),
        other => panic!("unknown mode {other}"),
    };
    let chunk = vec![b' '; 64 << 10];
    let body = async {
        s.write_all(head(length).as_bytes()).await?;
        let mut done = 0;
        while done < sent {
            let n = chunk.len().min(sent - done);
            if chunked {
                s.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            }
            s.write_all(&chunk[..n]).await?;
            if chunked {
                s.write_all(b"\r\n").await?;
            }
            done += n;
        }
        std::io::Result::Ok(())
    };
    let cut = match tokio::time::timeout_at(until.into(), body).await {
        Err(_) => return "held",
        Ok(Err(_)) => true,
        Ok(Ok(())) => false,
    };
    let mut buf = [0u8; 512];
    let answer = tokio::time::timeout_at(until.into(), s.read(&mut buf)).await;
    match answer {
        Err(_) if !cut => "held",
        Ok(Ok(n)) if n > 0 => {
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.starts_with("HTTP/1.1 503") {
                "503 (cut for budget)"
            } else if text.starts_with("HTTP/1.1 408") {
                "408 (deadline)"
            } else if text.contains("exceeds") {
                "invalid (too large)"
            } else {
                "other answer"
            }
        }
        _ => "closed",
    }
}

/// Each of the `n` attackers starts over as soon as the webhook cuts it, until `hold` is up.
async fn bodies(addr: SocketAddr, cert: &str, n: usize, mode: &str, hold: u64, sources: u8) {
    let connector = connector(cert, false);
    let until = Instant::now() + Duration::from_secs(hold);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let from = 2 + (i % usize::from(sources.max(1))) as u8;
        let (connector, mode) = (connector.clone(), mode.to_owned());
        tasks.spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < until {
                let outcome = unfinished(addr, connector.clone(), mode.clone(), until, from).await;
                seen.push(outcome);
                if outcome == "refused" {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            seen
        });
    }
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    while let Some(seen) = tasks.join_next().await {
        for outcome in seen.unwrap() {
            *outcomes.entry(outcome).or_default() += 1;
        }
    }
    let summary: Vec<String> = outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("{}", summary.join(", "));
}

async fn slow(addr: SocketAddr, cert: &str, what: &str) {
    let mut s = tls(addr, &connector(cert, false), 2)
        .await
        .expect("connect");
    let started = Instant::now();
    let (prefix, rest) = match what {
        "head" => (String::new(), head(Some(10))),
        "body" => (head(Some(100_000)), " ".repeat(100_000)),
        other => panic!("unknown {other}"),
    };
    s.write_all(prefix.as_bytes()).await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        for b in rest.bytes() {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(120), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                println!("still open after 120 s");
                return;
            }
        }
    }
    writer.abort();
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("no answer, connection closed")
        .to_owned();
    println!("{:.1} s {status}", started.elapsed().as_secs_f64());
}

/// N connections that each hold what the server buffers the most for them without a body:
/// `h1`: 15 KiB of a request head (just under the 16 KiB buffer); `h2`: 32 streams whose
/// bodies stall after filling their flow-control windows. Held for SECS, then closed.
async fn hold(addr: SocketAddr, cert: &str, n: usize, kind: &str, secs: u64, sources: u8) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let from = 2 + (i % usize::from(sources.max(1))) as u8;
        let connector = connector(cert, kind == "h2");
        let kind = kind.to_owned();
        tasks.spawn(async move {
            let Ok(mut s) = tls(addr, &connector, from).await else {
                return false;
            };
            if kind == "h1" {
                let head = format!(
                    "POST /mutate HTTP/1.1\r\nhost: localhost\r\nx-pad: {}",
                    "a".repeat(15 << 10)
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return false;
                }
                tokio::time::sleep_until(until.into()).await;
                return true;
            }
            let Ok((send, conn)) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await
            else {
                return false;
            };
            tokio::spawn(conn);
            for _ in 0..32 {
                let mut send = send.clone();
                tokio::spawn(async move {
                    let chunk = Bytes::from(vec![b' '; 16 << 10]);
                    let body = http_body_util::StreamBody::new(futures::StreamExt::chain(
                        futures::stream::iter((0..16).map(move |_| {
                            Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))
                        })),
                        futures::stream::pending(),
                    ));
                    let req = hyper::Request::post("https://localhost/mutate")
                        .body(body)
                        .unwrap();
                    let _ = send.send_request(req).await;
                });
            }
            tokio::time::sleep_until(until.into()).await;
            true
        });
    }
    let mut held = 0;
    while let Some(ok) = tasks.join_next().await {
        held += usize::from(ok.unwrap_or(false));
    }
    println!("{held} of {n} connections held");
}

/// One admission on a kept-alive HTTP/1.1 connection, then silence: seconds until closed.
async fn idle(addr: SocketAddr, cert: &str, review: &str) {
    let body = std::fs::read(review).expect("REVIEW");
    let mut s = tls(addr, &connector(cert, false), 2)
        .await
        .expect("connect");
    s.write_all(head(Some(body.len())).as_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let n = s.read(&mut buf).await.unwrap();
    let started = Instant::now();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    loop {
        match tokio::time::timeout(Duration::from_secs(600), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                println!("still open after 600 s");
                return;
            }
        }
    }
    println!("{:.1} s", started.elapsed().as_secs_f64());
}

async fn probe(addr: SocketAddr, cert: &str, review: &str, secs: u64) {
    let body = Bytes::from(std::fs::read(review).expect("REVIEW"));
    let connector = connector(cert, true);
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut ok, mut errors, mut worst) = (0, 0, Duration::ZERO);
    while Instant::now() < end {
        let started = Instant::now();
        let answered = async {
            let s = tls(addr, &connector, 1).await.map_err(|e| e.to_string())?;
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::post("https://localhost/mutate")
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .unwrap();
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status == 200 && bytes.windows(9).any(|w| w == b"JSONPatch") {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), answered).await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("probe error: {e}");
            }
            Err(_) => errors += 1,
        }
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{ok} answered, {errors} errors, slowest {:.0} ms",
        worst.as_secs_f64() * 1000.0
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = |s: &str| s.parse::<SocketAddr>().expect("ADDR");
    rt.block_on(async {
        match args.as_slice() {
            ["bodies", a, cert, n, mode, hold, sources] => {
                let (n, hold, sources) = (n.parse().unwrap(), hold.parse().unwrap(), sources.parse().unwrap());
                bodies(addr(a), cert, n, mode, hold, sources).await
            }
            ["slow", a, cert, what] => slow(addr(a), cert, what).await,
            ["idle", a, cert, review] => idle(addr(a), cert, review).await,
            ["hold", a, cert, n, kind, secs, sources] => {
                let (n, secs, sources) = (n.parse().unwrap(), secs.parse().unwrap(), sources.parse().unwrap());
                hold(addr(a), cert, n, kind, secs, sources).await
            }
            ["probe", a, cert, review, secs] => {
                probe(addr(a), cert, review, secs.parse().unwrap()).await
            }
            _ => {
                eprintln!(
                    "usage: bench_attack bodies ADDR CERT N under|over|chunked HOLD_SECS SOURCES | slow ADDR CERT head|body | idle ADDR CERT REVIEW | hold ADDR CERT N h1|h2 SECS SOURCES | probe ADDR CERT REVIEW SECS"
                );
                std::process::exit(2);
            }
        }
    });
}
