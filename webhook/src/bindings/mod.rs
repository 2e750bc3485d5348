//! The bindings state: what the cluster holds, kept in memory, and the status written back.
//!
//! - [`store`]: bindings and service accounts, packed; the one lookup by (namespace, service
//!   account).
//! - [`cache`]: the watches that feed the store; what admissions and the status controller ask.
//! - [`live`]: rate-limited live reads on a cache miss, covering the watches' lag.
//! - [`work`]: the queue of binding groups whose status may have changed.
//! - [`watch`]: watches that relist at once on `410 Gone` and back off briefly otherwise.
//! - [`status_controller`]: recomputes and writes the status of the bindings a change touched.
//! - [`lease`]: the election of the one replica that writes status.

pub mod cache;
pub mod lease;
pub mod live;
pub mod status_controller;
pub mod store;
pub mod watch;
pub mod work;
