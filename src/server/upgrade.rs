//! The WebSocket upgrade of `/cable`: what every upgrade must pass (a GET upgrade, an allowed
//! origin, a free connection slot, no shutdown under way), then ActionCable's handshake
//! ([`crate::actioncable::handshake`]) and the connection's task.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Method, Request, Response, StatusCode};

use super::text;
use super::CableRoute;
use crate::actioncable::handshake::Handshake;

pub(super) fn upgrade(route: &CableRoute, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let metrics = &route.services.plumbing.metrics;
    if request.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let origin = request.headers().get(ORIGIN).and_then(|v| v.to_str().ok());
    if !crate::origin::allowed(&route.allowed_origins, origin) {
        tracing::debug!(origin, "upgrade refused: origin not allowed");
        metrics.refused("origin");
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if *route.services.plumbing.shutdown.borrow() {
        metrics.refused("shutting_down");
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let Some(slot) = route.slots.try_take() else {
        metrics.refused("connection_limit");
        tracing::warn!(
            limit = route.slots.max(),
            "upgrade refused: connection limit reached"
        );
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        );
    };
    let handshake = Box::new(Handshake::read(
        &request,
        route.jwt.as_ref(),
        crate::clock::unix_seconds(),
    ));
    let subprotocol = handshake.subprotocol;
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad websocket upgrade\n");
        }
    };
    tokio::spawn(crate::actioncable::session::serve(
        route.services.clone(),
        upgraded,
        handshake,
        slot,
    ));
    let (mut parts, _) = response.into_parts();
    if let Some(subprotocol) = subprotocol {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(subprotocol),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}
