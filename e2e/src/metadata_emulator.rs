//! An emulator of the GKE metadata server's identity endpoint, for tests and the local demo.
//!
//! It serves `GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=A`
//! (plus `.../email`, `.../project/project-id` and `/`) like the real server: the request must
//! carry `Metadata-Flavor: Google`, the answer is a bare RS256 JWT signed with a fixed test key
//! and carrying Google's claims (`iss`, `aud`, `azp`, `sub`, `iat`, `exp`, and with
//! `format=full` also `email` and `email_verified`, as Google documents the full format).
//!
//! It plays one of three metadata servers ([`Persona`]): the GKE metadata server for a pod
//! whose Kubernetes service account is bound to a Google service account (the default); the
//! Compute Engine metadata server of a node, which is what a `hostNetwork: true` pod or a pod
//! on a node pool without `GKE_METADATA` reaches (tokens for the node's account, with Compute
//! Engine's `google.compute_engine` claim in full format); and the GKE metadata server for a
//! service account without `iam.gke.io/gcp-service-account` (identity answers 404 with GKE's
//! message).
//!
//! Tests steer it through [`Emulator`] (persona, token lifetime, latency, a persistent fault, a
//! queue of one-shot faults); the `gke-metadata-emulator` binary exposes the same knobs as flags
//! and, at run time, as `POST /emulator/config?persona=..&fault=..&lifetime=..&latency=..`.
//! `GET /emulator/stats` and `GET /emulator/jwks` report counters and the public key.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const KEY_PEM: &str = include_str!("test-signing-key.pem");
pub const KEY_ID: &str = "rolebridge-emulator-test-key";
pub const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

/// What the identity endpoint does with the next request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Answer with this HTTP status and a short text body.
    Status(u16),
    /// Never answer (the client's timeout must fire).
    Hang,
    /// Answer 200 with a body that is not a JWT.
    Garbage,
    /// Answer 200 with a well-signed token for another audience.
    WrongAudience,
    /// Answer 200 with a well-signed token that expired an hour ago.
    Expired,
    /// Close the connection without answering.
    Close,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Ok(match s {
            "" | "none" | "ok" => Fault::None,
            "hang" | "timeout" => Fault::Hang,
            "garbage" => Fault::Garbage,
            "wrong-aud" | "wrong-audience" => Fault::WrongAudience,
            "expired" => Fault::Expired,
            "close" | "reset" => Fault::Close,
            other => {
                let code = other.strip_prefix("status:").unwrap_or(other);
                match code.parse::<u16>() {
                    Ok(c) if (100..600).contains(&c) => Fault::Status(c),
                    _ => {
                        return Err(format!(
                            "unknown fault {s:?} (none, <status> e.g. 500, hang, garbage, wrong-aud, expired, close)"
                        ));
                    }
                }
            }
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::Status(c) => write!(f, "{c}"),
            Fault::Hang => f.write_str("hang"),
            Fault::Garbage => f.write_str("garbage"),
            Fault::WrongAudience => f.write_str("wrong-aud"),
            Fault::Expired => f.write_str("expired"),
            Fault::Close => f.write_str("close"),
        }
    }
}

/// Which metadata server the emulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Persona {
    /// The GKE metadata server for a pod bound to [`Config::email`].
    #[default]
    Gke,
    /// A node's Compute Engine metadata server: tokens are [`Config::node_email`]'s.
    #[value(alias = "gce-node")]
    ComputeEngineNode,
    /// The GKE metadata server for [`Config::kubernetes_service_account`], which names no
    /// Google service account: identity answers 404 with GKE's message.
    GkeUnannotated,
}

impl FromStr for Persona {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Persona as clap::ValueEnum>::from_str(s.trim(), false).map_err(|_| {
            format!("unknown persona {s:?} (gke, compute-engine-node, gke-unannotated)")
        })
    }
}

