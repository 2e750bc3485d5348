//! When to refresh a token and how long to wait after a failure.
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
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            refresh_fraction: 0.5,
            jitter_fraction: 0.1,
            min_delay: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
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

    proptest! {
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
