//! rolebridge-webhook: a mutating admission webhook that lets GKE pods assume AWS roles
//! through Google-signed ID tokens, with no static AWS key anywhere.
//!
//! Design: a pure core and a thin I/O shell.
//! - [`mutate`] is the core: a synchronous function from a borrowed view of the pod's raw JSON
//!   ([`pod::PodView`]), the bindings of its service account and the config, to JSON-patch `add`
//!   operations. It never round-trips the pod through typed structs, so fields newer than
//!   k8s-openapi survive.
//! - [`review`] turns an AdmissionReview body into a response body around the core; malformed
//!   input becomes an `invalid` review, never an HTTP 500.
//! - [`index`] holds the bindings, indexed by (namespace, service account) for O(1) lookups with
//!   no API call per admission; [`cache`] keeps it in sync with a kube-runtime reflector and
//!   covers the watch's lag with a rate-limited live read.
//! - [`status`] computes binding conditions (a pure function) and [`controller`] writes them.
//! - [`inject`] applies the same mutation to pod templates in YAML manifests, offline.
//! - [`tls`] is a tokio-rustls accept loop serving the warp routes with certificate hot reload;
//!   [`admin`] is the plain-HTTP health and metrics port; [`metrics`] the Prometheus registry.
pub mod admin;
pub mod app;
pub mod binding;
pub mod cache;
pub mod controller;
pub mod crd;
pub mod index;
pub mod inject;
pub mod metrics;
pub mod mutate;
pub mod pod;
pub mod review;
pub mod server;
pub mod status;
pub mod tls;
