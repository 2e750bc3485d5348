//! The binary's command line as the webhook and users invoke it (no network needed).
//!
//! Also makes `cargo test` build `target/<profile>/rolebridge-agent`, which the e2e tests run.

use std::process::Command;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rolebridge-agent"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

#[test]
fn help_lists_every_subcommand() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "run",
        "init",
        "check",
        "verify",
        "trust-policy",
        "credential-process",
    ] {
        assert!(help.contains(sub), "{sub} missing from:\n{help}");
    }
}

#[test]
fn run_without_tokens_fails_with_a_clear_message() {
    let out = agent().arg("run").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token configured"));
}

#[test]
fn malformed_token_mapping_is_rejected_by_the_parser() {
    let out = agent()
        .args(["check", "--token", "no-equals-sign"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

#[test]
fn check_fails_for_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args([
            "check",
            "--token",
            &format!("{}/t=sts.amazonaws.com", dir.path().display()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token file yet"));
}

#[test]
fn trust_policy_with_explicit_unique_id_needs_no_metadata_server() {
    let out = agent()
        .args([
            "trust-policy",
            "--gsa-unique-id",
            "1234567890",
            "--audience",
            "my-aud",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["Statement"][0]["Condition"]["StringEquals"];
    assert_eq!(c["accounts.google.com:aud"], "1234567890");
    assert_eq!(c["accounts.google.com:oaud"], "my-aud");
    assert_eq!(c["accounts.google.com:sub"], "1234567890");
}

#[test]
fn hidden_flags_subcommand_prints_the_command_line_as_json() {
    let out = agent().args(["flags", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "rolebridge-agent");
    let entry = |v: &serde_json::Value, list: &str, key: &str, value: &str| {
        let mut entries = v[list].as_array().unwrap().clone().into_iter();
        entries.find(|e| e[key] == value).unwrap()
    };
    let run = entry(&v, "subcommands", "name", "run");
    let port = entry(&run, "flags", "long", "credentials-port");
    assert_eq!(port["env"], "ROLEBRIDGE_CREDENTIALS_PORT");
    assert_eq!(port["default"], "24118");
    // JSON is the only format, and asked for explicitly.
    assert_eq!(
        agent().arg("flags").output().unwrap().status.code(),
        Some(2)
    );
    // Hidden from help.
    let help = agent().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("flags")),
        "{help}"
    );
}

/// The policy a successful `trust-policy` printed (stdout alone), and its stderr.
fn printed_policy(out: std::process::Output) -> (serde_json::Value, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

#[test]
fn trust_policy_for_the_cluster_issuer_prints_the_policy_and_the_provider_command_apart() {
    let issuer = "https://container.googleapis.com/v1/projects/p/locations/europe-west1/clusters/c";
    let provider = issuer.trim_start_matches("https://");
    let kubernetes = ["trust-policy", "--token-source", "kubernetes", "--issuer"];
    let (v, stderr) = printed_policy(
        agent()
            .args(kubernetes)
            .arg(format!("{issuer}/"))
            .args(["--namespace", "ci", "--service-account", "publisher"])
            .args(["--account", "111111111111"])
            .output()
            .unwrap(),
    );
    // stdout is the policy alone, so `> policy.json` works.
    let st = &v["Statement"][0];
    assert_eq!(
        st["Principal"]["Federated"],
        format!("arn:aws:iam::111111111111:oidc-provider/{provider}")
    );
    let sub = format!("{provider}:sub");
    let aud = format!("{provider}:aud");
    assert_eq!(
        st["Condition"]["StringEquals"][&sub],
        "system:serviceaccount:ci:publisher"
    );
    assert_eq!(st["Condition"]["StringEquals"][&aud], "sts.amazonaws.com");
    assert!(
        stderr.contains(&format!(
            "aws iam create-open-id-connect-provider --url {issuer} --client-id-list sts.amazonaws.com"
        )),
        "{stderr}"
    );

    // The namespace and service account default to the pod's (downward API variables), the
    // audience can be another.
    let (v, _) = printed_policy(
        agent()
            .env("ROLEBRIDGE_POD_NAMESPACE", "ci")
            .env("ROLEBRIDGE_SERVICE_ACCOUNT", "publisher")
            .args(kubernetes)
            .args([issuer, "--account", "111111111111", "--audience", "my-aud"])
            .output()
            .unwrap(),
    );
    let c = &v["Statement"][0]["Condition"]["StringEquals"];
    assert_eq!(c[&aud], "my-aud");
    assert_eq!(c[&sub], "system:serviceaccount:ci:publisher");

    for (flag, value, says) in [
        (
            "--issuer",
            "http://insecure.example",
            "must be an https:// URL",
        ),
        ("--account", "1234", "is not an AWS account ID"),
        ("--namespace", "*", "is not a Kubernetes namespace name"),
    ] {
        let mut args = vec![
            ("--issuer", issuer),
            ("--namespace", "ci"),
            ("--service-account", "publisher"),
            ("--account", "111111111111"),
        ];
        args.iter_mut().find(|(f, _)| *f == flag).unwrap().1 = value;
        let mut cmd = agent();
        cmd.args(&kubernetes[..3]);
        for (f, v) in args {
            cmd.args([f, v]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{flag}: {stderr}");
    }
}
