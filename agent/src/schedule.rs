//! When to refresh a token or a set of credentials, how long to wait after a failure, and
//! whether credentials may still be handed out.
//!
//! Pure functions of their inputs (times in Unix milliseconds, jitter as a number in `[0, 1)`)
//! so that every edge case is a unit test instead of a sleep. The I/O shell supplies the clock
//! and the randomness.

use std::time::Duration;

/// Tunables of the refresh schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Fraction of the token's lifetime after which it is refreshed.
    pub refresh_fraction: f64,
    /// Half-width of the jitter band around `refresh_fraction`, as a fraction of the lifetime.
    /// Spreads the refreshes of many pods started together (a rollout) over time.
    pub jitter_fraction: f64,
    /// Floor for any wait, so that a server handing out nearly expired tokens cannot make the
    /// agent spin.
    pub min_delay: Duration,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay: short enough to recover quickly once the metadata server is back.
    pub backoff_cap: Duration,
    /// Longest retry delay after a refusal ([`crate::pin::Refusal`]: the metadata server
    /// answered for another account, or the pod has no Google service account). Retrying
    /// cannot fix that, so the agent asks rarely instead of looking like an outage; still
    /// finite, so a fixed annotation is noticed.
    pub refusal_retry: Duration,
    /// Credentials are never handed out with less than this left (capped at a tenth of their
    /// lifetime, so that short test lifetimes still work): the app must be able to use them
    /// for a request or two, across some clock skew, before they lapse.
    pub safety_margin: Duration,
}

impl Policy {
    /// The policy for retries after a refusal ([`crate::pin::Refusal`]): the same backoff (a
    /// few quick retries cover a pod's first seconds, when GKE's metadata server may not know
    /// it yet), capped at `refusal_retry` instead of `backoff_cap`. Everything bounded by a
    /// held token's expiry or credentials' margin stays so.
    pub fn after_refusal(&self) -> Policy {
        Policy {
            backoff_cap: self.refusal_retry.max(self.backoff_cap),
            ..*self
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            refresh_fraction: 0.5,
            jitter_fraction: 0.1,
            min_delay: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            refusal_retry: Duration::from_secs(300),
            safety_margin: Duration::from_secs(60),
        }
    }
}

/// Delay from `now_ms` until the token issued at `iat` (seconds) and expiring at `exp` (seconds)
/// should be replaced.
///
/// The lifetime is `exp - iat`; when `iat` is missing or not before `exp`, the remaining
/// lifetime as seen from `now` is used instead. The refresh lands at
/// `refresh_fraction ± jitter_fraction` of the lifetime, never earlier than `min_delay` from now,
/// and (when the band allows it) always before `exp`.
pub fn next_refresh(
    policy: &Policy,
    iat: Option<i64>,
    exp: i64,
    now_ms: i64,
    jitter: f64,
) -> Duration {
    let exp_ms = exp.saturating_mul(1000);
    let start_ms = match iat {
        Some(iat) if iat < exp => iat.saturating_mul(1000),
        _ => now_ms.min(exp_ms),
    };
    refresh_delay_ms(policy, start_ms, exp_ms, now_ms, jitter)
}

/// [`next_refresh`] in milliseconds, for a lifetime from `start_ms` to `exp_ms`.
fn refresh_delay_ms(
    policy: &Policy,
    start_ms: i64,
    exp_ms: i64,
    now_ms: i64,
    jitter: f64,
) -> Duration {
    let start_ms = start_ms.min(exp_ms);
    let lifetime_ms = (exp_ms - start_ms) as f64;
    let jitter = jitter.clamp(0.0, 1.0);
    let fraction =
        (policy.refresh_fraction + (2.0 * jitter - 1.0) * policy.jitter_fraction).clamp(0.0, 1.0);
    let target_ms = start_ms as f64 + lifetime_ms * fraction;
    let delay_ms = target_ms - now_ms as f64;
    let min_ms = policy.min_delay.as_millis() as f64;
    Duration::from_millis(delay_ms.max(min_ms).round() as u64)
}

/// Delay after a successful fetch. `repeats` counts consecutive fetches that returned the token
/// already on disk (a metadata server that caches tokens, as GKE's does, may keep handing out
/// the same one for a while past our refresh point): those back off like failures instead of
/// asking again every `min_delay`, yet never past the token's expiry.
pub fn after_fetch(
    policy: &Policy,
    iat: Option<i64>,
    exp: i64,
    now_ms: i64,
    jitter: f64,
    repeats: u32,
) -> Duration {
    let next = next_refresh(policy, iat, exp, now_ms, jitter);
    if repeats == 0 {
        return next;
    }
    let until_exp = Duration::from_millis((exp.saturating_mul(1000) - now_ms).max(0) as u64);
    next.max(backoff(policy, repeats, jitter))
        .min(until_exp.max(policy.min_delay))
}

