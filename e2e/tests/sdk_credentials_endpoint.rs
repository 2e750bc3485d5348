//! The credentials-endpoint delivery end to end: real AWS SDKs (boto3, the AWS CLI, the AWS
//! SDK for Rust, the AWS SDK for JavaScript v3) with only the environment the webhook injects
//! for a chained binding, against the agent and moto as STS and S3. Each SDK must be the
//! chained role, read S3, and see credentials that expire after `durationSeconds`; what the
//! agent sent STS is read back from moto's request recorder.
//!
//! A missing peer fails the test (install them with e2e/sdk/install-peers.sh), unless
//! ROLEBRIDGE_SKIP_MISSING_PEERS=1 asks for a skip.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rolebridge_e2e::endpoint_rig::{
    BINDING, CLUSTER_NAME, EXTERNAL_ID, EndpointRig, IDENTITY_ROLE, POD_NAME, POD_NAMESPACE,
    POD_UID, SERVICE_ACCOUNT, StsPeer, TARGET_ROLE, chained_caller_arn,
};
use rolebridge_e2e::sts_stub::denial_message;
use rolebridge_e2e::support::{
    BUCKET, OBJECT_BODY, OBJECT_KEY, expect_success, js_peer, now_ms, run_with_timeout, sdk_file,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const DURATION: u32 = 900;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim())
        .ok()
        .or_else(|| serde_json::from_str(stdout.lines().last()?).ok())
        .unwrap_or_else(|| panic!("no JSON in {stdout:?}"))
}

/// The credentials an SDK reported expire `DURATION` after the agent obtained them.
fn assert_expires_after_duration(rig: &EndpointRig, expiry_s: f64, sdk: &str) {
    let expiry_ms = (expiry_s * 1000.0) as i64;
    let earliest = rig.started_ms + i64::from(DURATION) * 1000 - 1000;
    let latest = now_ms() + i64::from(DURATION) * 1000 + 1000;
    assert!(
        (earliest..=latest).contains(&expiry_ms),
        "{sdk}: credentials expire at {expiry_ms}, expected {DURATION} s after they were issued \
         ({earliest}..={latest})"
    );
}

