//! One connection of Centrifugo's client protocol (docs/reference.md §11): `connect` first
//! (a connection token, its server-side channels), then the client's commands in order:
//! `subscribe` (by subscription token, user-limited channel, namespace option, or the
//! built-in `account:<A>`), `unsubscribe`, `publish`, `refresh`; every channel subscription
//! lives in the router, so a channel gets whatever is addressed to the stream of its name,
//! on every process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tokio::io::AsyncRead;
use tokio::sync::watch;

use super::clients::{Clients, Handle};
use super::config::CentrifugoConfig;
use super::presence::{ChannelPresence, Member};
use super::protocol::{self, Disconnect, Error, Line, Method};
use super::proxy::{ConnectProxy, Decision};
use super::token::{Refused, Tokens};
use super::wire::{self, Goodbyes};
use crate::auth::{AuthCache, Principal};
use crate::connection::frame::{Messages, Next, WireFault};
use crate::connection::rate::RateLimit;
use crate::connection::socket::Shared;
use crate::connection::{writer, Ended, Plumbing};
use crate::delivery::{CloseReason, DisconnectReason, Outbound, SessionHandle, Subscription};
use crate::ingress::postgres::PgAdapter;
use crate::router::{Keep, Router};

/// How long a connection may take to send its `connect`.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// How long past a ping interval the client's pong (or any frame) may take.
pub const PONG_GRACE: Duration = Duration::from_secs(10);
/// The version the connect reply names.
pub const VERSION: &str = concat!("cable-gateway ", env!("CARGO_PKG_VERSION"));

/// Exactly what a Centrifugo connection needs of the process.
pub struct Services {
    pub plumbing: Plumbing,
    pub router: Arc<Router>,
    pub auth: AuthCache,
    pub pool: PgPool,
    pub rails_postgres: Option<Arc<PgAdapter>>,
    /// `account:<A>` subscriptions keep their user online and get the account's presence,
    /// as a dashboard's do.
    pub presence: Arc<crate::presence::Presence>,
    /// Presence of channels whose namespace keeps it, on every process.
    pub channel_presence: Arc<ChannelPresence>,
    /// This process's clients by user, for the server API's orders.
    pub clients: Arc<Clients>,
    /// Verifies connection and subscription tokens, when a key is configured.
    pub tokens: Option<Tokens>,
    /// Where a connect without a token is sent, when configured.
    pub proxy: Option<ConnectProxy>,
    /// Channel options by namespace.
    pub config: CentrifugoConfig,
    /// Largest payload a client may publish (`CABLE_MAX_BROADCAST_SIZE`).
    pub max_publish: usize,
}

/// Serves one connection from its upgrade until it ends, holding its connection `slot`.
pub async fn serve(
    services: Arc<Services>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    slot: crate::connection::slots::Slot,
) {
    let _slot = slot;
    let Some(accepted) = crate::connection::accept(upgrade).await else {
        return;
    };
    let plumbing = &services.plumbing;
    let socket = accepted.socket.clone();
    let opened = plumbing.open(Some(accepted.socket.clone()), wire::push_ping);
    let session = opened.session.clone();
    let queue = session.queue.clone();
    let goodbyes = Arc::new(Goodbyes::default());
    let (expiry, expires) = watch::channel(None);
    let seen = Arc::new(AtomicU64::new(0));
    let mut reader = Reader {
        messages: Messages::new(
            Shared(accepted.socket.clone()),
            plumbing.limits.max_frame_size,
            accepted.early,
        ),
        rate: RateLimit::new(plumbing.limits.max_command_rate),
        services: services.clone(),
        session,
        goodbyes: goodbyes.clone(),
        client: None,
        subs: HashMap::new(),
        present: Default::default(),
        exp: None,
        sub_exps: HashMap::new(),
        expiry,
        seen: seen.clone(),
    };
    let writer = writer::run(
        Shared(accepted.socket),
        None,
        &queue,
        &plumbing.metrics,
        &*goodbyes,
    );
    tokio::pin!(writer);
    let reader_ended = tokio::select! {
        reason = reader.run() => Some(reason),
        disconnect = watch_expiry(expires) => {
            goodbyes.choose(disconnect);
            Some(CloseReason::Disconnect(DisconnectReason::TokenExpired))
        }
        disconnect = watch_liveness(&seen) => {
            goodbyes.choose(disconnect);
            Some(CloseReason::Disconnect(DisconnectReason::InvalidRequest))
        }
        () = &mut writer => None,
    };
    let holder = reader
        .subs
        .values()
        .find_map(|sub| services.router.principal_of(sub.id));
    let subscriptions = reader.subs.len();
    let channels: Vec<String> = reader.subs.keys().cloned().collect();
    for channel in channels {
        reader.end(&channel).await;
    }
    if let Some(client) = &reader.client {
        services.clients.remove(&client.user, &client.handle);
    }
    drop(reader);
    if let Some(reason) = reader_ended {
        queue.close(reason);
        writer.await;
    }
    let ended = Ended {
        holder,
        subscriptions,
    };
    plumbing.finish(opened, ended, Some(&socket)).await;
}

