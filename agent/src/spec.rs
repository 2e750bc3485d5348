//! The `PATH=AUDIENCE` token mapping the webhook passes to every agent container.

use std::path::PathBuf;
use std::str::FromStr;

/// One token file and the audience its token is minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub path: PathBuf,
    pub audience: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("token mapping {0:?} is not PATH=AUDIENCE")]
    Syntax(String),
    #[error("token path {0:?} must be absolute")]
    Relative(String),
    #[error("token path {0:?} is configured twice")]
    Duplicate(String),
    #[error("no token configured: pass --token PATH=AUDIENCE or set ROLEBRIDGE_TOKENS")]
    Empty,
}

impl FromStr for TokenSpec {
    type Err = SpecError;

    /// Split at the first `=`: paths never contain one, audiences (URLs) may.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, audience) = s
            .split_once('=')
            .ok_or_else(|| SpecError::Syntax(s.into()))?;
        let (path, audience) = (path.trim(), audience.trim());
        if path.is_empty() || audience.is_empty() {
            return Err(SpecError::Syntax(s.into()));
        }
        if !path.starts_with('/') {
            return Err(SpecError::Relative(path.into()));
        }
        Ok(TokenSpec {
            path: PathBuf::from(path),
            audience: audience.into(),
        })
    }
}

/// The effective mapping: `--token` flags if any, else the comma-separated env value.
/// (The env form is split here rather than by clap, so that a flag value is never split at a
/// comma an audience might contain.)
pub fn resolve(flags: Vec<TokenSpec>, env: Option<&str>) -> Result<Vec<TokenSpec>, SpecError> {
    let specs = if flags.is_empty() {
        env.unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(TokenSpec::from_str)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        flags
    };
    if specs.is_empty() {
        return Err(SpecError::Empty);
    }
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.path == s.path) {
            return Err(SpecError::Duplicate(s.path.display().to_string()));
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_first_equals() {
        let s: TokenSpec = "/var/run/secrets/rolebridge.io/x.token=https://a.b/c?d=e:f"
            .parse()
            .unwrap();
        assert_eq!(
            s.path,
            PathBuf::from("/var/run/secrets/rolebridge.io/x.token")
        );
        assert_eq!(s.audience, "https://a.b/c?d=e:f");
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            "nope".parse::<TokenSpec>(),
            Err(SpecError::Syntax(_))
        ));
        assert!(matches!(
            "=aud".parse::<TokenSpec>(),
            Err(SpecError::Syntax(_))
        ));
        assert!(matches!(
            "/p=".parse::<TokenSpec>(),
            Err(SpecError::Syntax(_))
        ));
        assert!(matches!(
            "rel/p=a".parse::<TokenSpec>(),
            Err(SpecError::Relative(_))
        ));
    }

    #[test]
    fn env_form_and_precedence() {
        let env = Some("/a=sts.amazonaws.com, /b=https://x,");
        let v = resolve(vec![], env).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].audience, "https://x");
        let flag: TokenSpec = "/c=z".parse().unwrap();
        assert_eq!(resolve(vec![flag.clone()], env).unwrap(), vec![flag]);
        assert_eq!(resolve(vec![], None), Err(SpecError::Empty));
        assert_eq!(resolve(vec![], Some(" , ")), Err(SpecError::Empty));
        assert!(matches!(
            resolve(vec![], Some("/a=x,/a=y")),
            Err(SpecError::Duplicate(_))
        ));
    }
}
