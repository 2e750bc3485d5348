//! The pure state of one token file's refresh loop ([`crate::token_files::keep_fresh`]): which
//! token the file holds, how many fetches in a row failed or brought back the same token, and
//! from that what to do next. The clock and the jitter are inputs, so every decision is a unit
//! test; the loop only fetches, writes, removes, logs and sleeps as told.
//!
//! The invariant it serves: the file holds a token only until that token expires. A failed
//! refresh keeps the held token (an outage of the metadata server shorter than the token's
//! remaining life is invisible to the app) but never sleeps past its expiry, because that
//! moment calls for removing the file.

use std::time::Duration;

use crate::jwt::Claims;
use crate::schedule::{self, Policy};

/// The token in the file as the schedule sees it: issue and expiry times, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub iat: Option<i64>,
    pub exp: i64,
}

impl From<&Claims> for Held {
    fn from(c: &Claims) -> Self {
        Held {
            iat: c.iat,
            exp: c.exp,
        }
    }
}

/// What a successful fetch leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Until the next fetch.
    pub delay: Duration,
    /// Fetches in a row that brought back the token already held (0: a new token). A
    /// metadata server that caches tokens, as GKE's does, may hand out the same one for a
    /// while past our refresh point; those fetches back off instead of polling.
    pub repeats: u32,
    /// Failed fetches before this one.
    pub after_failures: u32,
}

impl Fetched {
    pub fn same_token(&self) -> bool {
        self.repeats > 0
    }
}

/// What a failed fetch leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// Until the next attempt: the backoff, but no later than the held token's expiry.
    pub delay: Duration,
    /// Failed fetches in a row, this one included.
    pub attempt: u32,
    /// Expiry of the token the file still holds, if any.
    pub held_exp: Option<i64>,
}

/// One token file's refresh loop, without the I/O.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenState {
    held: Option<Held>,
    failures: u32,
    repeats: u32,
}

impl TokenState {
    /// The loop starts with the valid token found in the file, if any (a restarted sidecar
    /// finds the in-memory volume as it left it). Returns the delay before the first fetch: at
    /// once without a token, at the found token's refresh point with one.
    pub fn start(
        found: Option<Held>,
        policy: &Policy,
        now_ms: i64,
        jitter: f64,
    ) -> (Self, Duration) {
        let delay = match found {
            Some(h) => schedule::next_refresh(policy, h.iat, h.exp, now_ms, jitter),
            None => Duration::ZERO,
        };
        let state = TokenState {
            held: found,
            ..TokenState::default()
        };
        (state, delay)
    }

    /// Before a fetch: the held token if it has expired by `now_ms`, now forgotten. The loop
    /// must remove the file.
    pub fn take_expired(&mut self, now_ms: i64) -> Option<Held> {
        if self
            .held
            .is_some_and(|h| h.exp.saturating_mul(1000) <= now_ms)
        {
            self.held.take()
        } else {
            None
        }
    }

    /// The fetch of `got` succeeded at `now_ms` (and the file holds it).
    pub fn succeeded(&mut self, got: Held, policy: &Policy, now_ms: i64, jitter: f64) -> Fetched {
        self.repeats = if self.held == Some(got) {
            self.repeats.saturating_add(1)
        } else {
            0
        };
        let delay = schedule::after_fetch(policy, got.iat, got.exp, now_ms, jitter, self.repeats);
        self.held = Some(got);
        Fetched {
            delay,
            repeats: self.repeats,
            after_failures: std::mem::take(&mut self.failures),
        }
    }

    /// A fetch failed at `now_ms`; the file keeps what it holds. After a refusal
    /// ([`crate::pin::Refusal`]) the caller passes [`Policy::after_refusal`]: the next attempt
    /// backs off to minutes, still waking up when the held token expires.
    pub fn failed(&mut self, policy: &Policy, now_ms: i64, jitter: f64) -> Failed {
        self.failures = self.failures.saturating_add(1);
        let held_exp = self.held.map(|h| h.exp);
        Failed {
            delay: schedule::retry_delay(policy, self.failures, jitter, held_exp, now_ms),
            attempt: self.failures,
            held_exp,
        }
    }

