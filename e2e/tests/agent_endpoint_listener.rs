//! The credentials endpoint's listener against hostile clients (issue 9's rules for the
//! agent): slow heads are cut, idle keep-alive connections are closed, connections are
//! bounded, oversized heads and bodies are refused, and the endpoint keeps serving. Needs no
//! external peer: STS is the in-process stub, the metadata server the emulator.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rolebridge_contract::{AgentArgs, CredentialsSpec, Hop, subcommand};
use rolebridge_e2e::metadata_emulator::{Config, Emulator};
use rolebridge_e2e::sts_stub::StsStub;
use rolebridge_e2e::support::{AgentProcess, agent_command, free_addr, http_get, wait_until};

struct Agent {
    _emu: Emulator,
    _sts: StsStub,
    _dir: tempfile::TempDir,
    agent: AgentProcess,
    addr: SocketAddr,
    token: String,
}

fn start() -> Agent {
    let emu = Emulator::start("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap();
    let sts = StsStub::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("credentials.auth");
    let port = free_addr().port();
    let args = AgentArgs {
        tokens: vec![],
        credentials: vec![CredentialsSpec {
            name: "docs".into(),
            audience: "sts.amazonaws.com".into(),
            role_arn: "arn:aws:iam::111111111111:role/ci-identity".into(),
            chain: vec![Hop {
                role_arn: "arn:aws:iam::222222222222:role/docs-writer".into(),
                external_id: None,
            }],
            duration_seconds: Some(900),
            session_tags: true,
            region: None,
            token_file: None,
        }],
        credentials_port: port,
        google_service_account: None,
    };
    let mut cmd = agent_command(&emu.host());
    cmd.args(args.args(subcommand::RUN))
        .args(["--auth-token-file", auth.to_str().unwrap()])
        .args(["--header-read-timeout", "500ms", "--idle-timeout", "1s"])
        .args(["--max-connections", "4"])
        .env("AWS_ENDPOINT_URL_STS", sts.endpoint());
    let agent = AgentProcess::spawn(cmd, dir.path());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect(addr).is_ok() && http_get(addr, "/healthz", &[]).0 == 200
        }),
        "endpoint not ready: {}",
        agent.log()
    );
    let token = std::fs::read_to_string(&auth).unwrap();
    Agent {
        _emu: emu,
        _sts: sts,
        _dir: dir,
        agent,
        addr,
        token,
    }
}

/// Reads until the server closes the connection (Ok(bytes)) or `within` passes (Err).
fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Ok(got),
        }
    }
    Err(start.elapsed())
}

fn still_serves(a: &Agent) {
    let (status, body) = http_get(
        a.addr,
        "/v1/credentials/docs",
        &[("Authorization", &a.token)],
    );
    assert_eq!(status, 200, "{body}\n{}", a.agent.log());
}

#[test]
fn slow_heads_are_cut_at_the_header_read_timeout() {
    let a = start();
    let mut s = TcpStream::connect(a.addr).unwrap();
    s.write_all(b"GET /v1/credentials/docs HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t = Instant::now();
    closed_within(&mut s, Duration::from_secs(3)).expect("a slow head must be cut");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    still_serves(&a);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let a = start();
    let mut s = TcpStream::connect(a.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    closed_within(&mut s, Duration::from_secs(4)).expect("an idle connection must be closed");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn at_the_connection_cap_idle_and_silent_connections_make_room() {
    let a = start();
    // Four connections take every slot: two silent, one with half a head, one idle after a
    // completed request (as a pooling SDK leaves it)...
    let mut hogs: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(a.addr).unwrap())
        .collect();
    hogs[2].write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    hogs[3]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    hogs[3]
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(hogs[3].read(&mut buf).unwrap() > 0);
    std::thread::sleep(Duration::from_millis(100));
    // ...a fifth client is served anyway, well before any timeout would free a slot...
    let t = Instant::now();
    let (status, _) = http_get(
        a.addr,
        "/v1/credentials/docs",
        &[("Authorization", &a.token)],
    );
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // ...because the four were asked to close.
    for h in &mut hogs {
        closed_within(h, Duration::from_secs(2)).expect("hogs are closed under pressure");
    }
    still_serves(&a);
}

#[test]
fn check_wait_holds_until_the_endpoint_has_credentials() {
    // Legacy mode's postStart hook: `check --credentials-port P --wait D` started before the
    // agent listens passes once it holds credentials.
    let port = free_addr().port();
    let mut cmd = std::process::Command::new(rolebridge_e2e::support::agent_bin());
    cmd.env_clear().args([
        "check",
        "--credentials-port",
        &port.to_string(),
        "--wait",
        "2s",
    ]);
    let out = rolebridge_e2e::support::run_with_timeout(cmd, Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "nothing listens: must fail after the wait"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = start();
    let mut cmd = std::process::Command::new(rolebridge_e2e::support::agent_bin());
    cmd.env_clear().args([
        "check",
        "--credentials-port",
        &a.addr.port().to_string(),
        "--wait",
        "5s",
    ]);
    let out = rolebridge_e2e::support::run_with_timeout(cmd, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oversized_heads_and_bodies_are_refused() {
    let a = start();
    // A 20 KB header never fits the 8 KiB buffer: refused, connection closed.
    let mut s = TcpStream::connect(a.addr).unwrap();
    let big = format!(
        "GET /v1/credentials/docs HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(big.as_bytes());
    let got = closed_within(&mut s, Duration::from_secs(3)).expect("closed");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    // A body is never read: 400 and the connection closed.
    let mut s = TcpStream::connect(a.addr).unwrap();
    s.write_all(
        format!(
            "GET /v1/credentials/docs HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 1000000\r\n\r\nabc",
            a.token
        )
        .as_bytes(),
    )
    .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(3)).expect("closed after a body");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!text.contains("AccessKeyId"), "{text}");
    // Other methods are refused.
    let mut s = TcpStream::connect(a.addr).unwrap();
    s.write_all(b"DELETE /v1/credentials/docs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(3)).expect("closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 405"));
    still_serves(&a);
}
