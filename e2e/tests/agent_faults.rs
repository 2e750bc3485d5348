//! Fault injection: whatever the metadata server does, the token file is absent or holds a
//! valid token, and a valid token is never removed before it expires.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rolebridge_e2e::metadata_emulator::{Config, Emulator, Fault};
use rolebridge_e2e::support::{
    AgentProcess, EXPIRY_GRACE_MS, FileWatcher, claims, free_addr, now_ms, spawn_run, wait_until,
};

const STS: &str = "sts.amazonaws.com";
const LIFETIME_S: u64 = 4;

fn emulator_on(addr: SocketAddr) -> Emulator {
    Emulator::start(
        addr,
        Config {
            lifetime: Duration::from_secs(LIFETIME_S),
            ..Config::default()
        },
    )
    .unwrap()
}

fn run_agent(host: &str, dir: &Path, path: &Path) -> AgentProcess {
    spawn_run(
        host,
        dir,
        path,
        &["--max-retry-interval", "1s", "--request-timeout", "500ms"],
    )
}

fn current_exp(path: &Path) -> Option<i64> {
    claims(&std::fs::read_to_string(path).ok()?)?["exp"].as_i64()
}

/// Healthy start, then `fault` for longer than the token lives, then recovery.
fn outage_scenario(fault: Fault) {
    let emu = emulator_on("127.0.0.1:0".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let watcher = FileWatcher::start(&path, STS);
    let agent = run_agent(&emu.host(), dir.path(), &path);
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "{}",
        agent.log()
    );

    emu.set_fault(fault.clone());
    let exp = current_exp(&path).expect("valid token");
    let requests_before = emu.stats().identity_requests;

    // The token stays until it expires, then is removed; nothing bad is ever written.
    assert!(
        wait_until(Duration::from_secs(LIFETIME_S + 2), || !path.exists()),
        "expired token not removed during {fault} outage: {}",
        agent.log()
    );
    assert!(now_ms() >= exp * 1000, "removed before expiry");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!path.exists(), "a {fault} answer must never be written");
    let outage_requests = emu.stats().identity_requests - requests_before;
    assert!(
        outage_requests >= 2,
        "agent must keep retrying during the outage: {outage_requests}"
    );
    // Backoff, not a busy loop: with a 0.5-1 s retry interval, at most ~15 tries in ~6 s.
    assert!(
        outage_requests <= 20,
        "{outage_requests} requests during the outage"
    );

    emu.set_fault(Fault::None);
    assert!(
        wait_until(Duration::from_secs(4), || current_exp(&path)
            .is_some_and(|e| e * 1000 > now_ms())),
        "no recovery after {fault}: {}",
        agent.log()
    );
    let report = watcher.finish();
    assert_eq!(report.removals.len(), 1, "{:?}", report.removals);
    let (seen_at, removed_exp) = report.removals[0];
    assert!(
        seen_at >= removed_exp * 1000,
        "removed at {seen_at} before exp {removed_exp}"
    );
    assert!(
        seen_at <= removed_exp * 1000 + EXPIRY_GRACE_MS + 500,
        "expired token lingered"
    );
}

#[test]
fn http_500_outage_longer_than_lifetime_then_recovery() {
    outage_scenario(Fault::Status(500));
}

#[test]
fn http_404_not_bound_outage() {
    outage_scenario(Fault::Status(404));
}

#[test]
fn hanging_server_times_out() {
    outage_scenario(Fault::Hang);
}

#[test]
fn garbage_body_is_never_written() {
    outage_scenario(Fault::Garbage);
}

#[test]
fn wrong_audience_token_is_never_written() {
    outage_scenario(Fault::WrongAudience);
}

#[test]
fn expired_token_is_never_written() {
    outage_scenario(Fault::Expired);
}

#[test]
fn closed_connections() {
    outage_scenario(Fault::Close);
}

#[test]
fn server_down_at_start_then_up() {
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let watcher = FileWatcher::start(&path, STS);
    let agent = run_agent(&addr.to_string(), dir.path(), &path);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!path.exists());
    let emu = emulator_on(addr);
    assert!(
        wait_until(Duration::from_secs(4), || path.exists()),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("unreachable"), "{}", agent.log());
    assert!(emu.stats().tokens_issued >= 1);
    watcher.finish();
}

#[test]
fn server_goes_away_and_comes_back_on_the_same_port() {
    let emu = emulator_on("127.0.0.1:0".parse().unwrap());
    let addr = emu.addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let watcher = FileWatcher::start(&path, STS);
    let agent = run_agent(&emu.host(), dir.path(), &path);
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "{}",
        agent.log()
    );
    let exp = current_exp(&path).unwrap();
    drop(emu);
    assert!(
        wait_until(Duration::from_secs(LIFETIME_S + 2), || !path.exists()),
        "{}",
        agent.log()
    );
    assert!(now_ms() >= exp * 1000);
    let _emu = emulator_on(addr);
    assert!(
        wait_until(Duration::from_secs(4), || current_exp(&path)
            .is_some_and(|e| e > exp)),
        "{}",
        agent.log()
    );
    watcher.finish();
}

#[test]
fn bad_first_answers_are_skipped_until_a_good_one() {
    let emu = emulator_on("127.0.0.1:0".parse().unwrap());
    emu.set_lifetime(Duration::from_secs(3600));
    emu.push_faults([
        Fault::Garbage,
        Fault::WrongAudience,
        Fault::Expired,
        Fault::Status(503),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let watcher = FileWatcher::start(&path, STS);
    let agent = run_agent(&emu.host(), dir.path(), &path);
    assert!(
        wait_until(Duration::from_secs(10), || path.exists()),
        "{}",
        agent.log()
    );
    assert_eq!(emu.stats().identity_requests, 5, "{}", agent.log());
    assert!(wait_until(Duration::from_secs(1), || !watcher
        .report()
        .tokens
        .is_empty()));
    let report = watcher.finish();
    assert_eq!(report.tokens.len(), 1);
}

#[test]
fn transient_failure_keeps_old_token_and_replaces_it_on_retry() {
    let emu = emulator_on("127.0.0.1:0".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let watcher = FileWatcher::start(&path, STS);
    let agent = run_agent(&emu.host(), dir.path(), &path);
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "{}",
        agent.log()
    );
    // The next refresh fails once, with latency; the retry (0.5-1 s later) must succeed while
    // the first token is still valid, so the file never goes away.
    emu.push_faults([Fault::Status(500)]);
    emu.set_latency(Duration::from_millis(200));
    assert!(
        wait_until(Duration::from_secs(LIFETIME_S + 1), || watcher
            .report()
            .tokens
            .len()
            >= 2),
        "{}",
        agent.log()
    );
    let report = watcher.finish();
    assert!(
        report.removals.is_empty(),
        "{:?}\n{}",
        report.removals,
        agent.log()
    );
}
