//! One connection of Centrifugo's client protocol (docs/reference.md §11): `connect` first
//! (a connection token, its server-side channels), then the client's commands in order:
//! `subscribe` (by subscription token, user-limited channel, namespace option, or the
//! built-in `account:<A>`), `unsubscribe`, `publish`, `refresh`; every channel subscription
//! lives in the router, so a channel gets whatever is addressed to the stream of its name,
//! on every process.
//!
//! # Files
//! - `reader.rs`: frames in, each command handled in order, the deadline of the tokens.
//! - `connect.rs`: `connect` (a token, or the connect proxy) and `refresh`.
//! - `subscribe.rs`: `subscribe` (who may, and how it goes live), `unsubscribe`, `sub_refresh`.
//! - `commands.rs`: `publish`, `presence`, `presence_stats`.

mod commands;
mod connect;
mod reader;
mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::sync::watch;

use super::clients::{Clients, Handle};
use super::config::CentrifugoConfig;
use super::presence::ChannelPresence;
use super::protocol::{self, Disconnect};
use super::proxy::ConnectProxy;
use super::token::Tokens;
use super::wire::{self, Goodbyes};
use crate::auth::AuthCache;
use crate::connection::messages::Messages;
use crate::connection::rate::RateLimit;
use crate::connection::socket::Shared;
use crate::connection::{writer, Ended, Plumbing};
use crate::delivery::{CloseReason, DisconnectReason, SessionHandle, Subscription};
use crate::ingress::postgres::PgAdapter;
use crate::router::Router;

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

/// A channel name a client may use: not empty, at most 255 bytes, no control characters.
fn valid_channel(channel: &str) -> bool {
    !channel.is_empty() && channel.len() <= 255 && !channel.chars().any(char::is_control)
}
