//! `init`: legacy mode's init container writes every token once ([`crate::token_files::init`]),
//! failing at once, with the advice, when a token is refused ([`crate::pin`]).

use std::process::ExitCode;

use tracing::info;

use crate::cli::InitArgs;
use crate::schedule::Policy;
use crate::token_files;

use super::{CmdError, runtime};

pub fn run(args: InitArgs) -> Result<ExitCode, CmdError> {
    let InitArgs {
        tokens,
        credentials,
        metadata,
        pin,
        pod,
        timeout,
    } = args;
    let specs = tokens.resolve(!credentials.credentials.is_empty())?;
    if !credentials.credentials.is_empty() {
        info!(
            bindings = credentials.credentials.len(),
            "credentials are served by the sidecar (run), not by init"
        );
    }
    if specs.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = metadata.config(Policy::default(), pin.pin(&pod));
    runtime()?.block_on(token_files::init(cfg, specs, timeout))?;
    Ok(ExitCode::SUCCESS)
}