impl fmt::Display for Persona {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

/// The GKE metadata server's answer (404) to an identity request from a pod whose Kubernetes
/// service account `ns/name` has no `iam.gke.io/gcp-service-account` annotation. The text is
/// the one the open-source GKE metadata server emulator (matheuscscp/gke-metadata-server)
/// reproduces from GKE; rolebridge matches only its "is not annotated with a target Google
/// service account" phrase.
pub fn gke_not_annotated_message(service_account: &str) -> String {
    format!(
        "Your Kubernetes service account ({service_account}) is not annotated with a target \
         Google service account, which is a requirement for retrieving Identity Tokens using \
         Workload Identity.\nPlease add the iam.gke.io/gcp-service-account=[GSA_NAME]@[PROJECT_ID] \
         annotation to your Kubernetes service account.\nRefer to \
         https://cloud.google.com/kubernetes-engine/docs/how-to/workload-identity\n"
    )
}

/// Settings of an emulator; all but the identity can be changed while it runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub lifetime: Duration,
    pub latency: Duration,
    /// Audiences the server will mint tokens for; empty means any (as the real server).
    pub allowed_audiences: Vec<String>,
    pub email: String,
    /// The Google service account's unique ID: the token's `azp` and `sub`.
    pub unique_id: String,
    pub project_id: String,
    pub fault: Fault,
    /// Hand out the same token for an audience while more than half its lifetime is left, as
    /// a caching metadata server does (and as the benchmark uses to keep signing out of the
    /// measured path).
    pub cache_tokens: bool,
    /// `instance/attributes/cluster-name`, as on a GKE node; None answers 404 (not GKE).
    pub cluster_name: Option<String>,
    /// Which metadata server this is.
    pub persona: Persona,
    /// [`Persona::ComputeEngineNode`]: the node's service account (Compute Engine's default
    /// one, `PROJECT_NUMBER-compute@developer.gserviceaccount.com`) and its unique ID.
    pub node_email: String,
    pub node_unique_id: String,
    /// [`Persona::GkeUnannotated`]: the pod's Kubernetes service account, `NAMESPACE/NAME`.
    pub kubernetes_service_account: String,
}

/// The node's account in [`Persona::ComputeEngineNode`] by default.
pub const NODE_EMAIL: &str = "123456789-compute@developer.gserviceaccount.com";

impl Default for Config {
    fn default() -> Self {
        Config {
            lifetime: Duration::from_secs(3600),
            latency: Duration::ZERO,
            allowed_audiences: Vec::new(),
            email: "app@rolebridge-test.iam.gserviceaccount.com".into(),
            unique_id: "112233445566778899001".into(),
            project_id: "rolebridge-test".into(),
            fault: Fault::None,
            cache_tokens: false,
            cluster_name: None,
            persona: Persona::Gke,
            node_email: NODE_EMAIL.into(),
            node_unique_id: "109876543210987654321".into(),
            kubernetes_service_account: "default/default".into(),
        }
    }
}

impl Config {
    /// The account identity tokens are for: the pod's Google service account, or the node's.
    fn account(&self) -> (&str, &str) {
        match self.persona {
            Persona::ComputeEngineNode => (&self.node_email, &self.node_unique_id),
            _ => (&self.email, &self.unique_id),
        }
    }
}

/// Counters, for tests that assert how often the agent asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub identity_requests: u64,
    pub tokens_issued: u64,
}

struct State {
    config: Config,
    one_shot: VecDeque<Fault>,
    stats: Stats,
    /// audience -> (token, iat, exp), when `cache_tokens` is on.
    cache: std::collections::HashMap<String, (String, u64, u64)>,
}

struct Shared {
    state: Mutex<State>,
    key: RsaKeyPair,
    rng: SystemRandom,
}

