//! `run`: the sidecar. Keeps every token file fresh ([`crate::token_files`]) and, for bindings with
//! the credentials delivery, obtains their credentials through the STS chain and serves them
//! on loopback ([`crate::endpoint`]).
//!
//! One refresh loop per binding is the only caller of STS for it, whatever the number of
//! clients: requests read the loop's latest result from memory. Credentials never touch disk.
//! The web identity hop's token comes from the metadata server (held to the pin), or for a
//! `tokenSource: Kubernetes` binding from its projected token file, read again for every
//! exchange ([`crate::token_source`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use rolebridge_contract::{CREDENTIALS_HOST, CredentialsSpec};

use crate::authtoken::{AuthToken, AuthTokenError};
use crate::clock::{Jitter, now_ms};
use crate::creds::{Problem, Served, Slot};
use crate::endpoint::{self, Binding, Limits};
use crate::identity::{ClusterName, PodIdentity};
use crate::spec::TokenSpec;
use crate::sts::{self, Chain, ChainError, Sts};
use crate::token_files::{self, Config};
use crate::token_source::{SourceError, TokenSource};

/// Everything `run` needs.
#[derive(Debug)]
pub struct Sidecar {
    pub tokens: Vec<TokenSpec>,
    pub credentials: Vec<CredentialsSpec>,
    pub port: u16,
    pub auth_token_file: PathBuf,
    pub pod: PodIdentity,
    pub cluster_name: Option<String>,
    pub limits: Limits,
    pub config: Arc<Config>,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(
        "cannot listen on {host}:{port} for the credentials endpoint: {source}",
        host = CREDENTIALS_HOST
    )]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    AuthToken(#[from] AuthTokenError),
    #[error("binding {0:?} is configured twice")]
    DuplicateBinding(String),
    #[error("nothing to do: no --token and no --credentials")]
    Empty,
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("a refresh loop or the endpoint ended unexpectedly: {0}")]
    LoopEnded(String),
}

/// Why one attempt to obtain a binding's credentials failed. Carries no secret.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Token(#[from] SourceError),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl AttemptError {
    /// A refusal ([`crate::pin::Refusal`]): permanent for the pod, retried rarely.
    pub fn is_refusal(&self) -> bool {
        matches!(self, AttemptError::Token(e) if e.is_refusal())
    }

    /// The endpoint's error body: STS's code (or ours) and a message naming the binding, the
    /// hop and STS's message. `from_file`: the token is the binding's token file (`tokenSource:
    /// Kubernetes`), which changes what hop 1's trust policy must admit.
    pub fn problem(&self, binding: &str, from_file: bool) -> Problem {
        let code = match self {
            AttemptError::Token(e) if e.is_refusal() => "IdentityTokenRefused",
            AttemptError::Token(_) => "IdentityTokenUnavailable",
            AttemptError::Chain(e) => e.code().unwrap_or("StsUnavailable"),
        };
        let hint = match self {
            AttemptError::Chain(e) if e.code() == Some("AccessDenied") && e.hop > 1 => {
                " (the role's trust policy must allow the previous role sts:AssumeRole and \
                 sts:TagSession, with the external ID if one is set; `rolebridge-agent verify` \
                 prints the policy)"
            }
            AttemptError::Chain(e) if e.code() == Some("AccessDenied") && from_file => {
                " (the role's trust policy must admit the cluster's OIDC provider with this \
                 service account as sub and the binding's audience as aud; `rolebridge-agent \
                 trust-policy --token-source kubernetes` prints it)"
            }
            AttemptError::Chain(e) if e.code() == Some("AccessDenied") => {
                " (the role's trust policy must admit this Google service account; \
                 `rolebridge-agent trust-policy` prints it)"
            }
            _ => "",
        };
        Problem::new(
            code,
            format!("rolebridge-agent, binding {binding}: {self}{hint}"),
        )
    }
}

/// One binding's refresh loop: the only STS caller for it.
pub struct Refresher {
    pub spec: CredentialsSpec,
    pub sts: Sts,
    pub pod: PodIdentity,
    pub cluster: Arc<ClusterName>,
    pub config: Arc<Config>,
    /// Where hop 1's token comes from: [`Refresher::source_for`].
    pub source: TokenSource,
}

impl Refresher {
    /// The chain as configured, with the pod's session name and (when enabled) tags.
    pub async fn chain(&self) -> Chain {
        let tags = if self.spec.session_tags && !self.spec.chain.is_empty() {
            let cluster = self
                .cluster
                .get(&self.config.endpoint, self.config.request_timeout)
                .await;
            self.pod.tags(cluster.as_deref())
        } else {
            Vec::new()
        };
        Chain {
            role_arn: self.spec.role_arn.clone(),
            hops: self.spec.chain.clone(),
            duration_seconds: self.spec.duration_seconds,
            session_name: self.pod.session_name(),
            tags,
            region: self.spec.region.clone(),
        }
    }

    /// The binding's token file (`tokenSource: Kubernetes`; no pin applies), else the
    /// metadata server held to the pod's pin.
    pub fn source_for(spec: &CredentialsSpec, config: &Config) -> TokenSource {
        match &spec.token_file {
            Some(file) => TokenSource::File(PathBuf::from(file)),
            None => TokenSource::Metadata {
                host: config.endpoint.clone(),
                pin: config.pin.clone(),
                timeout: config.request_timeout,
            },
        }
    }

