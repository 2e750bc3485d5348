//! The two inputs of the schedule that come from outside: the wall clock and the jitter. Kept
//! apart so that the pure parts ([`crate::schedule`], [`crate::creds::Slot`],
//! [`crate::token_state::TokenState`]) take them as plain numbers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 before 1970: a broken clock must not panic the agent).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Jitter source for the schedule: xorshift64*, seeded per process. Not cryptographic; it only
/// has to differ between pods started in the same second.
#[derive(Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn seeded(salt: u64) -> Self {
        let seed = (now_ms() as u64)
            ^ ((std::process::id() as u64) << 32)
            ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Jitter(seed | 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn sample(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_uniform_enough_and_in_range() {
        let mut j = Jitter::seeded(7);
        let xs: Vec<f64> = (0..10_000).map(|_| j.sample()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut a = Jitter::seeded(1);
        let mut b = Jitter::seeded(2);
        assert_ne!(a.sample(), b.sample());
    }
}
