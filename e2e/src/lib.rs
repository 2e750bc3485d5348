//! End-to-end test support for rolebridge.
//!
//! - [`metadata_emulator`]: a GKE metadata server emulator (also the `gke-metadata-emulator`
//!   binary, which the local demo starts as a process).
//! - [`support`]: helpers the tests in `tests/` share: locating the agent binary, running it,
//!   watching a token file for invariant violations, and finding/starting the real peers
//!   (moto, boto3, the AWS CLI) for the SDK tests.

pub mod metadata_emulator;
pub mod support;
