//! End-to-end test support for rolebridge.
//!
//! - [`metadata_emulator`]: a GKE metadata server emulator (also the `gke-metadata-emulator`
//!   binary, which the local demo starts as a process); it can also play a node's Compute
//!   Engine metadata server and GKE's for a service account without a Google service account.
//! - [`support`]: helpers the tests in `tests/` share: locating the agent binary, running it,
//!   watching a token file for invariant violations, and finding/starting the real peers
//!   (moto, boto3, the AWS CLI, node with the JS SDK v3) for the SDK tests; Kubernetes
//!   service account tokens and a kubelet-like projected volume that rotates them in place.
//! - [`endpoint_rig`]: the credentials-endpoint delivery as a pod gets it: the agent with a
//!   role chain, and the app environment, both rendered from the webhook↔agent contract.
//! - [`sts_stub`]: an STS that denies chosen roles (moto grants everything).

pub mod endpoint_rig;
pub mod metadata_emulator;
pub mod sts_stub;
pub mod support;
