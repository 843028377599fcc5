//! One topic WebSocket connection: who it is (checked before the upgrade, [`authorize`]), a
//! router subscription per account of the user ([`super::feed`]), and the client's
//! `subscribe`/`unsubscribe` messages, answered in order.

use std::sync::Arc;

use bytes::Bytes;
use sqlx::PgPool;
use tokio::io::AsyncRead;

use super::command::{Command, Kind};
use super::feed::{push_ping, Connection, Feed, TopicReplies};
use super::topic::{Part, Scope, Topic};
use crate::auth::jwt::{Identity, Refusal, Verifier};
use crate::auth::{AuthCache, Membership, Principal};
use crate::connection::frame::WireFault;
use crate::connection::messages::{Messages, Next};
use crate::connection::rate::RateLimit;
use crate::connection::socket::Shared;
use crate::connection::{writer, Ended, Plumbing};
use crate::delivery::{CloseReason, DisconnectReason, Outbound, SessionHandle, Subscription};
use crate::ingress::postgres::PgAdapter;
use crate::presence::Presence;
use crate::router::Router;

/// Exactly what a topic connection needs of the process.
pub struct Services {
    pub plumbing: Plumbing,
    pub router: Arc<Router>,
    pub auth: AuthCache,
    /// The accounts of a user token are looked up here.
    pub pool: PgPool,
    pub presence: Arc<Presence>,
    /// Rails' PostgreSQL adapter ingress, when on: the streams of each subscription are
    /// LISTENed to.
    pub rails_postgres: Option<Arc<PgAdapter>>,
    /// Verifies a §10 JWT given as the token, when `CABLE_JWT_SECRET` is set.
    pub jwt: Option<Verifier>,
    /// `CABLE_MAX_TOPICS`.
    pub max_topics: usize,
}

/// Who a connection is: a user, the token its subscriptions act with, the accounts it sees
/// (every account of the user, or the one a JWT names), and when its JWT expires.
#[derive(Debug)]
pub struct Grant {
    pub user_id: i64,
    pub token: Arc<str>,
    pub accounts: Vec<(i64, Membership)>,
    pub exp: Option<u64>,
}

/// Why an upgrade is refused before it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// HTTP 401; the text is the log's reason.
    Unauthorized(&'static str),
    /// HTTP 503: the database did not answer.
    Unavailable,
}

/// Who `token` (`?token=`: a user's pubsub token, or a §10 JWT naming a user) is, at `now`
/// (seconds since the epoch).
pub async fn authorize(
    services: &Services,
    token: Option<&str>,
    now: u64,
) -> Result<Grant, Refused> {
    let token = token.filter(|t| !t.is_empty() && t.len() <= 4096);
    let token = token.ok_or(Refused::Unauthorized("missing_token"))?;
    let unavailable = |e: crate::auth::AuthError| {
        tracing::warn!(error = %e, "database unavailable while authorizing a topic connection");
        Refused::Unavailable
    };
    let looks_signed = token.bytes().filter(|b| *b == b'.').count() == 2;
    let (pubsub_token, accounts, exp) = match (&services.jwt, looks_signed) {
        (Some(verifier), true) => {
            let signed = verifier
                .verify(token, now)
                .map_err(|refusal| match refusal {
                    Refusal::Expired => Refused::Unauthorized("expired"),
                    Refusal::Unauthorized(why) => Refused::Unauthorized(why),
                })?;
            let Identity::User { account_id, .. } = signed.identity else {
                return Err(Refused::Unauthorized("not_a_user"));
            };
            let pubsub_token = services
                .auth
                .identity(signed.identity)
                .await
                .map_err(unavailable)?
                .ok_or(Refused::Unauthorized("names_nobody"))?;
            (pubsub_token, vec![account_id], Some(signed.exp))
        }
        _ => {
            let accounts = crate::auth::store::accounts_of(&services.pool, token)
                .await
                .map_err(unavailable)?;
            (Arc::from(token), accounts, None)
        }
    };
    let mut user_id = None;
    let mut memberships = Vec::with_capacity(accounts.len());
    for account_id in accounts {
        let record = services
            .auth
            .user(&pubsub_token, account_id)
            .await
            .map_err(unavailable)?;
        if let Some(crate::auth::UserRecord {
            user_id: id,
            membership: Some(membership),
        }) = record
        {
            user_id = Some(id);
            memberships.push((account_id, membership));
        }
    }
    match user_id {
        Some(user_id) => Ok(Grant {
            user_id,
            token: pubsub_token,
            accounts: memberships,
            exp,
        }),
        None => Err(Refused::Unauthorized("unknown_token")),
    }
}

