//! Centrifugo's server HTTP API (docs/reference.md §11): `POST /api/<method>` with
//! `X-API-Key`, in Centrifugo's request and result shapes. A publication is stored in the
//! outbox as a broadcast row on the stream of the channel's name, so every process delivers
//! it to its subscribers of the channel, in order.
//!
//! | request | answer |
//! |---|---|
//! | missing or wrong `X-API-Key` | 401, nothing published |
//! | a body that is not JSON | 400, nothing published |
//! | a request without what the method needs | 200 `{"error":{"code":107,"message":"bad request"}}`, nothing published |
//! | `publish` `{"channel","data"}` | `{"result":{}}` once stored |
//! | `broadcast` `{"channels":[..],"data"}` | `{"result":{"responses":[{"result":{}},..]}}`, all stored at once |
//! | `info` | `{"result":{"nodes":[..]}}`: this process |
//! | `unsubscribe` `{"channel","user"}`, `disconnect` `{"user","disconnect"?:{"code","reason"}}` | `{"result":{}}`; every process unsubscribes (an `unsubscribe` push) or disconnects (default 3503) that user's clients |
//! | `presence`, `presence_stats` `{"channel"}` | who is subscribed, on every process, where the namespace keeps presence (else 108; an unknown namespace 102) |
//! | a method of Centrifugo's not served yet | `{"error":{"code":108,"message":"not available"}}` |
//! | any other method | 404 |
//! | the database does not answer | `{"error":{"code":100,"message":"internal server error"}}` |

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::metrics::Metrics;

/// The `ingress` label of publications through this API.
pub const INGRESS: &str = "centrifugo_api";

/// The most channels one `broadcast` may name.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;

/// What the API needs.
pub struct Api {
    pub key: String,
    /// Channel presence, for `presence` and `presence_stats`.
    pub presence: std::sync::Arc<super::presence::ChannelPresence>,
    /// Which namespaces keep presence.
    pub config: super::config::CentrifugoConfig,
    pub pool: PgPool,
    pub metrics: std::sync::Arc<Metrics>,
    /// `CABLE_MAX_BROADCAST_SIZE`: the largest `data`.
    pub max_size: usize,
    pub started: std::time::Instant,
}

/// An answer: HTTP status and JSON body.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

fn ok(result: Value) -> Answer {
    Answer {
        status: 200,
        body: json!({ "result": result }),
    }
}

fn error(code: u32, message: &str) -> Answer {
    Answer {
        status: 200,
        body: json!({"error": {"code": code, "message": message}}),
    }
}

fn bad_request() -> Answer {
    error(107, "bad request")
}

/// Whether `given` (the `X-API-Key` header) is the key.
pub fn authorized(given: Option<&[u8]>, key: &str) -> bool {
    given.is_some_and(|given| crate::secret::equal(given, key.as_bytes()))
}

/// A channel name a backend may publish to.
fn channel(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty() && c.len() <= 255 && !c.chars().any(char::is_control))
        .map(str::to_string)
}

impl Api {
    /// Answers `POST /api/<method>` with `body` (the key already checked); `None` for a
    /// method Centrifugo does not have (404).
    pub async fn answer(&self, method: &str, body: &[u8]) -> Option<Answer> {
        let known = [
            "publish",
            "broadcast",
            "info",
            "presence",
            "presence_stats",
            "history",
            "history_remove",
            "unsubscribe",
            "subscribe",
            "disconnect",
            "refresh",
            "channels",
            "batch",
        ];
        if !known.contains(&method) {
            return None;
        }
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return Some(Answer {
                status: 400,
                body: json!({"error": {"code": 107, "message": "bad request: the body is not JSON"}}),
            });
        };
        if !request.is_object() {
            return Some(bad_request());
        }
        Some(match method {
            "publish" => {
                let (Some(channel), Some(data)) =
                    (channel(request.get("channel")), request.get("data"))
                else {
                    return Some(bad_request());
                };
                self.publish(&[channel], data).await.unwrap_or_else(|a| a)
            }
            "broadcast" => {
                let channels: Option<Vec<String>> = request
                    .get("channels")
                    .and_then(Value::as_array)
                    .filter(|list| !list.is_empty() && list.len() <= MAX_BROADCAST_CHANNELS)
                    .and_then(|list| list.iter().map(|c| channel(Some(c))).collect());
                let (Some(channels), Some(data)) = (channels, request.get("data")) else {
                    return Some(bad_request());
                };
                match self.publish(&channels, data).await {
                    Ok(_) => ok(json!({
                        "responses": channels.iter().map(|_| json!({"result": {}})).collect::<Vec<_>>()
                    })),
                    Err(answer) => answer,
                }
            }
            "info" => ok(json!({"nodes": [{
                "uid": crate::resume::sid::new_sid(),
                "name": "cable-gateway",
                "version": super::session::VERSION,
                "num_clients": self.metrics.connections_open.get(),
                "uptime": self.started.elapsed().as_secs(),
            }]})),
            "presence" | "presence_stats" => {
                let Some(channel) = channel(request.get("channel")) else {
                    return Some(bad_request());
                };
                match self.config.options(&channel) {
                    None => error(102, "unknown channel"),
                    Some(options) if !options.presence => error(108, "not available"),
                    Some(_) => match self.presence.members(&channel).await {
                        Ok(members) if method == "presence" => {
                            ok(super::presence::presence_result(&members))
                        }
                        Ok(members) => ok(super::presence::stats_result(&members)),
                        Err(e) => {
                            tracing::warn!(error = %e, "channel presence: query failed");
                            error(100, "internal server error")
                        }
                    },
                }
            }
            "unsubscribe" | "disconnect" => {
                let user = request
                    .get("user")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty());
                let Some(user) = user.map(str::to_string) else {
                    return Some(bad_request());
                };
                let order = if method == "unsubscribe" {
                    let Some(channel) = channel(request.get("channel")) else {
                        return Some(bad_request());
                    };
                    super::clients::Order::Unsubscribe { user, channel }
                } else {
                    let given = request.get("disconnect");
                    let code = given
                        .and_then(|d| d.get("code"))
                        .and_then(Value::as_u64)
                        .and_then(|c| u16::try_from(c).ok())
                        .filter(|c| (3000..5000).contains(c))
                        .unwrap_or(super::protocol::FORCE_NO_RECONNECT.code);
                    let reason = given
                        .and_then(|d| d.get("reason"))
                        .and_then(Value::as_str)
                        .unwrap_or(super::protocol::FORCE_NO_RECONNECT.reason)
                        .to_string();
                    super::clients::Order::Disconnect { user, code, reason }
                };
                match order.announce(&self.pool).await {
                    Ok(()) => ok(json!({})),
                    Err(e) => {
                        tracing::warn!(error = %e, "announcing a Centrifugo API order failed");
                        error(100, "internal server error")
                    }
                }
            }
            _ => error(108, "not available"),
        })
    }

    /// Stores `data` for every channel, in one statement.
    async fn publish(&self, channels: &[String], data: &Value) -> Result<Answer, Answer> {
        let payload = data.to_string();
        if payload.len() > self.max_size {
            return Err(bad_request());
        }
        let broadcasts: Vec<(String, String)> = channels
            .iter()
            .map(|channel| (channel.clone(), payload.clone()))
            .collect();
        match crate::ingress::http::store(&self.pool, &self.metrics, INGRESS, &broadcasts).await {
            Ok(()) => Ok(ok(json!({}))),
            Err(e) => {
                tracing::warn!(error = %e, "storing a Centrifugo API publication failed");
                Err(error(100, "internal server error"))
            }
        }
    }
}
