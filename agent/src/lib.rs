//! rolebridge-agent: keeps Google ID tokens fresh on disk so that unmodified AWS SDKs can call
//! `AssumeRoleWithWebIdentity` with them, and, for bindings with a role chain or a session
//! duration, obtains the credentials itself (with a Google ID token, or the pod's projected
//! Kubernetes token) and serves them to the pod's containers with the AWS container
//! credentials protocol.
//!
//! The mutating webhook injects this binary into every bound pod, so its cost is multiplied by
//! the number of pods, and a bad token or credential breaks an application in a way that is
//! hard to trace back. The design follows from those two facts:
//!
//! - **Pure core, thin shell.** [`schedule`] decides when to refresh and how long to back off
//!   as pure functions of (times, now, jitter); [`token_state::TokenState`] is one token file's
//!   refresh loop as a state machine (when to fetch, what a success or a failure leads to, when
//!   a held token must be removed); [`creds::Slot`] is the credentials endpoint's whole state
//!   machine for one binding (what to answer now, when to refresh, when to retry);
//!   [`endpoint`]'s routing, authorization and replies are pure functions; [`jwt`] decides
//!   whether a token is acceptable; [`spec`] and [`cli`] parse what the webhook renders
//!   ([`rolebridge_contract::AgentArgs`]). All unit-tested without clocks or sockets.
//!   [`token_files`], [`sidecar`], [`metadata`], [`sts`] and [`writer`] do the I/O; `main` only
//!   wires.
//! - **The file only ever holds a valid token.** A token is written only after its claims decode,
//!   its `aud` is the audience requested and its `exp` is in the future; it is replaced by
//!   `rename(2)` of a fully written, fsynced temporary file in the same directory; it is kept
//!   through metadata-server outages until it expires, and removed then.
//! - **Never the node's identity.** With the webhook's pin (`--google-service-account`) every
//!   Google ID token is asked for in full format and must carry the pinned account's `email`
//!   ([`pin`]); a pod on the host network or on a node pool without GKE_METADATA reaches the
//!   Compute Engine metadata server, whose token is the node's. A refusal writes nothing, is
//!   retried rarely (it is no outage), fails `init` at once, and is recorded beside the token
//!   so that the `check` probe says what to fix. `verify` and `trust-policy` refuse the same way
//!   and never print a policy for an unconfirmed account.
//! - **Other token sources.** A `tokenSource: Kubernetes` binding's web identity hop reads its
//!   kubelet-projected token file, again for every exchange (rotated in place); off-cluster,
//!   `credential-process` and `verify` take any OIDC token file ([`token_source`]).
//!   `trust-policy --token-source kubernetes` prints the policy for the cluster's issuer.
//! - **Credentials only ever in memory, never stale.** One refresh loop per binding is the only
//!   STS caller (one round trip per refresh however many clients ask); it refreshes at half the
//!   lifetime with jitter, backs off on failure, keeps still-valid credentials through STS or
//!   metadata outages, and the endpoint never hands out credentials with less than a safety
//!   margin left ([`schedule::Lifetime`]). Failures reach the app as the SDK's error, naming
//!   the hop, the role and STS's message ([`sts::ChainError`]).
//! - **Hostile clients.** The endpoint listens on loopback only, wants a per-pod random token
//!   ([`authtoken`], constant-time comparison), bounds connections, head size and read time,
//!   closes idle connections and allocates nothing on a client's say-so.
//! - **Small and quiet.** One current-thread tokio runtime; a token refresh is one plain
//!   HTTP/1.1 request over a fresh TCP connection (no TLS, no DNS, no pool). The AWS SDK runs
//!   only for `verify`, `credential-process` and bindings with the credentials delivery, with
//!   one shared HTTPS client.
//! - **Nothing secret in logs.** Errors, log fields and `Debug` name files, audiences, roles and
//!   expiry times, never token or credential contents.
//!
//! # Module map
//!
//! - **Entry.** `main` parses [`cli::Cli`], sets up logging and calls [`cmd::run`].
//! - **Command line.** [`cli`]: clap, one `Args` struct per subcommand; every name the webhook
//!   renders (subcommands, `--token`, `--credentials`, `--credentials-port`, `--wait`,
//!   `--google-service-account`) and the
//!   shared facts (loopback host, lowest port, session-name rules, AWS variable names) come from
//!   [`rolebridge_contract`]. [`spec`]: the token mapping and its `ROLEBRIDGE_TOKENS` fallback.
//! - **Subcommands.** [`cmd`], one module each, `run(args) -> Result<ExitCode, CmdError>`:
//!   [`cmd::sidecar`] (`run`), [`cmd::init`], [`cmd::check`], [`cmd::verify`],
//!   [`cmd::trust_policy`], [`cmd::credential_process`] and the hidden [`cmd::flags`]
//!   (`flags --json`, the command line as data).
//! - **Pure decisions.** [`schedule`], [`token_state`], [`creds`], [`jwt`], the pure half of
//!   [`endpoint`] ([`endpoint::route`], [`endpoint::authorize`], [`endpoint::credentials_reply`],
//!   [`endpoint::health_reply`]), [`identity`]'s session tags and name, [`pin`] (whose token is
//!   acceptable, and the advice when none is), [`aws`]'s trust policies and error explanations.
//! - **I/O shells.** [`token_files`] (token files: keep fresh, init, check), [`sidecar`] (`run`:
//!   the token loops, one credentials refresher per binding, the endpoint), [`endpoint`]'s
//!   server, [`metadata`] (the GKE metadata server's client), [`token_source`] (the metadata
//!   server or a token file, for the web identity hop), [`sts`] (the role chain),
//!   [`process`] (`credential_process` and its cache), [`doctor`] (`verify`'s report),
//!   [`writer`] (atomic files), [`authtoken`] (the endpoint's per-pod token), [`clock`] (the
//!   wall clock and the jitter, the only inputs from outside the pure parts).

pub mod authtoken;
pub mod aws;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod creds;
pub mod doctor;
pub mod endpoint;
pub mod identity;
pub mod jwt;
pub mod metadata;
pub mod pin;
pub mod process;
pub mod schedule;
pub mod sidecar;
pub mod spec;
pub mod sts;
pub mod token_files;
pub mod token_source;
pub mod token_state;
pub mod writer;