fn signing_key() -> RsaKeyPair {
    let b64: String = KEY_PEM
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(b64).expect("test key PEM is valid base64");
    RsaKeyPair::from_pkcs8(&der).expect("test key is a valid PKCS#8 RSA key")
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    fn new(config: Config) -> Self {
        Shared {
            state: Mutex::new(State {
                config,
                one_shot: VecDeque::new(),
                stats: Stats::default(),
                cache: Default::default(),
            }),
            key: signing_key(),
            rng: SystemRandom::new(),
        }
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "RS256", "kid": KEY_ID, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing works");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn jwks(&self) -> serde_json::Value {
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(self.key.public());
        serde_json::json!({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KEY_ID,
            "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e),
        }]})
    }

    /// A token for `aud` issued now, or as `fault` dictates; `full`: the full format (with the
    /// account's email, and on a Compute Engine node the instance's details).
    fn token(&self, cfg: &Config, aud: &str, fault: &Fault, full: bool) -> String {
        let now = now_s();
        let (aud, iat, exp) = match fault {
            Fault::WrongAudience => (
                "https://wrong.audience.example",
                now,
                now + cfg.lifetime.as_secs(),
            ),
            Fault::Expired => (aud, now - 7200, now - 3600),
            _ => (aud, now, now + cfg.lifetime.as_secs().max(1)),
        };
        let (email, unique_id) = cfg.account();
        let mut claims = serde_json::json!({
            "iss": "https://accounts.google.com",
            "aud": aud,
            "azp": unique_id,
            "sub": unique_id,
            "iat": iat,
            "exp": exp,
        });
        if full {
            claims["email"] = email.into();
            claims["email_verified"] = true.into();
        }
        if full && cfg.persona == Persona::ComputeEngineNode {
            claims["google"] = serde_json::json!({"compute_engine": {
                "project_id": cfg.project_id,
                "project_number": 123456789,
                "zone": "europe-west1-b",
                "instance_id": "4567890123456789012",
                "instance_name": "gke-cluster-default-pool-0a1b2c3d-x1y2",
                "instance_creation_timestamp": now - 86_400,
            }});
        }
        self.sign(&claims)
    }
}

/// A running emulator. Dropping it stops the server and closes every connection, so the
/// port refuses connections again ("metadata server down").
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Emulator {
    /// Start on `listen` (port 0 for any free port) on a background thread with its own runtime.
    pub fn start(listen: SocketAddr, config: Config) -> std::io::Result<Emulator> {
        let shared = Arc::new(Shared::new(config));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let serve_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gke-metadata-emulator-{}", addr.port()))
            .spawn(move || {
                rt.block_on(async move {
                    tokio::select! {
                        _ = serve(listener, serve_shared) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels the connection tasks, hanging requests included.
                drop(rt);
            })?;
        Ok(Emulator {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Start with `config` on a free loopback port (tests).
    pub fn local(config: Config) -> Emulator {
        Emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .expect("the emulator starts on a free loopback port")
    }

    /// [`Emulator::local`] playing `persona`, otherwise as configured by default.
    pub fn playing(persona: Persona) -> Emulator {
        Emulator::local(Config {
            persona,
            ..Config::default()
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.shared.state.lock().unwrap())
    }

    pub fn set_fault(&self, fault: Fault) {
        self.with(|s| s.config.fault = fault);
    }

    /// Faults applied to the next requests, one each, before the persistent fault.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.with(|s| s.one_shot.extend(faults));
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        self.with(|s| s.config.lifetime = lifetime);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.config.latency = latency);
    }

    pub fn stats(&self) -> Stats {
        self.with(|s| s.stats)
    }

    pub fn config(&self) -> Config {
        self.with(|s| s.config.clone())
    }

    /// Which metadata server to play from now on.
    pub fn set_persona(&self, persona: Persona) {
        self.with(|s| s.config.persona = persona);
    }

    /// Mint a full-format token directly (for tests that need one without HTTP).
    pub fn mint(&self, audience: &str, fault: &Fault) -> String {
        let cfg = self.config();
        self.shared.token(&cfg, audience, fault, true)
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.shared.jwks()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve on the current runtime until the future is dropped (used by the binary).
pub async fn serve_forever(listener: TcpListener, config: Config) {
    serve(listener, Arc::new(Shared::new(config))).await
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("Metadata-Flavor", "Google")
        .header("Content-Type", "application/text")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json(value: &impl serde::Serialize) -> Resp {
    Response::builder()
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(value).unwrap_or_default(),
        )))
        .expect("static response parts are valid")
}

/// Query parameters, percent-decoded.
pub fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Used as an error to make hyper drop the connection without a response.
#[derive(Debug)]
struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fault injection: closing connection")
    }
}

impl std::error::Error for CloseConnection {}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, CloseConnection> {
    let path = req.uri().path().to_string();
    let params = query_params(req.uri().query());
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };

    if let Some(control) = path.strip_prefix("/emulator/") {
        return Ok(emulator_control(&shared, control, param));
    }

    if path == "/" {
        return Ok(text(StatusCode::OK, "computeMetadata/\n"));
    }
    if !path.starts_with("/computeMetadata/") {
        return Ok(text(StatusCode::NOT_FOUND, "Not Found\n"));
    }
    let flavor_ok = req
        .headers()
        .get("Metadata-Flavor")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "Google");
    if !flavor_ok {
        return Ok(text(
            StatusCode::FORBIDDEN,
            "Missing required header \"Metadata-Flavor\": \"Google\"\n",
        ));
    }

    let (cfg, fault) = {
        let mut st = shared.state.lock().unwrap();
        if path == IDENTITY_PATH {
            st.stats.identity_requests += 1;
            let fault = st
                .one_shot
                .pop_front()
                .unwrap_or_else(|| st.config.fault.clone());
            (st.config.clone(), Some(fault))
        } else {
            (st.config.clone(), None)
        }
    };
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }

    match path.as_str() {
        IDENTITY_PATH => identity(&shared, &cfg, fault.unwrap_or_default(), param).await,
        "/computeMetadata/v1/instance/service-accounts/default/email" => {
            Ok(text(StatusCode::OK, email_of(&cfg)))
        }
        "/computeMetadata/v1/project/project-id" => Ok(text(StatusCode::OK, cfg.project_id)),
        "/computeMetadata/v1/instance/attributes/cluster-name" => match cfg.cluster_name {
            Some(name) => Ok(text(StatusCode::OK, name)),
            None => Ok(text(StatusCode::NOT_FOUND, "Not Found\n")),
        },
        _ => Ok(text(StatusCode::NOT_FOUND, "Not Found\n")),
    }
}

