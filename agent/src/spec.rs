//! The token mapping of the agent's command line. The `PATH=AUDIENCE` syntax itself is the
//! webhook↔agent contract ([`rolebridge_contract::TokenSpec`]); this adds the agent-only
//! `ROLEBRIDGE_TOKENS` fallback and the duplicate check.

use std::str::FromStr;

pub use rolebridge_contract::{ContractError, TokenSpec};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("token path {0:?} is configured twice")]
    Duplicate(String),
    #[error("no token configured: pass --token PATH=AUDIENCE or set ROLEBRIDGE_TOKENS")]
    Empty,
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
