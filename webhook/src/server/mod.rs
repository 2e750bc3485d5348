//! The admission server: a hostile-client-proof HTTPS port for `POST /mutate`, and the plain
//! admin port.
//!
//! - [`accept`]: the tokio-rustls accept loop, connection watchdogs and HTTP builders.
//! - [`route`]: `POST /mutate`, from a body read under the limits to the review's answer.
//! - [`limits`], [`connections`], [`budget`], [`bodybuf`]: what a client can make the webhook
//!   hold, and for how long.
//! - [`tls`]: the hot-reloaded serving certificate.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.

pub mod accept;
pub mod admin;
pub mod bodybuf;
pub mod budget;
pub mod connections;
pub mod limits;
pub mod route;
pub mod tls;

pub use accept::serve_tls;
pub use route::{AppState, admit, routes};