/// `/emulator/{stats,jwks,config}`: the test's controls.
fn emulator_control(
    shared: &Shared,
    control: &str,
    param: impl Fn(&str) -> Option<String>,
) -> Resp {
    match control {
        "stats" => json(&shared.state.lock().unwrap().stats),
        "jwks" => json(&shared.jwks()),
        "config" => {
            let mut st = shared.state.lock().unwrap();
            if let Some(f) = param("fault") {
                match f.parse() {
                    Ok(f) => st.config.fault = f,
                    Err(e) => return text(StatusCode::BAD_REQUEST, e),
                }
            }
            if let Some(p) = param("persona") {
                match p.parse() {
                    Ok(p) => st.config.persona = p,
                    Err(e) => return text(StatusCode::BAD_REQUEST, e),
                }
            }
            if let Some(l) = param("lifetime").and_then(|v| v.parse::<u64>().ok()) {
                st.config.lifetime = Duration::from_secs(l);
            }
            if let Some(l) = param("latency_ms").and_then(|v| v.parse::<u64>().ok()) {
                st.config.latency = Duration::from_millis(l);
            }
            let c = &st.config;
            json(&serde_json::json!({
                "persona": c.persona.to_string(),
                "fault": c.fault.to_string(),
                "lifetime": c.lifetime.as_secs(),
                "latency_ms": c.latency.as_millis() as u64,
            }))
        }
        _ => text(StatusCode::NOT_FOUND, "unknown emulator control path\n"),
    }
}

/// `…/default/email`: the pod's Google service account, the node's, or (GKE, not annotated)
/// the workload identity pool.
fn email_of(cfg: &Config) -> String {
    match cfg.persona {
        Persona::GkeUnannotated => format!("{}.svc.id.goog", cfg.project_id),
        _ => cfg.account().0.to_owned(),
    }
}