    /// One attempt: a fresh web identity token (a token file is read again each time: the
    /// kubelet rotates it in place), then the chain.
    pub async fn attempt(&self) -> Result<crate::sts::Assumed, AttemptError> {
        let token = self
            .source
            .token(&self.spec.audience, now_ms().div_euclid(1000))
            .await?;
        let chain = self.chain().await;
        Ok(sts::assume(&self.sts, &chain, &token.jwt, |_| {}).await?)
    }

    /// Forever: attempt, publish, sleep as the slot says.
    pub async fn run(self, tx: watch::Sender<Slot<Served>>, mut jitter: Jitter) {
        let name = self.spec.name.clone();
        let role = self.spec.final_role_arn().to_string();
        loop {
            let result = self.attempt().await;
            let now = now_ms();
            let mut delay = Duration::ZERO;
            match result {
                Ok(assumed) => {
                    let served = assumed.credentials.render();
                    let expires = assumed.credentials.expires_ms;
                    tx.send_modify(|slot| {
                        delay = slot.succeeded(
                            served,
                            expires,
                            &self.config.policy,
                            now,
                            jitter.sample(),
                        );
                    });
                    info!(
                        binding = name,
                        role,
                        assumed = assumed.assumed_role_arn.as_deref().unwrap_or("-"),
                        expiration = assumed.credentials.expiration,
                        refresh_in_s = delay.as_secs(),
                        "credentials obtained"
                    );
                }
                Err(e) => delay = self.failed(&tx, &e, now, jitter.sample()),
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Record a failed attempt in the slot and log it; returns the delay to the next one.
    fn failed(
        &self,
        tx: &watch::Sender<Slot<Served>>,
        e: &AttemptError,
        now: i64,
        jitter: f64,
    ) -> Duration {
        let problem = e.problem(&self.spec.name, self.spec.token_file.is_some());
        let policy = &self.config.policy;
        let (mut delay, mut held, mut attempts) = (Duration::ZERO, false, 0);
        let retry = if e.is_refusal() {
            policy.after_refusal()
        } else {
            *policy
        };
        tx.send_modify(|slot| {
            delay = slot.failed(problem, &retry, now, jitter);
            held = slot.ready(policy, now);
            attempts = slot.failure().map_or(0, |f| f.attempts);
        });
        let (binding, role) = (&self.spec.name, self.spec.final_role_arn());
        if e.is_refusal() {
            error!(
                binding,
                error = %e,
                role,
                retry_in_ms = delay.as_millis() as u64,
                attempt = attempts,
                still_serving_previous = held,
                "token refused, no credentials obtained; retrying rarely, since waiting does not fix this"
            );
        } else {
            warn!(
                binding,
                role,
                attempt = attempts,
                retry_in_ms = delay.as_millis() as u64,
                still_serving_previous = held,
                error = %e,
                "cannot obtain credentials"
            );
        }
        delay
    }
}

/// Run until SIGTERM/SIGINT.
pub async fn run(s: Sidecar) -> Result<(), SidecarError> {
    use tokio::signal::unix::{SignalKind, signal};
    if s.tokens.is_empty() && s.credentials.is_empty() {
        return Err(SidecarError::Empty);
    }
    for (i, c) in s.credentials.iter().enumerate() {
        if s.credentials[..i].iter().any(|o| o.name == c.name) {
            return Err(SidecarError::DuplicateBinding(c.name.clone()));
        }
    }
    let mut term = signal(SignalKind::terminate()).map_err(SidecarError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(SidecarError::Signal)?;
    info!(
        tokens = s.tokens.len(),
        bindings = s.credentials.len(),
        metadata = %s.config.endpoint.display(),
        google_service_account = s.config.pin.google.as_ref().map(ToString::to_string),
        version = env!("CARGO_PKG_VERSION"),
        "starting"
    );
    let mut set = tokio::task::JoinSet::new();
    for (i, spec) in s.tokens.into_iter().enumerate() {
        set.spawn(token_files::keep_fresh(
            s.config.clone(),
            spec,
            Jitter::seeded(i as u64),
        ));
    }
    if !s.credentials.is_empty() {
        let listener = endpoint::bind(s.port)
            .await
            .map_err(|source| SidecarError::Bind {
                port: s.port,
                source,
            })?;
        let (token, reused) = AuthToken::load_or_create(&s.auth_token_file)?;
        info!(
            path = %s.auth_token_file.display(),
            reused,
            port = s.port,
            "credentials endpoint listening on loopback"
        );
        let sts = Sts::from_env();
        let cluster = Arc::new(ClusterName::new(s.cluster_name));
        let mut bindings = Vec::new();
        for (i, spec) in s.credentials.into_iter().enumerate() {
            let (tx, rx) = watch::channel(Slot::default());
            bindings.push(Binding {
                name: spec.name.clone(),
                slot: rx,
            });
            let r = Refresher {
                source: Refresher::source_for(&spec, &s.config),
                spec,
                sts: sts.clone(),
                pod: s.pod.clone(),
                cluster: cluster.clone(),
                config: s.config.clone(),
            };
            set.spawn(r.run(tx, Jitter::seeded(1000 + i as u64)));
        }
        let state = Arc::new(endpoint::State {
            bindings,
            token,
            policy: s.config.policy,
            limits: s.limits,
            now_ms,
        });
        set.spawn(endpoint::serve(listener, state));
    }
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: exiting"),
        _ = int.recv() => info!("SIGINT: exiting"),
        r = set.join_next() => return Err(SidecarError::LoopEnded(format!("{r:?}"))),
    }
    // Token loops hold no state worth flushing (writes are atomic), and credentials live in
    // memory only: containers still shutting down keep their SDK-cached credentials.
    Ok(())
}
