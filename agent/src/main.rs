//! Command-line shell of rolebridge-agent: parses ([`rolebridge_agent::cli`]), sets up logging
//! and hands the subcommand to [`rolebridge_agent::cmd::run`]. See the library crate for the
//! design.

use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use tracing_subscriber::filter::LevelFilter;

use rolebridge_agent::cli::{Cli, LogFormat};
use rolebridge_agent::cmd;

fn init_logging(level: LevelFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Plain => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = cli.log_level != LevelFilter::OFF;
    init_logging(cli.log_level, cli.log_format);
    match cmd::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain of causes on one line.
            let e = anyhow::Error::from(e);
            if logging {
                error!("{e:#}");
            } else {
                eprintln!("rolebridge-agent: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