/// What the agent sent STS, from moto's own record: one chain, with the roles, external ID,
/// durations, session names and tags of the contract.
fn assert_agent_sent_the_chain(calls: &[HashMap<String, String>]) {
    let web: Vec<_> = calls
        .iter()
        .filter(|c| c["Action"] == "AssumeRoleWithWebIdentity")
        .collect();
    let hop: Vec<_> = calls
        .iter()
        .filter(|c| c["Action"] == "AssumeRole")
        .collect();
    assert_eq!(web.len(), 1, "one web identity call: {calls:#?}");
    assert_eq!(hop.len(), 1, "one AssumeRole call: {calls:#?}");
    let (web, hop) = (web[0], hop[0]);
    assert_eq!(web["RoleArn"], IDENTITY_ROLE);
    assert_eq!(web["RoleSessionName"], POD_NAME);
    assert_eq!(
        web["DurationSeconds"], "900",
        "intermediate hop: STS's minimum"
    );
    assert!(
        !web.keys().any(|k| k.starts_with("Tags")),
        "AssumeRoleWithWebIdentity takes no tags"
    );
    assert_eq!(hop["RoleArn"], TARGET_ROLE);
    assert_eq!(hop["ExternalId"], EXTERNAL_ID);
    assert_eq!(hop["DurationSeconds"], DURATION.to_string());
    assert_eq!(hop["RoleSessionName"], POD_NAME);
    let mut tags = HashMap::new();
    for n in 1..=10 {
        if let Some(k) = hop.get(&format!("Tags.member.{n}.Key")) {
            tags.insert(k.clone(), hop[&format!("Tags.member.{n}.Value")].clone());
        }
    }
    let want: HashMap<String, String> = [
        ("kubernetes-namespace", POD_NAMESPACE),
        ("kubernetes-service-account", SERVICE_ACCOUNT),
        ("kubernetes-pod-name", POD_NAME),
        ("kubernetes-pod-uid", POD_UID),
        ("gke-cluster-name", CLUSTER_NAME),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(tags, want);
    assert!(
        !hop.keys().any(|k| k.starts_with("TransitiveTagKeys")),
        "tags are passed on every hop, never transitive"
    );
}

#[test]
fn boto3_is_the_chained_role_and_the_agent_sent_sts_the_contract() {
    let Some(rig) = EndpointRig::start(
        "boto3_is_the_chained_role_and_the_agent_sent_sts_the_contract",
        DURATION,
        StsPeer::Moto,
    ) else {
        return;
    };
    let mut cmd = rig.pod_command(&rig.peers.python);
    cmd.arg(sdk_file("boto3_endpoint.py"))
        .args(["read", BUCKET, OBJECT_KEY]);
    let v = json(&expect_success("boto3", &run_with_timeout(cmd, TIMEOUT)));
    assert_eq!(v["body"], OBJECT_BODY);
    assert_eq!(v["arn"], chained_caller_arn());
    // botocore names the provider it used: the container one, not web identity or anything
    // ambient.
    assert_eq!(v["method"], "container-role");
    assert_expires_after_duration(&rig, v["expiry"].as_f64().unwrap(), "boto3");
    assert_agent_sent_the_chain(&rig.sts_calls());
}

#[test]
fn aws_cli_is_the_chained_role_and_reads_s3() {
    let Some(rig) = EndpointRig::start(
        "aws_cli_is_the_chained_role_and_reads_s3",
        DURATION,
        StsPeer::Moto,
    ) else {
        return;
    };
    let aws = |args: &[&str]| {
        let mut cmd = rig.pod_command(&rig.peers.aws);
        cmd.args(args);
        run_with_timeout(cmd, TIMEOUT)
    };
    let body = expect_success(
        "aws s3 cp",
        &aws(&["s3", "cp", &format!("s3://{BUCKET}/{OBJECT_KEY}"), "-"]),
    );
    assert_eq!(body, OBJECT_BODY);
    let out = aws(&["sts", "get-caller-identity", "--output", "json", "--debug"]);
    let id = expect_success("aws sts get-caller-identity", &out);
    assert_eq!(json(&id)["Arn"], chained_caller_arn());
    // AWS CLI v1 cannot print its credentials' expiry; its debug log shows which provider
    // answered (boto3, the same botocore, checks the expiry above).
    let debug = String::from_utf8_lossy(&out.stderr);
    assert!(
        debug.contains("container-role"),
        "the CLI did not use the container provider:\n{debug}"
    );
    // Two CLI processes, one chain: the agent answers from memory.
    let calls = rig.sts_calls();
    assert_eq!(
        calls.iter().filter(|c| c["Action"] == "AssumeRole").count(),
        1,
        "{calls:#?}"
    );
}

#[test]
fn rust_sdk_is_the_chained_role_and_reads_s3() {
    let Some(rig) = EndpointRig::start(
        "rust_sdk_is_the_chained_role_and_reads_s3",
        DURATION,
        StsPeer::Moto,
    ) else {
        return;
    };
    let mut cmd = rig.pod_command(Path::new(env!("CARGO_BIN_EXE_sdk-rust-s3-read")));
    cmd.args([BUCKET, OBJECT_KEY]);
    let v = json(&expect_success(
        "aws-config program",
        &run_with_timeout(cmd, TIMEOUT),
    ));
    assert_eq!(v["body"], OBJECT_BODY);
    assert_eq!(v["arn"], chained_caller_arn());
    assert_expires_after_duration(&rig, v["expiry"].as_f64().unwrap(), "Rust SDK");
}

#[test]
fn js_sdk_v3_is_the_chained_role_and_reads_s3() {
    let Some(node) = js_peer("js_sdk_v3_is_the_chained_role_and_reads_s3") else {
        return;
    };
    let Some(rig) = EndpointRig::start(
        "js_sdk_v3_is_the_chained_role_and_reads_s3",
        DURATION,
        StsPeer::Moto,
    ) else {
        return;
    };
    let mut cmd = rig.pod_command(&node);
    cmd.arg(sdk_file("js/read.mjs")).args([BUCKET, OBJECT_KEY]);
    let v = json(&expect_success(
        "node read.mjs",
        &run_with_timeout(cmd, TIMEOUT),
    ));
    assert_eq!(v["body"], OBJECT_BODY);
    assert_eq!(v["arn"], chained_caller_arn());
    assert_expires_after_duration(&rig, v["expiry"].as_f64().unwrap(), "JS SDK v3");
}

#[test]
fn unauthorized_requests_get_nothing() {
    let Some(rig) =
        EndpointRig::start("unauthorized_requests_get_nothing", DURATION, StsPeer::Moto)
    else {
        return;
    };
    let path = format!("/v1/credentials/{BINDING}");
    let token = rig.auth_token();
    assert_eq!(token.len(), 64, "32 random bytes, hex, no newline");
    let (status, body) = rig.get(&path, Some(&token));
    assert_eq!(status, 200, "{body}");
    let secret = json(&body)["SecretAccessKey"].as_str().unwrap().to_string();
    for (auth, want) in [(None, 401), (Some("wrong"), 403), (Some(&token[..63]), 403)] {
        let (status, body) = rig.get(&path, auth);
        assert_eq!(status, want, "{auth:?}: {body}");
        let v = json(&body);
        assert!(v["Code"].is_string() && v["Message"].is_string(), "{body}");
        assert!(
            v.get("AccessKeyId").is_none() && !body.contains(&secret),
            "{body}"
        );
    }
    // An SDK given a wrong token gets no credentials either.
    let bad = rig.dir.path().join("wrong.auth");
    std::fs::write(&bad, "0".repeat(64)).unwrap();
    let mut cmd = rig.pod_command(&rig.peers.python);
    cmd.env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &bad)
        .arg(sdk_file("boto3_endpoint.py"))
        .arg("identity");
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(
        !out.status.success(),
        "boto3 got credentials with a wrong token"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Health needs no token and tells no secret.
    let (status, body) = rig.get("/healthz", None);
    assert_eq!(status, 200);
    assert!(!body.contains(&secret));
    // The log never carries a secret.
    assert!(!rig.agent.log().contains(&secret));
    assert!(!rig.agent.log().contains(&token));
}

#[test]
fn many_concurrent_clients_cost_no_sts_call() {
    let Some(rig) = EndpointRig::start(
        "many_concurrent_clients_cost_no_sts_call",
        DURATION,
        StsPeer::Moto,
    ) else {
        return;
    };
    let before = rig.sts_calls().len();
    let token = rig.auth_token();
    let path = format!("/v1/credentials/{BINDING}");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| s.spawn(|| rig.get(&path, Some(&token)).0))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    assert_eq!(rig.sts_calls().len(), before, "50 clients cost STS calls");
}

