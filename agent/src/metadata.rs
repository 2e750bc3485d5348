//! Minimal client for the GKE metadata server's identity endpoint.
//!
//! One plain-HTTP/1.1 request per refresh over a fresh TCP connection (hyper's low-level client
//! connection, no pool, no TLS, no DNS by default): the metadata server is one link-local hop
//! away and is asked once per half hour, so keeping connections or a resolver around would cost
//! memory in every pod for nothing.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::jwt::{self, Claims, JwtError};
use crate::pin::{self, Pin, Refusal};

/// Where Google's client libraries find the metadata server when `GCE_METADATA_HOST` is unset.
pub const DEFAULT_METADATA_IP: &str = "169.254.169.254:80";
/// The `Host` header the GKE metadata server expects from clients using the link-local IP.
pub const DEFAULT_METADATA_HOST_HEADER: &str = "metadata.google.internal";
const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
/// An ID token is about 1 KiB; anything much larger is not one.
const MAX_BODY: usize = 64 * 1024;

/// Address and `Host` header of the metadata server: what `GCE_METADATA_HOST` names. (Not the
/// credentials endpoint, which is [`crate::endpoint`].)
#[derive(Debug, Clone)]
pub struct MetadataHost {
    /// `host:port` to connect to.
    connect: String,
    host_header: String,
}

impl MetadataHost {
    /// From the value of `GCE_METADATA_HOST` (`host[:port]`, no scheme), or the default.
    pub fn new(gce_metadata_host: Option<&str>) -> Self {
        match gce_metadata_host.map(str::trim).filter(|s| !s.is_empty()) {
            None => MetadataHost {
                connect: DEFAULT_METADATA_IP.into(),
                host_header: DEFAULT_METADATA_HOST_HEADER.into(),
            },
            Some(h) => {
                let h = h.trim_start_matches("http://").trim_end_matches('/');
                let has_port = match h.rfind(':') {
                    // `[::1]` has colons but no port; `[::1]:8080` and `host:80` have one.
                    Some(i) => {
                        !h[i..].contains(']') && (h.starts_with('[') || h.matches(':').count() == 1)
                    }
                    None => false,
                };
                MetadataHost {
                    connect: if has_port {
                        h.to_string()
                    } else {
                        format!("{h}:80")
                    },
                    host_header: h.to_string(),
                }
            }
        }
    }

    pub fn display(&self) -> String {
        if self.connect == DEFAULT_METADATA_IP {
            format!("{} ({})", self.host_header, self.connect)
        } else {
            self.connect.clone()
        }
    }

    pub fn identity_path(audience: &str) -> String {
        format!(
            "{IDENTITY_PATH}?audience={}&format=full",
            percent_encode(audience)
        )
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why fetching a token failed. Messages carry a hint in GKE terms; none carries a token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "metadata server {endpoint} unreachable ({source}); is Workload Identity enabled on the \
         cluster and the node pool (workload metadata mode GKE_METADATA)?"
    )]
    Unreachable {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata server {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("HTTP exchange with metadata server {endpoint} failed: {reason}")]
    Http { endpoint: String, reason: String },
    #[error(
        "metadata server answered {status} ({body}); is the Kubernetes service account bound to a \
         Google service account (annotation iam.gke.io/gcp-service-account, and \
         roles/iam.workloadIdentityUser granted to the KSA on that GSA)?"
    )]
    NotBound { status: u16, body: String },
    #[error("metadata server answered {status} ({body})")]
    Status { status: u16, body: String },
    #[error("metadata server returned an unusable token: {0}")]
    InvalidToken(#[from] JwtError),
    /// Not an outage: the answer is (or would be) for the wrong account, or for none. (Not a
    /// `source`: the message already says it all, and `main` prints the chain of sources.)
    #[error("refused: {0}")]
    Refused(Refusal),
}

impl From<Refusal> for FetchError {
    fn from(r: Refusal) -> Self {
        FetchError::Refused(r)
    }
}

impl FetchError {
    /// The refusal, when this is one (permanent for the pod: callers back off long and say
    /// what to fix instead of retrying as through an outage).
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            FetchError::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// Map a non-200 answer; keeps a short, printable excerpt of the body for the operator.
    /// `service_account` (`NS/NAME`) names the pod's account in the advice when GKE's answer
    /// does not.
    pub fn from_status(status: u16, body: &[u8], service_account: Option<&str>) -> Self {
        if let Some(r) = pin::not_annotated(status, &String::from_utf8_lossy(body), service_account)
        {
            return FetchError::Refused(r);
        }
        let mut excerpt: String = String::from_utf8_lossy(body)
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        if excerpt.is_empty() {
            excerpt = "empty body".into();
        }
        match status {
            403 | 404 => FetchError::NotBound {
                status,
                body: excerpt,
            },
            _ => FetchError::Status {
                status,
                body: excerpt,
            },
        }
    }
}

/// A token that passed validation.
#[derive(Clone)]
pub struct Token {
    pub jwt: String,
    pub claims: Claims,
}

/// The claims only: the token itself is a credential.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("jwt", &format_args!("<{} bytes redacted>", self.jwt.len()))
            .field("claims", &self.claims)
            .finish()
    }
}

