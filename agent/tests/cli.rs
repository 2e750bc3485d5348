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
