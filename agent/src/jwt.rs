//! Decoding and checking the claims of a Google ID token.
//!
//! The signature is not verified: the token comes straight from the node's metadata server over
//! a link-local hop, and AWS STS verifies the signature against Google's keys anyway. What the
//! agent checks is what would make STS reject the token or make the application fail later in
//! a confusing way: that it is a JWT at all, that it is for the audience asked for, and that it
//! has not expired.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Claims of a Google-signed ID token that the agent cares about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub aud: Audience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Google writes a boolean; some issuers a string. Only an explicit `false` matters
    /// ([`crate::pin`] does not accept an unverified email as the pinned account).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_bool"
    )]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    pub exp: i64,
}

fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    })
}

/// `aud` is a string in Google's tokens; RFC 7519 also allows an array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// True only when the token is for exactly this audience (an array must hold just it).
    pub fn is_exactly(&self, expected: &str) -> bool {
        match self {
            Audience::One(a) => a == expected,
            Audience::Many(v) => v.len() == 1 && v[0] == expected,
        }
    }
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audience::One(a) => f.write_str(a),
            Audience::Many(v) => f.write_str(&v.join(",")),
        }
    }
}

/// Why a token was rejected. Never carries the token itself, so it is safe to log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JWT (expected three non-empty dot-separated parts, got {0})")]
    Shape(usize),
    #[error("JWT {part} is not valid base64url")]
    Base64 { part: &'static str },
    #[error("JWT {part} is not the expected JSON: {reason}")]
    Json { part: &'static str, reason: String },
    #[error("token audience {got:?} does not match the requested audience {expected:?}")]
    Audience { expected: String, got: String },
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: i64, now: i64 },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Decode the claims of `token` without judging them.
pub fn decode(token: &str) -> Result<Claims, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(JwtError::Shape(parts.len()));
    }
    let header = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| JwtError::Base64 { part: "header" })?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| JwtError::Json {
        part: "header",
        reason: e.to_string(),
    })?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::Json {
            part: "header",
            reason: "unsigned token (alg none)".into(),
        });
    }
    let payload = URL_SAFE_NO_PAD
        .decode(parts[1])
        .map_err(|_| JwtError::Base64 { part: "payload" })?;
    serde_json::from_slice(&payload).map_err(|e| JwtError::Json {
        part: "payload",
        reason: e.to_string(),
    })
}

/// Decode `token` and check that it is for `audience` and not expired at `now` (Unix seconds).
pub fn validate(token: &str, audience: &str, now: i64) -> Result<Claims, JwtError> {
    let claims = decode(token)?;
    if !claims.aud.is_exactly(audience) {
        return Err(JwtError::Audience {
            expected: audience.to_string(),
            got: claims.aud.to_string(),
        });
    }
    if claims.exp <= now {
        return Err(JwtError::Expired {
            exp: claims.exp,
            now,
        });
    }
    Ok(claims)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn make(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    pub(crate) fn token(aud: &str, iat: i64, exp: i64) -> String {
        make(
            r#"{"alg":"RS256","kid":"k","typ":"JWT"}"#,
            &format!(
                r#"{{"iss":"https://accounts.google.com","aud":"{aud}","azp":"1234","sub":"1234","email":"a@p.iam.gserviceaccount.com","iat":{iat},"exp":{exp}}}"#
            ),
        )
    }

    #[test]
    fn valid_google_token() {
        let c = validate(
            &token("sts.amazonaws.com", 100, 3700),
            "sts.amazonaws.com",
            200,
        )
        .unwrap();
        assert_eq!(c.exp, 3700);
        assert_eq!(c.iat, Some(100));
        assert_eq!(c.azp.as_deref(), Some("1234"));
        assert_eq!(c.email.as_deref(), Some("a@p.iam.gserviceaccount.com"));
        assert_eq!(c.email_verified, None);
    }

    #[test]
    fn email_verified_is_read_leniently() {
        for (raw, want) in [
            ("true", Some(true)),
            ("false", Some(false)),
            ("\"false\"", Some(false)),
            ("\"TRUE\"", Some(true)),
            ("1", None),
            ("null", None),
        ] {
            let t = make(
                r#"{"alg":"RS256"}"#,
                &format!(r#"{{"aud":"a","exp":5,"email_verified":{raw}}}"#),
            );
            assert_eq!(decode(&t).unwrap().email_verified, want, "{raw}");
        }
    }

    #[test]
    fn audience_with_url_characters() {
        let aud = "https://example.com/x?y=1:2";
        assert!(validate(&token(aud, 1, 100), aud, 2).is_ok());
    }

    #[test]
    fn wrong_audience_is_rejected() {
        let err = validate(&token("other", 1, 100), "sts.amazonaws.com", 2).unwrap_err();
        assert!(matches!(err, JwtError::Audience { .. }), "{err}");
    }

    #[test]
    fn array_audience_must_be_exactly_the_requested_one() {
        let one = make(r#"{"alg":"RS256"}"#, r#"{"aud":["a"],"exp":100}"#);
        assert!(validate(&one, "a", 1).is_ok());
        let two = make(r#"{"alg":"RS256"}"#, r#"{"aud":["a","b"],"exp":100}"#);
        assert!(matches!(
            validate(&two, "a", 1),
            Err(JwtError::Audience { .. })
        ));
    }

    #[test]
    fn expired_and_expiring_now_are_rejected() {
        assert_eq!(
            validate(&token("a", 1, 100), "a", 100),
            Err(JwtError::Expired { exp: 100, now: 100 })
        );
        assert!(validate(&token("a", 1, 100), "a", 500).is_err());
    }

    #[test]
    fn garbage_is_rejected_without_echoing_it() {
        for bad in [
            "",
            "garbage",
            "a.b",
            "a.b.c.d",
            "..",
            "a..c",
            "<html>500</html>",
        ] {
            let err = decode(bad).unwrap_err();
            assert!(
                matches!(err, JwtError::Shape(_) | JwtError::Base64 { .. }),
                "{bad}: {err}"
            );
        }
        let err = decode("!!!.e30.sig").unwrap_err();
        assert_eq!(err, JwtError::Base64 { part: "header" });
        let secret_payload = make(r#"{"alg":"RS256"}"#, r#"{"secret":"hunter2"}"#);
        let err = decode(&secret_payload).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn missing_claims_and_unsigned_are_rejected() {
        let no_exp = make(r#"{"alg":"RS256"}"#, r#"{"aud":"a"}"#);
        assert!(matches!(
            decode(&no_exp),
            Err(JwtError::Json {
                part: "payload",
                ..
            })
        ));
        let no_aud = make(r#"{"alg":"RS256"}"#, r#"{"exp":5}"#);
        assert!(decode(&no_aud).is_err());
        let none = make(r#"{"alg":"none"}"#, r#"{"aud":"a","exp":5}"#);
        assert!(matches!(
            decode(&none),
            Err(JwtError::Json { part: "header", .. })
        ));
        let not_json = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode("{"),
            URL_SAFE_NO_PAD.encode("{}")
        );
        assert!(matches!(
            decode(&not_json),
            Err(JwtError::Json { part: "header", .. })
        ));
    }
}
