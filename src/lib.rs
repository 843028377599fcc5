//! # cable-gateway
//!
//! A WebSocket gateway that speaks the Rails ActionCable protocol on `/cable` the way
//! Chatwoot-style support platforms use it: agent dashboards subscribe with *user* pubsub
//! tokens, chat widgets and mobile SDKs with *contact* pubsub tokens, and a backend publishes
//! events by inserting rows into the `cable_events` outbox in PostgreSQL. The same core serves
//! Centrifugo's SDK and server API (`/connection/websocket`, `/api/`) and plain topic
//! WebSockets for integrations (`/ws?token=`).
//!
//! # Layout
//! Leaves first: each module imports only modules listed above it, and `tests/layering.rs`
//! fails when one does not (so there are no import cycles either).
//! - [`clock`]: seconds since the epoch, spelled once.
//! - [`config`]: every setting (flag + environment variable, with its default) and, in
//!   [`config::tuning`], every fixed number with the reason for it.
//! - [`metrics`]: every metric, spelled once.
//! - [`secret`]: constant-time comparison of keys and tokens.
//! - [`ws`]: the WebSocket layer's one set of opcodes.
//! - [`ids`]: an id as a number or a numeric string, read one way everywhere.
//! - [`auth`]: token → [`auth::Principal`]; SQL in [`auth::store`], moka in [`auth::cache`],
//!   cache misses batched into bulk queries by [`auth::batch`].
//! - [`delivery`]: the shared vocabulary: an [`delivery::Event`] encoded once, a
//!   [`delivery::Subscription`], a connection's [`delivery::SendQueue`] and the
//!   [`delivery::SessionHandle`] others push frames through.
//! - [`routing`]: **who receives which event**, as pure functions.
//! - [`router`]: this process's live subscriptions, indexed so an event costs O(recipients).
//! - [`presence`]: the shared online set; [`presence::rules`] says **when presence expires**
//!   and who is in a `presence.update`.
//! - [`backoff`]: how long the LISTEN connection and the Redis subscriber wait before
//!   reconnecting.
//! - [`db`]: how to reach PostgreSQL, TLS included, for the pool and the LISTEN connection.
//! - [`listen`]: the one LISTEN connection; others register the channels they want to hear.
//! - [`ingress`]: where events come from; [`ingress::outbox`] reads `cable_events` losslessly
//!   in commit order (and carries `POST /_broadcast`'s broadcasts to every process);
//!   [`ingress::streams`] delivers broadcasts by stream name, as Rails' adapters send them,
//!   heard from Redis by [`ingress::redis`] and from PostgreSQL's `NOTIFY` by
//!   [`ingress::postgres`] (per-stream channels on the LISTEN connection);
//!   [`ingress::http`] takes `POST /_broadcast`.
//! - [`resume`]: AnyCable's extended protocol: sessions restored by `sid` on any process
//!   ([`resume::sessions`]), history replay from the outbox's rounds ([`resume::replay`]) and
//!   stream ingress memory ([`resume::rings`], the router's [`router::StreamHistory`]).
//! - [`revalidate`]: live subscriptions follow role/inbox changes; revoked tokens are rejected.
//! - [`typing`]: the RoomChannel action `typing`, written to the outbox with its visibility
//!   check in one statement.
//! - [`origin`]: the Origin allow-list.
//! - [`migrate`]: embedded migrations.
//! - [`inspect`]: the operator's page `/inspect` and its JSON, aggregated from the router,
//!   the metrics, presence and the recent disconnects ([`inspect::log`]).
//! - [`connection`]: one WebSocket connection's plumbing, the same for every wire protocol:
//!   the upgraded socket shared by reference, frames in ([`connection::frame`]), the writer
//!   and the protocol's goodbye ([`connection::writer`]), the one ping timer
//!   ([`connection::pings`]), the command-rate bucket, the connection limit
//!   ([`connection::slots`]) and what every connection's opening and end record
//!   ([`connection::Plumbing`]).
//! - [`actioncable`]: ActionCable's wire protocol with AnyCable's extension, one module on
//!   the core (nothing listed above it knows it: the core deals in bodies, subscriptions
//!   with their protocol's framing, [`delivery::Framing`], and recipients):
//!   [`actioncable::protocol`] (commands, identifiers, replies, and
//!   [`actioncable::protocol::bad_input`]: what each kind of bad input gets),
//!   [`actioncable::channel`] (RoomChannel: identifier + token → principal or reject) and
//!   [`actioncable::session`] (one connection: commands in order, and
//!   [`actioncable::session::actioncable`]: the core's bodies, answers and goodbye as this
//!   wire frames them).
//! - [`topics`]: the topic WebSocket (`/ws?token=`, docs/reference.md §12), the second wire
//!   protocol on the core: topics and their index, the client's commands, the event
//!   envelope, one router subscription per account of the user that frames each message
//!   itself ([`delivery::Reframe`]), and its connections.
//! - [`centrifugo`]: Centrifugo's clients and backends (`/connection/websocket`, `/api/`,
//!   docs/reference.md §11), the third wire protocol on the core: its frames, tokens and
//!   configuration file, channels as router channel subscriptions
//!   ([`router::Router::register_channel`]), presence of channels on every process, the connect
//!   proxy, the server API, and its connections.
//! - [`server`]: builds every component, starts and stops every task, serves HTTP.
//!
//! # Adding a wire protocol
//! The core listed above [`actioncable`] knows no wire protocol: it delivers shared message
//! bodies (an event's `{"event":..,"data":..}`, a broadcast's payload) to subscriptions, and
//! each subscription carries its protocol's framing of them ([`delivery::Framing`]: a prefix
//! and a suffix around the body, or a [`delivery::Reframe`] that frames each message itself
//! from what it derived once per message, and [`delivery::Replies`] for what the core tells
//! its client: a revoked subscription, a history replay done or refused) and, if the protocol
//! tells positions, in which shape ([`delivery::PositionStyle`]). A new protocol is one
//! module beside [`actioncable`]: its handshake, its command parsing, its bad-input table
//! (mapping [`connection::frame::WireFault`] too), its `Framing`, its ping frame
//! ([`delivery::PingFrame`]) and goodbye ([`connection::writer::Farewell`]). Its connection
//! task is opened and closed by [`connection::Plumbing`], reads with
//! [`connection::messages::Messages`] and writes with [`connection::writer::run`]; it registers
//! subscriptions with [`router::Router::register`], serves history through
//! [`resume::replay::History::serve`] and presence through [`presence::Presence`]. Nothing in
//! the router or the plumbing changes.
//!
//! # Glossary
//! One meaning per word; where older code still uses a word otherwise, the meaning here wins.
//! - **connection**: one WebSocket and the task pair (reader, writer) that owns it
//!   ([`connection`] is its plumbing; [`actioncable::session`] an ActionCable connection's
//!   task).
//! - **session** (extended protocol): what a client restores by `sid` after a reconnect, a
//!   row of `cable_sessions` ([`resume::sessions`]). A Chatwoot contact's session is a
//!   **contact session** (`contact_inboxes`).
//! - **principal**: who a subscription acts as, a user in an account or a contact session
//!   ([`auth::Principal`]); never the identifier.
//! - **identifier**: the subscription's key as the client sent it, byte for byte.
//! - **stream**: a name broadcasts are addressed to (a token, `account_<id>`, or any name a
//!   backend picks); a subscription *streams* names. **stream id**: the name a position is kept
//!   under on the wire of the extended protocol (an outbox stream id, or a stream's name).
//! - **round**: one cut of the outbox: the rows that became visible between two MVCC snapshots
//!   of the database. **offset**: an outbox row's place in commit order, the same on every
//!   process. **position**: (stream id, epoch, offset) as a client holds it.
//! - **held**: live frames a subscription holds back while a replay is sent
//!   ([`delivery::Positions`]). A subscription's LISTEN lease is its **lease**
//!   ([`router::Keep`] is what the router keeps for it while it lives).
//! - **body**: an event's or broadcast's JSON as every recipient shares it, encoded once. A
//!   subscription's **framing** ([`delivery::Framing`]) is what its wire protocol puts around
//!   a body; a **frame** is a WebSocket frame.
//! - **snapshot**: an MVCC snapshot of PostgreSQL. A `presence.update` body is an **online
//!   set**; the inspector's cached JSON, its **page data**.
//!
//! # Life of a message
//! 1. A backend inserts a row into `cable_events` in its own transaction; the statement
//!    trigger queues `NOTIFY cable_events`, delivered at commit.
//! 2. The LISTEN connection ([`listen`]) hands the notification to the outbox channel's
//!    handler, which rings the appender's doorbell. Whichever process appends first cuts a
//!    *round* ([`ingress::outbox::append`], stamped after its snapshot): the rows that became visible since the previous
//!    round's MVCC snapshot, which get the next offsets, in commit order, for every process.
//! 3. `NOTIFY cable_rounds` wakes every process's reader ([`ingress::outbox::read`]), which
//!    fetches the new rounds' rows and encodes each event once: `{"event":..,"data":..}`,
//!    with its offset.
//! 4. The [`router`] looks up the account's indexes named by the event's scope (stream, user,
//!    inbox, contact sessions), keeps those [`routing::entitled`] to it, and pushes the shared
//!    bytes onto each recipient's send queue without waiting.
//! 5. Each delivery is framed by the subscription's wire protocol ([`delivery::Framing`],
//!    built once per subscription): for ActionCable the precomputed
//!    `{"identifier":"..","message":` prefix, the shared bytes, then `}` (on an
//!    extended-protocol connection, with `stream_id`, `epoch` and `offset` before it). When the connection's queue is
//!    empty and its writer does not hold the socket, the dispatching thread writes it to the
//!    socket itself, without waking the connection's task (a large audience is split over two
//!    threads); otherwise it is queued and the session's writer batches whatever is queued into
//!    one write. A client whose queue stays full is disconnected (`too_slow`).
//!
//! A broadcast from Rails' adapters or `POST /_broadcast` takes a shorter way: the Redis
//! subscriber, the LISTEN connection or the HTTP handler hands `(stream, payload)` to
//! [`ingress::streams`], which checks it once (JSON, size, and
//! whether contacts may see it: [`routing::contacts_may_receive`]), splices the payload into
//! one shared message, and the [`router`] queues it on the subscriptions streaming that name.
//!
//! # Life of a subscribe
//! The reader decodes the command, and [`actioncable::channel::subscribe`] parses the identifier (kept byte
//! for byte), checks the connection's subscription limit and the token (cache, then
//! PostgreSQL). With Rails' PostgreSQL adapter on, it then waits until the subscription's
//! streams are LISTENed to ([`ingress::postgres::PgAdapter::acquire`]; the lease is released
//! when the subscription ends). The reader then registers the subscription with the router and queues
//! `confirm_subscription` in one step (no event can be queued before its confirm), and asks
//! [`presence`] for the `presence.update` answer. A reject is classified by the bad-input
//! table; a database failure becomes `disconnect` with `reconnect:true`, never a reject.
//!
//! On an extended-protocol connection a subscribe may carry `history`: the subscription goes
//! live holding its live frames, [`resume::replay`] sends what it missed, then
//! `confirm_history`, then the held frames. A reconnect with `?sid=` restores the old session's
//! subscriptions before the `welcome` ([`actioncable::session::reader::Reader::restore`]), each token
//! checked again without the cache.

pub mod actioncable;
pub mod auth;
pub mod backoff;
pub mod centrifugo;
pub mod clock;
pub mod config;
pub mod connection;
pub mod db;
pub mod delivery;
pub mod ids;
pub mod ingress;
pub mod inspect;
pub mod listen;
pub mod metrics;
pub mod migrate;
pub mod origin;
pub mod presence;
pub mod resume;
pub mod revalidate;
pub mod router;
pub mod routing;
pub mod secret;
pub mod server;
pub mod topics;
pub mod typing;
pub mod ws;
