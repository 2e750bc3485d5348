//! rolebridge-webhook: a mutating admission webhook that lets GKE pods assume AWS roles
//! through Google-signed ID tokens, with no static AWS key anywhere.
//!
//! Design: a pure core and a thin I/O shell.
//! - [`mutate`] is the core: a synchronous function from a borrowed view of the pod's raw JSON
//!   ([`pod::PodView`]), the bindings of its service account and the config, to JSON-patch `add`
//!   operations. It never round-trips the pod through typed structs, so fields newer than
//!   k8s-openapi survive. It runs in phases (gate, plan, reserved names, render); every rule that
//!   differs between the two deliveries (web identity, and the in-pod credentials endpoint for
//!   role chains and session durations) lives in one module of it.
//! - [`binding`] is the domain: a binding, which containers it covers, and when two tie. The
//!   mutation and [`status`] both use it, so admission and a binding's status cannot disagree.
//! - [`crd`] is the API: the CRD types, their schema (generated, drift-tested) and the Rust twins
//!   of its rules.
//! - [`review`] turns an AdmissionReview body into a response body around the core; malformed
//!   input becomes an `invalid` review, never an HTTP 500.
//! - [`store`] holds the bindings and service accounts compactly (a few dozen bytes each, no
//!   whole objects), so an admission's lookup is a binary search with no API call; [`cache`]
//!   keeps it in sync with kube-runtime watches ([`watch`]: relist at once on 410, short
//!   backoff) and covers the watch's lag with a rate-limited live read ([`index`] for those
//!   and for bindings read from files).
//! - [`status`] computes binding conditions (a pure function); [`controller`] recomputes only
//!   the groups a change touched and writes what differs, on the replica that holds the
//!   [`lease`].
//! - [`inject`] applies the same mutation to pod templates in YAML manifests, offline.
//! - [`server`] serves the warp routes behind a tokio-rustls accept loop that assumes hostile
//!   clients ([`limits`], [`connections`], [`budget`]: capped connections, deadlines, a byte
//!   budget for request bodies); [`tls`] hot-reloads the certificate; [`admin`] is the
//!   plain-HTTP health and metrics port; [`metrics`] the Prometheus registry; [`app`] wires it
//!   all for `serve`.
//! - [`fuzzing`] is the property the fuzz target (`webhook/fuzz`) and the corpus replay test
//!   check: any bytes → review → mutation → patch applies → reinvocation adds nothing.
//!
//! What the webhook tells the agent (arguments, probe, files, variables) is defined once, in the
//! `rolebridge-contract` crate, which the agent parses with.
pub mod admin;
pub mod app;
pub mod binding;
pub mod bodybuf;
pub mod budget;
pub mod cache;
pub mod connections;
pub mod controller;
pub mod crd;
pub mod flags;
pub mod fuzzing;
pub mod index;
pub mod inject;
pub mod lease;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod mutate;
pub mod pod;
pub mod review;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod watch;
