//! # cable-gateway
//!
//! A WebSocket gateway that speaks the Rails ActionCable protocol on `/cable` the way
//! Chatwoot-style support platforms use it: agent dashboards subscribe with *user* pubsub
//! tokens, chat widgets and mobile SDKs with *contact* pubsub tokens, and a backend publishes
//! events by inserting rows into the `cable_events` outbox in PostgreSQL.
//!
//! # Layout
//! - [`config`]: every setting, flag + environment variable, with defaults.
//! - [`server`]: accept loop, HTTP routes (`/cable`, `/health`, `/ready`, `/metrics`), the
//!   upgrade, the shutdown order. [`origin`]: the Origin allow-list.
//! - [`protocol`]: inbound [`protocol::command`]s (double-decoded), [`protocol::identifier`]s
//!   (raw + parsed), outbound frames and disconnect reasons ([`protocol::reply`]).
//! - [`session`]: one connection = one task running a reader (client frames via
//!   [`session::frame`], commands strictly in order) and a writer (frames, pings), joined by a
//!   bounded queue ([`session::outbox`]).
//! - [`auth`]: token → [`auth::Principal`], SQL in [`auth::store`], moka in [`auth::cache`],
//!   cache misses batched into bulk queries by [`auth::batch`].
//! - [`channel`]: RoomChannel: identifier + principal → subscription or reject.
//! - [`router`]: live subscriptions indexed by scope, and the routing rules.
//! - [`outbox`]: the LISTEN doorbell and the lossless, ordered reading of `cable_events`.
//! - [`presence`]: the shared online set, heartbeats, answers.
//! - [`revalidate`]: live subscriptions follow role/inbox changes; revoked tokens are rejected.
//! - [`migrate`]: embedded migrations; [`metrics`]: every metric, spelled once.
//! - [`gateway`]: the state a process shares between its tasks.
//!
//! # Life of a message
//! 1. A backend inserts a row into `cable_events` in its own transaction; the statement
//!    trigger queues `NOTIFY cable_events`, delivered at commit.
//! 2. The LISTEN connection rings the reader's doorbell ([`outbox::listen`]).
//! 3. The reader fetches every row that became visible since its previous snapshot
//!    ([`outbox::read`]) and encodes each event once: `{"event":..,"data":..}}`.
//! 4. The [`router`] looks up the account's indexes named by the event's scope (stream, user,
//!    inbox, contact sessions), filters out what contacts and actors must not see, and queues
//!    the shared bytes on each recipient's session without waiting.
//! 5. Each session's writer writes the subscription's precomputed
//!    `{"identifier":"..","message":` prefix followed by the shared bytes, batching whatever is
//!    queued into one write. A client whose queue is full is disconnected (`too_slow`).
//!
//! # Life of a subscribe
//! The reader decodes the command, parses the identifier (kept byte for byte), asks
//! [`channel::RoomParams::authorize`] (cache, then PostgreSQL), registers the subscription with
//! the router and queues `confirm_subscription` in one step, then asks [`presence`] for the
//! `presence.update` answer. A database failure becomes `disconnect` with `reconnect:true`,
//! never a reject.

pub mod auth;
pub mod channel;
pub mod config;
pub mod gateway;
pub mod metrics;
pub mod migrate;
pub mod origin;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod revalidate;
pub mod router;
pub mod server;
pub mod session;
