//! Hostile clients against the in-process HTTPS server: unfinished bodies that would exhaust
//! memory, heads and bodies sent a byte at a time, idle keep-alive connections, lying
//! Content-Lengths and connection floods. Each test asserts what a well-behaved client (the API
//! server) still gets, and that the attacker is cut when its deadline says so.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::Request;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use rolebridge_webhook::server::limits::Limits;
use support::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn head(content_length: Option<usize>) -> String {
    let length = match content_length {
        Some(n) => format!("content-length: {n}\r\n"),
        None => "transfer-encoding: chunked\r\n".into(),
    };
    format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{length}\r\n"
    )
}

async fn served(dir: &std::path::Path, limits: Limits) -> (Server, Pair) {
    let pair = self_signed("one");
    publish(dir, &pair, 1);
    (start_with(dir, limits).await, pair)
}

/// Asserts a mutating answer to the captured review.
fn assert_mutated(status: u16, response: &Value) {
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// An h2 request body that sends `chunks` and then never ends.
fn stalled_body(
    chunks: Vec<Bytes>,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>>> {
    use futures::StreamExt;
    StreamBody::new(
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))))
            .chain(futures::stream::pending()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_is_answered_while_hostile_clients_hold_unfinished_bodies() {
    let dir = tempfile::tempdir().unwrap();
    // Deadlines far away: the hostile bodies stay in flight for the whole test, so only the
    // budget stands between them and the webhook's memory.
    let limits = Limits {
        request_read_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let budget = limits.body_budget;
    let max = limits.max_body_size;
    let (server, pair) = served(dir.path(), limits).await;
    let metrics = server.state.metrics.clone();

    // The most any body held, sampled while the attack runs.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, metrics) = (peak.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(metrics.body_bytes.get() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // 100 connections from four pods: HTTP/1.1 and h2, each announcing a body just under the
    // limit, sending ~3.4 MB of it and never the rest.
    let sent_per_body = max - (64 << 10);
    let mut hostile = JoinSet::new();
    for i in 0..100u8 {
        let (addr, der) = (server.addr, pair.der.clone());
        let from = ip(2 + i % 4);
        hostile.spawn(async move {
            let chunk = Bytes::from(vec![b' '; 64 << 10]);
            let chunks = vec![chunk; sent_per_body / (64 << 10)];
            if i % 4 == 3 {
                let tls = tls_from(addr, &der, true, from).await.unwrap();
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let req = Request::post("https://localhost/mutate")
                    .header("content-length", (max - 1).to_string())
                    .body(stalled_body(chunks))
                    .unwrap();
                let _ = send.send_request(req).await;
            } else {
                let mut tls = tls_from(addr, &der, false, from).await.unwrap();
                tls.write_all(head(Some(max - 1)).as_bytes()).await.unwrap();
                for c in chunks {
                    if tls.write_all(&c).await.is_err() {
                        return;
                    }
                }
                let _ = read_to_close(&mut tls).await;
            }
        });
    }
    // Let the attack fill the budget.
    let filled = Instant::now();
    while (metrics.body_bytes.get() as usize) < budget * 3 / 4 {
        assert!(
            filled.elapsed() < Duration::from_secs(60),
            "the hostile bodies never filled the budget"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for h2 in [false, true] {
        let started = Instant::now();
        let (mut conn, _, _) = connect_from(server.addr, &pair.der, h2, ip(1)).await;
        let (status, response) = post(&mut conn, "/mutate", REVIEW.as_bytes()).await;
        let took = started.elapsed();
        assert_mutated(status, &response);
        assert!(
            took < Duration::from_secs(1),
            "the API server waited {took:?} (h2: {h2})"
        );
    }
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed) as usize;
    assert!(peak <= budget, "bodies held {peak} bytes, budget {budget}");
    assert!(
        metrics
            .encode()
            .contains("rolebridge_requests_shed_total{reason=\"evicted\"}"),
        "room was made by cutting the oldest hostile bodies"
    );
    hostile.abort_all();
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_at_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        request_read_timeout: Duration::from_millis(600),
        ..Limits::default()
    };
    let (server, pair) = served(dir.path(), limits).await;

    let mut tls = tls_from(server.addr, &pair.der, false, ip(2))
        .await
        .unwrap();
    let started = Instant::now();
    tls.write_all(b"POST /mutate HTTP/1.1\r\n").await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let dribble = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    read_to_close(&mut reader).await;
    let took = started.elapsed();
    dribble.abort();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );

    // A connection that never starts a request has the same deadline.
    let mut silent = tls_from(server.addr, &pair.der, false, ip(2))
        .await
        .unwrap();
    let started = Instant::now();
    read_to_close(&mut silent).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "closed after {took:?}");
    assert!(
        server
            .state
            .metrics
            .encode()
            .contains("rolebridge_connections_closed_total{reason=\"header_timeout\"} 2")
    );
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_cut_at_the_request_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        request_read_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let (server, pair) = served(dir.path(), limits).await;

    // HTTP/1.1: a 408, then the connection closes.
    let mut tls = tls_from(server.addr, &pair.der, false, ip(2))
        .await
        .unwrap();
    let started = Instant::now();
    tls.write_all(head(Some(REVIEW.len())).as_bytes())
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let dribble = tokio::spawn(async move {
        for b in REVIEW.bytes() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let answer = read_to_close(&mut reader).await;
    let took = started.elapsed();
    dribble.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2000),
        "answered after {took:?}"
    );

    // h2: the stream gets the 408, the connection stays usable.
    let tls = tls_from(server.addr, &pair.der, true, ip(2)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        for b in REVIEW.bytes() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let body = StreamBody::new(tokio_stream_from(rx));
    let response = send
        .send_request(
            Request::post("https://localhost/mutate")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 408);
    assert!(
        took < Duration::from_millis(2000),
        "answered after {took:?}"
    );
    assert!(
        server
            .state
            .metrics
            .encode()
            .contains("rolebridge_requests_shed_total{reason=\"read_timeout\"} 2")
    );
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (server, pair) = served(dir.path(), limits).await;
    for h2 in [false, true] {
        let (mut conn, _, closed) = connect_from(server.addr, &pair.der, h2, ip(1)).await;
        // Requests keep the connection alive past the idle timeout...
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1200) {
            let (status, response) = post(&mut conn, "/mutate", REVIEW.as_bytes()).await;
            assert_mutated(status, &response);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!closed.is_finished(), "closed while in use (h2: {h2})");
        // ...and silence closes it.
        let idle = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), closed)
            .await
            .expect("idle connection closed")
            .unwrap();
        let took = idle.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(2000),
            "closed after {took:?} idle (h2: {h2})"
        );
    }
}

