//! Identity pinning end to end (issue 14): the agent, told which Google service account the
//! pod must act as (`--google-service-account`, as the webhook renders it through the
//! contract), against the metadata emulator playing a node's Compute Engine metadata server
//! (another account's token: what a hostNetwork pod or a pod on a node pool without
//! GKE_METADATA gets) and the GKE metadata server for a service account without a Google
//! service account (404 with GKE's message). The agent refuses, writes nothing, its check
//! fails and says why, its log names both accounts and the fix, and it does not hammer the
//! metadata server.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use rolebridge_contract::{AgentArgs, CredentialsSpec, GooglePin, TokenSpec, env, subcommand};
use rolebridge_e2e::metadata_emulator::{Config, Emulator, NODE_EMAIL, Persona};
use rolebridge_e2e::sts_stub::StsStub;
use rolebridge_e2e::support::{
    AgentProcess, agent_bin, agent_command, claims, free_addr, http_get, run_with_timeout,
    wait_until,
};

const STS: &str = "sts.amazonaws.com";
const APP: &str = "app@rolebridge-test.iam.gserviceaccount.com";
const NAMESPACE: &str = "ci";
const KSA: &str = "publisher";

fn emulator(persona: Persona) -> Emulator {
    Emulator::local(Config {
        persona,
        kubernetes_service_account: format!("{NAMESPACE}/{KSA}"),
        ..Config::default()
    })
}

/// What the webhook renders for a pod with one Google-source token and this pin.
fn agent_args(token: &Path, pin: Option<GooglePin>) -> AgentArgs {
    AgentArgs {
        tokens: vec![TokenSpec {
            path: token.to_path_buf(),
            audience: STS.into(),
        }],
        google_service_account: pin,
        ..AgentArgs::default()
    }
}

fn email(e: &str) -> Option<GooglePin> {
    Some(GooglePin::Email(e.into()))
}

/// `sub` (`run` or `init`) as rendered from `args`, with the pod's downward API variables.
fn command(emu: &Emulator, args: &AgentArgs, sub: &str) -> std::process::Command {
    let mut cmd = agent_command(&emu.host());
    cmd.args(args.args(sub))
        .args(["--request-timeout", "1s"])
        .env(env::POD_NAMESPACE, NAMESPACE)
        .env(env::SERVICE_ACCOUNT, KSA);
    if sub == subcommand::RUN {
        cmd.args(["--max-retry-interval", "1s"]);
    }
    cmd
}

/// The pod's probe, as rendered from `args`.
fn probe(args: &AgentArgs) -> Output {
    let line = args.check_command();
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.env_clear().args(&line[1..]);
    run_with_timeout(cmd, Duration::from_secs(10))
}

fn refusal_file(token: &Path) -> PathBuf {
    PathBuf::from(format!("{}.refusal", token.display()))
}

/// `run` as rendered from `args`, once it has recorded a refusal for `token`.
fn run_until_refused(emu: &Emulator, args: &AgentArgs, dir: &Path) -> AgentProcess {
    let agent = AgentProcess::spawn(command(emu, args, subcommand::RUN), dir);
    let token = &args.tokens[0].path;
    assert!(
        wait_until(Duration::from_secs(5), || refusal_file(token).exists()),
        "no refusal recorded: {}",
        agent.log()
    );
    agent
}