/// Fetch and validate an ID token for `audience`, for the account `pin` names (refused
/// otherwise, and without asking when the pod has no Google service account). `now` supplies
/// Unix seconds for validation.
pub async fn fetch_token(
    endpoint: &MetadataHost,
    audience: &str,
    pin: &Pin,
    timeout: Duration,
    now: impl Fn() -> i64,
) -> Result<Token, FetchError> {
    pin.before_fetch()?;
    let (status, body) = match tokio::time::timeout(
        timeout,
        get(endpoint, &MetadataHost::identity_path(audience)),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => {
            return Err(FetchError::Timeout {
                endpoint: endpoint.display(),
                timeout,
            });
        }
    };
    if status != StatusCode::OK {
        return Err(FetchError::from_status(
            status.as_u16(),
            &body,
            pin.service_account.as_deref(),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| JwtError::Shape(0))?
        .trim();
    let claims = jwt::validate(text, audience, now())?;
    pin.judge(&claims)?;
    Ok(Token {
        jwt: text.to_string(),
        claims,
    })
}

/// `GET path` with `Metadata-Flavor: Google`; returns the status and the (bounded) body.
pub async fn get(endpoint: &MetadataHost, path: &str) -> Result<(StatusCode, Bytes), FetchError> {
    let http_err = |e: &dyn std::fmt::Display| FetchError::Http {
        endpoint: endpoint.display(),
        reason: e.to_string(),
    };
    let stream = match endpoint.connect.parse::<SocketAddr>() {
        Ok(addr) => TcpStream::connect(addr).await,
        // A name (e.g. `metadata.google.internal` set explicitly) needs the resolver.
        Err(_) => TcpStream::connect(endpoint.connect.as_str()).await,
    }
    .map_err(|source| FetchError::Unreachable {
        endpoint: endpoint.display(),
        source,
    })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_err(&e))?;
    let request = Request::get(path)
        .header(hyper::header::HOST, &endpoint.host_header)
        .header("Metadata-Flavor", "Google")
        .header(
            hyper::header::USER_AGENT,
            concat!("rolebridge-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_err(&e))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_err(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http_err(&*e))?
            .to_bytes();
        Ok::<_, FetchError>((status, body))
    };
    // Drive the connection and the exchange together on this task: no spawned task to leak.
    tokio::pin!(conn);
    tokio::pin!(exchange);
    tokio::select! {
        r = &mut exchange => r,
        r = &mut conn => match r {
            Err(e) => Err(http_err(&e)),
            // The connection finished first: the exchange completes without further I/O.
            Ok(()) => exchange.await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_from_env_forms() {
        let d = MetadataHost::new(None);
        assert_eq!(
            (d.connect.as_str(), d.host_header.as_str()),
            ("169.254.169.254:80", "metadata.google.internal")
        );
        assert_eq!(MetadataHost::new(Some("")).connect, "169.254.169.254:80");
        let e = MetadataHost::new(Some("127.0.0.1:8080"));
        assert_eq!(
            (e.connect.as_str(), e.host_header.as_str()),
            ("127.0.0.1:8080", "127.0.0.1:8080")
        );
        let e = MetadataHost::new(Some("metadata.google.internal"));
        assert_eq!(
            (e.connect.as_str(), e.host_header.as_str()),
            ("metadata.google.internal:80", "metadata.google.internal")
        );
        assert_eq!(MetadataHost::new(Some("[::1]:9")).connect, "[::1]:9");
        assert_eq!(MetadataHost::new(Some("[::1]")).connect, "[::1]:80");
        assert_eq!(
            MetadataHost::new(Some("http://10.0.0.1:81/")).connect,
            "10.0.0.1:81"
        );
    }

    #[test]
    fn audience_is_percent_encoded() {
        assert_eq!(
            MetadataHost::identity_path("https://a.b/c?d=e&f"),
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https%3A%2F%2Fa.b%2Fc%3Fd%3De%26f&format=full"
        );
        assert!(
            MetadataHost::identity_path("sts.amazonaws.com")
                .contains("audience=sts.amazonaws.com&")
        );
    }

    #[test]
    fn debug_shows_claims_not_the_token() {
        let jwt = crate::jwt::tests::token("a", 1, 2);
        let t = Token {
            claims: jwt::decode(&jwt).unwrap(),
            jwt: jwt.clone(),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains(jwt.split('.').nth(1).unwrap()), "{shown}");
        assert!(shown.contains("exp: 2"), "{shown}");
    }

    #[test]
    fn status_mapping_gives_gke_hints() {
        let e = FetchError::from_status(404, b"service account not found\n", None);
        assert!(matches!(e, FetchError::NotBound { status: 404, .. }));
        assert!(
            e.to_string().contains("bound to a Google service account"),
            "{e}"
        );
        assert!(matches!(
            FetchError::from_status(403, b"", None),
            FetchError::NotBound { .. }
        ));
        let e = FetchError::from_status(500, &[b'x'; 1000], None);
        match &e {
            FetchError::Status { status: 500, body } => assert_eq!(body.len(), 200),
            other => panic!("{other:?}"),
        }
        let unreachable = FetchError::Unreachable {
            endpoint: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(unreachable.to_string().contains("Workload Identity"));
        let gke = FetchError::from_status(
            404,
            b"Your Kubernetes service account (ci/app) is not annotated with a target Google \
              service account, which is a requirement for retrieving Identity Tokens",
            Some("other/sa"),
        );
        match gke.refusal() {
            Some(Refusal::NotAnnotated { service_account }) => {
                assert_eq!(service_account.as_deref(), Some("ci/app"))
            }
            other => panic!("{other:?}"),
        }
        assert!(FetchError::from_status(404, b"", None).refusal().is_none());
    }
}
