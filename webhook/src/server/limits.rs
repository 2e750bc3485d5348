//! What a client of the admission port may make the webhook hold, and for how long.
//!
//! The port is reachable from every pod of the cluster, so these bound memory by design: at
//! most `max_connections` connections (each with hyper's, h2's and rustls' buffers capped to a
//! few tens of KiB), and at most `body_budget` bytes of request bodies across all of them.
//! With the defaults the worst case stays far under the chart's 128 MiB memory limit (see
//! BENCHMARKS.md, "Reliability"). Every read has a deadline well under the API server's
//! webhook timeout (the chart's `webhook.timeoutSeconds: 3`): nothing the API server would
//! still wait for is ever cut, and nothing else is kept.

use std::time::Duration;

use rolebridge_contract::duration::parse as parse_duration;

/// Limits of the admission port (`serve` flags).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections to the admission port, all clients together. At the cap the
    /// longest-idle connection is closed to make room; if none is idle, the new one is refused.
    #[arg(long, env = "ROLEBRIDGE_MAX_CONNECTIONS", default_value = "256")]
    pub max_connections: usize,
    /// Open connections from one source IP.
    #[arg(
        long,
        env = "ROLEBRIDGE_MAX_CONNECTIONS_PER_CLIENT",
        default_value = "32"
    )]
    pub max_connections_per_client: usize,
    /// Largest request body accepted (the API server caps an object at 3 MiB; a review adds a
    /// little). A larger Content-Length is answered as an invalid review before any body byte
    /// is read.
    #[arg(long, env = "ROLEBRIDGE_MAX_BODY_SIZE", default_value = "3584Ki", value_parser = parse_size)]
    pub max_body_size: usize,
    /// Request-body bytes held in memory across all connections. When it is spent, the bodies
    /// that have been arriving longest are cut (503) to make room for new requests.
    #[arg(long, env = "ROLEBRIDGE_BODY_BUDGET", default_value = "32Mi", value_parser = parse_size)]
    pub body_budget: usize,
    /// Time from the first byte of a request to its last (head and body).
    #[arg(long, env = "ROLEBRIDGE_REQUEST_READ_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub request_read_timeout: Duration,
    /// Time from the first byte of a request to the end of its head; also the time a new
    /// connection has to start its first request.
    #[arg(long, env = "ROLEBRIDGE_HEADER_READ_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Keep-alive connections with no request for this long are closed (HTTP/2: GOAWAY).
    #[arg(long, env = "ROLEBRIDGE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time a client has to complete the TLS handshake.
    #[arg(long, env = "ROLEBRIDGE_TLS_HANDSHAKE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
}

/// The flags' defaults, parsed from an empty command line: they are written once, on the flags.
impl Default for Limits {
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        // Without the environment variables: a default must not change with ROLEBRIDGE_* set.
        let cmd = Limits::augment_args(clap::Command::new("limits")).mut_args(|a| a.env(None));
        let matches = cmd
            .try_get_matches_from(["limits"])
            .expect("every limit flag has a default that parses");
        Limits::from_arg_matches(&matches).expect("every limit flag has a default that parses")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    #[error(
        "--body-budget ({budget} bytes) must hold at least one body of --max-body-size ({max} bytes)"
    )]
    BudgetBelowBody { budget: usize, max: usize },
    #[error(
        "--header-read-timeout must not exceed --request-read-timeout: the head is part of the request"
    )]
    HeaderAfterRequest,
}

impl Limits {
    /// Rejects combinations that cannot work.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let zero = [
            ("max-connections", self.max_connections == 0),
            (
                "max-connections-per-client",
                self.max_connections_per_client == 0,
            ),
            ("max-body-size", self.max_body_size == 0),
            ("request-read-timeout", self.request_read_timeout.is_zero()),
            ("header-read-timeout", self.header_read_timeout.is_zero()),
            ("idle-timeout", self.idle_timeout.is_zero()),
            (
                "tls-handshake-timeout",
                self.tls_handshake_timeout.is_zero(),
            ),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(LimitsError::Zero(name));
        }
        if self.body_budget < self.max_body_size {
            return Err(LimitsError::BudgetBelowBody {
                budget: self.body_budget,
                max: self.max_body_size,
            });
        }
        if self.header_read_timeout > self.request_read_timeout {
            return Err(LimitsError::HeaderAfterRequest);
        }
        Ok(())
    }
}

/// A byte-size flag as users write sizes in manifests: `1048576`, `64Ki`, `3584Ki`, `32Mi`, `1Gi`
/// (also `KiB`, `MiB`, `GiB`). (Durations: `rolebridge_contract::duration::parse`.)
fn parse_size(text: &str) -> Result<usize, String> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with Ki, Mi, Gi)"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unknown unit {other:?} (Ki, Mi, Gi)")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn flag_defaults_are_the_defaults() {
        let parsed = Cli::try_parse_from(["x"]).unwrap().limits;
        assert_eq!(parsed, Limits::default());
        assert_eq!(parsed.validate(), Ok(()));
        // What the README and the chart's values document.
        assert_eq!(
            Limits::default(),
            Limits {
                max_connections: 256,
                max_connections_per_client: 32,
                max_body_size: 3584 << 10,
                body_budget: 32 << 20,
                request_read_timeout: Duration::from_secs(2),
                header_read_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(60),
                tls_handshake_timeout: Duration::from_secs(2),
            }
        );
    }

    #[test]
    fn typed_values_and_old_integer_seconds() {
        let parsed = Cli::try_parse_from([
            "x",
            "--header-read-timeout",
            "1",
            "--request-read-timeout",
            "1500ms",
            "--body-budget",
            "8Mi",
            "--max-body-size",
            "1048576",
        ])
        .unwrap()
        .limits;
        assert_eq!(parsed.header_read_timeout, Duration::from_secs(1));
        assert_eq!(parsed.request_read_timeout, Duration::from_millis(1500));
        assert_eq!(parsed.body_budget, 8 << 20);
        assert_eq!(parsed.max_body_size, 1 << 20);
    }

    #[test]
    fn impossible_combinations_are_refused() {
        let l = Limits {
            body_budget: 1 << 20,
            ..Limits::default()
        };
        assert!(matches!(
            l.validate(),
            Err(LimitsError::BudgetBelowBody { .. })
        ));
        let l = Limits {
            header_read_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        assert_eq!(l.validate(), Err(LimitsError::HeaderAfterRequest));
        let l = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(l.validate(), Err(LimitsError::Zero("max-connections")));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64Ki").unwrap(), 64 << 10);
        assert_eq!(parse_size("3584Ki").unwrap(), 3584 << 10);
        assert_eq!(parse_size("32Mi").unwrap(), 32 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "Mi", "12k", "1.5Mi", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