/// The first token to run out: when (seconds since the epoch), and how the connection ends
/// then (3005 for the connection's, 3006 for a subscription's).
type Deadline = Option<(u64, Disconnect)>;

/// Resolves when a token expires unrefreshed.
async fn watch_expiry(mut expires: watch::Receiver<Deadline>) -> Disconnect {
    loop {
        let deadline = *expires.borrow_and_update();
        match deadline {
            None => {
                if expires.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Some((exp, disconnect)) => {
                tokio::select! {
                    () = crate::connection::expiry(Some(exp)) => return disconnect,
                    changed = expires.changed() => if changed.is_err() {
                        std::future::pending::<()>().await;
                    },
                }
            }
        }
    }
}

/// Resolves when the client has been silent too long: no `connect` within
/// [`CONNECT_WITHIN`] (3502), or nothing, not even a pong, within a ping interval and
/// [`PONG_GRACE`] (3012).
async fn watch_liveness(seen: &AtomicU64) -> Disconnect {
    let started = crate::clock::unix_seconds();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = crate::clock::unix_seconds();
        let last = seen.load(Ordering::Relaxed);
        if last == 0 {
            // Not connected yet: `seen` is 0 until the connect.
            if now.saturating_sub(started) >= CONNECT_WITHIN.as_secs() {
                return protocol::STALE;
            }
        } else if now.saturating_sub(last) > u64::from(wire::ping_interval()) + PONG_GRACE.as_secs()
        {
            return protocol::NO_PONG;
        }
    }
}

/// Who a connected client is.
struct Client {
    id: String,
    user: String,
    /// The token's `info`, shown in presence.
    info: Option<Value>,
    /// How the server API's orders reach it.
    handle: Arc<Handle>,
}

struct Reader<R> {
    messages: Messages<R>,
    rate: RateLimit,
    services: Arc<Services>,
    session: SessionHandle,
    goodbyes: Arc<Goodbyes>,
    client: Option<Client>,
    /// Its subscriptions, by channel.
    subs: HashMap<String, Arc<Subscription>>,
    /// The channels of `subs` it is present in.
    present: std::collections::HashSet<String>,
    /// The connection token's `exp` (changed by `refresh`).
    exp: Option<u64>,
    /// Each subscription token's `exp`, by channel (changed by `sub_refresh`).
    sub_exps: HashMap<String, u64>,
    /// The first of them, watched by the connection's task.
    expiry: watch::Sender<Deadline>,
    /// When the client last sent anything (seconds), 0 before its `connect`.
    seen: Arc<AtomicU64>,
}

/// How a command ends the connection.
type Ends = Result<(), Disconnect>;

