//! The accept loop, and the HTTP routes: `/health`, `/ready`, `/metrics`, `/_broadcast`,
//! the inspector, and the upgrade ([`super::upgrade`]).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::upgrade::upgrade;
use super::{text, with_status, BroadcastRoute, Http, Readiness};
use crate::config::tuning::{ACCEPT_RETRY, READY_QUERY_TIMEOUT};
use crate::inspect::{self};

pub(super) async fn accept_loop(
    http: Arc<Http>,
    listener: TcpListener,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(http.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

pub(super) async fn serve_connection(http: Arc<Http>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // hyper takes 16 KiB of buffers per connection as it starts (8 KiB to write, 8 KiB on the
    // first read), and gives them back when the upgrade is answered. Starting it only once the
    // request is there keeps a connect storm's clients that have not sent it yet at about
    // 1.3 KB each (this task and the socket's registration), instead of leaving 16 KiB apiece
    // freed between the connections that stay (an allocator that keeps freed memory, as
    // glibc's did, keeps such holes resident). A client silent for
    // `CABLE_FIRST_BYTES_TIMEOUT` is closed. `peek`, not `readable`: a fresh socket may report
    // readable before anything arrived. Once it has begun, the request's head must be complete
    // within the same time (hyper's header timeout; it would otherwise wait for ever on a
    // client that sends a byte now and then), and so must each later request on a kept-alive
    // connection.
    let mut first = [0u8; 1];
    match tokio::time::timeout(http.first_bytes_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => return, // closed before sending anything
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection failed before its request");
            return;
        }
        Err(_) => {
            tracing::debug!("connection closed: no request within the first-bytes timeout");
            return;
        }
    }
    let header_timeout = http.first_bytes_timeout;
    let service = service_fn(move |request| route(http.clone(), request));
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

pub(super) async fn route(
    http: Arc<Http>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Every connection's upgrade passes through this future, held by hyper while it answers;
    // the other endpoints' steps are boxed so that it stays small in a connect storm.
    if request.uri().path() == http.topics.path {
        return Ok(Box::pin(super::upgrade::topics(&http.topics, request)).await);
    }
    if let Some(method) = request.uri().path().strip_prefix("/api/") {
        let method = method.to_string();
        return Ok(match &http.centrifugo_api {
            Some(api) => Box::pin(centrifugo_api(api, &method, request)).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        });
    }
    Ok(match request.uri().path() {
        "/cable" => upgrade(&http.cable, request),
        "/connection/websocket" => match &http.centrifugo {
            Some(route) => super::upgrade::centrifugo(route, request),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        "/_broadcast" => match &http.broadcast {
            Some(api) => Box::pin(broadcast(api, request)).await,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        "/inspect" | "/inspect/data" => match &http.inspector {
            Some((inspector, token)) => {
                Box::pin(inspect::http::answer(inspector, token, &request)).await
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => Box::pin(ready(&http.readiness)).await,
        "/metrics" => {
            let body = http.metrics.encode();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// `POST /_broadcast` ([`crate::ingress::http`]).
pub(super) async fn broadcast(
    api: &BroadcastRoute,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    use crate::ingress::http as http_api;
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let given = request.headers().get(hyper::header::AUTHORIZATION);
    if !http_api::authorized(given.map(|v| v.as_bytes()), &api.key) {
        return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer key\n");
    }
    let body = match read_body(request, http_api::body_limit(api.max_size)).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let answer = match http_api::parse(&body, api.max_size) {
        Ok(broadcasts) => http_api::publish(&api.pool, &api.metrics, &broadcasts).await,
        Err(refused) => refused,
    };
    with_status(answer.status, answer.body + "\n")
}

/// A request's body, at most `limit` bytes (413 beyond, 400 if it cannot be read).
async fn read_body(
    request: Request<Incoming>,
    limit: usize,
) -> Result<Bytes, Response<Full<Bytes>>> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(request.into_body(), limit)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(with_status(
            413,
            format!("the body is over {limit} bytes\n"),
        )),
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "could not read the body\n")),
    }
}

/// Centrifugo's server API ([`crate::centrifugo::api`]).
async fn centrifugo_api(
    api: &crate::centrifugo::api::Api,
    method: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let given = request.headers().get("x-api-key");
    if !crate::centrifugo::api::authorized(given.map(|v| v.as_bytes()), &api.key) {
        return text(StatusCode::UNAUTHORIZED, "missing or wrong X-API-Key\n");
    }
    let limit = crate::ingress::http::body_limit(api.max_size);
    let body = match read_body(request, limit).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    match api.answer(method, &body).await {
        Some(answer) => {
            let mut response = with_status(answer.status, answer.body.to_string());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

pub(super) async fn ready(readiness: &Readiness) -> Response<Full<Bytes>> {
    if !*readiness.listen.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "LISTEN connection down\n");
    }
    for (ingress, ready) in &readiness.ingress {
        if !*ready.borrow() {
            let body = format!("{ingress} connection down\n");
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return response;
        }
    }
    let ping = sqlx::query("SELECT 1").execute(&readiness.pool);
    match tokio::time::timeout(READY_QUERY_TIMEOUT, ping).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n"),
    }
}
