//! Token files as the web identity hop's token (issue 14): a `tokenSource: Kubernetes`
//! binding's kubelet-projected token, read again for every exchange while the kubelet rotates
//! it in place, and `verify --token-file` off-cluster. STS is the in-process stub (recording
//! the `WebIdentityToken` of every request), so no external peer is needed; the metadata
//! emulator is there to prove it is never asked for a token.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use rolebridge_contract::{AgentArgs, CredentialsSpec, GooglePin, Hop, subcommand};
use rolebridge_e2e::metadata_emulator::{Config, Emulator};
use rolebridge_e2e::sts_stub::StsStub;
use rolebridge_e2e::support::{
    AgentProcess, CLUSTER_ISSUER, ProjectedVolume, agent_bin, agent_command, free_addr, http_get,
    kubernetes_token, run_with_timeout, wait_until,
};

const STS: &str = "sts.amazonaws.com";
const IDENTITY_ROLE: &str = "arn:aws:iam::111111111111:role/ci-identity";
const TARGET_ROLE: &str = "arn:aws:iam::222222222222:role/docs-writer";

fn emulator() -> Emulator {
    Emulator::local(Config::default())
}

fn probe(args: &AgentArgs) -> Output {
    let line = args.check_command();
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.env_clear().args(&line[1..]);
    run_with_timeout(cmd, Duration::from_secs(10))
}

/// The web identity tokens STS was sent, in order.
fn web_identity_tokens(sts: &StsStub) -> Vec<String> {
    sts.requests()
        .into_iter()
        .filter(|r| r.get("Action").map(String::as_str) == Some("AssumeRoleWithWebIdentity"))
        .map(|r| r.get("WebIdentityToken").cloned().unwrap_or_default())
        .collect()
}

#[test]
fn the_endpoint_reads_the_projected_token_again_for_every_exchange() {
    let emu = emulator();
    // Six-second credentials: refreshed every three seconds or so.
    let sts = StsStub::start_with(&[], Duration::from_secs(6));
    let dir = tempfile::tempdir().unwrap();
    let mut volume = ProjectedVolume::new(&dir.path().join("kubernetes.rolebridge.io"));
    let name = rolebridge_contract::token_file_name(STS);
    let port = free_addr().port();
    let args = AgentArgs {
        credentials: vec![CredentialsSpec {
            name: "docs".into(),
            audience: STS.into(),
            role_arn: IDENTITY_ROLE.into(),
            chain: vec![Hop {
                role_arn: TARGET_ROLE.into(),
                external_id: Some("ext".into()),
            }],
            duration_seconds: Some(900),
            session_tags: false,
            region: None,
            token_file: Some(volume.path(&name).display().to_string()),
        }],
        credentials_port: port,
        // The pod's service account names no Google service account: no matter, the pin is
        // for Google tokens, and this binding's token is the cluster's.
        google_service_account: Some(GooglePin::NotConfigured),
        ..AgentArgs::default()
    };
    let auth = dir.path().join("credentials.auth");
    let mut cmd = agent_command(&emu.host());
    cmd.args(args.args(subcommand::RUN))
        .args(["--auth-token-file", auth.to_str().unwrap()])
        .args(["--max-retry-interval", "1s"])
        .env("AWS_ENDPOINT_URL_STS", sts.endpoint());
    let agent = AgentProcess::spawn(cmd, dir.path());

    // Not projected yet: the probe says which file is missing.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let err = String::from_utf8_lossy(&probe(&args).stderr).into_owned();
            err.contains("web identity token file") && err.contains("not found")
        }),
        "{}",
        agent.log()
    );
    let first = kubernetes_token(STS, "ci", "publisher", 3600, 1);
    volume.write(&name, &first);
    assert!(
        wait_until(Duration::from_secs(10), || probe(&args).status.success()),
        "{}\n{}",
        String::from_utf8_lossy(&probe(&args).stderr),
        agent.log()
    );
    assert_eq!(web_identity_tokens(&sts), vec![first.clone()]);

    // The kubelet rotates the token in place: the next exchange sends the new one.
    let second = kubernetes_token(STS, "ci", "publisher", 3600, 2);
    volume.write(&name, &second);
    assert!(
        wait_until(Duration::from_secs(10), || web_identity_tokens(&sts)
            .contains(&second)),
        "{}",
        agent.log()
    );
    let sent = web_identity_tokens(&sts);
    let switch = sent.iter().position(|t| *t == second).unwrap();
    assert!(sent[..switch].iter().all(|t| *t == first), "{sent:?}");
    assert!(sent[switch..].iter().all(|t| *t == second), "{sent:?}");

    let token = std::fs::read_to_string(&auth).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = http_get(addr, "/v1/credentials/docs", &[("Authorization", &token)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(emu.stats().identity_requests, 0, "no Google token involved");
    let log = agent.log();
    assert!(!log.contains(&first) && !log.contains(&second), "{log}");
}

fn verify(emu: &Emulator, sts: &StsStub, token_file: &Path) -> Output {
    let mut cmd = agent_command(&emu.host());
    cmd.args(["verify", "--token-file", token_file.to_str().unwrap()])
        .args(["--role-arn", IDENTITY_ROLE, "--chain-role-arn", TARGET_ROLE])
        .args(["--session-name", "rb-verify", "--no-session-tags"])
        .env("AWS_ENDPOINT_URL_STS", sts.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1");
    run_with_timeout(cmd, Duration::from_secs(60))
}

#[test]
fn verify_token_file_walks_the_chain_and_prints_the_issuers_trust_policy() {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("id_token");
    let token = kubernetes_token(STS, "ci", "publisher", 600, 1);
    std::fs::write(&file, &token).unwrap();

    let ok = StsStub::start(&[]);
    let out = verify(&emu, &ok, &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        &format!("web identity token from the token file {}", file.display()),
        &format!("iss:   {CLUSTER_ISSUER}"),
        "sub:   system:serviceaccount:ci:publisher",
        "OK: the chain ends as arn:aws:sts::222222222222:assumed-role/docs-writer/rb-verify",
    ] {
        assert!(stdout.contains(part), "{part} missing:\n{stdout}");
    }
    assert_eq!(web_identity_tokens(&ok), vec![token.clone()]);

    // The identity role does not trust the token: the policy it needs, for the cluster's
    // OIDC provider and exactly this service account.
    let denying = StsStub::start(&[IDENTITY_ROLE]);
    let out = verify(&emu, &denying, &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let provider = CLUSTER_ISSUER.trim_start_matches("https://");
    for part in [
        "FAILED: hop 1 of 2 (sts:AssumeRoleWithWebIdentity",
        &format!("\"Federated\": \"arn:aws:iam::111111111111:oidc-provider/{provider}\""),
        &format!("\"{provider}:sub\": \"system:serviceaccount:ci:publisher\""),
        &format!("\"{provider}:aud\": \"sts.amazonaws.com\""),
    ] {
        assert!(stdout.contains(part), "{part} missing:\n{stdout}");
    }
    assert!(!stdout.contains(token.split('.').nth(1).unwrap()));

    // A missing file is named, and nothing reaches STS.
    let before = denying.requests().len();
    let out = verify(&emu, &denying, &dir.path().join("absent"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("absent: not found"), "{stderr}");
    assert_eq!(denying.requests().len(), before);
    assert_eq!(emu.stats().identity_requests, 0);
}
