//! `publish`, `presence` and `presence_stats`.

use serde_json::{json, Map, Value};
use tokio::io::AsyncRead;

use super::{string_param, valid_channel, Ends, Reader};
use crate::centrifugo::protocol::{self, Method};

impl<R: AsyncRead + Unpin> Reader<R> {
    /// `presence` and `presence_stats`: for a channel whose namespace keeps presence, to a
    /// subscriber where `allow_presence_for_subscriber`.
    pub(super) async fn presence(
        &mut self,
        id: u32,
        method: Method,
        params: &Map<String, Value>,
    ) -> Ends {
        let Some(channel) = string_param(params, "channel") else {
            self.error(id, protocol::BAD_REQUEST);
            return Ok(());
        };
        let Some(options) = self.services.config.options(channel) else {
            self.error(id, protocol::UNKNOWN_CHANNEL);
            return Ok(());
        };
        if !options.presence {
            self.error(id, protocol::NOT_AVAILABLE);
            return Ok(());
        }
        let subscribed = self.subs.get(channel).is_some_and(|sub| sub.is_active());
        if !(subscribed && options.allow_presence_for_subscriber) {
            self.error(id, protocol::PERMISSION_DENIED);
            return Ok(());
        }
        match self.services.channel_presence.members(channel).await {
            Ok(members) => {
                let result = if method == Method::Presence {
                    crate::centrifugo::presence::presence_result(&members)
                } else {
                    crate::centrifugo::presence::stats_result(&members)
                };
                self.send(protocol::reply(id, method, &result));
            }
            Err(e) => {
                tracing::warn!(error = %e, "channel presence: query failed");
                self.error(id, protocol::INTERNAL);
            }
        }
        Ok(())
    }

    pub(super) async fn publish(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let (Some(channel), Some(data)) = (
            string_param(params, "channel").filter(|c| valid_channel(c)),
            params.get("data"),
        ) else {
            self.error(id, protocol::BAD_REQUEST);
            return Ok(());
        };
        let Some(options) = self.services.config.options(channel) else {
            self.error(id, protocol::UNKNOWN_CHANNEL);
            return Ok(());
        };
        let subscribed = self.subs.get(channel).is_some_and(|sub| sub.is_active());
        // Never into an account's own feeds: `account:<A>`, or the stream `account_<A>` that
        // every user subscription of A hears.
        let allowed = !channel.starts_with("account:")
            && crate::routing::account_of_stream(channel).is_none()
            && (options.allow_publish_for_client
                || (options.allow_publish_for_subscriber && subscribed));
        if !allowed {
            self.error(id, protocol::PERMISSION_DENIED);
            return Ok(());
        }
        let payload = data.to_string();
        if payload.len() > self.services.max_publish {
            self.error(id, protocol::BAD_REQUEST);
            return Ok(());
        }
        let stored = crate::ingress::http::store(
            &self.services.pool,
            &self.services.plumbing.metrics,
            "centrifugo",
            &[(channel.to_string(), payload)],
        )
        .await;
        match stored {
            Ok(()) => self.send(protocol::reply(id, Method::Publish, &json!({}))),
            Err(e) => {
                tracing::warn!(error = %e, "storing a client publication failed");
                self.error(id, protocol::INTERNAL);
            }
        }
        Ok(())
    }
}
