//! Leader election against the stub API server: one leader at a time, a released Lease is
//! taken over within a retry period, a dead leader's after the lease duration, never sooner.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::watch;

use rolebridge_webhook::bindings::lease::{self, Timings};
use support::apiserver::{Kind, StubApi};

const T: Timings = Timings {
    lease_duration: Duration::from_millis(1500),
    renew_deadline: Duration::from_millis(1000),
    retry_period: Duration::from_millis(200),
};

struct Candidate {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(stub: &StubApi, me: &str) -> Candidate {
    let api: Api<Lease> = Api::namespaced(stub.client(), "rolebridge");
    let (tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(lease::run(
        api,
        lease::Target {
            namespace: "rolebridge".into(),
            name: "rolebridge-webhook".into(),
        },
        me.into(),
        T,
        lease::Channels {
            leading: tx,
            stop: stop_rx,
            report: lease::Report::default(),
        },
    ));
    Candidate {
        leading,
        stop,
        task,
    }
}

/// Samples the candidates until `until` holds for their states, asserting that no two ever
/// lead at once.
async fn observe(all: &[&Candidate], limit: Duration, until: impl Fn(&[bool]) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let states: Vec<bool> = all.iter().map(|c| *c.leading.borrow()).collect();
        assert!(
            states.iter().filter(|l| **l).count() <= 1,
            "two leaders at once: {states:?}"
        );
        if until(&states) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not within {limit:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_hand_over_on_release_and_take_over_after_expiry() {
    let stub = StubApi::start().await;
    let mut a = candidate(&stub, "a");
    // a creates the Lease; b starts once it exists.
    observe(&[&a], Duration::from_secs(3), |l| l[0]).await;
    let b = candidate(&stub, "b");
    // Steady state: a renews, b follows.
    let both = [&a, &b];
    let steady = observe(&both, Duration::from_secs(5), |l| !l[0] || l[1]);
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), steady)
            .await
            .is_err(),
        "a kept the lease"
    );
    let lease = stub
        .get(Kind::Lease, "rolebridge", "rolebridge-webhook")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");

    // A graceful stop releases: b leads within about one retry period.
    a.stop.send_replace(true);
    (&mut a.task).await.unwrap();
    let handover = observe(&[&a, &b], Duration::from_secs(2), |l| l[1]).await;
    assert!(
        handover < Duration::from_millis(800),
        "handover took {handover:?}"
    );

    // A leader that dies without releasing is replaced only once its lease has expired.
    let c = candidate(&stub, "c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*c.leading.borrow());
    b.task.abort();
    let died = Instant::now();
    let mut c_leading = c.leading.clone();
    tokio::time::timeout(Duration::from_secs(5), c_leading.wait_for(|l| *l))
        .await
        .expect("c takes over")
        .unwrap();
    let took = died.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_millis(2500),
        "took over after {took:?}"
    );
    let lease = stub
        .get(Kind::Lease, "rolebridge", "rolebridge-webhook")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "c");
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 2);
}
