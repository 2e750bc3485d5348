//! Prometheus metrics, served on the admin port.
//!
//! It uses nothing of the crate, so every layer may report to it.
//!
//! The per-outcome admission counters are resolved from their family once at start-up, so the
//! hot path increments an atomic instead of hashing a label set under a lock.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The metric label of an admission (`rolebridge_admissions_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmissionOutcome {
    Mutated,
    Skipped,
    Denied,
    Error,
}

impl AdmissionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionOutcome::Mutated => "mutated",
            AdmissionOutcome::Skipped => "skipped",
            AdmissionOutcome::Denied => "denied",
            AdmissionOutcome::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Latency buckets from 25 µs: an admission is expected to take tens of microseconds, so the
/// usual millisecond buckets would put every observation in the first one.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.5, 1.0,
];

pub struct Metrics {
    registry: Registry,
    admissions: [Counter; 4],
    pub latency: Histogram,
    pub bindings: Gauge,
    pub invalid_bindings: Gauge,
    pub conflicts: Gauge,
    pub live_reads: Family<ResultLabel, Counter>,
    pub tls_reloads: Family<ResultLabel, Counter>,
    pub status_writes: Family<ResultLabel, Counter>,
    pub connections: Gauge,
    pub connections_refused: Family<ReasonLabel, Counter>,
    pub connections_closed: Family<ReasonLabel, Counter>,
    pub requests_shed: Family<ReasonLabel, Counter>,
    pub body_bytes: Gauge,
    pub status_leader: Gauge,
    pub status_leader_blocked: Family<ReasonLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Long, but a list: one registration per metric, in the order `/metrics` shows them.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rolebridge");
        let admissions_family = Family::<OutcomeLabel, Counter>::default();
        let admissions = [
            AdmissionOutcome::Mutated,
            AdmissionOutcome::Skipped,
            AdmissionOutcome::Denied,
            AdmissionOutcome::Error,
        ]
        .map(|o| {
            admissions_family
                .get_or_create(&OutcomeLabel {
                    outcome: o.as_str(),
                })
                .clone()
        });
        registry.register(
            "admissions",
            "Admission reviews answered, by outcome (mutated, skipped, denied, error)",
            admissions_family,
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "admission_duration_seconds",
            "Time from a complete request body to a response body",
            latency.clone(),
        );
        let bindings = Gauge::default();
        registry.register(
            "bindings",
            "Valid AWSRoleBindings in the cache",
            bindings.clone(),
        );
        let invalid_bindings = Gauge::default();
        registry.register(
            "bindings_invalid",
            "AWSRoleBindings skipped because their spec is malformed or invalid",
            invalid_bindings.clone(),
        );
        let conflicts = Gauge::default();
        registry.register(
            "binding_conflicts",
            "AWSRoleBindings that conflict with another binding of the same service account",
            conflicts.clone(),
        );
        let live_reads = Family::default();
        registry.register(
            "binding_live_reads",
            "Live API reads of bindings made on a cache miss, by result",
            live_reads.clone(),
        );
        let tls_reloads = Family::default();
        registry.register(
            "tls_reloads",
            "Serving certificate reloads, by result",
            tls_reloads.clone(),
        );
        let status_writes = Family::default();
        registry.register(
            "status_writes",
            "AWSRoleBinding status updates, by result",
            status_writes.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open connections to the admission port",
            connections.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "Admission-port connections refused at accept, by reason (limit, client_limit)",
            connections_refused.clone(),
        );
        let connections_closed = Family::default();
        registry.register(
            "connections_closed",
            "Admission-port connections closed by the webhook, by reason (idle, header_timeout, evicted, tls_handshake)",
            connections_closed.clone(),
        );
        let requests_shed = Family::default();
        registry.register(
            "requests_shed",
            "Requests answered without an admission, by reason (too_large, read_timeout, overloaded, evicted)",
            requests_shed.clone(),
        );
        let body_bytes = Gauge::default();
        registry.register(
            "request_body_bytes",
            "Request-body bytes held in memory (bounded by --body-budget)",
            body_bytes.clone(),
        );
        let status_leader = Gauge::default();
        registry.register(
            "status_leader",
            "1 while this replica holds the status Lease (or does not elect) and writes binding status",
            status_leader.clone(),
        );
        let status_leader_blocked = Family::default();
        registry.register(
            "status_leader_blocked",
            "1 while the status Lease cannot be taken for a reason that will not fix itself, by reason (namespace_missing, forbidden): no replica writes binding status",
            status_leader_blocked.clone(),
        );
        Metrics {
            registry,
            admissions,
            latency,
            bindings,
            invalid_bindings,
            conflicts,
            live_reads,
            tls_reloads,
            status_writes,
            connections,
            connections_refused,
            connections_closed,
            requests_shed,
            body_bytes,
            status_leader,
            status_leader_blocked,
        }
    }

    pub fn admission(&self, outcome: AdmissionOutcome, seconds: f64) {
        let i = match outcome {
            AdmissionOutcome::Mutated => 0,
            AdmissionOutcome::Skipped => 1,
            AdmissionOutcome::Denied => 2,
            AdmissionOutcome::Error => 3,
        };
        self.admissions[i].inc();
        self.latency.observe(seconds);
    }

    pub fn result(family: &Family<ResultLabel, Counter>, ok: bool) {
        family
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub fn reason(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
