//! In-process HTTPS: real TLS handshakes and real AdmissionReview bodies against the running
//! server, over HTTP/1.1 and h2, plus certificate rotation the way Kubernetes does it.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::net::TcpStream;

use rolebridge_webhook::server::limits::Limits;
use support::*;

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
    let too_big = vec![b' '; Limits::default().max_body_size + 1];
    let (status, resp) = post(&mut conn, "/mutate", &too_big).await;
    // The rest of that body was never read, so the connection is closed after the answer.
    let (mut conn, _) = connect(server.addr, &pair.der, false).await;
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
