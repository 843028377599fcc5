//! The WebSocket upgrades: what every upgrade must pass ([`admit`]: a GET upgrade, an allowed
//! origin, no shutdown under way, a free connection slot), then the wire protocol's own
//! handshake and the connection's task: ActionCable's on `/cable`
//! ([`crate::actioncable::handshake`]), the topic WebSocket's on `CABLE_TOPICS_PATH` (its
//! token checked before the upgrade, [`crate::topics::session::authorize`]).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Method, Request, Response, StatusCode};

use super::text;
use super::{CableRoute, CentrifugoRoute, TopicsRoute};
use crate::actioncable::handshake::Handshake;
use crate::connection::slots::{Slot, Slots};
use crate::connection::Plumbing;
use crate::topics::session::Refused;

/// An HTTP answer.
type Answer = Response<Full<Bytes>>;

/// What every upgrade checks, whatever its protocol.
pub(super) struct Gate {
    pub(super) slots: Arc<Slots>,
    pub(super) allowed_origins: Vec<String>,
}

/// The checks every upgrade passes, in order; the connection's slot, or the answer that
/// refuses it.
fn admit(
    gate: &Gate,
    plumbing: &Plumbing,
    request: &Request<Incoming>,
) -> Result<Slot, Box<Answer>> {
    let metrics = &plumbing.metrics;
    if request.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(request) {
        return Err(Box::new(text(StatusCode::NOT_FOUND, "not found\n")));
    }
    let origin = request.headers().get(ORIGIN).and_then(|v| v.to_str().ok());
    if !crate::origin::allowed(&gate.allowed_origins, origin) {
        tracing::debug!(origin, "upgrade refused: origin not allowed");
        metrics.refused("origin");
        return Err(Box::new(text(
            StatusCode::FORBIDDEN,
            "origin not allowed\n",
        )));
    }
    if *plumbing.shutdown.borrow() {
        metrics.refused("shutting_down");
        return Err(Box::new(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n",
        )));
    }
    let Some(slot) = gate.slots.try_take() else {
        metrics.refused("connection_limit");
        tracing::warn!(
            limit = gate.slots.max(),
            "upgrade refused: connection limit reached"
        );
        return Err(Box::new(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        )));
    };
    Ok(slot)
}

/// Completes the upgrade's handshake; the response, and the future of the connection.
fn answer(
    mut request: Request<Incoming>,
) -> Result<(Answer, fastwebsockets::upgrade::UpgradeFut), Box<Answer>> {
    match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok((response, upgraded)) => {
            let (parts, _) = response.into_parts();
            Ok((
                Response::from_parts(parts, Full::new(Bytes::new())),
                upgraded,
            ))
        }
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "bad websocket upgrade\n",
            )))
        }
    }
}

pub(super) fn upgrade(route: &CableRoute, request: Request<Incoming>) -> Answer {
    let slot = match admit(&route.gate, &route.services.plumbing, &request) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let handshake = Box::new(Handshake::read(
        &request,
        route.jwt.as_ref(),
        crate::clock::unix_seconds(),
    ));
    let subprotocol = handshake.subprotocol;
    let (mut response, upgraded) = match answer(request) {
        Ok(pair) => pair,
        Err(refused) => return *refused,
    };
    tokio::spawn(crate::actioncable::session::serve(
        route.services.clone(),
        upgraded,
        handshake,
        slot,
    ));
    if let Some(subprotocol) = subprotocol {
        response.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(subprotocol),
        );
    }
    response
}

/// The topic WebSocket's upgrade: its token (`?token=`) must name a user before anything is
/// upgraded; otherwise 401 (503 while the database does not answer).
pub(super) async fn topics(route: &TopicsRoute, request: Request<Incoming>) -> Answer {
    let services = &route.services;
    let slot = match admit(&route.gate, &services.plumbing, &request) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let token = crate::connection::request::query_param(&request, "token");
    let grant = match crate::topics::session::authorize(
        services,
        token.as_deref(),
        crate::clock::unix_seconds(),
    )
    .await
    {
        Ok(grant) => grant,
        Err(Refused::Unauthorized(why)) => {
            tracing::info!(reason = why, "topic connection refused");
            services.plumbing.metrics.refused("unauthorized");
            return text(
                StatusCode::UNAUTHORIZED,
                "missing, unknown or expired token: connect with ?token=<a user's pubsub token or JWT>\n",
            );
        }
        Err(Refused::Unavailable) => {
            services.plumbing.metrics.refused("database_unavailable");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable, try again\n",
            );
        }
    };
    let (response, upgraded) = match answer(request) {
        Ok(pair) => pair,
        Err(refused) => return *refused,
    };
    tokio::spawn(crate::topics::session::serve(
        services.clone(),
        upgraded,
        Box::new(grant),
        slot,
    ));
    response
}

/// Centrifugo's client protocol: its token comes in the first command, not the request.
pub(super) fn centrifugo(route: &CentrifugoRoute, request: Request<Incoming>) -> Answer {
    let slot = match admit(&route.gate, &route.services.plumbing, &request) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let (response, upgraded) = match answer(request) {
        Ok(pair) => pair,
        Err(refused) => return *refused,
    };
    tokio::spawn(crate::centrifugo::session::serve(
        route.services.clone(),
        upgraded,
        slot,
    ));
    response
}
