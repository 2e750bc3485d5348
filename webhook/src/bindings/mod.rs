//! The bindings state: what the cluster holds, kept in memory, and the status written back.
//!
//! - [`store`]: bindings and service accounts, packed; the one lookup by (namespace, service
//!   account).
//! - [`cache`]: the watches that feed the store, and live reads that cover their lag.
//! - [`watch`]: watches that relist at once on `410 Gone` and back off briefly otherwise.
//! - [`status_controller`]: recomputes and writes the status of the bindings a change touched.
//! - [`lease`]: the election of the one replica that writes status.

pub mod cache;
pub mod lease;
pub mod status_controller;
pub mod store;
pub mod watch;
