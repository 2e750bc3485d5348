//! The admission server: a hostile-client-proof HTTPS port for `POST /mutate`, and the plain
//! admin port.
//!
//! - [`accept`]: the tokio-rustls accept loop, connection watchdogs and HTTP builders.
//! - [`route`]: `POST /mutate`, from a body read under the limits to the review's answer.
//! - [`limits`], [`connections`], [`budget`], [`bodybuf`]: what a client can make the webhook
//!   hold, and for how long.
//! - [`tls`]: the hot-reloaded serving certificate.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.

mod accept;
pub(crate) mod admin;
pub(crate) mod bodybuf;
pub(crate) mod budget;
pub(crate) mod connections;
pub mod limits;
mod route;
pub mod tls;

pub use accept::serve_tls;
pub use route::{AppState, routes};