/// Serves one connection from its upgrade until it ends, holding its connection `slot`.
pub async fn serve(
    services: Arc<Services>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    grant: Box<Grant>,
    slot: crate::connection::slots::Slot,
) {
    let _slot = slot;
    let Some(accepted) = crate::connection::accept(upgrade).await else {
        return;
    };
    let plumbing = &services.plumbing;
    let socket = accepted.socket.clone();
    let opened = plumbing.open(Some(accepted.socket.clone()), push_ping);
    let session = opened.session.clone();
    let queue = session.queue.clone();
    let Grant {
        user_id,
        token,
        accounts,
        exp,
    } = *grant;
    let connection = Connection::new(user_id);
    let mut feeds = Vec::with_capacity(accounts.len());
    for (account_id, membership) in accounts {
        let principal = Principal::User {
            account_id,
            user_id,
            membership,
        };
        let streams = crate::routing::streams(&principal, &token);
        let lease = PgAdapter::lease_for(services.rails_postgres.as_ref(), streams).await;
        let sub = Subscription::new(
            format!("topics:{account_id}").into(),
            Feed::framing(connection.clone(), account_id),
            session.clone(),
            &principal,
            None,
        );
        services
            .router
            .register(sub.clone(), principal, token.clone(), None, lease, false);
        feeds.push((account_id, sub));
    }
    let mut reader = Reader {
        messages: Messages::new(
            Shared(accepted.socket.clone()),
            plumbing.limits.max_frame_size,
            accepted.early,
        ),
        rate: RateLimit::new(plumbing.limits.max_command_rate),
        services: services.clone(),
        session,
        connection: connection.clone(),
        feeds,
    };
    let writer = writer::run(
        Shared(accepted.socket),
        None,
        &queue,
        &plumbing.metrics,
        &TopicReplies,
    );
    tokio::pin!(writer);
    let reader_ended = tokio::select! {
        reason = reader.run() => Some(reason),
        () = crate::connection::expiry(exp) => {
            Some(CloseReason::Disconnect(DisconnectReason::TokenExpired))
        }
        () = &mut writer => None,
    };
    let holder = reader
        .feeds
        .first()
        .and_then(|(_, sub)| services.router.principal_of(sub.id));
    for (_, sub) in &reader.feeds {
        services.router.unregister(sub.id, None);
    }
    let topics = connection.topics.read().len();
    drop(reader);
    if let Some(reason) = reader_ended {
        queue.close(reason);
        writer.await;
    }
    let ended = Ended {
        holder,
        subscriptions: topics,
    };
    plumbing.finish(opened, ended, Some(&socket)).await;
}

struct Reader<R> {
    messages: Messages<R>,
    rate: RateLimit,
    services: Arc<Services>,
    session: SessionHandle,
    connection: Arc<Connection>,
    /// The connection's subscription in each account, by account.
    feeds: Vec<(i64, Arc<Subscription>)>,
}