#[test]
fn credentials_refresh_before_expiry_without_the_app_noticing() {
    // 20 s credentials: the agent refreshes at 8-12 s and never serves them in their last 2 s.
    const SHORT: u32 = 20;
    let Some(rig) = EndpointRig::start(
        "credentials_refresh_before_expiry_without_the_app_noticing",
        SHORT,
        StsPeer::Moto,
    ) else {
        return;
    };
    let mut cmd = rig.pod_command(&rig.peers.python);
    cmd.arg(sdk_file("boto3_endpoint.py")).args(["loop", "27"]);
    let v = json(&expect_success(
        "boto3 loop",
        &run_with_timeout(cmd, TIMEOUT),
    ));
    assert_eq!(v["errors"], serde_json::json!([]), "the app noticed: {v}");
    assert_eq!(v["arns"], serde_json::json!([chained_caller_arn()]));
    let keys = v["keys"].as_array().unwrap();
    assert!(
        keys.len() >= 2,
        "27 s of 20 s credentials must have been refreshed: {v}\n{}",
        rig.agent.log()
    );
    let hops = rig
        .sts_calls()
        .into_iter()
        .filter(|c| c["Action"] == "AssumeRole")
        .collect::<Vec<_>>();
    assert!(hops.len() >= 2 && hops.len() <= 4, "{hops:#?}");
    assert!(
        hops.iter()
            .all(|h| h["DurationSeconds"] == SHORT.to_string())
    );
}

#[test]
fn sts_denial_on_hop_2_reaches_the_app_with_the_hop_and_stss_message() {
    let Some(rig) = EndpointRig::start(
        "sts_denial_on_hop_2_reaches_the_app_with_the_hop_and_stss_message",
        DURATION,
        StsPeer::Denying(vec![TARGET_ROLE.into()]),
    ) else {
        return;
    };
    let message = denial_message(
        &format!("arn:aws:sts::111111111111:assumed-role/ci-identity/{POD_NAME}"),
        TARGET_ROLE,
    );
    // The agent tried the chain and recorded the failure.
    assert!(
        rolebridge_e2e::support::wait_until(Duration::from_secs(10), || rig
            .sts_calls()
            .iter()
            .any(|c| c["Action"] == "AssumeRole")),
        "{}",
        rig.agent.log()
    );
    // The startup probe fails, naming the hop (Kubernetes shows this in the pod's events).
    let probe = rig.probe();
    assert!(!probe.status.success());
    let probe_err = String::from_utf8_lossy(&probe.stderr);
    assert!(probe_err.contains("hop 2 of 2"), "{probe_err}");
    assert!(probe_err.contains(TARGET_ROLE), "{probe_err}");

    // boto3 (and so the AWS CLI) put the endpoint's body in their error.
    let started = std::time::Instant::now();
    let mut cmd = rig.pod_command(&rig.peers.python);
    cmd.arg(sdk_file("boto3_endpoint.py")).arg("identity");
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hop 2 of 2 (sts:AssumeRole"), "{err}");
    assert!(
        err.contains(&message),
        "STS's message must reach the app: {err}"
    );
    assert!(err.contains("AccessDenied"), "{err}");
    // No hang: botocore's 3 attempts against an endpoint that answers at once.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    let mut cmd = rig.pod_command(&rig.peers.aws);
    cmd.args(["sts", "get-caller-identity"]);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hop 2 of 2") && err.contains(&message),
        "{err}"
    );

    // The Rust SDK and the JS SDK v3 fail without credentials; neither puts the endpoint's
    // body in its error (aws-config reports the status only; the JS default chain replaces
    // the provider's error with "Could not load credentials from any providers").
    let mut cmd = rig.pod_command(Path::new(env!("CARGO_BIN_EXE_sdk-rust-s3-read")));
    cmd.args([BUCKET, OBJECT_KEY]);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("424"), "{err}");
    if let Some(node) = js_peer("sts_denial_on_hop_2 (JS part)") {
        let mut cmd = rig.pod_command(&node);
        cmd.arg(sdk_file("js/read.mjs")).args([BUCKET, OBJECT_KEY]);
        let out = run_with_timeout(cmd, TIMEOUT);
        assert!(
            !out.status.success(),
            "JS SDK got credentials from a failed chain"
        );
    }
}
