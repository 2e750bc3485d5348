//! rolebridge-webhook: a mutating admission webhook that lets GKE pods assume AWS roles
//! through Google-signed ID tokens, with no static AWS key anywhere.
//!
//! Design: a pure core and a thin I/O shell, in layers that only ever import downwards:
//!
//! ```text
//! domain/    a binding, what it covers, the CRD, the pod view, status rules    (pure)
//!    ↑
//! bindings/  the bindings state: store, watches, live reads, status writer, lease; node versions
//!    ↑
//! admission/ review → mutation → patch; `inject` for manifests; the fuzz property
//!    ↑
//! server/    the hostile-client-proof HTTPS port, TLS, limits, the admin port
//!    ↑
//! app.rs     `serve`: wires the layers from the flags;  main.rs: the command line
//! ```
//!
//! `metrics.rs` (the Prometheus registry) and `memory.rs` (giving a burst's memory back) are
//! process-wide services that every layer may use and that use nothing of the crate.
//!
//! The public surface is what `main.rs`, the fuzz target, the tests and the benchmark examples
//! use; everything else is `pub(crate)` or narrower (`unreachable_pub` keeps it so).
//!
//! Where a rule lives:
//! - [`domain::binding`]: a binding, which containers it covers, when two tie. The mutation and
//!   [`domain::status`] both use it, so admission and a binding's status cannot disagree.
//! - [`domain::crd`]: the API (CRD types, their schema, generated and drift-tested, and the Rust
//!   twins of its rules); [`domain::convert`]: an `AWSRoleBinding` becomes a [`Binding`].
//! - [`domain::pod`]: a borrowed view of the few pod fields the mutation reads (what it reads only
//!   for some pods, such as a node affinity or a container's security context, stays borrowed raw
//!   text). The pod is never round-tripped through typed structs, so fields newer than
//!   k8s-openapi survive.
//! - [`bindings::store`]: bindings and service accounts, a few dozen bytes each, and the one
//!   lookup of a pod's bindings by (namespace, service account): `serve`, `inject`, live reads,
//!   the fuzz property and the golden tests all select through it.
//! - [`bindings::cache`]: kube-runtime watches feeding the store ([`bindings::watch`]: relist at
//!   once on 410, short backoff), and rate-limited live reads ([`bindings::live`]) covering the
//!   watch's lag, for bindings and for the service account a Google-source pod is pinned to.
//! - [`bindings::nodes`]: the lowest kubelet version among the nodes (name and major.minor per
//!   node, nothing else), from which `--sidecar-mode auto` is decided in [`admission::args`].
//! - [`bindings::status_controller`]: recomputes only the groups a change touched and writes what
//!   differs, on the replica that holds the [`bindings::lease`]; [`bindings::issuer`] is the
//!   cluster's service account issuer (flag or discovered) its Kubernetes-source messages name.
//! - [`admission::mutate`]: the core, a synchronous function from a pod view, its bindings, what
//!   is known of its service account (the Google identity the agent is pinned to) and the config
//!   to JSON-patch `add` operations, in phases (gate, plan, reserved names, render); every rule
//!   that differs between the two deliveries (web identity, and the in-pod credentials endpoint)
//!   lives in one module of it, every rule that differs between the two token sources (Google,
//!   Kubernetes) in another, and the service mesh's in a third.
//! - [`admission::review`]: an AdmissionReview body in, a response body out; malformed input
//!   becomes an `invalid` review, never an HTTP 500.
//! - [`admission::inject`]: the same mutation applied to the pod templates of YAML manifests,
//!   pinned to the ServiceAccounts of the manifests or the bindings files.
//! - [`admission::fuzzing`]: the property the fuzz target (`webhook/fuzz`) and the corpus replay
//!   test check: any bytes → review → mutation → patch applies → reinvocation adds nothing.
//! - [`server`]: warp routes behind a tokio-rustls accept loop that assumes hostile clients
//!   (capped connections, deadlines, a byte budget for request bodies), the hot-reloaded
//!   certificate, and the plain-HTTP admin port.
//!
//! What the webhook tells the agent (arguments, probe, files, variables, the AWS variable names)
//! is defined once, in the `rolebridge-contract` crate, which the agent parses with.
//!
//! [`Binding`]: domain::binding::Binding

#![warn(unreachable_pub)]
#![allow(
    rustdoc::private_intra_doc_links,
    reason = "these docs map every module, private ones included: `cargo doc \
              --document-private-items` renders the links"
)]

pub mod admission;
pub mod app;
pub mod bindings;
pub mod domain;
pub mod memory;
pub mod metrics;
pub mod server;