#[tokio::test]
async fn an_over_limit_content_length_is_answered_invalid_without_reading_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let max = limits.max_body_size;
    let (server, pair) = served(dir.path(), limits).await;

    // The head alone: the answer comes although the body is never sent.
    let mut tls = tls_from(server.addr, &pair.der, false, ip(2))
        .await
        .unwrap();
    tls.write_all(head(Some(4_000_000)).as_bytes())
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(1), read_to_close(&mut tls))
        .await
        .expect("answered without waiting for the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: Value = serde_json::from_str(&answer[answer.find('{').unwrap()..]).unwrap();
    assert_eq!(json["kind"], "AdmissionReview");
    assert_eq!(json["response"]["allowed"], false);
    assert_eq!(json["response"]["status"]["code"], 400);
    assert!(
        json["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("exceeds {max} bytes"))
    );

    // Without a Content-Length (chunked), the body is cut where it crosses the limit.
    let mut tls = tls_from(server.addr, &pair.der, false, ip(2))
        .await
        .unwrap();
    tls.write_all(head(None).as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 0;
    let answer = loop {
        let frame = format!("{:x}\r\n", chunk.len());
        if tls.write_all(frame.as_bytes()).await.is_err()
            || tls.write_all(&chunk).await.is_err()
            || tls.write_all(b"\r\n").await.is_err()
        {
            break read_to_close(&mut tls).await;
        }
        sent += chunk.len();
        assert!(sent < 3 * max, "the server kept reading past the limit");
        if sent > max + (256 << 10) {
            break tokio::time::timeout(Duration::from_secs(1), read_to_close(&mut tls))
                .await
                .expect("answered once the limit was crossed");
        }
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("exceeds"), "{answer}");
    let m = server.state.metrics.encode();
    assert!(
        m.contains("rolebridge_requests_shed_total{reason=\"too_large\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn connection_caps_refuse_floods_and_make_room_from_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_connections: 3,
        max_connections_per_client: 2,
        ..Limits::default()
    };
    let (server, pair) = served(dir.path(), limits).await;

    // One pod may hold two connections, not three.
    let (mut a1, _, a1_closed) = connect_from(server.addr, &pair.der, false, ip(2)).await;
    let (mut a2, _, _a2_closed) = connect_from(server.addr, &pair.der, true, ip(2)).await;
    for conn in [&mut a1, &mut a2] {
        let (status, response) = post(conn, "/mutate", REVIEW.as_bytes()).await;
        assert_mutated(status, &response);
    }
    assert!(
        tls_from(server.addr, &pair.der, false, ip(2))
            .await
            .is_err(),
        "a third connection from the same client is refused"
    );
    // A third client fills the cap with a connection that has not sent a request yet.
    let _b = tls_from(server.addr, &pair.der, false, ip(3))
        .await
        .unwrap();
    // The API server still gets in: the longest-idle connection (a1) makes room.
    let (mut api, _, _) = connect_from(server.addr, &pair.der, true, ip(1)).await;
    let (status, response) = post(&mut api, "/mutate", REVIEW.as_bytes()).await;
    assert_mutated(status, &response);
    tokio::time::timeout(Duration::from_secs(2), a1_closed)
        .await
        .expect("the idle connection was closed")
        .unwrap();
    let m = server.state.metrics.encode();
    assert!(
        m.contains("rolebridge_connections_refused_total{reason=\"client_limit\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rolebridge_connections_closed_total{reason=\"evicted\"} 1"),
        "{m}"
    );

    // With no connection idle (all just opened), a new one is refused.
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (server, pair) = served(dir.path(), limits).await;
    let _x = tls_from(server.addr, &pair.der, false, ip(2))
        .await
        .unwrap();
    let _y = tls_from(server.addr, &pair.der, false, ip(3))
        .await
        .unwrap();
    assert!(
        tls_from(server.addr, &pair.der, false, ip(4))
            .await
            .is_err()
    );
    let m = server.state.metrics.encode();
    assert!(
        m.contains("rolebridge_connections_refused_total{reason=\"limit\"} 1"),
        "{m}"
    );
}