/// Retry delay before attempt number `attempt` (1 for the first retry): capped exponential
/// growth with "equal jitter", i.e. uniformly in `[d/2, d]` where `d = min(cap, base * 2^(attempt-1))`.
/// Half the delay stays deterministic so that retries never collapse to zero.
pub fn backoff(policy: &Policy, attempt: u32, jitter: f64) -> Duration {
    let base = policy.backoff_base.as_millis() as f64;
    let cap = policy.backoff_cap.as_millis() as f64;
    let exponent = attempt.saturating_sub(1).min(30) as i32;
    let ceiling = (base * 2f64.powi(exponent)).min(cap);
    let jitter = jitter.clamp(0.0, 1.0);
    let delay = ceiling / 2.0 + jitter * ceiling / 2.0;
    Duration::from_millis(delay.round() as u64)
}

/// How long to sleep after a failed refresh: the backoff, but no longer than until the token
/// on disk (if any) expires, because that moment requires action (removing it).
pub fn retry_delay(
    policy: &Policy,
    attempt: u32,
    jitter: f64,
    current_exp: Option<i64>,
    now_ms: i64,
) -> Duration {
    let delay = backoff(policy, attempt, jitter);
    match current_exp {
        Some(exp) => {
            let until_exp = exp.saturating_mul(1000) - now_ms;
            if until_exp <= 0 {
                Duration::ZERO
            } else {
                delay.min(Duration::from_millis(until_exp as u64))
            }
        }
        None => delay,
    }
}

/// The lifetime of one set of credentials as the schedule sees it: from when the agent got
/// them (its own clock, not STS's) to their `Expiration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub obtained_ms: i64,
    pub expires_ms: i64,
}

impl Lifetime {
    /// How much must be left for the credentials to be handed out: the policy's margin, at
    /// most a tenth of the lifetime.
    pub fn margin_ms(&self, policy: &Policy) -> i64 {
        let lifetime = (self.expires_ms - self.obtained_ms).max(0);
        (policy.safety_margin.as_millis() as i64).min(lifetime / 10)
    }

    /// The moment from which the credentials are no longer handed out.
    pub fn unservable_at_ms(&self, policy: &Policy) -> i64 {
        self.expires_ms - self.margin_ms(policy)
    }

    /// True while the credentials may be handed out at `now_ms`.
    pub fn servable(&self, policy: &Policy, now_ms: i64) -> bool {
        now_ms < self.unservable_at_ms(policy)
    }
}

/// Delay until credentials with lifetime `l` are replaced: at `refresh_fraction ± jitter` of
/// their lifetime (so always well before they stop being servable, which is at 90 % at the
/// earliest), never sooner than `min_delay`.
pub fn credentials_refresh(policy: &Policy, l: Lifetime, now_ms: i64, jitter: f64) -> Duration {
    refresh_delay_ms(policy, l.obtained_ms, l.expires_ms, now_ms, jitter)
}

/// Delay before retrying after failed attempt number `attempt`: the backoff, but when
/// servable credentials are held, no later than the moment they stop being servable (one more
/// try before the app is left without credentials), and never below `min_delay`.
pub fn credentials_retry(
    policy: &Policy,
    attempt: u32,
    jitter: f64,
    held: Option<Lifetime>,
    now_ms: i64,
) -> Duration {
    let delay = backoff(policy, attempt, jitter);
    match held {
        Some(l) if l.servable(policy, now_ms) => {
            let left = Duration::from_millis((l.unservable_at_ms(policy) - now_ms) as u64);
            delay.min(left).max(policy.min_delay.min(left))
        }
        _ => delay,
    }
}

