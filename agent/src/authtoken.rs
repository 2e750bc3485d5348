//! The credentials endpoint's per-pod authorization token.
//!
//! Any process that can open a TCP connection to the pod's loopback could ask the endpoint for
//! credentials; the token narrows that to processes that can read the shared in-memory volume
//! (the containers the webhook mounted it into). 32 random bytes from the OS, hex-encoded,
//! written atomically without a trailing newline (botocore sends the file verbatim) and
//! world-readable (an app may run as another uid). A restarted agent reuses a well-formed token
//! it finds, so apps that read the file a moment ago stay authorized.

use std::fmt;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use crate::writer::{self, TOKEN_MODE, WriteError};

/// 32 bytes, hex.
const TOKEN_LEN: usize = 64;

/// The authorization token. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthTokenError {
    #[error("the OS random number generator failed")]
    Random,
    #[error("cannot write the credentials authorization token: {0}")]
    Write(#[from] WriteError),
}

fn well_formed(s: &str) -> bool {
    s.len() == TOKEN_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl AuthToken {
    pub fn generate() -> Result<Self, AuthTokenError> {
        let mut bytes = [0u8; TOKEN_LEN / 2];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| AuthTokenError::Random)?;
        Ok(AuthToken(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    /// The token in `path` if it is well formed, else a new one written there. Returns the
    /// token and whether it was reused.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), AuthTokenError> {
        if let Ok(existing) = std::fs::read_to_string(path)
            && well_formed(existing.trim_end())
        {
            let token = AuthToken(existing.trim_end().to_string());
            if existing.len() != TOKEN_LEN {
                // Someone added a newline: rewrite it as the SDKs want it.
                token.write(path)?;
            }
            return Ok((token, true));
        }
        let token = AuthToken::generate()?;
        token.write(path)?;
        Ok((token, false))
    }

    fn write(&self, path: &Path) -> Result<(), AuthTokenError> {
        writer::write_atomic(path, self.0.as_bytes(), TOKEN_MODE)?;
        Ok(())
    }

    /// Constant-time comparison with an `Authorization` header value. Trailing whitespace
    /// (a newline a user's tool added to the file) is ignored; nothing else is.
    pub fn matches(&self, header: &[u8]) -> bool {
        let mut end = header.len();
        while end > 0 && header[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        constant_time_eq(self.0.as_bytes(), &header[..end])
    }

    #[cfg(test)]
    pub fn from_test(s: &str) -> Self {
        AuthToken(s.into())
    }
}

/// Equal length and content, in time that depends only on the lengths (the token's length is
/// public: it is fixed).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_tokens_are_hex_distinct_and_redacted() {
        let a = AuthToken::generate().unwrap();
        let b = AuthToken::generate().unwrap();
        assert!(well_formed(&a.0));
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "AuthToken(<redacted>)");
    }

    #[test]
    fn written_without_newline_world_readable_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.auth");
        let (t1, reused) = AuthToken::load_or_create(&path).unwrap();
        assert!(!reused);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(on_disk, t1.0);
        assert!(!on_disk.ends_with('\n'));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let (t2, reused) = AuthToken::load_or_create(&path).unwrap();
        assert!(reused);
        assert_eq!(t1, t2);
        // A trailing newline is tolerated and removed.
        std::fs::write(&path, format!("{}\n", t1.0)).unwrap();
        let (t3, reused) = AuthToken::load_or_create(&path).unwrap();
        assert!(reused);
        assert_eq!(t3, t1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), t1.0);
        // Anything else is replaced.
        std::fs::write(&path, "short").unwrap();
        let (t4, reused) = AuthToken::load_or_create(&path).unwrap();
        assert!(!reused);
        assert_ne!(t4, t1);
    }

    #[test]
    fn matching_is_exact_up_to_trailing_whitespace() {
        let t = AuthToken::from_test(&"ab".repeat(32));
        let good = "ab".repeat(32);
        assert!(t.matches(good.as_bytes()));
        assert!(t.matches(format!("{good}\n").as_bytes()));
        assert!(t.matches(format!("{good}\r\n").as_bytes()));
        assert!(!t.matches(format!(" {good}").as_bytes()));
        assert!(!t.matches(&good.as_bytes()[..63]));
        assert!(!t.matches(format!("{good}a").as_bytes()));
        assert!(!t.matches(b""));
        assert!(!t.matches("AB".repeat(32).as_bytes()));
    }
}
