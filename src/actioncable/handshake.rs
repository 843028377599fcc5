//! What an ActionCable upgrade request asks for: the sub-protocol (AnyCable's extended one
//! preferred), the session to restore, and the signed connection token (docs/reference.md
//! §8, §10).

use hyper::Request;

use crate::auth::jwt::{ConnectionToken, Refusal, Verifier};
use crate::connection::request::{header, offered, offers, query_param};

/// The sub-protocol of ActionCable.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";
/// AnyCable's extended protocol (docs/reference.md §8), preferred when offered.
pub const SUBPROTOCOL_EXT: &str = "actioncable-v1-ext-json";
/// The header a client may name the session to restore in (instead of `?sid=`).
const RESTORE_SID_HEADER: &str = "x-anycable-restore-sid";
/// The header that may carry a signed connection token (instead of `?jid=`).
const JID_HEADER: &str = "x-jid";
/// The sub-protocol prefix that may carry a signed connection token (browsers cannot set
/// headers on a WebSocket); never echoed.
const TOKEN_SUBPROTOCOL: &str = "anycable-token.";
/// The longest session id a restore may name.
const MAX_SID: usize = 128;

/// What the upgrade request asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handshake {
    /// The sub-protocol to answer with, if the client offered one of ours (the official
    /// client ignores every frame when the answer names none).
    pub subprotocol: Option<&'static str>,
    /// The extended protocol (`actioncable-v1-ext-json`) was negotiated.
    pub ext: bool,
    /// The session to restore (`?sid=` or `X-ANYCABLE-RESTORE-SID`), extended protocol only.
    pub restore_sid: Option<String>,
    /// The signed connection token, verified (only with a `verifier`, i.e.
    /// `CABLE_JWT_SECRET`).
    pub token: Option<Result<ConnectionToken, Refusal>>,
}

impl Handshake {
    /// Reads `request`; `now` is the time the token is checked at (seconds since the epoch).
    pub fn read<B>(request: &Request<B>, verifier: Option<&Verifier>, now: u64) -> Handshake {
        let ext = offers(request, SUBPROTOCOL_EXT);
        let subprotocol = if ext {
            Some(SUBPROTOCOL_EXT)
        } else {
            offers(request, SUBPROTOCOL).then_some(SUBPROTOCOL)
        };
        Handshake {
            subprotocol,
            ext,
            restore_sid: if ext { restore_sid(request) } else { None },
            token: verifier.and_then(|verifier| connection_token(request, verifier, now)),
        }
    }
}

/// The session an extended-protocol client asks to restore: `?sid=` or the header.
fn restore_sid<B>(request: &Request<B>) -> Option<String> {
    query_param(request, "sid")
        .or_else(|| header(request, RESTORE_SID_HEADER))
        .filter(|sid| !sid.is_empty() && sid.len() <= MAX_SID)
}

/// The signed connection token of the request (`?jid=`, `X-JID`, sub-protocol
/// `anycable-token.<token>`), checked by `verifier`; `None` when none is given. Several must
/// be equal.
fn connection_token<B>(
    request: &Request<B>,
    verifier: &Verifier,
    now: u64,
) -> Option<Result<ConnectionToken, Refusal>> {
    let mut given = query_param(request, "jid")
        .into_iter()
        .chain(header(request, JID_HEADER))
        .chain(
            offered(request)
                .filter_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL))
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    let token = given.next()?;
    if given.any(|other| other != token) {
        return Some(Err(Refusal::Unauthorized("tokens_differ")));
    }
    Some(verifier.verify(&token, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::Identity;

    const SECRET: &str = "handshake-test-secret";

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn token(user_id: i64, exp: u64) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"user_id": user_id, "account_id": 1, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn the_extended_protocol_is_preferred_and_only_it_restores() {
        let both = request(
            "/cable?sid=abc",
            &[(
                "sec-websocket-protocol",
                "actioncable-v1-json, actioncable-v1-ext-json",
            )],
        );
        let read = Handshake::read(&both, None, 0);
        assert_eq!(read.subprotocol, Some(SUBPROTOCOL_EXT));
        assert!(read.ext);
        assert_eq!(read.restore_sid.as_deref(), Some("abc"));

        let plain = request(
            "/cable?sid=abc",
            &[("sec-websocket-protocol", "actioncable-v1-json")],
        );
        let read = Handshake::read(&plain, None, 0);
        assert_eq!((read.subprotocol, read.ext), (Some(SUBPROTOCOL), false));
        assert_eq!(
            read.restore_sid, None,
            "a restore needs the extended protocol"
        );

        let none = Handshake::read(&request("/cable", &[]), None, 0);
        assert_eq!(none, Handshake::default());
    }

    #[test]
    fn a_restore_names_a_sid_of_bounded_length_by_query_or_header() {
        let ext = ("sec-websocket-protocol", SUBPROTOCOL_EXT);
        let by_header = request("/cable", &[ext, ("x-anycable-restore-sid", "from-header")]);
        assert_eq!(
            Handshake::read(&by_header, None, 0).restore_sid.as_deref(),
            Some("from-header")
        );
        let both = request("/cable?sid=q", &[ext, ("x-anycable-restore-sid", "h")]);
        assert_eq!(
            Handshake::read(&both, None, 0).restore_sid.as_deref(),
            Some("q")
        );
        let long = format!("/cable?sid={}", "x".repeat(MAX_SID + 1));
        assert_eq!(
            Handshake::read(&request(&long, &[ext]), None, 0).restore_sid,
            None
        );
        let empty = request("/cable?sid=", &[ext]);
        assert_eq!(Handshake::read(&empty, None, 0).restore_sid, None);
    }

    #[test]
    fn a_connection_token_comes_by_query_header_or_sub_protocol_and_must_agree() {
        let verifier = Verifier::new(SECRET).unwrap();
        let good = token(7, 2_000);
        let user = Ok(ConnectionToken {
            identity: Identity::User {
                user_id: 7,
                account_id: 1,
            },
            exp: 2_000,
        });
        let by_query = request(&format!("/cable?jid={good}"), &[]);
        assert_eq!(
            Handshake::read(&by_query, Some(&verifier), 1_000).token,
            Some(user)
        );
        let by_header = request("/cable", &[("x-jid", &good)]);
        assert_eq!(
            Handshake::read(&by_header, Some(&verifier), 1_000).token,
            Some(user)
        );
        let offered = format!("actioncable-v1-json, anycable-token.{good}");
        let by_protocol = request("/cable", &[("sec-websocket-protocol", &offered)]);
        let read = Handshake::read(&by_protocol, Some(&verifier), 1_000);
        assert_eq!(read.token, Some(user));
        assert_eq!(
            read.subprotocol,
            Some(SUBPROTOCOL),
            "the token is never echoed"
        );

        let other = token(8, 2_000);
        let differ = request(&format!("/cable?jid={good}"), &[("x-jid", &other)]);
        assert_eq!(
            Handshake::read(&differ, Some(&verifier), 1_000).token,
            Some(Err(Refusal::Unauthorized("tokens_differ")))
        );
        assert_eq!(
            Handshake::read(&by_query, Some(&verifier), 2_000).token,
            Some(Err(Refusal::Expired))
        );
        assert_eq!(
            Handshake::read(&by_query, None, 1_000).token,
            None,
            "off without a secret"
        );
        assert_eq!(
            Handshake::read(&request("/cable", &[]), Some(&verifier), 0).token,
            None
        );
    }
}
