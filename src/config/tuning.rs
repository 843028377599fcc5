//! The fixed numbers: not worth a setting, but each chosen for a reason given here. Settings
//! an operator may want to change are in [`super::ServeConfig`] instead.

use std::time::Duration;

// --- connections -------------------------------------------------------------------

/// Descriptors kept free, when the connection limit is derived from `RLIMIT_NOFILE`, for
/// the listener, the database pool (added on top), the LISTEN connection and logs.
pub const FD_RESERVE: usize = 64;
/// Pending connections the kernel may hold for us (capped by `net.core.somaxconn`).
/// tokio's default of 1024 overflows when thousands of clients reconnect at once, and
/// every overflowed SYN costs its client a retransmit timeout (1 s, then 3 s).
pub const LISTEN_BACKLOG: u32 = 65535;
/// Back-off after a failed `accept` (out of descriptors and the like), instead of spinning.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// How long shutdown waits for clients to be told `server_restart` and closed; with the
/// presence refresh before it, the process exits well within the 10 s it promises.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the last presence refresh at shutdown may take.
pub const SHUTDOWN_PRESENCE_TIMEOUT: Duration = Duration::from_secs(1);

// --- one session -------------------------------------------------------------------

/// A ping every 3 s: the official client considers a connection stale after 6 s silent.
pub const PING_INTERVAL: Duration = Duration::from_secs(3);
/// Bytes a connection reads per system call (into the stack): one typical command,
/// identifier included. What the frame being parsed does not take is kept on the heap
/// until taken; an idle connection keeps no read buffer.
pub const READ_AHEAD: usize = 256;
/// A client whose socket has taken nothing for this long while `CABLE_SEND_QUEUE` frames
/// wait is too slow.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);
/// However fast the socket drains, a queue this many times `CABLE_SEND_QUEUE` is too long.
pub const HARD_LIMIT_FACTOR: usize = 16;
/// The writer stops adding queued frames to one socket write past this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;
/// An event's audience at least this large is delivered from two threads (a scoped
/// thread costs tens of µs; 2,048 deliveries cost ~20 ms of socket writes).
pub const SPLIT_AUDIENCE_AT: usize = 2048;
/// Audiences kept per account for its next events (`router`): an inbox's, the whole
/// account's. Each holds a pointer per recipient.
pub const AUDIENCES_KEPT: usize = 4;
/// How many recipients ahead a fan-out asks the CPU for a recipient's memory.
pub const PREFETCH_AHEAD: usize = 4;
/// A drained frame list longer than this is given back (idle connections stay small).
pub const KEEP_FRAMES: usize = 4;
/// A write buffer larger than this is given back after use: an idle connection must not
/// keep the buffer of the largest message it ever got (a presence snapshot of a big account).
pub const KEEP_CAPACITY: usize = 1024;
/// A frame body at least this large (a presence answer of a big account) is written from
/// its shared bytes, never copied into a connection's buffer or queue.
pub const LARGE_BODY: usize = 16 * 1024;
/// How long the farewell (queued frames, `disconnect`, close frame) may take to write.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);
/// After the server's close frame (and its FIN): how long, and over how many bytes, what the
/// client still sends is read and dropped until it closes its side. Closing a socket with
/// unread input resets the connection, and a reset can make the client lose the close frame
/// (its code) or fail its own close reply; RFC 6455 §7.1.1 has the server wait for the
/// client's close.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
pub const LINGER_BYTES: usize = 1 << 20;
/// How long the `too_slow` farewell may take: the client is not reading anyway.
pub const TOO_SLOW_FAREWELL_TIMEOUT: Duration = Duration::from_millis(100);

// --- the outbox and the LISTEN connection --------------------------------------------

/// Rows per outbox query: a backlog is read in pages and never held in memory at once.
pub const OUTBOX_PAGE: i64 = 1000;
/// Pause before an outbox read is retried after a database error.
pub const OUTBOX_RETRY: Duration = Duration::from_millis(250);
/// First wait before the LISTEN or Redis connection is opened again after a failure.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The wait doubles per consecutive failure up to this.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Retention pruning runs every `CABLE_EVENT_RETENTION / 10`, within these bounds.
pub const PRUNE_PERIOD_MIN: Duration = Duration::from_secs(1);
pub const PRUNE_PERIOD_MAX: Duration = Duration::from_secs(60);

// --- the extended protocol -----------------------------------------------------------

/// How long a restored subscription holds its live events back for the client's history
/// request (`@anycable/core` sends it right after the welcome); then they flow anyway.
pub const RESTORE_HOLD: Duration = Duration::from_secs(5);
/// How much longer the hold lasts, at most, while the client has sent bytes the connection's
/// reader has not read yet (checked every [`RESTORE_HOLD_RECHECK`]): its history request is
/// then most likely among them, and live events released before it would follow a gap (a
/// process stopped or starved past the hold wakes with both the timer and the request
/// ready; the 30-minute soak lost events that way).
pub const RESTORE_HOLD_UNREAD: Duration = Duration::from_secs(10);
pub const RESTORE_HOLD_RECHECK: Duration = Duration::from_millis(100);
/// History requests a connection may make per second, beyond a burst of
/// `CABLE_MAX_SUBSCRIPTIONS` (one per subscription, as a restore sends them). More get
/// `reject_history` without touching the database.
pub const HISTORY_RATE: f64 = 1.0;
/// Most session rows written in one statement.
pub const SESSION_MAX_BATCH: usize = 1000;
/// How often stream ingress history is swept of expired broadcasts and unused streams.
pub const HISTORY_SWEEP: Duration = Duration::from_secs(10);

