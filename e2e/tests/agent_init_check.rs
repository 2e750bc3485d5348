//! `rolebridge-agent init` (legacy init container) and `check` (probes).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rolebridge_e2e::metadata_emulator::{Config, Emulator, Fault};
use rolebridge_e2e::support::{agent_command, claims, free_addr, now_ms, run_with_timeout};

const STS: &str = "sts.amazonaws.com";

fn emulator() -> Emulator {
    Emulator::start("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap()
}

fn init(host: &str, path: &Path, timeout: &str) -> (std::process::Output, Duration) {
    let mut cmd = agent_command(host);
    cmd.args(["init", "--timeout", timeout, "--request-timeout", "500ms"])
        .args(["--token", &format!("{}={STS}", path.display())]);
    let start = Instant::now();
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    (out, start.elapsed())
}

fn check(path: &Path, aud: &str) -> std::process::Output {
    let mut cmd = agent_command("127.0.0.1:1");
    cmd.args(["check", "--token", &format!("{}={aud}", path.display())]);
    run_with_timeout(cmd, Duration::from_secs(10))
}

/// An (unsigned) JWT with the given claims: `check` judges claims only.
fn jwt(aud: &str, iat: i64, exp: i64) -> String {
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(format!(r#"{{"aud":"{aud}","iat":{iat},"exp":{exp}}}"#));
    format!("{h}.{p}.c2ln")
}

#[test]
fn init_writes_every_token_and_exits_zero() {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let mut cmd = agent_command(&emu.host());
    cmd.args(["init", "--token", &format!("{}={STS}", a.display())])
        .args(["--token", &format!("{}=https://other/aud", b.display())]);
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        claims(&std::fs::read_to_string(&a).unwrap()).unwrap()["aud"],
        STS
    );
    assert_eq!(
        claims(&std::fs::read_to_string(&b).unwrap()).unwrap()["aud"],
        "https://other/aud"
    );
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(emu.stats().identity_requests, 2);
}

#[test]
fn init_retries_through_transient_failures() {
    let emu = emulator();
    emu.push_faults([Fault::Status(500), Fault::Close]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let (out, _) = init(&emu.host(), &path, "20s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.exists());
    assert_eq!(emu.stats().identity_requests, 3);
}

#[test]
fn init_unreachable_server_fails_with_workload_identity_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let (out, took) = init(&free_addr().to_string(), &path, "2s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Workload Identity"), "{stderr}");
    assert!(
        took >= Duration::from_secs(2),
        "gave up before the deadline: {took:?}"
    );
    assert!(!path.exists());
}

#[test]
fn init_unbound_service_account_fails_with_binding_hint() {
    let emu = emulator();
    emu.set_fault(Fault::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let (out, _) = init(&emu.host(), &path, "1s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bound to a Google service account"),
        "{stderr}"
    );
    assert!(!path.exists());
}

#[test]
fn init_never_writes_an_invalid_token() {
    for fault in [
        Fault::WrongAudience,
        Fault::Expired,
        Fault::Garbage,
        Fault::Hang,
    ] {
        let emu = emulator();
        emu.set_fault(fault.clone());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.token");
        let (out, _) = init(&emu.host(), &path, "1s");
        assert!(!out.status.success(), "{fault}");
        assert!(!path.exists(), "{fault} answer was written");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("eyJ"),
            "stderr must not contain a token: {stderr}"
        );
    }
}

#[test]
fn check_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let now = now_ms() / 1000;

    assert!(
        !check(&path, STS).status.success(),
        "missing file must fail"
    );

    std::fs::write(&path, jwt(STS, now - 10, now + 3590)).unwrap();
    let ok = check(&path, STS);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("expires in"));

    assert!(
        !check(&path, "another-audience").status.success(),
        "wrong aud must fail"
    );

    std::fs::write(&path, jwt(STS, now - 3500, now + 100)).unwrap();
    let expiring = check(&path, STS);
    assert!(!expiring.status.success(), "about to expire must fail");
    assert!(String::from_utf8_lossy(&expiring.stderr).contains("about to expire"));

    std::fs::write(&path, jwt(STS, now - 3700, now - 100)).unwrap();
    assert!(!check(&path, STS).status.success(), "expired must fail");

    std::fs::write(&path, "not a token").unwrap();
    assert!(!check(&path, STS).status.success(), "garbage must fail");
}

#[test]
fn check_after_init_passes() {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let (out, _) = init(&emu.host(), &path, "10s");
    assert!(out.status.success());
    assert!(check(&path, STS).status.success());
}
