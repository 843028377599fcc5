//! Centrifugo's tokens (docs/reference.md §11): the connection token (HS256; `sub` the user,
//! optional `exp`, `channels` to subscribe at connect, `info` shown in presence) and the
//! subscription token (`sub` the connection's user, `channel`, optional `exp`, `info`). No
//! leeway on `exp`; every other claim is ignored.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Bad signature, another algorithm, malformed claims: the connection gets 3500.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// `exp` has passed: error 109 (the client fetches a new token and tries again).
    #[error("token expired")]
    Expired,
}

/// A verified connection token.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionClaims {
    pub user: String,
    pub exp: Option<u64>,
    pub channels: Vec<String>,
    pub info: Option<Value>,
}

/// A verified subscription token.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionClaims {
    pub user: String,
    pub channel: String,
    pub exp: Option<u64>,
    pub info: Option<Value>,
}

/// Verifies both kinds with one HMAC key.
pub struct Tokens {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(HS256)")
    }
}

/// The most channels a connection token may name.
pub const MAX_TOKEN_CHANNELS: usize = 128;

impl Tokens {
    /// `None` for an empty key.
    pub fn new(hmac_secret_key: &str) -> Option<Tokens> {
        if hmac_secret_key.is_empty() {
            return None;
        }
        let key = DecodingKey::from_secret(hmac_secret_key.as_bytes()).ok()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        Some(Tokens { key, validation })
    }

    fn claims(&self, token: &str, now: u64) -> Result<Map<String, Value>, Refused> {
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| Refused::Invalid(crate::auth::jwt::why(&e)))?
            .claims;
        if let Some(exp) = exp(&claims)? {
            if exp <= now {
                return Err(Refused::Expired);
            }
        }
        Ok(claims)
    }

    /// Verifies a connection token at `now` (seconds since the epoch).
    pub fn connection(&self, token: &str, now: u64) -> Result<ConnectionClaims, Refused> {
        let claims = self.claims(token, now)?;
        let channels = match claims.get("channels") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) if list.len() <= MAX_TOKEN_CHANNELS => list
                .iter()
                .map(|c| c.as_str().filter(|c| !c.is_empty()).map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or(Refused::Invalid("channels not strings"))?,
            Some(_) => return Err(Refused::Invalid("channels not a list")),
        };
        Ok(ConnectionClaims {
            user: user(&claims)?,
            exp: exp(&claims)?,
            channels,
            info: claims.get("info").cloned(),
        })
    }

    /// Verifies a subscription token at `now`.
    pub fn subscription(&self, token: &str, now: u64) -> Result<SubscriptionClaims, Refused> {
        let claims = self.claims(token, now)?;
        let channel = claims
            .get("channel")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or(Refused::Invalid("no channel"))?
            .to_string();
        Ok(SubscriptionClaims {
            user: user(&claims)?,
            channel,
            exp: exp(&claims)?,
            info: claims.get("info").cloned(),
        })
    }
}

fn user(claims: &Map<String, Value>) -> Result<String, Refused> {
    claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(Refused::Invalid("no sub"))
}

fn exp(claims: &Map<String, Value>) -> Result<Option<u64>, Refused> {
    match claims.get("exp") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(Refused::Invalid("exp not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn mint(alg: Algorithm, secret: &str, claims: Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn connection_tokens_carry_user_expiry_channels_and_info() {
        let tokens = Tokens::new("s").unwrap();
        let token = mint(
            Algorithm::HS256,
            "s",
            json!({"sub": "42", "exp": 2000, "channels": ["news", "user:42"], "info": {"name": "A"}}),
        );
        assert_eq!(
            tokens.connection(&token, 1000),
            Ok(ConnectionClaims {
                user: "42".into(),
                exp: Some(2000),
                channels: vec!["news".into(), "user:42".into()],
                info: Some(json!({"name": "A"})),
            })
        );
        assert_eq!(tokens.connection(&token, 2000), Err(Refused::Expired));
        let no_exp = mint(Algorithm::HS256, "s", json!({"sub": "7"}));
        assert_eq!(tokens.connection(&no_exp, u64::MAX).unwrap().exp, None);
    }

    #[test]
    fn bad_tokens_are_invalid() {
        let tokens = Tokens::new("s").unwrap();
        for token in [
            mint(Algorithm::HS256, "other", json!({"sub": "1"})),
            mint(Algorithm::HS384, "s", json!({"sub": "1"})),
            mint(Algorithm::HS256, "s", json!({"sub": ""})),
            mint(Algorithm::HS256, "s", json!({"sub": 1})),
            mint(Algorithm::HS256, "s", json!({"sub": "1", "exp": "soon"})),
            mint(
                Algorithm::HS256,
                "s",
                json!({"sub": "1", "channels": "news"}),
            ),
            mint(Algorithm::HS256, "s", json!({"sub": "1", "channels": [1]})),
            "not.a.token".to_string(),
        ] {
            assert!(
                matches!(tokens.connection(&token, 0), Err(Refused::Invalid(_))),
                "{token}"
            );
        }
        assert!(Tokens::new("").is_none());
    }

    #[test]
    fn subscription_tokens_name_user_and_channel() {
        let tokens = Tokens::new("s").unwrap();
        let token = mint(
            Algorithm::HS256,
            "s",
            json!({"sub": "42", "channel": "tickets:9", "exp": 2000}),
        );
        let claims = tokens.subscription(&token, 1000).unwrap();
        assert_eq!(
            (claims.user.as_str(), claims.channel.as_str()),
            ("42", "tickets:9")
        );
        assert_eq!(tokens.subscription(&token, 3000), Err(Refused::Expired));
        let no_channel = mint(Algorithm::HS256, "s", json!({"sub": "42"}));
        assert!(matches!(
            tokens.subscription(&no_channel, 0),
            Err(Refused::Invalid(_))
        ));
    }
}
