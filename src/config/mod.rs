//! Every setting, as a flag and an environment variable (the flag wins), with its default,
//! and in [`tuning`] every fixed number the gateway runs by, each with the reason for it.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod values;
pub use values::{explain, parse};

/// ActionCable-compatible WebSocket gateway fed by a PostgreSQL outbox.
#[derive(Debug, Parser)]
#[command(name = "cable-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: /cable, /health, /ready, /metrics on one listener.
    Serve(Box<ServeConfig>),
    /// Apply the embedded migrations to DATABASE_URL and exit.
    Migrate(DatabaseArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL. Required.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address to listen on, IP:PORT or HOST:PORT (port 0 picks a free port).
    /// Default: 127.0.0.1:8080
    #[arg(
        long,
        env = "CABLE_LISTEN",
        default_value = "127.0.0.1:8080",
        value_parser = values::listen,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub listen: SocketAddr,

    /// How long a subscriber stays online after its last sign of life. Default: 30s
    #[arg(long, env = "CABLE_PRESENCE_TTL", default_value = "30s", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub presence_ttl: Duration,

    /// Bytes per second an account's presence pushes may use. Default: 8388608 (8 MiB/s)
    #[arg(long, env = "CABLE_PRESENCE_PUSH_BUDGET", default_value_t = 8 << 20, hide_env_values = true, hide_default_value = true)]
    pub presence_push_budget: u64,

    /// Comma-separated browser origins allowed to connect (exact, or `*.example.com`);
    /// empty allows any. Requests without an Origin header are always accepted. Default: any
    #[arg(
        long,
        env = "CABLE_ALLOWED_ORIGINS",
        default_value = "",
        value_delimiter = ',',
        hide_env_values = true,
        hide_default_value = true
    )]
    pub allowed_origins: Vec<String>,

    /// Largest inbound WebSocket message in bytes; larger ends the connection with
    /// `invalid_request`. Default: 65536
    #[arg(long, env = "CABLE_MAX_FRAME_SIZE", default_value_t = 64 * 1024, hide_env_values = true, hide_default_value = true)]
    pub max_frame_size: usize,

    /// Subscriptions one connection may hold; further subscribes are rejected. Default: 100
    #[arg(
        long,
        env = "CABLE_MAX_SUBSCRIPTIONS",
        default_value_t = 100,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub max_subscriptions: usize,

    /// The path of the topic WebSocket (docs/reference.md §12). Default: /ws
    #[arg(
        long,
        env = "CABLE_TOPICS_PATH",
        default_value = "/ws",
        value_parser = crate::config::values::path,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub topics_path: String,

    /// Topics one topic WebSocket connection may subscribe; beyond, `limit_exceeded`.
    /// Default: 100
    #[arg(
        long,
        env = "CABLE_MAX_TOPICS",
        default_value_t = 100,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub max_topics: usize,

    /// Commands per second one connection may send on average (bursts of twice as many are
    /// fine); faster ends the connection with `invalid_request`. Default: 50
    #[arg(
        long,
        env = "CABLE_MAX_COMMAND_RATE",
        default_value_t = 50,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub max_command_rate: u32,

    /// Rejected subscribes one connection may collect before it is disconnected with
    /// `unauthorized` (token guessing). Default: 20
    #[arg(
        long,
        env = "CABLE_MAX_REJECTS",
        default_value_t = 20,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub max_rejects: u32,

    /// Open WebSocket connections this process accepts; more get HTTP 503. 0 derives it from
    /// the file-descriptor limit (soft limit minus a reserve for the database and listener).
    /// Default: 0
    #[arg(
        long,
        env = "CABLE_MAX_CONNECTIONS",
        default_value_t = 0,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub max_connections: usize,

    /// A connection that sends nothing for this long after connecting is closed (it holds a
    /// descriptor and has asked for nothing). Default: 60s
    #[arg(long, env = "CABLE_FIRST_BYTES_TIMEOUT", default_value = "60s", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub first_bytes_timeout: Duration,

    /// Frames that may wait for a client whose socket has taken nothing for 1 s before it is
    /// disconnected with `too_slow`; a queue 16 times this long is too long in any case (a
    /// client that reads keeps up with bursts in between). Default: 1024
    #[arg(
        long,
        env = "CABLE_SEND_QUEUE",
        default_value_t = 1024,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub send_queue: usize,

    /// How long a valid token lookup is cached. Default: 5s
    #[arg(long, env = "CABLE_AUTH_CACHE_TTL", default_value = "5s", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub auth_cache_ttl: Duration,

    /// How long an invalid token lookup is cached. Default: 1s
    #[arg(long, env = "CABLE_AUTH_NEGATIVE_TTL", default_value = "1s", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub auth_negative_ttl: Duration,

    /// Most token lookups kept in the cache. Default: 100000
    #[arg(
        long,
        env = "CABLE_AUTH_CACHE_SIZE",
        default_value_t = 100_000,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub auth_cache_size: u64,

    /// How soon live subscriptions are re-checked against the database (roles, inbox
    /// memberships, revoked tokens) after the identity tables change, and how often while
    /// their change notifications cannot be heard (no triggers, LISTEN connection down); at
    /// most one pass per interval. Default: 2s
    #[arg(long, env = "CABLE_REVALIDATE_INTERVAL", default_value = "2s", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub revalidate_interval: Duration,

    /// How often live subscriptions are re-checked although no change was notified (a safety
    /// net for changes the triggers cannot see, e.g. with triggers disabled). Default: 60s
    #[arg(long, env = "CABLE_REVALIDATE_FULL_INTERVAL", default_value = "60s", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub revalidate_full_interval: Duration,

    /// How often the outbox is read when no notification arrives (safety net). Default: 1s
    #[arg(long, env = "CABLE_OUTBOX_POLL", default_value = "1s", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub outbox_poll: Duration,

    /// Largest outbox event `data` in bytes (as stored, in jsonb's text form); a larger row
    /// is skipped, logged and counted (`cable_events_skipped_total{reason="too_large"}`).
    /// Default: 1048576 (1 MiB)
    #[arg(long, env = "CABLE_MAX_EVENT_SIZE", default_value_t = 1 << 20, hide_env_values = true, hide_default_value = true)]
    pub max_event_size: usize,

    /// Events older than this are deleted from cable_events. Default: 24h
    #[arg(long, env = "CABLE_EVENT_RETENTION", default_value = "24h", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub event_retention: Duration,

    /// Extended protocol: how long a session can be restored by its `sid` after its socket
    /// was lost (on any process of the database). Default: 5m
    #[arg(long, env = "CABLE_SESSION_TTL", default_value = "5m", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub session_ttl: Duration,

    /// Extended protocol: the most outbox events (of every account) one history request may
    /// reach back over; a request for more gets `reject_history` (the client refetches).
    /// Default: 10000
    #[arg(
        long,
        env = "CABLE_HISTORY_MAX_SPAN",
        default_value_t = 10_000,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub history_max_span: i64,

    /// Extended protocol: broadcasts of stream ingress kept per stream, in memory, for
    /// history on the process that heard them (0 keeps none). Default: 100
    #[arg(
        long,
        env = "CABLE_HISTORY_LIMIT",
        default_value_t = 100,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub history_limit: usize,

    /// Extended protocol: how long a stream ingress broadcast is kept for history.
    /// Default: 5m
    #[arg(long, env = "CABLE_HISTORY_TTL", default_value = "5m", value_parser = values::duration, hide_env_values = true, hide_default_value = true)]
    pub history_ttl: Duration,

    /// Hear a Rails backend's ActionCable PostgreSQL adapter (`NOTIFY`) on this database:
    /// the streams of every live subscription are LISTENed to. Default: true
    #[arg(long, env = "CABLE_RAILS_POSTGRES", default_value_t = true, action = clap::ArgAction::Set, hide_env_values = true, hide_default_value = true)]
    pub rails_postgres: bool,

    /// Redis URL (`redis://` or `rediss://` for TLS) of a Rails backend's ActionCable Redis
    /// adapter: broadcasts published there reach the subscriptions streaming them. Default: off
    #[arg(long, env = "CABLE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PEM file of the CA that signed the Redis server's certificate (for `rediss://`), when
    /// it is not one of the public web roots. Default: the public web roots
    #[arg(long, env = "CABLE_REDIS_CA_CERT", hide_env_values = true)]
    pub redis_ca_cert: Option<std::path::PathBuf>,

    /// With CABLE_REDIS_URL: keep Chatwoot's ONLINE_PRESENCE::<account>::USERS/CONTACTS keys
    /// in that Redis, for the Rails code that reads who is online. Default: true
    #[arg(long, env = "CABLE_CHATWOOT_PRESENCE", default_value_t = true, action = clap::ArgAction::Set, hide_env_values = true, hide_default_value = true)]
    pub chatwoot_presence: bool,

    /// The `channel_prefix` of the Rails backend's `config/cable.yml` (Chatwoot:
    /// `chatwoot_<RAILS_ENV>_action_cable`): its broadcasts travel as `<prefix>:<stream>`.
    /// Default: none
    #[arg(long, env = "CABLE_RAILS_CHANNEL_PREFIX", hide_env_values = true)]
    pub rails_channel_prefix: Option<String>,

    /// Bearer key of the HTTP broadcast API (`POST /_broadcast`, AnyCable's format); the
    /// endpoint answers 404 without it. Default: off
    #[arg(long, env = "CABLE_BROADCAST_KEY", hide_env_values = true)]
    pub broadcast_key: Option<String>,

    /// HMAC key (its UTF-8 bytes) of signed connection tokens: a client may connect with an
    /// HS256 JWT as `?jid=`, `X-JID` or the sub-protocol `anycable-token.<token>`, naming a
    /// user (`user_id`, `account_id`) or a contact session (`contact_inbox_id`) until its
    /// `exp`. Default: off
    #[arg(long, env = "CABLE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// A Centrifugo v6 JSON configuration file: its token HMAC key, API key and channel
    /// namespaces are used (docs/reference.md §11); every other key is named in one startup
    /// warning. Default: none
    #[arg(long, env = "CABLE_CENTRIFUGO_CONFIG", hide_env_values = true)]
    pub centrifugo_config: Option<std::path::PathBuf>,

    /// Key of Centrifugo's server API (`POST /api/<method>` with `X-API-Key`); overrides the
    /// file's `http_api.key`. Default: off
    #[arg(long, env = "CABLE_CENTRIFUGO_API_KEY", hide_env_values = true)]
    pub centrifugo_api_key: Option<String>,

    /// Centrifugo's connect proxy: a connect without a token is POSTed to this `http://` URL
    /// and the backend's answer decides; overrides the file's `client.proxy.connect`.
    /// Default: off (or the file's)
    #[arg(
        long,
        env = "CABLE_CENTRIFUGO_CONNECT_PROXY_URL",
        hide_env_values = true
    )]
    pub centrifugo_connect_proxy_url: Option<String>,

    /// How often the server pings Centrifugo clients (`{}`), as the connect reply tells
    /// them. Default: 25s
    #[arg(
        long,
        env = "CABLE_CENTRIFUGO_PING",
        default_value = "25s",
        value_parser = crate::config::values::duration,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub centrifugo_ping: std::time::Duration,

    /// Turns on the inspector page `GET /inspect` (and its JSON, `GET /inspect/data`) for
    /// whoever presents this token: as the password of HTTP basic auth, or `?token=`.
    /// Default: off (404)
    #[arg(long, env = "CABLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Largest stream broadcast payload in bytes; a larger one is skipped and counted.
    /// Default: 1048576 (1 MiB)
    #[arg(long, env = "CABLE_MAX_BROADCAST_SIZE", default_value_t = 1 << 20, hide_env_values = true, hide_default_value = true)]
    pub max_broadcast_size: usize,

    /// Connections in the database pool. Default: 10
    #[arg(
        long,
        env = "CABLE_DB_POOL_SIZE",
        default_value_t = 10,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub db_pool_size: u32,

    /// Log format: `text` or `json`. Default: text
    #[arg(
        long,
        env = "CABLE_LOG_FORMAT",
        default_value = "text",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServeConfig {
    /// A configuration with every default, for tests and embedding.
    pub fn new(database_url: impl Into<String>) -> Self {
        let cli = Cli::parse_from([
            "cable-gateway",
            "serve",
            "--database-url",
            &database_url.into(),
        ]);
        match cli.command {
            Command::Serve(config) => *config,
            Command::Migrate(_) => unreachable!("parsed a serve command"),
        }
    }
}

pub mod tuning;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `serve --help` names each default once (in the setting's own text), never prints an
    /// environment variable's value (it may hold a secret), and every setting has both.
    #[test]
    fn help_names_every_default_once_and_no_env_values() {
        let mut cli = Cli::command();
        let serve = cli.find_subcommand_mut("serve").expect("serve exists");
        for arg in serve.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let name = arg.get_id().to_string();
            assert!(
                help.contains("Default: ") || help.contains("Required"),
                "{name}: its help must end with its default: {help}"
            );
            assert!(
                arg.is_hide_env_values_set(),
                "{name} ({env:?}) would print its value"
            );
            if !arg.get_default_values().is_empty() {
                assert!(
                    arg.is_hide_default_value_set(),
                    "{name}: default shown twice"
                );
            }
        }
        let help = serve.render_long_help().to_string();
        assert!(!help.contains("[default:"), "{help}");
        assert!(!help.contains("=]"), "{help}");
    }
}
