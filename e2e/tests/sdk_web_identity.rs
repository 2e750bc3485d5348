//! Real AWS SDKs against a real peer (moto's server as STS and S3): with only the environment
//! the webhook injects, each SDK federates through the token file the agent keeps fresh.
//!
//! A missing python/boto3/moto/awscli fails the test (install them with
//! e2e/sdk/install-peers.sh), unless ROLEBRIDGE_SKIP_MISSING_PEERS=1 asks for a skip.

use std::path::Path;
use std::time::Duration;

use rolebridge_e2e::support::{
    BUCKET, OBJECT_BODY, OBJECT_KEY, ROLE_ARN, WebIdentityRig, agent_bin, assumed_role_arn,
    expect_success, run_with_timeout,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The JSON document a program printed (the whole output, or its last line).
fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout)
        .ok()
        .or_else(|| serde_json::from_str(stdout.lines().last()?).ok())
        .unwrap_or_else(|| panic!("no JSON in {stdout:?}"))
}

#[test]
fn boto3_reads_s3_with_the_agent_token() {
    let Some(rig) = WebIdentityRig::start("boto3_reads_s3_with_the_agent_token") else {
        return;
    };
    let session = "rb-boto3";
    let mut cmd = rig.pod_command(&rig.peers.python, session);
    cmd.arg(rolebridge_e2e::support::sdk_file("boto3_read.py"))
        .args([BUCKET, OBJECT_KEY]);
    let out = expect_success("boto3", &run_with_timeout(cmd, TIMEOUT));
    let v = json(&out);
    assert_eq!(v["body"], OBJECT_BODY);
    assert_eq!(v["arn"], assumed_role_arn(session));
    // botocore names the provider it used: the web identity one, not some ambient credentials.
    assert_eq!(v["method"], "assume-role-with-web-identity");
}

#[test]
fn aws_cli_reads_s3_with_the_agent_token() {
    let Some(rig) = WebIdentityRig::start("aws_cli_reads_s3_with_the_agent_token") else {
        return;
    };
    let session = "rb-awscli";
    let aws = |args: &[&str]| {
        let mut cmd = rig.pod_command(&rig.peers.aws, session);
        cmd.args(args);
        run_with_timeout(cmd, TIMEOUT)
    };
    let body = expect_success(
        "aws s3 cp",
        &aws(&["s3", "cp", &format!("s3://{BUCKET}/{OBJECT_KEY}"), "-"]),
    );
    assert_eq!(body, OBJECT_BODY);
    let id = expect_success(
        "aws sts get-caller-identity",
        &aws(&["sts", "get-caller-identity", "--output", "json"]),
    );
    assert_eq!(json(&id)["Arn"], assumed_role_arn(session));
}

#[test]
fn rust_sdk_reads_s3_with_the_agent_token() {
    let Some(rig) = WebIdentityRig::start("rust_sdk_reads_s3_with_the_agent_token") else {
        return;
    };
    let session = "rb-rust";
    let mut cmd = rig.pod_command(Path::new(env!("CARGO_BIN_EXE_sdk-rust-s3-read")), session);
    cmd.args([BUCKET, OBJECT_KEY]);
    let out = expect_success("aws-config program", &run_with_timeout(cmd, TIMEOUT));
    let v = json(&out);
    assert_eq!(v["body"], OBJECT_BODY);
    assert_eq!(v["arn"], assumed_role_arn(session));
}

#[test]
fn sdks_fail_without_the_token_file() {
    // Control: the same environment with the token file gone must NOT yield credentials, so
    // the passing tests above really depend on the agent's file.
    let Some(rig) = WebIdentityRig::start("sdks_fail_without_the_token_file") else {
        return;
    };
    let missing = rig.dir.path().join("absent.token");
    let mut cmd = rig.pod_command(&rig.peers.python, "rb-none");
    cmd.env("AWS_WEB_IDENTITY_TOKEN_FILE", &missing)
        .arg(rolebridge_e2e::support::sdk_file("boto3_read.py"))
        .args([BUCKET, OBJECT_KEY]);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(
        !out.status.success(),
        "boto3 got credentials without a token file"
    );
}

#[test]
fn agent_verify_assumes_the_role_through_sts() {
    let Some(rig) = WebIdentityRig::start("agent_verify_assumes_the_role_through_sts") else {
        return;
    };
    let mut cmd = rig.home.command(
        &agent_bin(),
        &[
            ("GCE_METADATA_HOST", rig.emulator.host().as_str()),
            ("AWS_ENDPOINT_URL", rig.moto.endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    cmd.args([
        "verify",
        "--role-arn",
        ROLE_ARN,
        "--session-name",
        "rb-verify",
    ]);
    let out = expect_success("rolebridge-agent verify", &run_with_timeout(cmd, TIMEOUT));
    assert!(
        out.contains(&format!(
            "OK: hop 1: assumed {}",
            assumed_role_arn("rb-verify")
        )),
        "{out}"
    );
    assert!(out.contains("azp:   112233445566778899001"), "{out}");
    let token = std::fs::read_to_string(&rig.token_file).unwrap();
    assert!(
        !out.contains(token.split('.').nth(2).unwrap()),
        "verify must not print the token"
    );

    // Unreachable STS: non-zero exit, explanation and the trust policy to use, for the
    // Google service account the token was checked to be (--google-service-account); without
    // it, the token's account is not confirmed (it could be the node's) and no policy is
    // printed.
    let unreachable = |pin: Option<&str>| {
        let mut cmd = rig.home.command(
            &agent_bin(),
            &[
                ("GCE_METADATA_HOST", rig.emulator.host().as_str()),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_MAX_ATTEMPTS", "1"),
            ],
        );
        cmd.args(["verify", "--role-arn", ROLE_ARN]);
        if let Some(pin) = pin {
            cmd.args(["--google-service-account", pin]);
        }
        run_with_timeout(cmd, TIMEOUT)
    };
    let out = unreachable(Some(&rig.emulator.config().email));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("accounts.google.com:oaud"), "{stdout}");
    let out = unreachable(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("no trust policy printed"), "{stdout}");
    assert!(!stdout.contains("accounts.google.com:oaud"), "{stdout}");
}
