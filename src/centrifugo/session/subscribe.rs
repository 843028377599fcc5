//! `subscribe`: who may subscribe to what, and how a subscription goes live (a channel in
//! the router, or `account:<A>` as the user); `unsubscribe` and `sub_refresh`.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::io::AsyncRead;

use super::{string_param, valid_channel, Ends, Reader};
use crate::auth::Principal;
use crate::centrifugo::presence::Member;
use crate::centrifugo::protocol::{self, Disconnect, Error, Method};
use crate::centrifugo::token::Refused;
use crate::centrifugo::wire;
use crate::delivery::Subscription;
use crate::ingress::postgres::PgAdapter;

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Makes a subscription to `channel` live; `confirm` is queued before its first
    /// publication. The built-in `account:<A>` channel acts as the user in A.
    pub(super) async fn go_live(
        &mut self,
        channel: &str,
        confirm: Option<Bytes>,
        join_leave: bool,
    ) -> Result<(), Error> {
        let services = self.services.clone();
        if let Some(account) = channel.strip_prefix("account:") {
            let principal = self.account_principal(account).await?;
            let (principal, token) = principal;
            let streams = crate::routing::streams(&principal, &token);
            let lease = PgAdapter::lease_for(services.rails_postgres.as_ref(), streams).await;
            let sub = Subscription::new(
                channel.into(),
                wire::framing(channel),
                self.session.clone(),
                &principal,
                None,
            );
            services
                .router
                .register(sub.clone(), principal, token.into(), confirm, lease, false);
            self.subs.insert(channel.to_string(), sub.clone());
            self.known(channel, &sub);
            self.join_presence(channel, &sub, join_leave).await;
            services.presence.answer(sub);
            return Ok(());
        }
        let streams = vec![channel.to_string()];
        let lease = PgAdapter::lease_for(services.rails_postgres.as_ref(), streams).await;
        let sub =
            Subscription::channel(channel.into(), wire::framing(channel), self.session.clone());
        services
            .router
            .register_channel(sub.clone(), channel.into(), confirm, lease);
        self.subs.insert(channel.to_string(), sub.clone());
        self.known(channel, &sub);
        self.join_presence(channel, &sub, join_leave).await;
        Ok(())
    }

    /// `sub` joins `channel`'s presence, where its namespace keeps presence (and every
    /// `account:<A>`); it hears joins and leaves if the namespace sends them and it asked
    /// (`join_leave`) or the namespace forces them.
    pub(super) async fn join_presence(
        &mut self,
        channel: &str,
        sub: &Arc<Subscription>,
        join_leave: bool,
    ) {
        let services = self.services.clone();
        let Some(options) = services.config.options(channel).filter(|o| o.presence) else {
            return;
        };
        let client = self.client.as_ref().expect("subscribed after connect");
        let member = Member {
            channel: channel.to_string(),
            client: client.id.clone(),
            user: client.user.clone(),
            conn_info: client.info.clone(),
        };
        let pushes = options.join_leave && (options.force_push_join_leave || join_leave);
        self.present.insert(channel.to_string());
        if let Err(e) = services.channel_presence.join(member, sub, pushes).await {
            // Its row is written by the next refresh.
            tracing::warn!(error = %e, channel, "channel presence: join not written");
        }
    }

    /// Tells the server API's orders of `sub`.
    pub(super) fn known(&self, channel: &str, sub: &Subscription) {
        if let Some(client) = &self.client {
            client
                .handle
                .channels
                .lock()
                .insert(channel.to_string(), sub.id);
        }
    }

    /// `channel`'s subscription ends: out of the router, and out of its presence.
    pub(super) async fn end(&mut self, channel: &str) {
        if let Some(client) = &self.client {
            client.handle.channels.lock().remove(channel);
        }
        if self.sub_exps.remove(channel).is_some() {
            self.watch_deadline();
        }
        if let Some(sub) = self.subs.remove(channel) {
            self.services.router.unregister(sub.id, None);
            if self.present.remove(channel) {
                let client = self.client.as_ref().map(|c| c.id.as_str()).unwrap_or("");
                self.services
                    .channel_presence
                    .leave(channel, client, sub.id)
                    .await;
            }
        }
    }

    /// The user of `account:<A>` (`account` is `<A>`): the connection's `sub` must be a
    /// `users.id` with an `account_users` row in A. Its principal and pubsub token.
    pub(super) async fn account_principal(
        &self,
        account: &str,
    ) -> Result<(Principal, String), Error> {
        let account_id = account
            .parse::<i64>()
            .ok()
            .filter(|a| *a > 0 && !account.starts_with(['+', '0']))
            .ok_or(protocol::UNKNOWN_CHANNEL)?;
        let user = self.client.as_ref().map(|c| c.user.as_str()).unwrap_or("");
        let user_id = user
            .parse::<i64>()
            .ok()
            .filter(|u| *u > 0)
            .ok_or(protocol::PERMISSION_DENIED)?;
        let unavailable = |e: crate::auth::AuthError| {
            tracing::warn!(error = %e, "database unavailable during a Centrifugo subscribe");
            protocol::INTERNAL
        };
        let token = crate::auth::store::user_token(&self.services.pool, user_id)
            .await
            .map_err(unavailable)?
            .ok_or(protocol::PERMISSION_DENIED)?;
        match self
            .services
            .auth
            .user(&token, account_id)
            .await
            .map_err(unavailable)?
        {
            Some(crate::auth::UserRecord {
                user_id: id,
                membership: Some(membership),
            }) if id == user_id => Ok((
                Principal::User {
                    account_id,
                    user_id,
                    membership,
                },
                token,
            )),
            _ => Err(protocol::PERMISSION_DENIED),
        }
    }

    pub(super) async fn subscribe(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let Some(channel) = string_param(params, "channel").filter(|c| valid_channel(c)) else {
            self.error(id, protocol::BAD_REQUEST);
            return Ok(());
        };
        let channel = channel.to_string();
        match self.subs.get(&channel) {
            Some(sub) if sub.is_active() => {
                self.error(id, protocol::ALREADY_SUBSCRIBED);
                return Ok(());
            }
            // Ended by the server meanwhile: a fresh attempt.
            Some(_) => {
                self.subs.remove(&channel);
            }
            None => {}
        }
        if self.subs.len() >= self.services.plumbing.limits.max_subscriptions {
            self.error(id, protocol::LIMIT_EXCEEDED);
            return Ok(());
        }
        let exp = match self.may_subscribe(&channel, params)? {
            Ok(exp) => exp,
            Err(refusal) => {
                self.error(id, refusal);
                return Ok(());
            }
        };
        let mut reply = json!({});
        if let Some(exp) = exp {
            reply["expires"] = json!(true);
            reply["ttl"] = json!(exp.saturating_sub(crate::clock::unix_seconds()));
            self.sub_exps.insert(channel.clone(), exp);
            self.watch_deadline();
        }
        let confirm = protocol::reply(id, Method::Subscribe, &reply);
        let join_leave = params.get("join_leave").and_then(Value::as_bool) == Some(true);
        if let Err(error) = self.go_live(&channel, Some(confirm), join_leave).await {
            self.error(id, error);
        }
        Ok(())
    }

    /// Whether the client may subscribe to `channel`: `Ok(Ok(()))`, an error for the reply,
    /// or a disconnect (a subscription token that is forged, or of another user or channel).
    pub(super) fn may_subscribe(
        &self,
        channel: &str,
        params: &Map<String, Value>,
    ) -> Result<Result<Option<u64>, Error>, Disconnect> {
        if channel.starts_with("account:") {
            // Checked against the database when it goes live.
            return Ok(Ok(None));
        }
        let Some(options) = self.services.config.options(channel) else {
            return Ok(Err(protocol::UNKNOWN_CHANNEL));
        };
        let user = self.client.as_ref().map(|c| c.user.as_str()).unwrap_or("");
        if let Some(token) = string_param(params, "token").filter(|t| !t.is_empty()) {
            let Some(tokens) = &self.services.tokens else {
                return Err(protocol::INVALID_TOKEN);
            };
            return match tokens.subscription(token, crate::clock::unix_seconds()) {
                Ok(claims) if claims.user == user && claims.channel == channel => {
                    Ok(Ok(claims.exp))
                }
                Ok(_) | Err(Refused::Invalid(_)) => Err(protocol::INVALID_TOKEN),
                Err(Refused::Expired) => Ok(Err(protocol::TOKEN_EXPIRED)),
            };
        }
        if crate::routing::account_of_stream(channel).is_some() {
            // The stream of an account's users (`account_<A>`): only a subscription token, a
            // backend's word, opens it; a namespace's options never do.
            return Ok(Err(protocol::PERMISSION_DENIED));
        }
        if options.allow_user_limited_channels {
            if let Some((_, users)) = channel.rsplit_once('#') {
                if users.split(',').any(|u| u == user) {
                    return Ok(Ok(None));
                }
            }
        }
        if options.allow_subscribe_for_client {
            return Ok(Ok(None));
        }
        Ok(Err(protocol::PERMISSION_DENIED))
    }

    pub(super) async fn unsubscribe(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let Some(channel) = string_param(params, "channel") else {
            self.error(id, protocol::BAD_REQUEST);
            return Ok(());
        };
        self.end(channel).await;
        self.send(protocol::reply(id, Method::Unsubscribe, &json!({})));
        Ok(())
    }

    /// `sub_refresh` `{channel, token}`: a new subscription token for a subscription made
    /// with one (a forged one, or one of another user or channel: 3500; expired: 3006).
    pub(super) fn sub_refresh(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let (Some(channel), Some(token)) = (
            string_param(params, "channel"),
            string_param(params, "token"),
        ) else {
            self.error(id, protocol::BAD_REQUEST);
            return Ok(());
        };
        if !self.sub_exps.contains_key(channel) {
            self.error(id, protocol::PERMISSION_DENIED);
            return Ok(());
        }
        let Some(tokens) = &self.services.tokens else {
            return Err(protocol::INVALID_TOKEN);
        };
        let user = self.client.as_ref().map(|c| c.user.as_str()).unwrap_or("");
        let claims = match tokens.subscription(token, crate::clock::unix_seconds()) {
            Ok(claims) if claims.user == user && claims.channel == channel => claims,
            Ok(_) | Err(Refused::Invalid(_)) => return Err(protocol::INVALID_TOKEN),
            Err(Refused::Expired) => return Err(protocol::SUBSCRIPTION_EXPIRED),
        };
        let mut reply = json!({});
        match claims.exp {
            Some(exp) => {
                self.sub_exps.insert(channel.to_string(), exp);
                reply["expires"] = json!(true);
                reply["ttl"] = json!(exp.saturating_sub(crate::clock::unix_seconds()));
            }
            None => {
                self.sub_exps.remove(channel);
            }
        }
        self.watch_deadline();
        self.send(protocol::reply(id, Method::SubRefresh, &reply));
        Ok(())
    }
}
