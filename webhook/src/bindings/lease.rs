//! Leader election for status writes, on a `coordination.k8s.io/v1` Lease in the webhook's
//! own namespace, with client-go's algorithm and timings.
//!
//! Why one writer: every replica computes the same status, so several writers are correct, but
//! each write is an API call and a watch event for every replica; with the chart's two
//! replicas that doubled the API traffic of every status change. Admissions are unaffected:
//! every replica keeps its own caches and answers admissions whether or not it leads.
//!
//! How: a replica that finds the Lease free, or not renewed for `lease_duration` *as observed
//! on its own clock* (so clock skew between nodes does not matter), takes it with an update
//! guarded by `resourceVersion`, so two candidates cannot both win. The leader renews every
//! `retry_period`; if it cannot renew for `renew_deadline` it stops writing before the Lease can
//! expire for the others (`renew_deadline < lease_duration`). On shutdown the leader releases
//! the Lease, so a rolling update hands over within one `retry_period` instead of a
//! `lease_duration`. A new leader reconciles every binding once (see the controller).
//!
//! A Lease that cannot be created or renewed for a reason that retrying will not fix (its
//! namespace does not exist, or RBAC forbids it: [`Blocked`]) means that no replica writes any
//! binding status, ever, while admissions keep working: a silent stall. So it is loud: one
//! error naming the flag, the namespace and the fix, repeated with a growing interval (not
//! every retry period), and the `rolebridge_status_leader_blocked` gauge. The election keeps
//! trying, so creating the namespace or granting the Role heals it without a restart.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ApiAccess;
use crate::metrics::{Metrics, ReasonLabel};

/// What the election calls on its Lease (`get_opt`, `create`, `replace`), in the webhook's own
/// namespace; the operator's advice for a forbidden Lease names these verbs.
pub(crate) const LEASE_ACCESS: ApiAccess = ApiAccess {
    group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "update"],
    own_namespace: true,
};

/// Leader-election flags of `serve`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LeaderArgs {
    /// Elect one replica (through a Lease) to write binding status; `false`: every replica
    /// writes (identical statuses, twice the API writes with two replicas).
    #[arg(long, env = "ROLEBRIDGE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease, in the webhook's namespace.
    #[arg(
        long,
        env = "ROLEBRIDGE_LEASE_NAME",
        default_value = "rolebridge-webhook"
    )]
    pub lease_name: String,
}

/// Timings, as client-go's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Who holds the Lease, as far as the election is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    pub holder: String,
    pub renew_time: Option<MicroTime>,
    pub transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What a candidate does with the Lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// There is none: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Someone else holds it and renews it.
    Follow,
}

/// The election rule: `seen_at` is when this replica first saw the record as it is now.
pub(crate) fn step(
    current: Option<&Record>,
    me: &str,
    seen_at: Instant,
    now: Instant,
    t: &Timings,
) -> Step {
    match current {
        None => Step::Create,
        Some(r) if r.holder == me => Step::Renew,
        Some(r) if r.holder.is_empty() => Step::Acquire,
        Some(_) if now.duration_since(seen_at) >= t.lease_duration => Step::Acquire,
        Some(_) => Step::Follow,
    }
}

/// Why the Lease cannot be used, when waiting will not fix it: an operator has to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// The Lease's namespace does not exist (a wrong `--namespace`, or the webhook runs out of
    /// cluster with a namespace nobody created).
    NamespaceMissing,
    /// RBAC forbids the webhook's identity to read or write Leases there.
    Forbidden,
}

/// The longest wait between attempts while [`Blocked`], so a fix is noticed within minutes.
pub(crate) const BLOCKED_BACKOFF_CAP: Duration = Duration::from_secs(300);

impl Blocked {
    pub(crate) const ALL: [Blocked; 2] = [Blocked::NamespaceMissing, Blocked::Forbidden];

