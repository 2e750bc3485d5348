//! `trust-policy` and `verify` never print a trust policy for an account other than the one
//! the pod must act as (issue 14): against the metadata emulator playing the GKE metadata
//! server, a node's Compute Engine metadata server (another account's token) and GKE's for a
//! service account without a Google service account.

use std::process::Output;
use std::time::Duration;

use rolebridge_e2e::metadata_emulator::{Config, Emulator, NODE_EMAIL, Persona};
use rolebridge_e2e::sts_stub::StsStub;
use rolebridge_e2e::support::{agent_command, run_with_timeout};

const APP: &str = "app@rolebridge-test.iam.gserviceaccount.com";
const ROLE: &str = "arn:aws:iam::111111111111:role/ci-identity";

fn run(emu: &Emulator, args: &[&str], sts: Option<&StsStub>) -> Output {
    let mut cmd = agent_command(&emu.host());
    cmd.args(args)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1");
    if let Some(sts) = sts {
        cmd.env("AWS_ENDPOINT_URL_STS", sts.endpoint());
    }
    run_with_timeout(cmd, Duration::from_secs(60))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn trust_policy_reads_the_unique_id_only_from_the_pinned_accounts_token() {
    let emu = Emulator::playing(Persona::Gke);
    let gke = Config::default();
    let out = run(
        &emu,
        &["trust-policy", "--google-service-account", APP],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &policy["Statement"][0]["Condition"]["StringEquals"];
    assert_eq!(c["accounts.google.com:aud"], gke.unique_id.as_str());
    assert_eq!(c["accounts.google.com:sub"], gke.unique_id.as_str());

    // Without the expected account, the metadata server is not even asked.
    let asked = emu.stats().identity_requests;
    let out = run(&emu, &["trust-policy"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("pass --google-service-account GSA_EMAIL"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(emu.stats().identity_requests, asked);

    // On a node's metadata server: refused, nothing printed, both accounts named.
    emu.set_persona(Persona::ComputeEngineNode);
    let out = run(
        &emu,
        &["trust-policy", "--google-service-account", APP],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    for part in [NODE_EMAIL, APP, "hostNetwork: true", "GKE_METADATA"] {
        assert!(err.contains(part), "{part} missing: {err}");
    }
    assert!(
        !err.contains("--gsa-unique-id"),
        "no hint to paste another ID: {err}"
    );

    // A service account without a Google service account: the advice, whichever server.
    for (persona, pin) in [(Persona::Gke, "none"), (Persona::GkeUnannotated, APP)] {
        emu.set_persona(persona);
        let out = run(
            &emu,
            &["trust-policy", "--google-service-account", pin],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{persona}");
        assert!(out.stdout.is_empty());
        assert!(
            text(&out.stderr).contains("iam.gke.io/gcp-service-account=GSA_EMAIL"),
            "{persona}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn verify_refuses_the_nodes_token_when_pinned_and_prints_no_policy_for_it_unpinned() {
    let emu = Emulator::playing(Persona::ComputeEngineNode);
    let sts = StsStub::start(&[ROLE]);
    let verify = ["verify", "--role-arn", ROLE, "--no-session-tags"];

    let mut pinned = verify.to_vec();
    pinned.extend(["--google-service-account", APP]);
    let out = run(&emu, &pinned, Some(&sts));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(NODE_EMAIL) && err.contains(APP), "{err}");
    assert!(sts.requests().is_empty(), "STS never sees the node's token");

    // Unpinned, verify shows whose token it got, and when the role does not trust it, no
    // policy that would trust the node.
    let out = run(&emu, &verify, Some(&sts));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("email: {NODE_EMAIL}")), "{stdout}");
    assert!(stdout.contains("no trust policy printed"), "{stdout}");
    assert!(stdout.contains("--google-service-account"), "{stdout}");
    assert!(!stdout.contains("accounts.google.com:oaud"), "{stdout}");
}