/// The identity endpoint as the persona and `fault` dictate.
async fn identity(
    shared: &Shared,
    cfg: &Config,
    fault: Fault,
    param: impl Fn(&str) -> Option<String>,
) -> Result<Resp, CloseConnection> {
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(text(status, format!("emulated failure {code}\n")));
        }
        Fault::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending never resolves");
        }
        Fault::Garbage => {
            return Ok(text(
                StatusCode::OK,
                "<html><body>captive portal</body></html>",
            ));
        }
        Fault::Close => return Err(CloseConnection),
        Fault::None | Fault::WrongAudience | Fault::Expired => {}
    }
    let Some(aud) = param("audience").filter(|a| !a.is_empty()) else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "non-empty audience parameter required\n",
        ));
    };
    if cfg.persona == Persona::GkeUnannotated {
        return Ok(text(
            StatusCode::NOT_FOUND,
            gke_not_annotated_message(&cfg.kubernetes_service_account),
        ));
    }
    if !cfg.allowed_audiences.is_empty() && !cfg.allowed_audiences.contains(&aud) {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            format!("audience {aud:?} is not allowed\n"),
        ));
    }
    let full = param("format").as_deref() == Some("full");
    if cfg.cache_tokens && fault == Fault::None {
        let now = now_s();
        let key = format!("{aud}|{full}|{}", cfg.persona);
        let mut st = shared.state.lock().unwrap();
        if let Some((token, iat, exp)) = st.cache.get(&key)
            && (exp.saturating_sub(now)) * 2 > exp - iat
        {
            return Ok(text(StatusCode::OK, token.clone()));
        }
        let token = shared.token(cfg, &aud, &fault, full);
        let lifetime = cfg.lifetime.as_secs().max(1);
        st.cache.insert(key, (token.clone(), now, now + lifetime));
        st.stats.tokens_issued += 1;
        return Ok(text(StatusCode::OK, token));
    }
    let token = shared.token(cfg, &aud, &fault, full);
    shared.state.lock().unwrap().stats.tokens_issued += 1;
    Ok(text(StatusCode::OK, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print() {
        for s in [
            "none",
            "500",
            "hang",
            "garbage",
            "wrong-aud",
            "expired",
            "close",
        ] {
            assert_eq!(s.parse::<Fault>().unwrap().to_string(), s);
        }
        assert_eq!("status:404".parse::<Fault>().unwrap(), Fault::Status(404));
        assert!("999".parse::<Fault>().is_err());
        assert!("bogus".parse::<Fault>().is_err());
    }

    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn personas_parse_print_and_answer_for_their_account_in_full_format_only() {
        for p in ["gke", "compute-engine-node", "gke-unannotated"] {
            assert_eq!(p.parse::<Persona>().unwrap().to_string(), p);
        }
        assert!("gce".parse::<Persona>().is_err());
        assert_eq!("gce-node".parse(), Ok(Persona::ComputeEngineNode));
        let shared = Shared::new(Config::default());
        let gke = Config::default();
        let node = Config {
            persona: Persona::ComputeEngineNode,
            ..Config::default()
        };
        let standard = payload(&shared.token(&gke, "a", &Fault::None, false));
        assert!(standard.get("email").is_none(), "{standard}");
        let full = payload(&shared.token(&gke, "a", &Fault::None, true));
        assert_eq!(full["email"], gke.email);
        assert_eq!(full["email_verified"], true);
        assert!(full.get("google").is_none());
        let full = payload(&shared.token(&node, "a", &Fault::None, true));
        assert_eq!(full["email"], NODE_EMAIL);
        assert_eq!(full["azp"], node.node_unique_id);
        assert!(full["google"]["compute_engine"]["instance_name"].is_string());
        assert_eq!(email_of(&node), NODE_EMAIL);
        let unannotated = Config {
            persona: Persona::GkeUnannotated,
            ..Config::default()
        };
        assert_eq!(email_of(&unannotated), "rolebridge-test.svc.id.goog");
        assert!(
            gke_not_annotated_message("ci/publisher")
                .contains("(ci/publisher) is not annotated with a target Google service account")
        );
    }

    #[test]
    fn query_decoding() {
        let p = query_params(Some(
            "audience=https%3A%2F%2Fa%2Fb%3Fc%3Dd&format=full&x=%zz",
        ));
        assert_eq!(p[0], ("audience".into(), "https://a/b?c=d".into()));
        assert_eq!(p[1], ("format".into(), "full".into()));
        assert_eq!(p[2], ("x".into(), "%zz".into()));
        assert_eq!(query_params(Some("a=%4")), vec![("a".into(), "%4".into())]);
    }

    #[test]
    fn tokens_are_signed_and_verifiable() {
        let shared = Shared::new(Config::default());
        let cfg = Config::default();
        let token = shared.token(&cfg, "sts.amazonaws.com", &Fault::None, true);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(shared.key.public());
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        c.verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &sig,
        )
        .expect("signature verifies with the JWKS key");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "sts.amazonaws.com");
        assert_eq!(claims["azp"], cfg.unique_id);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            3600
        );
    }
}
