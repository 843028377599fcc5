//! ActionCable's Redis adapter, heard: a backend that runs `ActionCable.server.broadcast` with
//! `adapter: redis` in `config/cable.yml` PUBLISHes each broadcast on the Redis channel
//! `<channel_prefix>:<stream>` (or `<stream>` without a prefix). The gateway keeps one
//! subscriber connection with one pattern subscription for all of them (`<prefix>:*`, or `*`),
//! made before `/ready` says 200, so a broadcast made after any confirm reaches its
//! subscribers with no per-stream subscribe on the way; streams nobody here subscribes to cost
//! a hash lookup. `rediss://` URLs are TLS (rustls), checked against the public web roots or
//! `CABLE_REDIS_CA_CERT`.
//!
//! Lifecycle: connect → PSUBSCRIBE → live (`cable_ingress_up{ingress="redis"}` 1) → deliver
//! every message, PING every 10 s (a connection that stops answering is a dead one) → on
//! failure, not live → wait ([`crate::backoff`]) → again.
//! Broadcasts made while the connection is down are lost, as with Rails.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::streams::Streams;
use crate::backoff::Backoff;
use crate::config::tuning::{REDIS_PING_EVERY, REDIS_PING_TIMEOUT};
use crate::metrics::{IngressLabels, Metrics};

/// The `ingress` label of this ingress.
pub const INGRESS: &str = "redis";

/// Why the Redis settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error("CABLE_REDIS_URL is not a usable redis:// or rediss:// URL: {0}")]
    Url(redis::RedisError),
    #[error("cannot read CABLE_REDIS_CA_CERT {path}: {reason}")]
    CaCert { path: String, reason: String },
}

pub struct RedisIngress {
    client: redis::Client,
    url: String,
    pattern: String,
    prefix: Option<String>,
    streams: Arc<Streams>,
    metrics: Arc<Metrics>,
    live: watch::Sender<bool>,
}

/// `prefix` as a Redis glob matching it literally (`*`, `?`, `[`, `]` and `\` escaped).
fn glob_literal(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The stream a Redis channel carries, given the prefix: `<prefix>:<stream>` → `<stream>`.
pub fn stream_of<'a>(channel: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    match prefix {
        None => Some(channel),
        Some(prefix) => channel.strip_prefix(prefix)?.strip_prefix(':'),
    }
}

/// A client for `url` (TLS for `rediss://`, trusting `ca_cert` when given, else the public
/// web roots). It connects only when asked.
pub fn client(url: &str, ca_cert: Option<&Path>) -> Result<redis::Client, RedisConfigError> {
    match ca_cert {
        None => redis::Client::open(url).map_err(RedisConfigError::Url),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| RedisConfigError::CaCert {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(url, certs).map_err(RedisConfigError::Url)
        }
    }
}

impl RedisIngress {
    pub fn new(
        client: redis::Client,
        url: &str,
        prefix: Option<String>,
        streams: Arc<Streams>,
        metrics: Arc<Metrics>,
    ) -> RedisIngress {
        let pattern = match &prefix {
            Some(prefix) => format!("{}:*", glob_literal(prefix)),
            None => "*".to_string(),
        };
        RedisIngress {
            client,
            url: crate::db::redact(url),
            pattern,
            prefix,
            streams,
            metrics,
            live: watch::channel(false).0,
        }
    }

    /// `true` while the subscriber connection is live.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.live.subscribe()
    }

    fn set_live(&self, live: bool) {
        self.live.send_replace(live);
        self.metrics
            .ingress_up
            .get_or_create(&IngressLabels { ingress: INGRESS })
            .set(i64::from(live));
    }

    /// The Redis ingress task: runs until the process stops.
    pub async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            let result = self.once().await;
            let wait = backoff.next(*self.live.borrow());
            match result {
                Ok(()) => tracing::warn!(url = %self.url, "Redis subscriber connection closed"),
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, retry_in = ?wait, "Redis subscriber connection failed")
                }
            }
            self.set_live(false);
            tokio::time::sleep(wait).await;
            self.metrics
                .ingress_reconnects
                .get_or_create(&IngressLabels { ingress: INGRESS })
                .inc();
        }
    }

    async fn once(&self) -> redis::RedisResult<()> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.psubscribe(&self.pattern).await?;
        let (mut sink, mut messages) = pubsub.split();
        self.set_live(true);
        tracing::info!(url = %self.url, pattern = %self.pattern, "Redis subscriber connection live");
        let mut ping = tokio::time::interval(REDIS_PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Ok(()) };
                    let channel = message.get_channel_name();
                    if let Some(stream) = stream_of(channel, self.prefix.as_deref()) {
                        let _ = self.streams.deliver(INGRESS, stream, message.get_payload_bytes());
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(REDIS_PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no answer to PING",
                        ))),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_map_to_streams_as_rails_names_them() {
        let prefix = Some("chatwoot_production_action_cable");
        assert_eq!(
            stream_of("chatwoot_production_action_cable:abc", prefix),
            Some("abc")
        );
        assert_eq!(
            stream_of("chatwoot_production_action_cable:account_1", prefix),
            Some("account_1")
        );
        assert_eq!(stream_of("other:abc", prefix), None);
        assert_eq!(
            stream_of("chatwoot_production_action_cableabc", prefix),
            None
        );
        assert_eq!(stream_of("a:b:c", None), Some("a:b:c"));
        assert_eq!(stream_of("a:b:c", Some("a")), Some("b:c"));
    }

    #[test]
    fn prefixes_are_matched_literally() {
        assert_eq!(glob_literal("app_production"), "app_production");
        assert_eq!(glob_literal("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