/// `init` as rendered from `args` (deadline 30 s): it must fail at once, not at the deadline.
fn init_fails_at_once(emu: &Emulator, args: &AgentArgs) -> Output {
    let mut cmd = command(emu, args, subcommand::INIT);
    cmd.args(["--timeout", "30s"]);
    let started = Instant::now();
    let out = run_with_timeout(cmd, Duration::from_secs(40));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refusal fails init at once, not at the deadline: {:?}",
        started.elapsed()
    );
    assert!(!args.tokens[0].path.exists());
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_names(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

/// The advice for a service account without a Google service account, with this pod's names.
const ANNOTATE: &[&str] = &[
    "kubectl annotate serviceaccount -n ci publisher iam.gke.io/gcp-service-account=GSA_EMAIL",
    "roles/iam.workloadIdentityUser",
    "serviceAccount:PROJECT_ID.svc.id.goog[ci/publisher]",
    "recreate the pod",
    "tokenSource: Kubernetes",
];

/// What a refusal of the node's token says wherever it is shown.
const NODE_CAUSE: &[&str] = &[
    NODE_EMAIL,
    APP,
    "hostNetwork: true",
    "--workload-metadata=GKE_METADATA",
    "tokenSource: Kubernetes",
];

#[test]
fn the_nodes_token_is_refused_nothing_written_and_the_probe_says_why() {
    let emu = emulator(Persona::ComputeEngineNode);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("sts.amazonaws.com.token");
    // A still-valid token of the node's account, left by an older, unpinned agent.
    std::fs::write(&token, emu.mint(STS, &Default::default())).unwrap();
    let args = agent_args(&token, email(APP));
    let started = Instant::now();
    let agent = run_until_refused(&emu, &args, dir.path());
    assert!(!token.exists(), "the node's token left on disk must go");
    let log = agent.log();
    assert_names(&log, NODE_CAUSE);
    assert!(log.contains("token refused, nothing written"), "{log}");
    assert!(!log.contains("eyJ"), "no token in the log: {log}");

    let out = probe(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_names(
        &stderr(&out),
        &["no token file yet", "refuses to write a token"],
    );
    assert_names(&stderr(&out), NODE_CAUSE);

    // Rarely asked: 0.5-1 s, then 1-2 s, then 2-4 s between attempts (ordinary failures are
    // capped at --max-retry-interval 1s here), so at most four requests in five seconds.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    let asked = emu.stats().identity_requests;
    assert!((1..=4).contains(&asked), "{asked} identity requests");
    assert!(!token.exists(), "never written");
}

#[test]
fn init_refuses_the_nodes_token_at_once_naming_both_accounts() {
    let emu = emulator(Persona::ComputeEngineNode);
    let dir = tempfile::tempdir().unwrap();
    let out = init_fails_at_once(&emu, &agent_args(&dir.path().join("t.token"), email(APP)));
    assert_names(&stderr(&out), NODE_CAUSE);
    assert_eq!(emu.stats().identity_requests, 1);
}

#[test]
fn a_pod_without_a_google_service_account_never_asks_and_is_told_what_to_fix() {
    let emu = emulator(Persona::Gke);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t.token");
    let args = agent_args(&token, Some(GooglePin::NotConfigured));
    let agent = run_until_refused(&emu, &args, dir.path());
    assert_names(&agent.log(), ANNOTATE);
    let out = probe(&args);
    assert_eq!(out.status.code(), Some(1));
    assert_names(&stderr(&out), ANNOTATE);
    drop(agent);
    assert_names(&stderr(&init_fails_at_once(&emu, &args)), ANNOTATE);
    assert_eq!(
        emu.stats().identity_requests,
        0,
        "the metadata server is not even asked"
    );
}

#[test]
fn gke_404_for_a_service_account_without_annotation_gives_the_same_advice() {
    // A pod created by an older webhook (no pin) whose service account has no annotation.
    let emu = emulator(Persona::GkeUnannotated);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t.token");
    let args = agent_args(&token, None);
    let agent = run_until_refused(&emu, &args, dir.path());
    assert_names(&agent.log(), ANNOTATE);
    assert_names(&agent.log(), &["GKE metadata server answered 404"]);
    let out = probe(&args);
    assert_eq!(out.status.code(), Some(1));
    assert_names(&stderr(&out), ANNOTATE);
    drop(agent);
    assert_names(&stderr(&init_fails_at_once(&emu, &args)), ANNOTATE);
}

#[test]
fn the_pinned_account_is_written_and_a_recorded_refusal_is_cleared() {
    let emu = emulator(Persona::ComputeEngineNode);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t.token");
    // Emails compare case-insensitively, as Google treats them.
    let args = agent_args(&token, email(&APP.to_ascii_uppercase()));
    let agent = run_until_refused(&emu, &args, dir.path());
    // The pod's metadata server now answers for the pod (GKE's): the next attempt, within
    // seconds of a first refusal, writes the token.
    emu.set_persona(Persona::Gke);
    assert!(
        wait_until(Duration::from_secs(10), || token.exists()),
        "{}",
        agent.log()
    );
    let c = claims(&std::fs::read_to_string(&token).unwrap()).unwrap();
    assert_eq!(c["email"], APP);
    // Cleared right after the token is written.
    assert!(
        wait_until(Duration::from_secs(2), || !refusal_file(&token).exists()),
        "the refusal is cleared"
    );
    let out = probe(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_refused_credentials_binding_answers_and_probes_with_the_reason() {
    let emu = emulator(Persona::ComputeEngineNode);
    let sts = StsStub::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_addr().port();
    let args = AgentArgs {
        credentials: vec![CredentialsSpec {
            name: "docs".into(),
            audience: STS.into(),
            role_arn: "arn:aws:iam::111111111111:role/ci-identity".into(),
            chain: vec![],
            duration_seconds: Some(900),
            session_tags: false,
            region: None,
            token_file: None,
        }],
        credentials_port: port,
        google_service_account: email(APP),
        ..AgentArgs::default()
    };
    let auth = dir.path().join("credentials.auth");
    let mut cmd = command(&emu, &args, subcommand::RUN);
    cmd.args(["--auth-token-file", auth.to_str().unwrap()])
        .env("AWS_ENDPOINT_URL_STS", sts.endpoint());
    let agent = AgentProcess::spawn(cmd, dir.path());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
                && http_get(addr, "/healthz", &[]).1.contains("refused")
        }),
        "{}",
        agent.log()
    );
    let out = probe(&args);
    assert_eq!(out.status.code(), Some(1));
    assert_names(&stderr(&out), NODE_CAUSE);
    let auth = std::fs::read_to_string(&auth).unwrap();
    let (status, body) = http_get(addr, "/v1/credentials/docs", &[("Authorization", &auth)]);
    assert_eq!(status, 424, "the last attempt failed: {body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["Code"], "IdentityTokenRefused");
    assert!(problem["Message"].as_str().unwrap().contains(NODE_EMAIL));
    assert!(sts.requests().is_empty(), "STS never sees the node's token");
}
