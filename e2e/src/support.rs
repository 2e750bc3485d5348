//! Helpers shared by the end-to-end tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The `rolebridge-agent` binary under test: `ROLEBRIDGE_AGENT_BIN`, else the one built next
/// to this test executable (`cargo build -p rolebridge-agent` must have run first: cargo does
/// not build another package's binaries for a test).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROLEBRIDGE_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/rolebridge-agent
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("rolebridge-agent");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p rolebridge-agent` before these tests (or set ROLEBRIDGE_AGENT_BIN)",
        bin.display()
    );
    bin
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Poll `f` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Decoded payload of a JWT (no verification), or None if it is not one.
pub fn claims(token: &str) -> Option<serde_json::Value> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).ok()?).ok()
}

/// A command line for the agent with a clean environment (no stray ROLEBRIDGE_* or GCE_*).
pub fn agent_command(metadata_host: &str) -> Command {
    let mut c = Command::new(agent_bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GCE_METADATA_HOST", metadata_host)
        .stdin(Stdio::null());
    c
}

/// Spawns `rolebridge-agent run [extra…] --token PATH=sts.amazonaws.com` against the metadata
/// server at `metadata_host`, logging into `dir`: the sidecar as the webhook injects it.
pub fn spawn_run(metadata_host: &str, dir: &Path, token: &Path, extra: &[&str]) -> AgentProcess {
    let mut cmd = agent_command(metadata_host);
    cmd.arg("run")
        .args(extra)
        .args(["--token", &format!("{}=sts.amazonaws.com", token.display())]);
    AgentProcess::spawn(cmd, dir)
}

/// A running agent process, killed on drop.
pub struct AgentProcess {
    pub child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Spawn `cmd` with stderr/stdout to a log file in `log_dir`.
    pub fn spawn(mut cmd: Command, log_dir: &Path) -> AgentProcess {
        let log = log_dir.join(format!("agent-{}.log", now_ms()));
        let f = std::fs::File::create(&log).unwrap();
        cmd.stdout(f.try_clone().unwrap()).stderr(f);
        AgentProcess {
            child: cmd.spawn().expect("spawn agent"),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait up to `timeout` for exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 GET to `addr` (no keep-alive); returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Run a command to completion with a timeout; kills it on timeout.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let end = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// What a [`FileWatcher`] saw.
#[derive(Debug, Default, Clone)]
pub struct WatchReport {
    pub reads: u64,
    /// Reads that found a file.
    pub present: u64,
    /// Invariant violations, described.
    pub violations: Vec<String>,
    /// Distinct tokens seen, in order, with their exp.
    pub tokens: Vec<(String, i64)>,
    /// (time of observation in ms, exp of the token that disappeared).
    pub removals: Vec<(i64, i64)>,
}

/// Reads a token file every few milliseconds on a thread and checks, at every read, that the
/// file is absent or holds a complete JWT for `audience` that has not expired, and that a
/// token never disappears before its expiry.
pub struct FileWatcher {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<WatchReport>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Grace for the agent to notice expiry and remove the file (it wakes up at `exp`).
pub const EXPIRY_GRACE_MS: i64 = 1500;

impl FileWatcher {
    pub fn start(path: &Path, audience: &str) -> FileWatcher {
        let (path, audience) = (path.to_path_buf(), audience.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(WatchReport::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let mut last: Option<(String, i64)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let read = std::fs::read_to_string(&path);
                    let now = now_ms();
                    let mut r = report.lock().unwrap();
                    r.reads += 1;
                    match read {
                        Ok(token) => {
                            r.present += 1;
                            match claims(&token) {
                                None => r
                                    .violations
                                    .push(format!("unparseable content ({} bytes)", token.len())),
                                Some(c) => {
                                    let exp = c["exp"].as_i64().unwrap_or(0);
                                    if c["aud"] != serde_json::Value::String(audience.clone()) {
                                        r.violations.push(format!("wrong aud {}", c["aud"]));
                                    }
                                    if exp * 1000 + EXPIRY_GRACE_MS <= now {
                                        r.violations.push(format!(
                                            "expired token on disk: exp {exp}, now {now}"
                                        ));
                                    }
                                    if last.as_ref().map(|(t, _)| t != &token).unwrap_or(true) {
                                        r.tokens.push((token.clone(), exp));
                                        last = Some((token, exp));
                                    }
                                }
                            }
                        }
                        Err(_) => {
                            if let Some((_, exp)) = last.take() {
                                r.removals.push((now, exp));
                                if now < exp * 1000 {
                                    r.violations.push(format!(
                                        "valid token removed at {now}, before exp {exp}"
                                    ));
                                }
                            }
                        }
                    }
                    drop(r);
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        FileWatcher {
            stop,
            report,
            thread: Some(thread),
        }
    }

    pub fn report(&self) -> WatchReport {
        self.report.lock().unwrap().clone()
    }

    /// Stop watching and return the report; panics (test failure) on any violation.
    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let r = self.report();
        assert!(
            r.violations.is_empty(),
            "token file invariant violated: {:#?}",
            r.violations
        );
        assert!(r.reads > 0);
        r
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real peers for the SDK tests.

/// Python with boto3, moto (server) and the AWS CLI, as found on PATH.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Absolute interpreter path (resolved through pyenv/venv shims, so it works with a clean
    /// environment and a temporary HOME).
    pub python: PathBuf,
    /// Absolute path of the `aws` CLI entry point.
    pub aws: PathBuf,
}

const PROBE: &str = r#"
import os, shutil, sys, sysconfig
import boto3, moto, awscli, flask  # noqa: F401  (moto's server needs flask)
cands = [shutil.which("aws"), os.path.join(sysconfig.get_path("scripts"), "aws")]
print(sys.executable)
print(next((c for c in cands if c and os.path.exists(c)), ""))
"#;

impl Peers {
    fn discover() -> Result<Peers, String> {
        let python = std::env::var("ROLEBRIDGE_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(&python)
            .args(["-c", PROBE])
            .output()
            .map_err(|e| format!("{python} not runnable: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{python} lacks boto3 / moto[server] / awscli: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let python = PathBuf::from(lines.next().unwrap_or_default());
        let aws = PathBuf::from(lines.next().unwrap_or_default());
        if !aws.exists() {
            return Err(format!("aws CLI not found at {}", aws.display()));
        }
        Ok(Peers { python, aws })
    }

    /// The peers. A missing peer fails the test (a skipped test would pass silently: cargo
    /// hides a passing test's output), unless `ROLEBRIDGE_SKIP_MISSING_PEERS=1` asks for a
    /// skip, which returns None after printing why.
    pub fn get(test: &str) -> Option<Peers> {
        match Peers::discover() {
            Ok(p) => Some(p),
            Err(why) => {
                if !skip_missing_peers() {
                    panic!(
                        "{test}: peer missing: {why}; run e2e/sdk/install-peers.sh (scripts/test.sh does), or set ROLEBRIDGE_SKIP_MISSING_PEERS=1 to skip"
                    );
                }
                eprintln!("SKIPPED {test}: {why} (install with e2e/sdk/install-peers.sh)");
                None
            }
        }
    }
}

/// moto's server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start(peers: &Peers) -> Moto {
        Moto::start_with(peers, &[])
    }

    /// moto with its request recorder on (`/moto-api/recorder/…`), recording into `file`:
    /// what the agent sent STS can then be read back from moto's own record.
    pub fn start_recording(peers: &Peers, file: &Path) -> Moto {
        let file = file.display().to_string();
        Moto::start_with(
            peers,
            &[
                ("MOTO_ENABLE_RECORDING", "true"),
                ("MOTO_RECORDER_FILEPATH", file.as_str()),
            ],
        )
    }

    /// Form parameters of every recorded STS request of `actions` (e.g. `AssumeRole`), in
    /// order, as moto's recorder saw them.
    pub fn recorded(&self, actions: &[&str]) -> Vec<std::collections::HashMap<String, String>> {
        let addr: SocketAddr = self.endpoint.trim_start_matches("http://").parse().unwrap();
        let (status, body) = http_get(addr, "/moto-api/recorder/download-recording", &[]);
        assert_eq!(status, 200, "moto recorder: {body}");
        body.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|entry| {
                let raw = entry["body"].as_str().unwrap_or("");
                let text = if entry["body_encoded"].as_bool() == Some(true) {
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).ok()?)
                        .ok()?
                } else {
                    raw.to_string()
                };
                let params: std::collections::HashMap<String, String> =
                    crate::metadata_emulator::query_params(Some(&text))
                        .into_iter()
                        .collect();
                actions
                    .contains(&params.get("Action")?.as_str())
                    .then_some(params)
            })
            .collect()
    }

    /// The rig's bucket and object ([`BUCKET`], [`OBJECT_KEY`], [`OBJECT_BODY`]).
    pub fn put_test_object(&self, peers: &Peers) {
        let mut c = Command::new(&peers.python);
        c.arg(sdk_file("moto_setup.py")).args([
            self.endpoint.as_str(),
            BUCKET,
            OBJECT_KEY,
            OBJECT_BODY,
        ]);
        let setup = run_with_timeout(c, Duration::from_secs(60));
        assert!(
            setup.status.success(),
            "moto setup: {}",
            String::from_utf8_lossy(&setup.stderr)
        );
    }

    fn start_with(peers: &Peers, env: &[(&str, &str)]) -> Moto {
        let addr = free_addr();
        let child = Command::new(&peers.python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto server");
        let moto = Moto {
            child,
            endpoint: format!("http://{addr}"),
        };
        assert!(
            wait_until(Duration::from_secs(30), || TcpStream::connect(addr).is_ok()),
            "moto server did not start listening on {addr}"
        );
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch HOME with empty AWS config and credentials files, so no ambient AWS credentials
/// (environment, ~/.aws, instance metadata) can stand in for the web identity flow.
pub struct CleanAwsHome {
    pub dir: tempfile::TempDir,
}

impl CleanAwsHome {
    pub fn new() -> CleanAwsHome {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty-config"), "").unwrap();
        std::fs::write(dir.path().join("empty-credentials"), "").unwrap();
        CleanAwsHome { dir }
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("empty-config")
    }

    /// `cmd` with only PATH, the clean HOME/config files, a disabled EC2 metadata lookup, and
    /// `vars`.
    pub fn command(&self, program: &Path, vars: &[(&str, &str)]) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_CONFIG_FILE", self.config_file())
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("empty-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for (k, v) in vars {
            c.env(k, v);
        }
        c
    }
}

impl CleanAwsHome {
    /// `program ARGS…` run with [`CleanAwsHome::command`]'s environment and `vars`, for at
    /// most two minutes.
    pub fn runner<'a>(
        &'a self,
        program: &'a Path,
        vars: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&[&str]) -> Output + 'a {
        move |args| {
            let mut cmd = self.command(program, vars);
            cmd.args(args);
            run_with_timeout(cmd, Duration::from_secs(120))
        }
    }
}

/// The AWS CLI (as `aws` runs it) reads the rig's object ([`BUCKET`], [`OBJECT_KEY`]) from
/// S3 and is `arn` to `sts get-caller-identity`.
pub fn aws_cli_reads_s3_as(aws: impl Fn(&[&str]) -> Output, arn: &str) {
    let object = format!("s3://{BUCKET}/{OBJECT_KEY}");
    let body = expect_success("aws s3 cp", &aws(&["s3", "cp", &object, "-"]));
    assert_eq!(body, OBJECT_BODY);
    let out = aws(&["sts", "get-caller-identity", "--output", "json"]);
    let id: serde_json::Value =
        serde_json::from_str(&expect_success("aws sts get-caller-identity", &out)).unwrap();
    assert_eq!(id["Arn"], arn);
}

impl Default for CleanAwsHome {
    fn default() -> Self {
        Self::new()
    }
}

/// Path of a file in `e2e/sdk/`.
pub fn sdk_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk").join(name)
}

pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/rolebridge-test";
pub const BUCKET: &str = "rolebridge-e2e";
pub const OBJECT_KEY: &str = "hello.txt";
pub const OBJECT_BODY: &str = "hello from S3 via a Google ID token";

/// Everything an SDK test needs: moto with a bucket and object, the metadata emulator, and the
/// agent keeping a token file fresh, exactly as in a bound pod.
pub struct WebIdentityRig {
    pub peers: Peers,
    pub moto: Moto,
    pub emulator: crate::metadata_emulator::Emulator,
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
    pub agent: AgentProcess,
    pub home: CleanAwsHome,
}

impl WebIdentityRig {
    /// None (after printing why) when the peers are missing and not required.
    pub fn start(test: &str) -> Option<WebIdentityRig> {
        let peers = Peers::get(test)?;
        let moto = Moto::start(&peers);
        moto.put_test_object(&peers);
        let emulator = crate::metadata_emulator::Emulator::start(
            "127.0.0.1:0".parse().unwrap(),
            crate::metadata_emulator::Config::default(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("sts.amazonaws.com.token");
        let agent = spawn_run(&emulator.host(), dir.path(), &token_file, &[]);
        assert!(
            wait_until(Duration::from_secs(10), || token_file.exists()),
            "agent wrote no token: {}",
            agent.log()
        );
        Some(WebIdentityRig {
            peers,
            moto,
            emulator,
            dir,
            token_file,
            agent,
            home: CleanAwsHome::new(),
        })
    }

    /// The environment the webhook injects into app containers, plus the endpoint of moto.
    pub fn pod_env(&self, session: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ROLE_ARN".into(), ROLE_ARN.into()),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
                self.token_file.display().to_string(),
            ),
            ("AWS_ROLE_SESSION_NAME".into(), session.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            // botocore (boto3, AWS CLI v1) reads only AWS_DEFAULT_REGION; the EKS pod identity
            // webhook injects both for this reason.
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), self.moto.endpoint.clone()),
        ]
    }

    /// `program` run with only the pod environment (see [`CleanAwsHome::command`]).
    pub fn pod_command(&self, program: &Path, session: &str) -> Command {
        let env = self.pod_env(session);
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.home.command(program, &vars)
    }
}

/// The assumed-role ARN moto reports for a web identity session of [`ROLE_ARN`]: it only exists
/// if moto handled an AssumeRoleWithWebIdentity for these credentials.
pub fn assumed_role_arn(session: &str) -> String {
    format!("arn:aws:sts::123456789012:assumed-role/rolebridge-test/{session}")
}

/// Assert a command succeeded, showing its output otherwise; returns stdout.
pub fn expect_success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Node.js with the AWS SDK for JavaScript v3 installed in `e2e/sdk/js` (by
/// `e2e/sdk/install-peers.sh`): the node binary. Missing, the test fails, or with
/// `ROLEBRIDGE_SKIP_MISSING_PEERS=1` this returns None after printing why it is skipped.
pub fn js_peer(test: &str) -> Option<PathBuf> {
    let modules = sdk_file("js/node_modules/@aws-sdk");
    let why = match Command::new("node").arg("--version").output() {
        Err(e) => Some(format!("node not runnable: {e}")),
        Ok(o) if !o.status.success() => Some("node --version failed".into()),
        Ok(_)
            if !modules.join("client-s3/package.json").exists()
                || !modules.join("client-sts/package.json").exists() =>
        {
            Some(format!(
                "the JS SDK v3 is not installed in {}",
                modules.display()
            ))
        }
        Ok(_) => None,
    };
    match why {
        None => {
            let out = Command::new("sh")
                .args(["-c", "command -v node"])
                .output()
                .ok()?;
            Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        }
        Some(why) => {
            if !skip_missing_peers() {
                panic!(
                    "{test}: peer missing: {why}; run e2e/sdk/install-peers.sh (scripts/test.sh does), or set ROLEBRIDGE_SKIP_MISSING_PEERS=1 to skip"
                );
            }
            eprintln!("SKIPPED {test}: {why} (install with e2e/sdk/install-peers.sh)");
            None
        }
    }
}

/// Whoever runs the tests asked for missing peers to be skipped, not failed.
fn skip_missing_peers() -> bool {
    std::env::var("ROLEBRIDGE_SKIP_MISSING_PEERS").as_deref() == Ok("1")
}

/// A JWT with `claims` and a dummy signature: for peers that do not verify signatures (moto,
/// the STS stub) and for the agent, which checks claims only (STS verifies signatures).
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"test","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.c2lnbmF0dXJl")
}

/// The GKE cluster issuer the Kubernetes token tests use.
pub const CLUSTER_ISSUER: &str = "https://container.googleapis.com/v1/projects/rolebridge-test/locations/europe-west1/clusters/e2e";

/// A service account token as the kubelet projects it for `tokenSource: Kubernetes`: the
/// cluster issuer, `system:serviceaccount:NS:SA` as subject, the audience as a one-element
/// array, valid for `lifetime_s` from now. `n` makes tokens distinct (a `jti`).
pub fn kubernetes_token(
    audience: &str,
    namespace: &str,
    sa: &str,
    lifetime_s: i64,
    n: u32,
) -> String {
    let now = now_ms() / 1000;
    unsigned_jwt(&serde_json::json!({
        "iss": CLUSTER_ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_s,
        "jti": format!("e2e-{n}"),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa}},
    }))
}

/// A projected volume as the kubelet's atomic writer keeps it: the files live in a timestamped
/// directory, `..data` links to the current one, and each file name links into `..data`. An
/// update writes a new directory and swaps `..data` with `rename(2)`, so a reader sees the old
/// token or the new one, through the same path.
pub struct ProjectedVolume {
    pub dir: PathBuf,
    generation: u32,
}

impl ProjectedVolume {
    pub fn new(dir: &Path) -> ProjectedVolume {
        std::fs::create_dir_all(dir).unwrap();
        ProjectedVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    /// The path the pod reads `name` at.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Write (or rotate) `name` with `contents`.
    pub fn write(&mut self, name: &str, contents: &str) {
        use std::os::unix::fs::symlink;
        self.generation += 1;
        let data = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        std::fs::create_dir(self.dir.join(&data)).unwrap();
        std::fs::write(self.dir.join(&data).join(name), contents).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let link = self.dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
}
