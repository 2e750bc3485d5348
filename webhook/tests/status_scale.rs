//! Status work against the stub API server: a burst of bindings is written once each (no
//! rewrite per pass), a steady cluster costs no writes at all, and one change costs one write.

mod support;

use std::time::{Duration, Instant};

use rolebridge_webhook::bindings::lease::Leadership;
use support::apiserver::StubApi;

async fn converged(stub: &StubApi, n: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    while stub.stats().converged < n {
        assert!(
            started.elapsed() < limit,
            "{} of {n} bindings Bound after {limit:?}",
            stub.stats().converged
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_binding_is_written_once_and_a_steady_cluster_costs_nothing() {
    let stub = StubApi::start().await;
    stub.populate(1000, 20);
    let _cache = support::run_bindings(stub.client(), None, Leadership::always(), 8);
    let took = converged(&stub, 1000, Duration::from_secs(60)).await;
    eprintln!("1000 existing bindings Bound in {took:?}");
    let status = stub.status_of("team-007", "binding-000007").unwrap();
    assert_eq!(
        status["roleArn"],
        "arn:aws:iam::123456789012:role/app-000007"
    );
    assert_eq!(status["conditions"][0]["reason"], "Bound");
    // Our own writes come back as watch events: they must not cause more writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stub.stats().status_writes, 1000);

    // A burst applied to the running webhook: written once each as well.
    stub.add_many(500, 20);
    let took = converged(&stub, 1500, Duration::from_secs(60)).await;
    eprintln!("500 new bindings Bound in {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = stub.stats().status_writes;
    assert!(
        (1500..=1510).contains(&writes),
        "{writes} writes for 1500 bindings"
    );
    let requests = stub.stats().requests;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stub.stats().requests,
        requests,
        "a steady cluster costs no API calls"
    );

    // One service account loses its Workload Identity annotation: one write, for its binding.
    stub.create_service_account("team-007", "app-000007", None);
    let started = Instant::now();
    loop {
        let status = stub.status_of("team-007", "binding-000007").unwrap();
        if status["conditions"][0]["reason"] == "WorkloadIdentityNotConfigured" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stub.stats().status_writes, writes + 1);
}
