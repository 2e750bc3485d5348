//! Watches that come back fast after an API-server outage.
//!
//! kube-runtime's `default_backoff()` is built for errors that persist: it doubles from 0.8 s
//! to 30 s and only resets after two minutes of success. After a control-plane upgrade that
//! means up to a minute of stale bindings, and the `410 Gone` ("too old resource version")
//! that a restarted API server answers first — which only asks for a fresh list — waits out
//! the same backoff. [`Retry`] distinguishes the two:
//! - `410 Gone`, from a watch event, a watch start or a list continuation: relist at once;
//! - any other error: a short exponential backoff (200 ms doubling to 3 s, with jitter, so
//!   replicas do not retry in lockstep) that resets on the first event the API server sends.
//!
//! A watch start rejected with 410 leaves kube's watcher retrying the same expired
//! resourceVersion forever, so [`run`] starts a new watcher (a fresh list) in that case.
//!
//! While the API server is away the caches keep serving what they had: admissions go on
//! from the last known bindings, and `/readyz` stays ready (see README, "Readiness").

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;

/// Implements `kube::Resource` for a slim type that a watch parses instead of `$full`, keeping
/// only what the webhook uses (its `metadata` field reduced at parse time): the API calls are
/// `$full`'s.
macro_rules! slim_resource {
    ($slim:ty, $full:ty) => {
        impl kube::Resource for $slim {
            type DynamicType = ();
            type Scope = <$full as kube::Resource>::Scope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                <$full as kube::Resource>::kind(&())
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                <$full as kube::Resource>::group(&())
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                <$full as kube::Resource>::version(&())
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                <$full as kube::Resource>::plural(&())
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use slim_resource;

/// What to do after a watch error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Poll the watcher again after this long.
    Wait(Duration),
    /// Start a new watcher (a fresh list) now.
    Restart,
}

/// The retry policy of one watch.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    initial: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry::new(Duration::from_millis(200), Duration::from_secs(3))
    }
}

fn is_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 410)
}

impl Retry {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Retry {
            initial,
            max,
            next: initial,
            seed,
        }
    }

    /// The API server answered: the next error starts from the shortest delay again.
    pub(crate) fn success(&mut self) {
        self.next = self.initial;
    }

    pub(crate) fn after(&mut self, error: &watcher::Error) -> After {
        match error {
            // The watcher has already dropped its resourceVersion and will relist.
            watcher::Error::WatchError(status) if status.code == 410 => After::Wait(Duration::ZERO),
            watcher::Error::InitialListFailed(e) if is_gone(e) => After::Wait(Duration::ZERO),
            // kube's watcher would retry the expired resourceVersion forever.
            watcher::Error::WatchStartFailed(e) if is_gone(e) => After::Restart,
            _ => {
                let delay = self.jitter(self.next);
                self.next = (self.next * 2).min(self.max);
                After::Wait(delay)
            }
        }
    }

    /// ±25 %, from a xorshift generator (no need for cryptographic randomness here).
    fn jitter(&mut self, d: Duration) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let factor = 0.75 + (self.seed % 1000) as f64 / 2000.0;
        d.mul_f64(factor)
    }
}

/// Whether an event came from the API server (`Init` does not: the watcher emits it before
/// it lists, so it must not reset the backoff).
fn answered<K>(event: &watcher::Event<K>) -> bool {
    !matches!(event, watcher::Event::Init)
}

/// Runs a watch until the process ends, feeding every event to `handle` and retrying per
/// [`Retry::default`]; `what` names the watch in logs.
pub(crate) async fn run<K, S, F>(
    what: &'static str,
    start: F,
    handle: impl FnMut(watcher::Event<K>),
) where
    K: Debug + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    F: FnMut() -> S,
{
    run_with(what, Retry::default(), start, handle).await;
}

/// [`run`] with another backoff, for a watch whose lag matters less than its noise.
pub(crate) async fn run_with<K, S, F>(
    what: &'static str,
    mut retry: Retry,
    mut start: F,
    mut handle: impl FnMut(watcher::Event<K>),
) where
    K: Debug + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    F: FnMut() -> S,
{
    loop {
        let stream = start();
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    if answered(&event) {
                        retry.success();
                    }
                    handle(event);
                }
                Some(Err(error)) => match retry.after(&error) {
                    After::Wait(delay) => {
                        if delay.is_zero() {
                            tracing::info!(watch = what, %error, "watch expired; relisting");
                        } else {
                            tracing::warn!(watch = what, %error, retry_in = ?delay, "watch error");
                        }
                        tokio::time::sleep(delay).await;
                    }
                    After::Restart => {
                        tracing::info!(watch = what, %error, "watch expired; starting over with a fresh list");
                        break;
                    }
                },
                None => {
                    tracing::warn!(watch = what, "watch stream ended; starting over");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn gone() -> Status {
        let mut s = Status::failure("too old resource version: 1 (5)", "Expired");
        s.code = 410;
        s
    }

    fn unavailable() -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new({
            let mut s = Status::failure("etcdserver: leader changed", "ServiceUnavailable");
            s.code = 503;
            s
        })))
    }

    #[test]
    fn gone_relists_at_once_and_errors_back_off_briefly_then_reset() {
        let mut r = Retry::default();
        assert_eq!(
            r.after(&watcher::Error::WatchError(Box::new(gone()))),
            After::Wait(Duration::ZERO)
        );
        assert_eq!(
            r.after(&watcher::Error::WatchStartFailed(kube::Error::Api(
                Box::new(gone())
            ))),
            After::Restart
        );
        assert_eq!(
            r.after(&watcher::Error::InitialListFailed(kube::Error::Api(
                Box::new(gone())
            ))),
            After::Wait(Duration::ZERO)
        );
        let delays: Vec<Duration> = (0..8)
            .map(|_| match r.after(&unavailable()) {
                After::Wait(d) => d,
                After::Restart => panic!("errors do not restart"),
            })
            .collect();
        assert!(delays[0] >= Duration::from_millis(150) && delays[0] <= Duration::from_millis(250));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_millis(3750)),
            "{delays:?}"
        );
        assert!(delays[7] >= Duration::from_millis(2250), "{delays:?}");
        r.success();
        match r.after(&unavailable()) {
            After::Wait(d) => assert!(d <= Duration::from_millis(250)),
            After::Restart => unreachable!(),
        }
    }

    #[test]
    fn init_does_not_count_as_an_answer() {
        assert!(!answered::<()>(&watcher::Event::Init));
        assert!(answered(&watcher::Event::InitDone::<()>));
        assert!(answered(&watcher::Event::Apply(())));
    }
}
