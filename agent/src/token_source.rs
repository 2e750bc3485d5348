//! Where the web identity hop's token comes from: the metadata server (a Google ID token, held
//! to the [`Pin`]) or a file (a kubelet-projected service account token for `tokenSource:
//! Kubernetes`, or a CI system's ID token written to disk: GitLab's `id_tokens`, GitHub Actions'
//! OIDC token). One type for the credentials endpoint, `credential-process` and `verify`, so
//! the three read a token the same way.
//!
//! A token file is read again for **every** exchange: the kubelet rotates a projected token in
//! place (a new timestamped directory behind the `..data` symlink), and CI systems write a new
//! one per job. The read is bounded, and the token is checked as the metadata server's is (a
//! JWT, for the audience asked for, not expired) so that a missing, empty or stale file is a
//! clear error here rather than STS's `InvalidIdentityToken`. Its contents never reach a log
//! or an error.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jwt::{self, JwtError};
use crate::metadata::{self, FetchError, MetadataHost, Token};
use crate::pin::Pin;

/// A token file larger than this is not a token (Kubernetes tokens are 1-2 KiB).
pub const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Where to get the web identity token.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A Google ID token from the metadata server, for the pinned account.
    Metadata {
        host: MetadataHost,
        pin: Pin,
        timeout: Duration,
    },
    /// Whatever OIDC token the file holds, read at each use. The pin does not apply: the
    /// token is not Google's.
    File(PathBuf),
}

/// Why no token was obtained. Carries no token. Its message is whole (no `source`), so that
/// a log line and `main`'s chain of causes print it once.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot get a Google ID token: {0}")]
    Metadata(FetchError),
    #[error("web identity token file {path}: {problem}")]
    File { path: String, problem: FileProblem },
}

impl From<FetchError> for SourceError {
    fn from(e: FetchError) -> Self {
        SourceError::Metadata(e)
    }
}

/// What is wrong with a token file.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("not found (not projected yet, or the wrong path?)")]
    Missing,
    #[error("cannot be read: {0}")]
    Io(std::io::Error),
    #[error("is empty")]
    Empty,
    #[error("is larger than {MAX_TOKEN_FILE} bytes, so it is not a token")]
    TooLarge,
    #[error(transparent)]
    Invalid(#[from] JwtError),
}

impl SourceError {
    /// True when retrying soon cannot help (a [`crate::pin::Refusal`]).
    pub fn is_refusal(&self) -> bool {
        matches!(self, SourceError::Metadata(e) if e.refusal().is_some())
    }
}

impl TokenSource {
    /// A token for `audience`, valid at `now_s` (Unix seconds).
    pub async fn token(&self, audience: &str, now_s: i64) -> Result<Token, SourceError> {
        match self {
            TokenSource::Metadata { host, pin, timeout } => {
                Ok(metadata::fetch_token(host, audience, pin, *timeout, || now_s).await?)
            }
            TokenSource::File(path) => {
                read_token_file(path, audience, now_s).map_err(|problem| SourceError::File {
                    path: path.display().to_string(),
                    problem,
                })
            }
        }
    }

    /// How reports name the source: `metadata server HOST` or `token file PATH`.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::Metadata { host, .. } => format!("metadata server {}", host.display()),
            TokenSource::File(path) => format!("token file {}", path.display()),
        }
    }
}

/// Read and check the token in `path` for `audience` at `now_s`.
pub fn read_token_file(path: &Path, audience: &str, now_s: i64) -> Result<Token, FileProblem> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FileProblem::Missing,
        _ => FileProblem::Io(e),
    })?;
    let mut bytes = Vec::with_capacity(4096);
    file.take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(FileProblem::Io)?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(FileProblem::TooLarge);
    }
    // Tokens are ASCII; anything else fails the JWT check below without being echoed.
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return Err(FileProblem::Empty);
    }
    let claims = jwt::validate(text, audience, now_s)?;
    Ok(Token {
        jwt: text.to_owned(),
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::token;

    const NOW: i64 = 1_800_000_000;

    fn read(path: &Path) -> Result<Token, FileProblem> {
        read_token_file(path, "sts.amazonaws.com", NOW)
    }

    #[test]
    fn a_projected_token_is_read_with_its_claims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let jwt = token("sts.amazonaws.com", NOW - 10, NOW + 3600);
        std::fs::write(&path, format!("{jwt}\n")).unwrap();
        let t = read(&path).unwrap();
        assert_eq!(
            t.jwt, jwt,
            "surrounding whitespace is not part of the token"
        );
        assert_eq!(t.claims.exp, NOW + 3600);
    }

    #[test]
    fn each_problem_is_named_without_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        assert!(matches!(read(&path), Err(FileProblem::Missing)));
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(read(&path), Err(FileProblem::Empty)));
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_FILE as usize + 1]).unwrap();
        assert!(matches!(read(&path), Err(FileProblem::TooLarge)));
        std::fs::write(&path, token("sts.amazonaws.com", NOW - 7200, NOW - 3600)).unwrap();
        assert!(matches!(
            read(&path),
            Err(FileProblem::Invalid(JwtError::Expired { .. }))
        ));
        let other = token("other", NOW, NOW + 3600);
        std::fs::write(&path, &other).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("\"other\""), "{e}");
        assert!(!e.contains(&other));
        std::fs::write(&path, "secret-but-not-a-jwt").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(matches!(read(dir.path()), Err(FileProblem::Io(_))));
    }

    #[test]
    fn errors_print_once_through_the_chain_of_causes() {
        use std::error::Error;
        let refused = SourceError::from(FetchError::from(crate::pin::Refusal::NoEmail {
            expected: "a@b.c".into(),
        }));
        assert!(refused.source().is_none());
        assert!(
            refused
                .to_string()
                .contains("refused: the metadata server's token")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_file_source_never_asks_the_metadata_server_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.token");
        let source = TokenSource::File(path.clone());
        assert_eq!(source.describe(), format!("token file {}", path.display()));
        let e = source.token("sts.amazonaws.com", NOW).await.unwrap_err();
        assert!(!e.is_refusal());
        assert!(e.to_string().contains("missing.token"), "{e}");
        assert!(e.to_string().contains("not found"), "{e}");
    }
}
