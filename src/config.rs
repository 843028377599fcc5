//! Every setting, as a flag and an environment variable (the flag wins), with its default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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

    /// Address to listen on (port 0 picks a free port). Default: 127.0.0.1:8080
    #[arg(long, env = "CABLE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// How long a subscriber stays online after its last sign of life. Default: 30s
    #[arg(long, env = "CABLE_PRESENCE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

    /// Bytes per second an account's presence pushes may use. Default: 8388608 (8 MiB/s)
    #[arg(long, env = "CABLE_PRESENCE_PUSH_BUDGET", default_value_t = 8 << 20)]
    pub presence_push_budget: u64,

    /// Comma-separated browser origins allowed to connect (exact, or `*.example.com`);
    /// empty allows any. Requests without an Origin header are always accepted. Default: any
    #[arg(
        long,
        env = "CABLE_ALLOWED_ORIGINS",
        default_value = "",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Largest inbound WebSocket message in bytes; larger ends the connection with
    /// `invalid_request`. Default: 65536
    #[arg(long, env = "CABLE_MAX_FRAME_SIZE", default_value_t = 64 * 1024)]
    pub max_frame_size: usize,

    /// Subscriptions one connection may hold; further subscribes are rejected. Default: 100
    #[arg(long, env = "CABLE_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Commands per second one connection may send on average (bursts of twice as many are
    /// fine); faster ends the connection with `invalid_request`. Default: 50
    #[arg(long, env = "CABLE_MAX_COMMAND_RATE", default_value_t = 50)]
    pub max_command_rate: u32,

    /// Rejected subscribes one connection may collect before it is disconnected with
    /// `unauthorized` (token guessing). Default: 20
    #[arg(long, env = "CABLE_MAX_REJECTS", default_value_t = 20)]
    pub max_rejects: u32,

    /// Open WebSocket connections this process accepts; more get HTTP 503. 0 derives it from
    /// the file-descriptor limit (soft limit minus a reserve for the database and listener).
    /// Default: 0
    #[arg(long, env = "CABLE_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Frames that may wait for a client whose socket has taken nothing for 1 s before it is
    /// disconnected with `too_slow`; a queue 16 times this long is too long in any case (a
    /// client that reads keeps up with bursts in between). Default: 1024
    #[arg(long, env = "CABLE_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,

    /// How long a valid token lookup is cached. Default: 5s
    #[arg(long, env = "CABLE_AUTH_CACHE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: Duration,

    /// How long an invalid token lookup is cached. Default: 1s
    #[arg(long, env = "CABLE_AUTH_NEGATIVE_TTL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub auth_negative_ttl: Duration,

    /// Most token lookups kept in the cache. Default: 100000
    #[arg(long, env = "CABLE_AUTH_CACHE_SIZE", default_value_t = 100_000)]
    pub auth_cache_size: u64,

    /// How often live subscriptions are re-checked against the database (roles, inbox
    /// memberships, revoked tokens). Default: 2s
    #[arg(long, env = "CABLE_REVALIDATE_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub revalidate_interval: Duration,

    /// How often the outbox is read when no notification arrives (safety net). Default: 1s
    #[arg(long, env = "CABLE_OUTBOX_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub outbox_poll: Duration,

    /// Events older than this are deleted from cable_events. Default: 24h
    #[arg(long, env = "CABLE_EVENT_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub event_retention: Duration,

    /// Connections in the database pool. Default: 10
    #[arg(long, env = "CABLE_DB_POOL_SIZE", default_value_t = 10)]
    pub db_pool_size: u32,

    /// Log format: `text` or `json`. Default: text
    #[arg(long, env = "CABLE_LOG_FORMAT", default_value = "text")]
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