    /// Whether `error` is one of the failures that will not fix themselves. A 404 on the Lease
    /// itself is not an error (`get_opt`); a 404 naming the namespace is.
    pub(crate) fn of(error: &kube::Error) -> Option<Blocked> {
        let kube::Error::Api(status) = error else {
            return None;
        };
        match status.code {
            403 => Some(Blocked::Forbidden),
            404 if status
                .details
                .as_ref()
                .is_some_and(|d| d.kind == "namespaces") =>
            {
                Some(Blocked::NamespaceMissing)
            }
            _ => None,
        }
    }

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Blocked::NamespaceMissing => "namespace_missing",
            Blocked::Forbidden => "forbidden",
        }
    }

    /// What the operator reads: the symptom, the cause and the fix, naming the flag.
    pub(crate) fn advice(self, namespace: &str, lease: &str) -> String {
        let effect =
            "no AWSRoleBinding gets a status until this is fixed (admissions are unaffected)";
        match self {
            Blocked::NamespaceMissing => format!(
                "the status Lease {lease:?} cannot be created: namespace {namespace:?} does not exist; \
                 set --namespace (ROLEBRIDGE_NAMESPACE) to the namespace the webhook runs in, or \
                 create {namespace:?}; {effect}"
            ),
            Blocked::Forbidden => format!(
                "the status Lease {lease:?} in namespace {namespace:?} is forbidden to this \
                 webhook's identity; grant it {} on {} {} in {namespace:?} (the chart's Role \
                 does), or set --namespace (ROLEBRIDGE_NAMESPACE) to the namespace that Role is \
                 in; {effect}",
                and_list(LEASE_ACCESS.verbs),
                LEASE_ACCESS.group,
                LEASE_ACCESS.resource,
            ),
        }
    }
}

/// `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The wait before the next attempt: the retry period, doubling from it while [`Blocked`] (the
/// `streak`-th blocked attempt in a row) up to [`BLOCKED_BACKOFF_CAP`].
pub(crate) fn next_attempt_in(blocked_streak: u32, t: &Timings) -> Duration {
    if blocked_streak == 0 {
        return t.retry_period;
    }
    let doubled = t
        .retry_period
        .saturating_mul(1u32 << blocked_streak.min(16));
    doubled.min(BLOCKED_BACKOFF_CAP.max(t.retry_period))
}

/// What the election reports to the metrics: whether this replica leads, and why it cannot.
#[derive(Clone, Default)]
pub struct Report {
    pub leading: Gauge,
    pub blocked: Family<ReasonLabel, Gauge>,
}

impl Report {
    pub(crate) fn of(metrics: &Metrics) -> Report {
        Report {
            leading: metrics.status_leader.clone(),
            blocked: metrics.status_leader_blocked.clone(),
        }
    }

    fn blocked(&self, now: Option<Blocked>) {
        for b in Blocked::ALL {
            let label = ReasonLabel { reason: b.as_str() };
            self.blocked
                .get_or_create(&label)
                .set(i64::from(now == Some(b)));
        }
    }
}

/// This replica's identity: the pod name (its hostname) and a random suffix, so a restarted
/// pod of the same name does not mistake its predecessor's Lease for its own.
pub fn identity() -> String {
    use std::io::Read as _;
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rolebridge-webhook".into());
    let mut random = [0u8; 6];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        random.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}_{suffix}")
}

