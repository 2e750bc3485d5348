//! The domain: what a binding is and what it means for a pod, with no I/O and nothing of the
//! webhook's own machinery.
//!
//! - [`crd`]: the `AWSRoleBinding` API (types, generated schema, the Rust twins of its rules).
//! - [`convert`]: an `AWSRoleBinding` (typed, JSON or YAML) becomes a validated [`Binding`].
//! - [`binding`]: the [`Binding`], which containers it covers, and when two tie.
//! - [`pod`]: the borrowed view of the few pod fields the mutation reads.
//! - [`status`]: a binding's conditions as a pure function of all bindings.
//!
//! [`Binding`]: binding::Binding

pub mod binding;
pub mod convert;
pub mod crd;
pub mod pod;
pub mod status;
