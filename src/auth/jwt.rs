//! Signed connection tokens (docs/reference.md §10): an HS256 JWT carried by the upgrade request
//! (`?jid=`, `X-JID`, or the sub-protocol `anycable-token.<token>`) names who the connection
//! is, until its `exp`.
//!
//! Claims: `exp` (required, seconds since the epoch, no leeway), and either `user_id` with
//! `account_id` (an agent in one account) or `contact_inbox_id` (a contact session). Ids may
//! be JSON numbers or numeric strings. Any other claim is ignored.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Who a connection token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    User { user_id: i64, account_id: i64 },
    Contact { contact_inbox_id: i64 },
}

/// A verified, unexpired connection token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionToken {
    pub identity: Identity,
    /// `exp`: the connection ends with `token_expired` at this second.
    pub exp: u64,
}

/// A connection authenticated by its token: who, until when, and the pubsub token its
/// subscriptions act with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionIdentity {
    pub identity: Identity,
    pub exp: u64,
    pub pubsub_token: std::sync::Arc<str>,
}

/// Why a connection token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Bad signature, another algorithm, malformed, missing `exp`, or naming nobody: the
    /// connection gets `unauthorized`. The text is the log's and the metric's reason.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// `exp` has passed: `token_expired`.
    #[error("token expired")]
    Expired,
}

/// Verifies connection tokens with the key of `CABLE_JWT_SECRET`.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HS256)")
    }
}

fn id_claim(claims: &Map<String, Value>, key: &str) -> Result<Option<i64>, Refusal> {
    crate::ids::numeric_id(claims.get(key)).map_err(|e| Refusal::Unauthorized(e.label()))
}

/// Why a signed token did not decode, as logs and metrics label it.
pub fn why(e: &jsonwebtoken::errors::Error) -> &'static str {
    match e.kind() {
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "wrong_algorithm",
        ErrorKind::MissingRequiredClaim(_) => "exp_missing",
        _ => "malformed",
    }
}

impl Verifier {
    /// `None` for an empty secret (the feature is off).
    pub fn new(secret: &str) -> Option<Verifier> {
        let key = DecodingKey::from_secret(secret.as_bytes()).ok()?;
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is checked here, to the second and without leeway; the library only makes
        // sure the claim is there.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Some(Verifier { key, validation })
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<ConnectionToken, Refusal> {
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| Refusal::Unauthorized(why(&e)))?
            .claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Refusal::Unauthorized("exp_not_a_number"))?;
        let identity = match (
            id_claim(&claims, "user_id")?,
            id_claim(&claims, "account_id")?,
            id_claim(&claims, "contact_inbox_id")?,
        ) {
            (Some(user_id), Some(account_id), None) => Identity::User {
                user_id,
                account_id,
            },
            (None, _, Some(contact_inbox_id)) => Identity::Contact { contact_inbox_id },
            (Some(_), None, None) => return Err(Refusal::Unauthorized("account_id_missing")),
            (Some(_), _, Some(_)) => return Err(Refusal::Unauthorized("user_and_contact")),
            (None, _, None) => return Err(Refusal::Unauthorized("names_nobody")),
        };
        if now >= exp {
            return Err(Refusal::Expired);
        }
        Ok(ConnectionToken { identity, exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "s3cret";

    fn mint(alg: Algorithm, secret: &str, claims: Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn verify(token: &str) -> Result<ConnectionToken, Refusal> {
        Verifier::new(SECRET).unwrap().verify(token, 1_000)
    }

    #[test]
    fn names_a_user_or_a_contact_session() {
        let user = mint(
            Algorithm::HS256,
            SECRET,
            json!({"user_id": 7, "account_id": "3", "exp": 1_001}),
        );
        assert_eq!(
            verify(&user),
            Ok(ConnectionToken {
                identity: Identity::User {
                    user_id: 7,
                    account_id: 3
                },
                exp: 1_001
            })
        );
        let contact = mint(
            Algorithm::HS256,
            SECRET,
            json!({"contact_inbox_id": 9, "exp": 2_000, "name": "x"}),
        );
        assert_eq!(
            verify(&contact).unwrap().identity,
            Identity::Contact {
                contact_inbox_id: 9
            }
        );
    }

    #[test]
    fn expired_exactly_at_exp() {
        let token = mint(
            Algorithm::HS256,
            SECRET,
            json!({"user_id": 7, "account_id": 3, "exp": 1_000}),
        );
        assert_eq!(verify(&token), Err(Refusal::Expired));
    }

    #[test]
    fn refuses_forged_or_incomplete_tokens() {
        let claims = json!({"user_id": 7, "account_id": 3, "exp": 5_000});
        let cases = [
            (
                mint(Algorithm::HS256, "other", claims.clone()),
                "bad_signature",
            ),
            (
                mint(Algorithm::HS512, SECRET, claims.clone()),
                "wrong_algorithm",
            ),
            (
                mint(
                    Algorithm::HS256,
                    SECRET,
                    json!({"user_id": 7, "account_id": 3}),
                ),
                "exp_missing",
            ),
            (
                mint(
                    Algorithm::HS256,
                    SECRET,
                    json!({"user_id": 7, "exp": 5_000}),
                ),
                "account_id_missing",
            ),
            (
                mint(
                    Algorithm::HS256,
                    SECRET,
                    json!({"account_id": 3, "exp": 5_000}),
                ),
                "names_nobody",
            ),
            (
                mint(
                    Algorithm::HS256,
                    SECRET,
                    json!({"user_id": "x", "account_id": 3, "exp": 5_000}),
                ),
                "id_not_numeric",
            ),
            ("not.a.jwt".to_owned(), "malformed"),
            (String::new(), "malformed"),
        ];
        for (token, why) in cases {
            assert_eq!(verify(&token), Err(Refusal::Unauthorized(why)), "{why}");
        }
        // alg "none": an unsigned token with a valid-looking payload.
        let unsigned = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            "eyJ1c2VyX2lkIjo3LCJhY2NvdW50X2lkIjozLCJleHAiOjUwMDB9"
        );
        assert!(matches!(verify(&unsigned), Err(Refusal::Unauthorized(_))));
    }

    #[test]
    fn an_empty_secret_is_off() {
        assert!(Verifier::new("").is_none());
    }
}