/// Whether this replica leads, as the status controller sees it.
#[derive(Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Leadership(rx)
    }

    /// For a replica that does not elect: always leading.
    pub fn always() -> Self {
        Leadership(watch::channel(true).1)
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once this replica leads (at once if it does); never if it never will.
    pub async fn leading(&mut self) {
        if self.0.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this replica no longer leads; never if that cannot happen.
    pub async fn lost(&mut self) {
        if self.0.wait_for(|l| !*l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Starts the election `args` ask for on `client`, in `namespace`; a replica that does not
/// elect always leads.
pub fn start(
    client: &kube::Client,
    args: &LeaderArgs,
    namespace: &str,
    report: Report,
    stop: watch::Receiver<bool>,
) -> Leadership {
    if !args.leader_election {
        tracing::info!("leader election off: this replica writes binding status");
        report.leading.set(1);
        return Leadership::always();
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(run(
        Api::namespaced(client.clone(), namespace),
        Target {
            namespace: namespace.to_owned(),
            name: args.lease_name.clone(),
        },
        identity(),
        Timings::default(),
        Channels {
            leading: tx,
            stop,
            report,
        },
    ));
    Leadership::new(rx)
}

/// Which Lease the election is about (the namespace is for the operator's messages).
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub name: String,
}

/// How the election talks to the rest of the webhook.
pub struct Channels {
    /// Published: whether this replica leads.
    pub leading: watch::Sender<bool>,
    /// Read: true once the webhook stops (the Lease is then released).
    pub stop: watch::Receiver<bool>,
    pub report: Report,
}

/// Runs the election until `stop` turns true (then releases the Lease if held), publishing
/// whether this replica leads on `leading`.
pub async fn run(
    api: Api<Lease>,
    target: Target,
    me: String,
    timings: Timings,
    channels: Channels,
) {
    let Channels {
        leading,
        mut stop,
        report,
    } = channels;
    let name = target.name.as_str();
    let mut seen: Option<(Record, Instant)> = None;
    let mut renewed: Option<Instant> = None;
    let mut blocked_streak = 0u32;
    let publish = |lead: bool| {
        report.leading.set(i64::from(lead));
        leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
    };
    loop {
        let now = Instant::now();
        let outcome = attempt(&api, name, &me, &timings, &mut seen, now).await;
        let blocked = outcome.as_ref().err().and_then(Blocked::of);
        report.blocked(blocked);
        log_blocked(blocked, blocked_streak, &target, &timings);
        blocked_streak = if blocked.is_some() {
            blocked_streak + 1
        } else {
            0
        };
        match outcome {
            Ok(true) => {
                if renewed.is_none() {
                    tracing::info!(lease = %name, identity = %me, "leading: this replica writes binding status");
                }
                renewed = Some(now);
                publish(true);
            }
            Ok(false) => {
                if renewed.take().is_some() {
                    tracing::warn!(lease = %name, "lost the lease to another replica");
                }
                publish(false);
            }
            Err(error) => {
                if blocked.is_none() {
                    tracing::warn!(lease = %name, %error, "lease update failed");
                }
                // Stop writing before the others may consider the Lease expired.
                if renewed.is_some_and(|at| now.duration_since(at) >= timings.renew_deadline) {
                    tracing::warn!(lease = %name, "could not renew the lease in time; no longer leading");
                    renewed = None;
                    publish(false);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(next_attempt_in(blocked_streak, &timings)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if renewed.is_some() {
        leading.send_replace(false);
        report.leading.set(0);
        match release(&api, name, &me).await {
            Ok(()) => tracing::info!(lease = %name, "lease released"),
            Err(error) => tracing::warn!(lease = %name, %error, "could not release the lease"),
        }
    }
}

/// Tells the operator why the Lease cannot be used (on every attempt while it lasts, which the
/// backoff spaces out) and, once, that it can be used again.
fn log_blocked(blocked: Option<Blocked>, streak: u32, target: &Target, timings: &Timings) {
    let name = target.name.as_str();
    match (blocked, streak) {
        (None, n) if n > 0 => {
            tracing::info!(lease = %name, namespace = %target.namespace, "the status Lease is usable again")
        }
        (Some(b), _) => tracing::error!(
            lease = %name, namespace = %target.namespace, reason = b.as_str(),
            retry_in = ?next_attempt_in(streak + 1, timings),
            "{}", b.advice(&target.namespace, name)
        ),
        _ => {}
    }
}

/// One read and, if the rule says so, one write. `Ok(true)`: this replica holds the Lease.
async fn attempt(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    t: &Timings,
    seen: &mut Option<(Record, Instant)>,
    now: Instant,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    let record = current.as_ref().map(Record::of);
    // The expiry clock restarts whenever the record changes, on this replica's own clock.
    let seen_at = match (&*seen, &record) {
        (Some((prev, at)), Some(r)) if prev == r => *at,
        _ => now,
    };
    if let Some(r) = &record {
        *seen = Some((r.clone(), seen_at));
    }
    let seconds = t.lease_duration.as_secs() as i32;
    let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let written = match (step(record.as_ref(), me, seen_at, now, t), current) {
        (Step::Follow, _) => return Ok(false),
        (Step::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(stamp.clone()),
                    renew_time: Some(stamp),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (step, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if step == Step::Acquire {
                spec.holder_identity = Some(me.to_owned());
                spec.acquire_time = Some(stamp.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(stamp);
            // Guarded by resourceVersion: of two candidates only one update succeeds.
            api.replace(name, &PostParams::default(), &lease).await
        }
        (_, None) => unreachable!("only Create applies when there is no Lease"),
    };
    match written {
        Ok(lease) => {
            *seen = Some((Record::of(&lease), now));
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Hands the Lease over: holder cleared, so the next candidate takes it at once.
async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(me) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    api.replace(name, &PostParams::default(), &lease).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> Record {
        Record {
            holder: holder.into(),
            ..Record::default()
        }
    }

    #[test]
    fn the_election_rule() {
        let t = Timings::default();
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(step(None, "me", t0, t0, &t), Step::Create);
        assert_eq!(
            step(Some(&held_by("me")), "me", t0, later(60), &t),
            Step::Renew
        );
        assert_eq!(step(Some(&held_by("")), "me", t0, t0, &t), Step::Acquire);
        assert_eq!(
            step(Some(&held_by("other")), "me", t0, later(14), &t),
            Step::Follow
        );
        assert_eq!(
            step(Some(&held_by("other")), "me", t0, later(15), &t),
            Step::Acquire
        );
        assert!(t.renew_deadline < t.lease_duration);
    }

    fn api_error(code: u16, kind: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            details: Some(kube::core::response::StatusDetails {
                name: String::new(),
                group: String::new(),
                kind: kind.into(),
                uid: String::new(),
                causes: Vec::new(),
                retry_after_seconds: 0,
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn only_failures_an_operator_must_fix_block() {
        assert_eq!(
            Blocked::of(&api_error(404, "namespaces")),
            Some(Blocked::NamespaceMissing)
        );
        assert_eq!(
            Blocked::of(&api_error(403, "leases")),
            Some(Blocked::Forbidden)
        );
        for transient in [
            api_error(404, "leases"),
            api_error(409, "leases"),
            api_error(500, ""),
            api_error(503, ""),
            api_error(429, ""),
        ] {
            assert_eq!(Blocked::of(&transient), None, "{transient}");
        }
        let advice = Blocked::NamespaceMissing.advice("rolebridge-system", "rolebridge-webhook");
        assert!(advice.contains("--namespace") && advice.contains("\"rolebridge-system\""));
        let advice = Blocked::Forbidden.advice("rb", "rolebridge-webhook");
        assert!(advice.contains("leases") && advice.contains("--namespace"));
        // The verbs come from LEASE_ACCESS, the declaration the chart's Role is checked against.
        assert!(
            advice.contains(
                "grant it get, create and update on coordination.k8s.io leases in \"rb\" (the chart's Role does)"
            ),
            "{advice}"
        );
    }

    #[test]
    fn blocked_attempts_back_off_to_a_cap() {
        let t = Timings::default();
        assert_eq!(next_attempt_in(0, &t), t.retry_period);
        let waits: Vec<Duration> = (1..20).map(|n| next_attempt_in(n, &t)).collect();
        assert_eq!(waits[0], t.retry_period * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), BLOCKED_BACKOFF_CAP);
    }

    #[test]
    fn flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            leader: LeaderArgs,
        }
        let on = Cli::try_parse_from(["x"]).unwrap().leader;
        assert!(on.leader_election);
        assert_eq!(on.lease_name, "rolebridge-webhook");
        let off = Cli::try_parse_from(["x", "--leader-election=false", "--lease-name", "rb"])
            .unwrap()
            .leader;
        assert!(!off.leader_election);
        assert_eq!(off.lease_name, "rb");
    }

    #[test]
    fn identities_differ_per_process_start() {
        let (a, b) = (identity(), identity());
        assert_ne!(a, b);
        assert!(a.contains('_'));
    }
}