/// True when a token expiring at `exp` counts as "about to expire" for probes: less than
/// `min_remaining` left, scaled down for short-lived tokens (at most a tenth of the lifetime),
/// so that a probe threshold sized for Google's one-hour tokens still makes sense for a
/// test server issuing ten-second tokens.
pub fn about_to_expire(iat: Option<i64>, exp: i64, now_ms: i64, min_remaining: Duration) -> bool {
    let exp_ms = exp.saturating_mul(1000);
    let remaining = exp_ms - now_ms;
    if remaining <= 0 {
        return true;
    }
    let threshold = match iat {
        Some(iat) if iat < exp => {
            let tenth = (exp_ms - iat.saturating_mul(1000)) / 10;
            (min_remaining.as_millis() as i64).min(tenth)
        }
        _ => min_remaining.as_millis() as i64,
    };
    remaining < threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3600;
    const T0: i64 = 1_800_000_000; // seconds

    fn p() -> Policy {
        Policy::default()
    }

    #[test]
    fn fresh_one_hour_token_refreshes_at_half_life_without_jitter() {
        let d = next_refresh(&p(), Some(T0), T0 + HOUR, T0 * 1000, 0.5);
        assert_eq!(d, Duration::from_secs(1800));
    }

    #[test]
    fn jitter_spans_forty_to_sixty_percent() {
        let lo = next_refresh(&p(), Some(T0), T0 + HOUR, T0 * 1000, 0.0);
        let hi = next_refresh(&p(), Some(T0), T0 + HOUR, T0 * 1000, 1.0);
        assert_eq!(lo, Duration::from_secs(1440));
        assert_eq!(hi, Duration::from_secs(2160));
    }

    #[test]
    fn time_already_elapsed_is_subtracted() {
        // Token issued 10 minutes ago: 20 minutes left until the half-life.
        let d = next_refresh(&p(), Some(T0), T0 + HOUR, (T0 + 600) * 1000, 0.5);
        assert_eq!(d, Duration::from_secs(1200));
    }

    #[test]
    fn overdue_token_refreshes_after_min_delay_not_immediately_in_a_loop() {
        let d = next_refresh(&p(), Some(T0), T0 + HOUR, (T0 + 3000) * 1000, 0.5);
        assert_eq!(d, p().min_delay);
        let expired = next_refresh(&p(), Some(T0), T0 + HOUR, (T0 + 2 * HOUR) * 1000, 0.5);
        assert_eq!(expired, p().min_delay);
    }

    #[test]
    fn missing_or_bogus_iat_uses_remaining_lifetime() {
        let now = (T0 + 100) * 1000;
        let none = next_refresh(&p(), None, T0 + 100 + 1000, now, 0.5);
        assert_eq!(none, Duration::from_secs(500));
        // iat after exp is nonsense: fall back to remaining lifetime as well.
        let bogus = next_refresh(&p(), Some(T0 + 5000), T0 + 100 + 1000, now, 0.5);
        assert_eq!(bogus, Duration::from_secs(500));
    }

    #[test]
    fn short_token_is_floored_by_min_delay() {
        let d = next_refresh(&p(), Some(T0), T0 + 1, T0 * 1000, 0.0);
        assert_eq!(d, Duration::from_secs(1));
    }

    #[test]
    fn clock_skew_iat_in_future_still_schedules_before_expiry() {
        // Issuer's clock is 30 s ahead of ours.
        let now = T0 * 1000;
        let d = next_refresh(&p(), Some(T0 + 30), T0 + 30 + HOUR, now, 1.0);
        assert!(d < Duration::from_secs((HOUR + 30) as u64));
        assert_eq!(d, Duration::from_secs(30 + 2160));
    }

    #[test]
    fn out_of_range_jitter_is_clamped() {
        let a = next_refresh(&p(), Some(T0), T0 + HOUR, T0 * 1000, -5.0);
        let b = next_refresh(&p(), Some(T0), T0 + HOUR, T0 * 1000, 0.0);
        assert_eq!(a, b);
        let c = next_refresh(&p(), Some(T0), T0 + HOUR, T0 * 1000, f64::INFINITY);
        assert_eq!(c, Duration::from_secs(2160));
    }

    #[test]
    fn repeated_cached_token_backs_off_instead_of_polling() {
        let policy = p();
        // Past the refresh point of a one-hour token, the server still returns the same one.
        let now = (T0 + 2200) * 1000;
        assert_eq!(
            after_fetch(&policy, Some(T0), T0 + HOUR, now, 1.0, 0),
            policy.min_delay
        );
        let waits: Vec<u64> = (1..=7)
            .map(|r| after_fetch(&policy, Some(T0), T0 + HOUR, now, 1.0, r).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
        // Never beyond expiry, but never below the floor either.
        let late = (T0 + HOUR - 5) * 1000;
        assert_eq!(
            after_fetch(&policy, Some(T0), T0 + HOUR, late, 1.0, 9),
            Duration::from_secs(5)
        );
        let after = (T0 + HOUR + 5) * 1000;
        assert_eq!(
            after_fetch(&policy, Some(T0), T0 + HOUR, after, 1.0, 9),
            policy.min_delay
        );
        // A not-yet-due schedule wins over a short backoff.
        let early = T0 * 1000;
        assert_eq!(
            after_fetch(&policy, Some(T0), T0 + HOUR, early, 0.5, 1),
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let policy = p();
        let ceil: Vec<u64> = (1..=8)
            .map(|a| backoff(&policy, a, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(
            ceil,
            vec![1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        let floor: Vec<u64> = (1..=8)
            .map(|a| backoff(&policy, a, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(
            floor,
            vec![500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]
        );
        assert_eq!(backoff(&policy, u32::MAX, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(&policy, 0, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_delay_stops_at_expiry_of_current_token() {
        let policy = p();
        let now = T0 * 1000;
        assert_eq!(
            retry_delay(&policy, 10, 1.0, Some(T0 + 5), now),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_delay(&policy, 10, 1.0, Some(T0 + 500), now),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_delay(&policy, 10, 1.0, Some(T0 - 1), now),
            Duration::ZERO
        );
        assert_eq!(
            retry_delay(&policy, 1, 1.0, None, now),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn about_to_expire_thresholds() {
        let five_min = Duration::from_secs(300);
        let now = T0 * 1000;
        // One-hour token: threshold is five minutes.
        assert!(!about_to_expire(Some(T0 - 1800), T0 + 1800, now, five_min));
        assert!(!about_to_expire(Some(T0 - 3299), T0 + 301, now, five_min));
        assert!(about_to_expire(Some(T0 - 3301), T0 + 299, now, five_min));
        // Ten-second token: threshold shrinks to one second.
        assert!(!about_to_expire(Some(T0 - 5), T0 + 5, now, five_min));
        assert!(!about_to_expire(Some(T0 - 9), T0 + 1, now - 1, five_min));
        assert!(about_to_expire(Some(T0 - 10), T0, now, five_min));
        // Expired is always about to expire; no iat uses the plain threshold.
        assert!(about_to_expire(None, T0 - 1, now, Duration::ZERO));
        assert!(about_to_expire(None, T0 + 200, now, five_min));
        assert!(!about_to_expire(None, T0 + 400, now, five_min));
    }

    fn life(obtained_s: i64, lifetime_s: i64) -> Lifetime {
        Lifetime {
            obtained_ms: obtained_s * 1000,
            expires_ms: (obtained_s + lifetime_s) * 1000,
        }
    }

    #[test]
    fn credentials_margin_is_a_minute_capped_at_a_tenth_of_the_lifetime() {
        let policy = p();
        assert_eq!(life(T0, 900).margin_ms(&policy), 60_000);
        assert_eq!(life(T0, 3600).margin_ms(&policy), 60_000);
        assert_eq!(life(T0, 30).margin_ms(&policy), 3_000);
        // Nonsense (expiry before we got them): nothing is servable.
        let backwards = Lifetime {
            obtained_ms: T0 * 1000,
            expires_ms: T0 * 1000 - 1,
        };
        assert_eq!(backwards.margin_ms(&policy), 0);
        assert!(!backwards.servable(&policy, T0 * 1000));
    }

    #[test]
    fn credentials_are_served_until_the_margin_and_never_after() {
        let policy = p();
        let l = life(T0, 900);
        assert!(l.servable(&policy, T0 * 1000));
        assert!(l.servable(&policy, (T0 + 839) * 1000));
        assert!(!l.servable(&policy, (T0 + 840) * 1000));
        assert!(!l.servable(&policy, (T0 + 900) * 1000));
        assert!(!l.servable(&policy, (T0 + 5000) * 1000));
    }

    #[test]
    fn credentials_refresh_at_half_life_with_jitter() {
        let policy = p();
        let l = life(T0, 900);
        assert_eq!(
            credentials_refresh(&policy, l, T0 * 1000, 0.5),
            Duration::from_secs(450)
        );
        assert_eq!(
            credentials_refresh(&policy, l, T0 * 1000, 0.0),
            Duration::from_secs(360)
        );
        assert_eq!(
            credentials_refresh(&policy, l, T0 * 1000, 1.0),
            Duration::from_secs(540)
        );
        // Already past the refresh point (e.g. the process was suspended): soon, not never.
        assert_eq!(
            credentials_refresh(&policy, l, (T0 + 600) * 1000, 0.5),
            policy.min_delay
        );
    }

    #[test]
    fn credentials_retry_backs_off_but_tries_again_before_they_become_unservable() {
        let policy = p();
        let l = life(T0, 900); // unservable from T0 + 840
        // Plenty left: plain backoff.
        assert_eq!(
            credentials_retry(&policy, 10, 1.0, Some(l), (T0 + 500) * 1000),
            Duration::from_secs(30)
        );
        // 5 s before the margin: retry then, not after.
        assert_eq!(
            credentials_retry(&policy, 10, 1.0, Some(l), (T0 + 835) * 1000),
            Duration::from_secs(5)
        );
        // Already unservable, or nothing held: plain backoff.
        assert_eq!(
            credentials_retry(&policy, 3, 1.0, Some(l), (T0 + 850) * 1000),
            Duration::from_secs(4)
        );
        assert_eq!(
            credentials_retry(&policy, 1, 0.0, None, T0 * 1000),
            Duration::from_millis(500)
        );
        // 200 ms before the margin: retry in 200 ms (the floor never pushes past the margin).
        assert_eq!(
            credentials_retry(&policy, 10, 1.0, Some(l), (T0 + 840) * 1000 - 200),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn refusals_back_off_to_minutes_not_seconds_yet_respect_expiry_and_margin() {
        let refusals = p().after_refusal();
        let waits: Vec<u64> = (1..=12)
            .map(|n| backoff(&refusals, n, 1.0).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Never shorter than an ordinary failure's cap, whatever the configuration.
        let odd = Policy {
            refusal_retry: Duration::from_secs(5),
            ..p()
        };
        assert_eq!(odd.after_refusal().backoff_cap, Duration::from_secs(30));
        // A held token still expires on time (the loop wakes up to remove it), held
        // credentials get one more try before they stop being servable.
        let l = life(T0, 900);
        let now = T0 * 1000;
        for (got, want_s) in [
            (retry_delay(&refusals, 20, 1.0, Some(T0 + 60), now), 60),
            (retry_delay(&refusals, 20, 1.0, None, now), 300),
            (
                credentials_retry(&refusals, 20, 1.0, Some(l), now + 800_000),
                40,
            ),
            (credentials_retry(&refusals, 20, 1.0, None, now), 300),
        ] {
            assert_eq!(got, Duration::from_secs(want_s));
        }
    }

    proptest! {
        #[test]
        fn credentials_refresh_lands_while_servable(
            obtained in 1_000_000_000i64..2_000_000_000,
            lifetime in 20i64..43_200,
            jitter in 0.0f64..1.0,
        ) {
            let policy = p();
            let l = life(obtained, lifetime);
            let now = obtained * 1000;
            let at = now + credentials_refresh(&policy, l, now, jitter).as_millis() as i64;
            prop_assert!(l.servable(&policy, at));
            prop_assert!(at > now);
        }

        #[test]
        fn credentials_retry_never_sleeps_past_the_margin(
            lifetime in 20i64..43_200,
            elapsed_pct in 0u32..100,
            attempt in 1u32..50,
            jitter in 0.0f64..1.0,
        ) {
            let policy = p();
            let l = life(T0, lifetime);
            let now = T0 * 1000 + lifetime * 10 * elapsed_pct as i64;
            let d = credentials_retry(&policy, attempt, jitter, Some(l), now);
            prop_assert!(d <= policy.backoff_cap);
            if l.servable(&policy, now) {
                prop_assert!(now + d.as_millis() as i64 <= l.unservable_at_ms(&policy));
            }
        }

        #[test]
        fn refresh_is_before_expiry_and_after_floor(
            iat in 1_000_000_000i64..2_000_000_000,
            lifetime in 10i64..86_400,
            elapsed_pct in 0u32..100,
            jitter in 0.0f64..1.0,
        ) {
            let exp = iat + lifetime;
            let now_ms = iat * 1000 + (lifetime * 1000 * elapsed_pct as i64) / 100;
            let policy = p();
            let d = next_refresh(&policy, Some(iat), exp, now_ms, jitter);
            prop_assert!(d >= policy.min_delay);
            let at = now_ms + d.as_millis() as i64;
            // Either the refresh happens no later than 60 % of the lifetime, or the floor forced it.
            let latest = iat * 1000 + lifetime * 600 + 1;
            prop_assert!(at <= latest || d == policy.min_delay);
            // With a lifetime above a few seconds, the refresh always lands before expiry.
            if elapsed_pct < 50 {
                prop_assert!(at < exp * 1000);
            }
        }

        #[test]
        fn backoff_is_monotonic_in_ceiling_and_bounded(attempt in 0u32..1000, jitter in 0.0f64..1.0) {
            let policy = p();
            let d = backoff(&policy, attempt, jitter);
            prop_assert!(d <= policy.backoff_cap);
            prop_assert!(d >= policy.backoff_base / 2);
            prop_assert!(backoff(&policy, attempt + 1, 1.0) >= backoff(&policy, attempt, 1.0));
        }
    }
}
