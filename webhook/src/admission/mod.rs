//! Admission: a review or a manifest in, the same mutation out.
//!
//! - [`mutate`]: the pure core, from a pod view, its bindings and the config to JSON-patch
//!   `add` operations, warnings or a denial.
//! - [`review`]: an AdmissionReview body in, a response body out, around the core.
//! - [`args`]: the flags that shape the injected pod (shared by `serve` and `inject`).
//! - [`inject`]: the mutation applied to the pod templates of YAML manifests, offline.
//! - [`fuzzing`]: the property the fuzz target and the corpus replay check.

pub mod args;
pub mod fuzzing;
pub mod inject;
mod json;
pub mod mutate;
pub mod review;