fn string_param<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    params.get(key).and_then(Value::as_str)
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Tells the connection's task which token runs out first.
    fn watch_deadline(&self) {
        let connection = self.exp.map(|exp| (exp, protocol::CONNECTION_EXPIRED));
        let subscriptions = self
            .sub_exps
            .values()
            .map(|exp| (*exp, protocol::SUBSCRIPTION_EXPIRED));
        let first = connection
            .into_iter()
            .chain(subscriptions)
            .min_by_key(|(exp, _)| *exp);
        self.expiry.send_replace(first);
    }

    fn send(&self, frame: Bytes) {
        self.session.send(Outbound::Frame(frame));
    }

    fn error(&self, id: u32, error: Error) {
        self.send(protocol::error_reply(id, error));
    }

    async fn run(&mut self) -> CloseReason {
        let metrics = self.services.plumbing.metrics.clone();
        loop {
            let message = match self.messages.next_message(&self.session).await {
                Next::Text(message) => message,
                Next::Bad(WireFault::FrameViolation) => {
                    metrics.invalid_frame("protocol_violation");
                    return CloseReason::ConnectionLost;
                }
                Next::Bad(fault) => {
                    // Too large, or binary: the JSON protocol is text only.
                    metrics.invalid_frame(if fault == WireFault::TooLarge {
                        "too_large"
                    } else {
                        "binary"
                    });
                    self.goodbyes.choose(protocol::BAD_REQUEST_DISCONNECT);
                    return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
                }
                Next::End(reason) => return reason,
            };
            if self.client.is_some() {
                self.seen
                    .store(crate::clock::unix_seconds(), Ordering::Relaxed);
            }
            if !self.rate.allow() {
                metrics.invalid_frame("rate_limited");
                self.goodbyes.choose(protocol::BAD_REQUEST_DISCONNECT);
                return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
            }
            let lines = match protocol::parse(&message) {
                Ok(lines) => lines,
                Err(why) => {
                    tracing::debug!(session = self.session.queue.id, error = %why, "bad frame");
                    metrics.invalid_frame("centrifugo_bad_frame");
                    self.goodbyes.choose(protocol::BAD_REQUEST_DISCONNECT);
                    return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
                }
            };
            for line in lines {
                if let Err(disconnect) = Box::pin(self.handle(line)).await {
                    self.goodbyes.choose(disconnect);
                    let reason = if disconnect.code == protocol::INVALID_TOKEN.code {
                        DisconnectReason::Unauthorized
                    } else {
                        DisconnectReason::InvalidRequest
                    };
                    return CloseReason::Disconnect(reason);
                }
            }
        }
    }

    async fn handle(&mut self, line: Line) -> Ends {
        let metrics = self.services.plumbing.metrics.clone();
        let (id, method, params) = match line {
            Line::Pong => return Ok(()),
            Line::Unknown { id } => {
                metrics.command("centrifugo", "method_not_found");
                self.error(id, protocol::METHOD_NOT_FOUND);
                return Ok(());
            }
            Line::Command { id, method, params } => (id, method, params),
        };
        if self.client.is_none() != (method == Method::Connect) {
            // A command before the connect, or a second connect.
            return Err(protocol::BAD_REQUEST_DISCONNECT);
        }
        let outcome = match method {
            Method::Connect => self.connect(id, &params).await,
            Method::Subscribe => self.subscribe(id, &params).await,
            Method::Unsubscribe => self.unsubscribe(id, &params).await,
            Method::Presence | Method::PresenceStats => self.presence(id, method, &params).await,
            Method::Publish => self.publish(id, &params).await,
            Method::Refresh => self.refresh(id, &params),
            Method::Send => Ok(()),
            Method::SubRefresh => self.sub_refresh(id, &params),
            Method::History | Method::Rpc => {
                self.error(id, protocol::NOT_AVAILABLE);
                Ok(())
            }
        };
        metrics.command(
            method.key(),
            if outcome.is_ok() { "ok" } else { "disconnect" },
        );
        outcome
    }

    async fn connect(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let client = crate::resume::sid::new_sid();
        let token = string_param(params, "token").filter(|t| !t.is_empty());
        let (claims, data) = match (token, &self.services.tokens, &self.services.proxy) {
            (Some(token), Some(tokens), _) => {
                match tokens.connection(token, crate::clock::unix_seconds()) {
                    Ok(claims) => (claims, None),
                    Err(Refused::Expired) => {
                        self.error(id, protocol::TOKEN_EXPIRED);
                        return Ok(());
                    }
                    Err(Refused::Invalid(why)) => {
                        tracing::info!(
                            session = self.session.queue.id,
                            reason = why,
                            "connection token refused"
                        );
                        return Err(protocol::INVALID_TOKEN);
                    }
                }
            }
            (None, _, Some(proxy)) => match proxy.ask(&client, params).await {
                Some(Decision::Connect {
                    user,
                    expire_at,
                    channels,
                    info,
                    data,
                }) => {
                    let claims = super::token::ConnectionClaims {
                        user,
                        exp: expire_at,
                        channels,
                        info,
                    };
                    (claims, data)
                }
                Some(Decision::Error {
                    code,
                    message,
                    temporary,
                }) => {
                    self.send(protocol::error_reply_with(id, code, &message, temporary));
                    return Ok(());
                }
                Some(Decision::Disconnect { code, reason }) => {
                    self.goodbyes.choose_code(code, &reason);
                    return Err(protocol::FORCE_NO_RECONNECT);
                }
                None => {
                    self.error(id, protocol::INTERNAL);
                    return Ok(());
                }
            },
            _ => return Err(protocol::INVALID_TOKEN),
        };
        let handle = Arc::new(Handle {
            client: client.clone(),
            session: self.session.clone(),
            goodbyes: self.goodbyes.clone(),
            channels: Default::default(),
        });
        self.services.clients.add(&claims.user, handle.clone());
        self.client = Some(Client {
            id: client.clone(),
            user: claims.user.clone(),
            info: claims.info.clone(),
            handle,
        });
        self.seen
            .store(crate::clock::unix_seconds(), Ordering::Relaxed);
        self.exp = claims.exp;
        self.watch_deadline();
        let mut reply = json!({
            "client": client,
            "version": VERSION,
            "ping": wire::ping_interval(),
            "pong": true,
        });
        if let Some(exp) = claims.exp {
            reply["expires"] = json!(true);
            reply["ttl"] = json!(exp.saturating_sub(crate::clock::unix_seconds()));
        }
        if let Some(data) = data {
            reply["data"] = data;
        }
        // Server-side subscriptions: the reply names them, then they go live (a publication
        // must not come before the reply that tells the client of its channel).
        let mut subs = Map::new();
        let mut live = Vec::new();
        for channel in claims.channels {
            if self.subs.contains_key(&channel) || subs.contains_key(&channel) {
                continue;
            }
            subs.insert(channel.clone(), json!({}));
            live.push(channel);
        }
        if !subs.is_empty() {
            reply["subs"] = Value::Object(subs);
        }
        self.send(protocol::reply(id, Method::Connect, &reply));
        for channel in live {
            match self.go_live(&channel, None, false).await {
                Ok(()) => {}
                Err(error) => {
                    // The client was told of it: it gets an unsubscribe push instead.
                    tracing::info!(
                        session = self.session.queue.id,
                        channel,
                        code = error.code,
                        "server-side subscription refused"
                    );
                    self.send(protocol::push(
                        &channel,
                        "unsubscribe",
                        &json!({"code": wire::UNSUBSCRIBED_BY_SERVER, "reason": error.message}),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Makes a subscription to `channel` live; `confirm` is queued before its first
    /// publication. The built-in `account:<A>` channel acts as the user in A.
    async fn go_live(
        &mut self,
        channel: &str,
        confirm: Option<Bytes>,
        join_leave: bool,
    ) -> Result<(), Error> {
        let services = self.services.clone();
        if let Some(account) = channel.strip_prefix("account:") {
            let principal = self.account_principal(account).await?;
            let (principal, token) = principal;
            let lease: Option<Keep> = match &services.rails_postgres {
                Some(adapter) => {
                    let streams = crate::routing::streams(&principal, &token);
                    Some(Box::new(adapter.acquire(streams).await))
                }
                None => None,
            };
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
            services.presence.answer(sub);
            return Ok(());
        }
        let lease: Option<Keep> = match &services.rails_postgres {
            Some(adapter) => Some(Box::new(adapter.acquire(vec![channel.to_string()]).await)),
            None => None,
        };
        let sub =
            Subscription::channel(channel.into(), wire::framing(channel), self.session.clone());
        services
            .router
            .register_channel(sub.clone(), channel.into(), confirm, lease);
        self.subs.insert(channel.to_string(), sub.clone());
        self.known(channel, &sub);
        if let Some(options) = services.config.options(channel).filter(|o| o.presence) {
            let client = self.client.as_ref().expect("subscribed after connect");
            let member = Member {
                channel: channel.to_string(),
                client: client.id.clone(),
                user: client.user.clone(),
                conn_info: client.info.clone(),
            };
            let pushes = options.join_leave && (options.force_push_join_leave || join_leave);
            self.present.insert(channel.to_string());
            if let Err(e) = services.channel_presence.join(member, &sub, pushes).await {
                // Its row is written by the next refresh.
                tracing::warn!(error = %e, channel, "channel presence: join not written");
            }
        }
        Ok(())
    }

    /// Tells the server API's orders of `sub`.
    fn known(&self, channel: &str, sub: &Subscription) {
        if let Some(client) = &self.client {
            client
                .handle
                .channels
                .lock()
                .insert(channel.to_string(), sub.id);
        }
    }

    /// `channel`'s subscription ends: out of the router, and out of its presence.
    async fn end(&mut self, channel: &str) {
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
    async fn account_principal(&self, account: &str) -> Result<(Principal, String), Error> {
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

    async fn subscribe(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
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
    fn may_subscribe(
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

    async fn unsubscribe(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let Some(channel) = string_param(params, "channel") else {
            self.error(id, protocol::BAD_REQUEST);
            return Ok(());
        };
        self.end(channel).await;
        self.send(protocol::reply(id, Method::Unsubscribe, &json!({})));
        Ok(())
    }

    /// `presence` and `presence_stats`: for a channel whose namespace keeps presence, to a
    /// subscriber where `allow_presence_for_subscriber`.
    async fn presence(&mut self, id: u32, method: Method, params: &Map<String, Value>) -> Ends {
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
                    super::presence::presence_result(&members)
                } else {
                    super::presence::stats_result(&members)
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

    async fn publish(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
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
        let allowed = !channel.starts_with("account:")
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

    /// `sub_refresh` `{channel, token}`: a new subscription token for a subscription made
    /// with one (a forged one, or one of another user or channel: 3500; expired: 3006).
    fn sub_refresh(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
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

    fn refresh(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let (Some(tokens), Some(token)) = (&self.services.tokens, string_param(params, "token"))
        else {
            return Err(protocol::INVALID_TOKEN);
        };
        let claims = match tokens.connection(token, crate::clock::unix_seconds()) {
            Ok(claims) => claims,
            Err(Refused::Expired) => return Err(protocol::CONNECTION_EXPIRED),
            Err(Refused::Invalid(_)) => return Err(protocol::INVALID_TOKEN),
        };
        let client = self.client.as_ref().expect("refresh comes after connect");
        if claims.user != client.user {
            return Err(protocol::INVALID_TOKEN);
        }
        self.exp = claims.exp;
        self.watch_deadline();
        let mut reply = json!({"client": client.id, "version": VERSION});
        if let Some(exp) = claims.exp {
            reply["expires"] = json!(true);
            reply["ttl"] = json!(exp.saturating_sub(crate::clock::unix_seconds()));
        }
        self.send(protocol::reply(id, Method::Refresh, &reply));
        Ok(())
    }
}

/// A channel name a client may use: not empty, at most 255 bytes, no control characters.
fn valid_channel(channel: &str) -> bool {
    !channel.is_empty() && channel.len() <= 255 && !channel.chars().any(char::is_control)
}
