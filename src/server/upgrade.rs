//! The WebSocket upgrade of `/cable`: which sub-protocol, which connection token, which
//! session to restore, then the session's task.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Method, Request, Response, StatusCode};

use super::text;
use super::Http;
use crate::auth::jwt::{self, Refusal, Verifier};

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

/// The sub-protocols the client offered (the header may repeat and hold lists).
pub(super) fn offered(request: &Request<Incoming>) -> impl Iterator<Item = &str> {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the client offered `protocol`.
pub(super) fn offers(request: &Request<Incoming>, protocol: &str) -> bool {
    offered(request).any(|p| p == protocol)
}

/// A query parameter's value.
pub(super) fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    })
}

pub(super) fn header(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The session an extended-protocol client asks to restore: `?sid=` or the header.
pub(super) fn restore_sid(request: &Request<Incoming>) -> Option<String> {
    query_param(request, "sid")
        .or_else(|| header(request, RESTORE_SID_HEADER))
        .filter(|sid| !sid.is_empty() && sid.len() <= 128)
}

/// The signed connection token of the request (`?jid=`, `X-JID`, sub-protocol
/// `anycable-token.<token>`), checked by `verifier`; `None` when none is given. Several must
/// be equal.
pub(super) fn connection_token(
    request: &Request<Incoming>,
    verifier: &Verifier,
) -> Option<Result<jwt::ConnectionToken, Refusal>> {
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
    Some(verifier.verify(&token, crate::clock::unix_seconds()))
}

pub(super) fn upgrade(http: Arc<Http>, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let metrics = &http.services.plumbing.metrics;
    if request.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let origin = request.headers().get(ORIGIN).and_then(|v| v.to_str().ok());
    if !crate::origin::allowed(&http.allowed_origins, origin) {
        tracing::debug!(origin, "upgrade refused: origin not allowed");
        metrics.refused("origin");
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if *http.services.plumbing.shutdown.borrow() {
        metrics.refused("shutting_down");
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Some(slot) = http.slots.try_take() else {
        metrics.refused("connection_limit");
        tracing::warn!(
            limit = http.slots.max(),
            "upgrade refused: connection limit reached"
        );
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        );
    };
    let ext = offers(&request, SUBPROTOCOL_EXT);
    let actioncable = ext || offers(&request, SUBPROTOCOL);
    let handshake = Box::new(crate::actioncable::session::Handshake {
        ext,
        restore_sid: if ext { restore_sid(&request) } else { None },
        token: http
            .jwt
            .as_ref()
            .and_then(|verifier| connection_token(&request, verifier)),
    });
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad websocket upgrade\n");
        }
    };
    tokio::spawn(crate::actioncable::session::serve(
        http.services.clone(),
        upgraded,
        handshake,
        slot,
    ));
    let (mut parts, _) = response.into_parts();
    if actioncable {
        // The official JS client ignores every frame when this header is missing.
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(if ext { SUBPROTOCOL_EXT } else { SUBPROTOCOL }),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}