/// An error answer, `{"type":"error","code":..,"topic":..,"message":..}` (keys in the order
/// the reference shows them), `topic` only when it is about one.
fn error(code: &str, topic: Option<&str>, message: &str) -> Bytes {
    let quoted = crate::delivery::quoted;
    let topic = topic
        .map(|topic| format!(r#","topic":{}"#, quoted(topic)))
        .unwrap_or_default();
    format!(
        r#"{{"type":"error","code":{}{topic},"message":{}}}"#,
        quoted(code),
        quoted(message)
    )
    .into()
}

/// `{"type":"subscribed"|"unsubscribed","topics":[..]}`.
fn answer(kind: &str, topics: &[String]) -> Bytes {
    let topics = serde_json::to_string(topics).expect("strings always serialize");
    format!(r#"{{"type":"{kind}","topics":{topics}}}"#).into()
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn send(&self, frame: Bytes) {
        self.session.send(Outbound::Frame(frame));
    }

    /// `bad_request`: the message is not a command; the connection stays.
    fn bad_request(&self, why: &str) {
        self.services
            .plumbing
            .metrics
            .invalid_frame("topics_bad_request");
        self.send(error("bad_request", None, why));
    }

    /// Reads and answers messages until the connection should end, and says why.
    async fn run(&mut self) -> CloseReason {
        let metrics = self.services.plumbing.metrics.clone();
        loop {
            let message = match self.messages.next_message(&self.session).await {
                Next::Text(message) => message,
                Next::Bad(WireFault::Binary | WireFault::StrayContinuation) => {
                    self.bad_request("send text frames holding JSON");
                    continue;
                }
                Next::Bad(WireFault::TooLarge) => {
                    metrics.invalid_frame("too_large");
                    return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
                }
                Next::Bad(WireFault::FrameViolation) => {
                    metrics.invalid_frame("protocol_violation");
                    return CloseReason::ConnectionLost;
                }
                Next::End(reason) => return reason,
            };
            if !self.rate.allow() {
                metrics.invalid_frame("rate_limited");
                return CloseReason::Disconnect(DisconnectReason::InvalidRequest);
            }
            match Command::parse(&message) {
                Ok(command) => self.handle(command),
                Err(why) => self.bad_request(&why.to_string()),
            }
        }
    }

    fn handle(&mut self, command: Command) {
        let metrics = &self.services.plumbing.metrics;
        let mut errors = Vec::new();
        let mut done = Vec::new();
        let mut presence = Vec::new();
        {
            // The answer is queued under the lock: an event the new topics match comes after
            // it, and none of a topic removed does.
            let mut topics = self.connection.topics.write();
            for (text, parsed) in command.topics {
                let topic = match parsed {
                    Ok(topic) => topic,
                    Err(why) => {
                        errors.push(error("bad_topic", Some(&text), &why.to_string()));
                        continue;
                    }
                };
                match command.kind {
                    Kind::Unsubscribe => {
                        topics.remove(&topic);
                        done.push(text);
                    }
                    Kind::Subscribe => {
                        let Some(feeds) = self.permitted(&topic) else {
                            errors.push(error(
                                "permission_denied",
                                Some(&text),
                                "not a topic of this token's user or of an account it administers",
                            ));
                            continue;
                        };
                        if topics.len() >= self.services.max_topics && !topics.contains(&topic) {
                            errors.push(error(
                                "limit_exceeded",
                                Some(&text),
                                &format!(
                                    "at most {} topics per connection",
                                    self.services.max_topics
                                ),
                            ));
                            continue;
                        }
                        if topics.insert(&topic) && shows_presence(&topic) {
                            presence.extend(feeds);
                        }
                        done.push(text);
                    }
                }
            }
            let (kind, label) = match command.kind {
                Kind::Subscribe => ("subscribed", "topics_subscribe"),
                Kind::Unsubscribe => ("unsubscribed", "topics_unsubscribe"),
            };
            metrics.command(label, if errors.is_empty() { "ok" } else { "refused" });
            self.send(answer(kind, &done));
        }
        for frame in errors {
            self.send(frame);
        }
        // A snapshot of each account's presence the new topics show.
        presence.sort_unstable_by_key(|sub| sub.id);
        presence.dedup_by_key(|sub| sub.id);
        for sub in presence {
            self.services.presence.answer(sub);
        }
    }

    /// The subscriptions whose events `topic` may show, or `None` when the connection may not
    /// subscribe it: a user topic of its own user (every account), an account topic of an
    /// account it administers (that account).
    fn permitted(&self, topic: &Topic) -> Option<Vec<Arc<Subscription>>> {
        match topic.scope {
            Scope::User(user_id) => (user_id == self.connection.user_id)
                .then(|| self.feeds.iter().map(|(_, sub)| sub.clone()).collect()),
            Scope::Account(account_id) => {
                let (_, sub) = self.feeds.iter().find(|(id, _)| *id == account_id)?;
                let (principal, _) = self.services.router.principal_of(sub.id)?;
                match principal {
                    Principal::User { membership, .. } if membership.administrator => {
                        Some(vec![sub.clone()])
                    }
                    _ => None,
                }
            }
        }
    }
}

/// Whether `topic` shows presence snapshots (resource `presence` or `*`).
fn shows_presence(topic: &Topic) -> bool {
    match &topic.resource {
        Part::Any => true,
        Part::Is(resource) => &**resource == "presence",
    }
}
