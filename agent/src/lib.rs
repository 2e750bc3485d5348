//! rolebridge-agent: keeps Google ID tokens fresh on disk so that unmodified AWS SDKs can call
//! `AssumeRoleWithWebIdentity` with them.
//!
//! The mutating webhook injects this binary into every bound pod, so its cost is multiplied by
//! the number of pods, and a bad token on disk breaks an application in a way that is hard to
//! trace back. The design follows from those two facts:
//!
//! - **Pure core, thin shell.** [`schedule`] decides when to refresh and how long to back off as
//!   pure functions of (token times, now, jitter); [`jwt`] decides whether a token is acceptable;
//!   [`spec`] parses the `PATH=AUDIENCE` mapping. They hold all the decisions and are unit-tested
//!   without clocks or sockets. [`agent`], [`metadata`] and [`writer`] only do I/O.
//! - **The file only ever holds a valid token.** A token is written only after its claims decode,
//!   its `aud` is the audience requested and its `exp` is in the future; it is replaced by
//!   `rename(2)` of a fully written, fsynced temporary file in the same directory; it is kept
//!   through metadata-server outages until it expires, and removed then.
//! - **Small and quiet.** One current-thread tokio runtime, one plain HTTP/1.1 request over a
//!   fresh TCP connection per refresh (no TLS, no DNS, no pool), sleeping in between. The AWS
//!   SDK is linked in for `verify` and `credential-process` ([`aws`]) but never runs in the
//!   sidecar path, so it costs disk, not memory.
//! - **Nothing secret in logs.** Errors and log fields name files, audiences and expiry times,
//!   never token or credential contents.

pub mod agent;
pub mod aws;
pub mod jwt;
pub mod metadata;
pub mod schedule;
pub mod spec;
pub mod writer;
