//! A minimal STS that denies chosen roles: the fault peer for "hop N is denied" tests (moto
//! grants every AssumeRole). `AssumeRoleWithWebIdentity` and `AssumeRole` into any other role
//! succeed with made-up credentials (lasting an hour, or as [`StsStub::start_with`] says, so
//! that tests can watch refreshes); either action into a denied role answers STS's
//! `AccessDenied` error document with a realistic message. Every request's form parameters
//! (the `WebIdentityToken` included) are recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::metadata_emulator::query_params;

struct State {
    denied: Vec<String>,
    requests: Vec<HashMap<String, String>>,
    lifetime: Duration,
}

/// The stub, serving on a background thread until dropped.
pub struct StsStub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The message real STS gives when a trust policy does not admit the caller.
pub fn denial_message(caller: &str, role_arn: &str) -> String {
    format!("User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
}

impl StsStub {
    pub fn start(denied: &[&str]) -> StsStub {
        StsStub::start_with(denied, Duration::from_secs(3600))
    }

    /// Issued credentials expire `lifetime` after each request.
    pub fn start_with(denied: &[&str], lifetime: Duration) -> StsStub {
        let state = Arc::new(Mutex::new(State {
            denied: denied.iter().map(|s| s.to_string()).collect(),
            requests: Vec::new(),
            lifetime,
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serve_state = state.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = serve(listener, serve_state) => {}
                    _ = stopped => {}
                }
            });
        });
        StsStub {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The value for `AWS_ENDPOINT_URL_STS`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Form parameters of every request so far.
    pub fn requests(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for StsStub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn xml(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn expiration(lifetime: Duration) -> String {
    let t = SystemTime::now() + lifetime;
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(xml(StatusCode::BAD_REQUEST, String::new())),
    };
    let params: HashMap<String, String> = query_params(Some(&String::from_utf8_lossy(&body)))
        .into_iter()
        .collect();
    let action = params.get("Action").cloned().unwrap_or_default();
    let role = params.get("RoleArn").cloned().unwrap_or_default();
    let session = params.get("RoleSessionName").cloned().unwrap_or_default();
    let (denied, lifetime) = {
        let mut st = state.lock().unwrap();
        st.requests.push(params);
        (st.denied.contains(&role), st.lifetime)
    };
    if denied {
        let message = match action.as_str() {
            // What STS says when a trust policy does not admit the web identity token.
            "AssumeRoleWithWebIdentity" => {
                "Not authorized to perform sts:AssumeRoleWithWebIdentity".to_string()
            }
            _ => denial_message(
                &format!("arn:aws:sts::111111111111:assumed-role/ci-identity/{session}"),
                &role,
            ),
        };
        return Ok(xml(
            StatusCode::FORBIDDEN,
            format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
                 <Code>AccessDenied</Code><Message>{message}</Message></Error><RequestId>stub-1</RequestId></ErrorResponse>"
            ),
        ));
    }
    let (tag, account) = match action.as_str() {
        "AssumeRoleWithWebIdentity" => ("AssumeRoleWithWebIdentity", "111111111111"),
        "AssumeRole" => ("AssumeRole", "222222222222"),
        _ => {
            return Ok(xml(
                StatusCode::BAD_REQUEST,
                format!("unsupported action {action:?}"),
            ));
        }
    };
    let role_name = role.rsplit('/').next().unwrap_or("role");
    Ok(xml(
        StatusCode::OK,
        format!(
            "<{tag}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{tag}Result>\
             <Credentials><AccessKeyId>ASIASTUBSTUBSTUB</AccessKeyId><SecretAccessKey>stub-secret</SecretAccessKey>\
             <SessionToken>stub-token</SessionToken><Expiration>{}</Expiration></Credentials>\
             <AssumedRoleUser><AssumedRoleId>AROASTUB:{session}</AssumedRoleId>\
             <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn></AssumedRoleUser>\
             </{tag}Result><ResponseMetadata><RequestId>stub-2</RequestId></ResponseMetadata></{tag}Response>",
            expiration(lifetime)
        ),
    ))
}