// --- database ------------------------------------------------------------------------

/// How long a query waits for a pool connection before it fails (and a subscribe is told
/// to reconnect).
pub const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a subscribe waits for an unavailable database to answer its token lookup (retrying
/// every [`SUBSCRIBE_RETRY`]) before the client is told to reconnect. Below @anycable/core's
/// 10 s subscribe timeout: its extended-protocol client closes a channel for good when the
/// connection drops while its subscribe awaits a confirm, so a `disconnect` answered to a
/// subscribe during a PostgreSQL restart (1–2 s) would end the channel; waiting does not.
pub const SUBSCRIBE_DB_PATIENCE: Duration = Duration::from_secs(7);
/// Between two token lookups of a subscribe (or two tries of a history page) while the
/// database is unavailable; a history replay is as patient as a subscribe.
pub const SUBSCRIBE_RETRY: Duration = Duration::from_millis(250);
/// How long `/ready`'s `SELECT 1` may take before it answers 503.
pub const READY_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Token-lookup batches running at once (each holds at most two pool connections, one per
/// kind), so lookups never take the whole pool from the outbox reader and presence.
pub const AUTH_BATCHES_IN_FLIGHT: usize = 2;
/// Most token lookups in one batch (one `unnest` query per kind).
pub const AUTH_MAX_BATCH: usize = 1000;

// --- presence ------------------------------------------------------------------------

/// How often changed accounts are checked for a due push (pushes are ~1/s per account).
pub const PRESENCE_PUSH_CHECK: Duration = Duration::from_millis(100);
/// Most presence answers handled in one batch (one upsert, one snapshot per account).
pub const PRESENCE_MAX_BATCH: usize = 4096;
/// Batches of Chatwoot presence keys written in one Redis pipeline: each batch is one
/// heartbeat's or subscribe's keys, so this bounds a pipeline without splitting a batch.
pub const CHATWOOT_MAX_BATCHES: usize = 256;
/// Most presence rows one heartbeat or departure statement refreshes: a heartbeat of 15k
/// subscribers in one statement built ~2.5 MB of arrays every 10 s, a saw-tooth in the
/// idle RSS (BENCHMARKS.md, issue 13's fourth round).
pub const PRESENCE_CHUNK: usize = 1000;
/// The heartbeat runs every TTL / 3 within these bounds: three chances before expiry.
pub const HEARTBEAT_MIN: Duration = Duration::from_millis(100);
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(10);
/// The sweeper runs every TTL / 10 within these bounds, so expiry is at most 1 s late.
pub const SWEEP_MIN: Duration = Duration::from_millis(100);
pub const SWEEP_MAX: Duration = Duration::from_secs(1);
/// The shortest wait between two presence pushes of one account.
pub const PUSH_INTERVAL_MIN: Duration = Duration::from_secs(1);

// --- write buffers, batches, ingress connections, the inspector ----------------

/// Frames are encoded into one buffer per thread, kept up to this size.
pub const ENCODE_BUFFER_KEPT: usize = 64 * 1024;
/// LISTEN statements per round trip when many channels are listened to at once.
pub const LISTEN_CHUNK: usize = 500;
/// History replay queries one process runs at once. Each holds a pool connection for its
/// page; after a process dies, every extended-protocol client it had reconnects and asks for
/// history at once, and unbounded replays took the whole pool: token lookups then waited
/// past the clients' subscribe timeout (`@anycable/core` gives up after 10 s), seen in the
/// 30-minute soak. Requests beyond this wait their turn; their confirm has gone out already.
pub const HISTORY_QUERIES_IN_FLIGHT: usize = 3;
/// The most stream positions one history request may name.
pub const MAX_HISTORY_STREAMS: usize = 16;
/// How many subscriptions one revalidation pass looks up per query. A pass over every live
/// subscription at once built all their lookups and answers in memory together (about 400
/// bytes per subscription, every interval), which an idle gateway's RSS carried as a saw-tooth.
pub const REVALIDATE_CHUNK: usize = 1_000;
/// Ticks of the ping wheel per ping interval.
pub const PING_SLOTS: usize = 30;
/// Ticks a due ping waits for a frame to go out with (300 ms).
pub const PING_DEFER: usize = 3;
/// How many disconnects the inspector keeps and shows.
pub const DISCONNECTS_KEPT: usize = 50;
/// Accounts the inspector lists (the largest by subscriptions); the rest are counted.
pub const INSPECT_MAX_ACCOUNTS: usize = 50;
/// Online user and contact ids the inspector lists per account; the rest are counted.
pub const INSPECT_MAX_ONLINE_IDS: usize = 20;
/// How often the inspector samples rates and latencies.
pub const INSPECT_SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Points the inspector keeps per chart: ten minutes.
pub const INSPECT_SAMPLES: usize = 300;
/// How long the inspector reuses a snapshot, however many pages poll.
pub const INSPECT_SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How often the Redis subscriber connection is pinged.
pub const REDIS_PING_EVERY: Duration = Duration::from_secs(10);
/// How long a Redis ping's answer may take before the connection counts as down.
pub const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A `POST /_broadcast` body may hold this many maximal broadcasts.
pub const BROADCAST_BODY_FACTOR: usize = 16;
/// How often one kind of skipped broadcast is logged, per ingress.
pub const SKIP_WARN_EVERY: Duration = Duration::from_secs(60);