    /// The token the file holds, as far as the loop knows.
    pub fn held(&self) -> Option<Held> {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000; // seconds
    const HOUR: i64 = 3600;

    fn p() -> Policy {
        Policy::default()
    }

    fn hour_token(iat: i64) -> Held {
        Held {
            iat: Some(iat),
            exp: iat + HOUR,
        }
    }

    fn ms(s: i64) -> i64 {
        s * 1000
    }

    fn at(now_ms: i64, d: Duration) -> i64 {
        now_ms + d.as_millis() as i64
    }

    #[test]
    fn without_a_token_the_first_fetch_is_at_once() {
        let (state, delay) = TokenState::start(None, &p(), ms(T0), 0.5);
        assert_eq!(delay, Duration::ZERO);
        assert_eq!(state.held(), None);
    }

    #[test]
    fn a_token_found_on_disk_is_kept_until_its_refresh_point() {
        // Issued ten minutes ago: the half-life is twenty minutes away.
        let found = hour_token(T0 - 600);
        let (state, delay) = TokenState::start(Some(found), &p(), ms(T0), 0.5);
        assert_eq!(delay, Duration::from_secs(1200));
        assert_eq!(state.held(), Some(found));
    }

    #[test]
    fn a_new_token_is_refreshed_at_half_life_and_reports_the_failures_before_it() {
        let policy = p();
        let (mut state, _) = TokenState::start(None, &policy, ms(T0), 0.5);
        for n in 1..=3 {
            assert_eq!(state.failed(&policy, ms(T0), 0.5).attempt, n);
        }
        let got = hour_token(T0);
        let f = state.succeeded(got, &policy, ms(T0), 0.5);
        assert_eq!(
            f,
            Fetched {
                delay: Duration::from_secs(1800),
                repeats: 0,
                after_failures: 3
            }
        );
        assert!(!f.same_token());
        assert_eq!(state.held(), Some(got));
        // The count starts again after a success.
        assert_eq!(state.failed(&policy, ms(T0 + 1800), 1.0).attempt, 1);
    }

    #[test]
    fn failures_back_off_but_never_sleep_past_the_held_tokens_expiry() {
        let policy = p();
        let (mut state, _) = TokenState::start(Some(hour_token(T0)), &policy, ms(T0), 0.5);
        let waits: Vec<u64> = (0..7)
            .map(|_| state.failed(&policy, ms(T0 + 1800), 1.0).delay.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        let f = state.failed(&policy, ms(T0 + HOUR - 5), 1.0);
        assert_eq!(f.delay, Duration::from_secs(5));
        assert_eq!(f.held_exp, Some(T0 + HOUR));
        // Without a token, the plain backoff.
        let (mut empty, _) = TokenState::start(None, &policy, ms(T0), 0.5);
        let f = empty.failed(&policy, ms(T0), 1.0);
        assert_eq!((f.delay, f.held_exp), (Duration::from_secs(1), None));
    }

    #[test]
    fn an_expired_token_is_taken_exactly_at_its_expiry() {
        let policy = p();
        let token = hour_token(T0);
        let (mut state, _) = TokenState::start(Some(token), &policy, ms(T0), 0.5);
        assert_eq!(state.take_expired(ms(T0 + HOUR) - 1), None);
        assert_eq!(state.take_expired(ms(T0 + HOUR)), Some(token));
        assert_eq!(state.held(), None);
        assert_eq!(state.take_expired(ms(T0 + HOUR)), None, "taken once");
    }

    #[test]
    fn the_same_token_again_backs_off_instead_of_polling() {
        let policy = p();
        let token = hour_token(T0);
        let (mut state, _) = TokenState::start(Some(token), &policy, ms(T0), 0.5);
        // Past the refresh point, the metadata server keeps handing out the cached token.
        let now = ms(T0 + 2200);
        let repeats: Vec<(u32, u64)> = (0..4)
            .map(|_| {
                let f = state.succeeded(token, &policy, now, 1.0);
                (f.repeats, f.delay.as_secs())
            })
            .collect();
        assert_eq!(repeats, [(1, 1), (2, 2), (3, 4), (4, 8)]);
        // A new token ends it.
        let f = state.succeeded(hour_token(T0 + 2200), &policy, now, 0.5);
        assert!(!f.same_token());
        assert_eq!(f.delay, Duration::from_secs(1800));
    }

    #[test]
    fn a_token_that_expired_is_not_the_same_token_when_fetched_again() {
        let policy = p();
        let token = hour_token(T0);
        let (mut state, _) = TokenState::start(Some(token), &policy, ms(T0), 0.5);
        state.take_expired(ms(T0 + HOUR));
        assert!(
            !state
                .succeeded(token, &policy, ms(T0 + HOUR), 0.5)
                .same_token()
        );
    }

    #[test]
    fn refusals_keep_the_held_token_until_it_expires_and_ask_rarely() {
        let policy = p();
        let refusals = policy.after_refusal();
        let token = hour_token(T0);
        let (mut state, _) = TokenState::start(Some(token), &policy, ms(T0), 0.5);
        let waits: Vec<u64> = (0..11)
            .map(|_| state.failed(&refusals, ms(T0 + 60), 1.0).delay.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(state.held(), Some(token), "a refusal writes nothing");
        let f = state.failed(&refusals, ms(T0 + HOUR - 10), 1.0);
        assert_eq!(
            (f.delay, f.held_exp),
            (Duration::from_secs(10), Some(T0 + HOUR))
        );
        // A token from the right account ends it, as after failures.
        let f = state.succeeded(hour_token(T0 + HOUR), &policy, ms(T0 + HOUR), 0.5);
        assert_eq!(f.after_failures, 12);
    }

    /// The loop as the shell drives it, with a fake clock: the metadata server fails for three
    /// hours after writing a one-hour token. The file keeps the token until it expires, is
    /// emptied exactly then, and gets a new token as soon as the server answers again.
    #[test]
    fn an_outage_longer_than_the_token_empties_the_file_at_expiry() {
        let policy = p();
        let (mut state, first) = TokenState::start(None, &policy, ms(T0), 0.5);
        let mut now = at(ms(T0), first);
        let mut delay = state.succeeded(hour_token(T0), &policy, now, 0.5).delay;
        let outage_end = ms(T0 + 3 * HOUR);
        let mut removed_at = None;
        loop {
            now = at(now, delay);
            if let Some(gone) = state.take_expired(now) {
                assert_eq!(gone.exp, T0 + HOUR);
                removed_at = Some(now);
            }
            if now >= outage_end {
                break;
            }
            let f = state.failed(&policy, now, 1.0);
            if let Some(exp) = f.held_exp {
                assert!(at(now, f.delay) <= ms(exp), "slept past the expiry");
            }
            delay = f.delay;
        }
        assert_eq!(removed_at, Some(ms(T0 + HOUR)));
        let back = state.succeeded(hour_token(now / 1000), &policy, now, 0.5);
        assert_eq!(back.delay, Duration::from_secs(1800));
        assert!(back.after_failures > 100, "{}", back.after_failures);
    }

    proptest! {
        /// Whatever the lifetime, the moment, and (40 in a row) the number of failures.
        #[test]
        fn a_failure_never_sleeps_past_a_held_token(
            (lifetime, elapsed_pct) in (10i64..86_400, 0i64..100),
            jitter in 0.0f64..1.0,
        ) {
            let token = Held { iat: Some(T0), exp: T0 + lifetime };
            let (mut state, _) = TokenState::start(Some(token), &p(), ms(T0), jitter);
            let now = ms(T0) + lifetime * 10 * elapsed_pct;
            for _ in 0..40 {
                let f = state.failed(&p(), now, jitter);
                prop_assert!(at(now, f.delay) <= ms(token.exp) && f.delay <= p().backoff_cap);
            }
        }
    }
}
