//! `rolebridge-agent run` against the GKE metadata emulator: writing, refreshing, restarting,
//! and shutting down.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use rolebridge_e2e::metadata_emulator::{Config, Emulator};
use rolebridge_e2e::support::{
    AgentProcess, FileWatcher, agent_command, claims, spawn_run, wait_until,
};

const STS: &str = "sts.amazonaws.com";

fn emulator(lifetime_s: u64) -> Emulator {
    Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            lifetime: Duration::from_secs(lifetime_s),
            ..Config::default()
        },
    )
    .unwrap()
}

fn run_agent(emu: &Emulator, dir: &std::path::Path, tokens: &[String]) -> AgentProcess {
    let mut cmd = agent_command(&emu.host());
    cmd.arg("run")
        .args(["--max-retry-interval", "1s", "--request-timeout", "1s"]);
    for t in tokens {
        cmd.args(["--token", t]);
    }
    AgentProcess::spawn(cmd, dir)
}

/// CPU seconds (user + system) used so far by `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn writes_a_valid_world_readable_token_and_refreshes_it_before_expiry() {
    let emu = emulator(4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sts.amazonaws.com.token");
    let watcher = FileWatcher::start(&path, STS);
    let agent = run_agent(&emu, dir.path(), &[format!("{}={STS}", path.display())]);

    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "no token: {}",
        agent.log()
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "token must be readable by the app's uid");
    let c = claims(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(c["aud"], STS);
    assert_eq!(c["azp"], Config::default().unique_id);

    // 4 s tokens are refreshed at 40-60 % of their life: at least two more within ~6 s.
    assert!(
        wait_until(Duration::from_secs(8), || watcher.report().tokens.len()
            >= 3),
        "tokens seen: {}\n{}",
        watcher.report().tokens.len(),
        agent.log()
    );
    let report = watcher.finish();
    assert!(
        report.removals.is_empty(),
        "a refreshed token must never disappear: {:?}",
        report.removals
    );
    let exps: Vec<i64> = report.tokens.iter().map(|(_, e)| *e).collect();
    assert!(exps.windows(2).all(|w| w[0] <= w[1]), "{exps:?}");
    assert!(
        !agent.log().contains(&report.tokens[0].0),
        "the log must never contain a token"
    );
    // Only a handful of requests: one per refresh, no retries while healthy.
    assert!(
        emu.stats().identity_requests <= report.tokens.len() as u64 + 1,
        "{:?}",
        emu.stats()
    );
}

#[test]
fn sigterm_exits_zero_within_a_second() {
    let emu = emulator(3600);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let mut agent = run_agent(&emu, dir.path(), &[format!("{}={STS}", path.display())]);
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "{}",
        agent.log()
    );
    let start = Instant::now();
    agent.signal("TERM");
    let status = agent
        .wait_timeout(Duration::from_secs(1))
        .expect("agent still running 1 s after SIGTERM");
    assert!(status.success(), "exit status {status:?}: {}", agent.log());
    assert!(start.elapsed() < Duration::from_secs(1));
    // The token stays for containers that are still shutting down.
    assert!(path.exists());
}

#[test]
fn sigterm_during_an_outage_also_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    // Nothing listens there: the agent is in its retry loop.
    let mut cmd = agent_command(&rolebridge_e2e::support::free_addr().to_string());
    cmd.args(["run", "--token", &format!("{}={STS}", path.display())]);
    let mut agent = AgentProcess::spawn(cmd, dir.path());
    std::thread::sleep(Duration::from_millis(700));
    agent.signal("TERM");
    let status = agent
        .wait_timeout(Duration::from_secs(1))
        .expect("still running after SIGTERM");
    assert!(status.success(), "{status:?}: {}", agent.log());
}

#[test]
fn one_file_per_audience_including_url_audiences_and_env_form() {
    let emu = emulator(3600);
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.token");
    let b = dir.path().join("b.token");
    let url_aud = "https://example.com/aud?x=1:2";
    let mut cmd = agent_command(&emu.host());
    cmd.arg("run").env(
        "ROLEBRIDGE_TOKENS",
        format!("{}={STS},{}={url_aud}", a.display(), b.display()),
    );
    let agent = AgentProcess::spawn(cmd, dir.path());
    assert!(
        wait_until(Duration::from_secs(5), || a.exists() && b.exists()),
        "{}",
        agent.log()
    );
    assert_eq!(
        claims(&std::fs::read_to_string(&a).unwrap()).unwrap()["aud"],
        STS
    );
    assert_eq!(
        claims(&std::fs::read_to_string(&b).unwrap()).unwrap()["aud"],
        url_aud
    );
}

#[test]
fn restarted_sidecar_reuses_the_valid_token_on_disk_and_idles_without_spinning() {
    let emu = emulator(3600);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let spec = format!("{}={STS}", path.display());
    let mut first = run_agent(&emu, dir.path(), std::slice::from_ref(&spec));
    assert!(
        wait_until(Duration::from_secs(5), || path.exists()),
        "{}",
        first.log()
    );
    first.signal("TERM");
    first.wait_timeout(Duration::from_secs(2)).unwrap();
    let token = std::fs::read_to_string(&path).unwrap();
    let requests = emu.stats().identity_requests;

    let second = run_agent(&emu, dir.path(), &[spec]);
    let pid = second.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu_used = cpu_seconds(pid) - cpu_before;
    assert_eq!(
        emu.stats().identity_requests,
        requests,
        "valid token should be reused: {}",
        second.log()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    assert!(
        second.log().contains("reusing valid token"),
        "{}",
        second.log()
    );
    // Sleeping, not polling: a busy loop would burn ~2 CPU seconds here.
    assert!(
        cpu_used < 0.2,
        "agent used {cpu_used} CPU seconds while idle"
    );
}

#[test]
fn invalid_leftover_file_is_replaced_not_kept() {
    let emu = emulator(3600);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    std::fs::write(
        &path,
        emu.mint(STS, &rolebridge_e2e::metadata_emulator::Fault::Expired),
    )
    .unwrap();
    let agent = run_agent(&emu, dir.path(), &[format!("{}={STS}", path.display())]);
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| claims(&t))
                .is_some_and(|c| {
                    c["exp"].as_i64().unwrap() * 1000 > rolebridge_e2e::support::now_ms()
                })
        }),
        "{}",
        agent.log()
    );
}

#[test]
fn caching_metadata_server_is_not_polled() {
    // Like GKE's, this server returns the same token until half its lifetime is gone, i.e.
    // possibly after the agent's refresh point: the agent must back off, not ask every second.
    let emu = Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            lifetime: Duration::from_secs(8),
            cache_tokens: true,
            ..Config::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    let watcher = FileWatcher::start(&path, STS);
    let agent = spawn_run(
        &emu.host(),
        dir.path(),
        &path,
        &["--refresh-fraction", "0.3"],
    );
    assert!(
        wait_until(Duration::from_secs(14), || watcher.report().tokens.len()
            >= 3),
        "{}",
        agent.log()
    );
    let report = watcher.finish();
    assert!(report.removals.is_empty(), "{:?}", report.removals);
    let stats = emu.stats();
    // Three tokens need three mints; repeated answers stay a small multiple of that.
    assert!(
        stats.identity_requests <= 4 * stats.tokens_issued,
        "{stats:?}\n{}",
        agent.log()
    );
}
