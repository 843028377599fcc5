//! One bench run: a running server (gateway or Rails), N connections, the scenarios in a
//! fixed order, one JSON object per scenario (printed as a line, and collected in `--out`).
//!
//! Order (each step bounded in time):
//! 1. `storm`: N clients of the `groups` layout connect and subscribe at once.
//! 2. `idle`: they are held; server RSS per connection and idle CPU. Then `fanout_groups`:
//!    events to them in Chatwoot's shape, each account's 100 subscribers (through the outbox:
//!    one row per account; through Rails' adapters: one broadcast per recipient token). Then
//!    they are closed.
//! 3. `storm_one_account`: N agents of one account connect at once (the fan-out audience).
//! 4. `fanout`: events at a fixed rate to that account; latency at every receiver,
//!    delivered vs expected, deliveries per server CPU-second.
//! 5. `slow`: every `slow_every`-th client stops reading; the others' latency. Then closed.
//! 6. `storm_tabs`: N connections of N/4 agents (four tabs each): token lookups vs tokens.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::client::{new_histogram, unix_us, Request};
use crate::db;
use crate::fleet::{Fleet, Merged};
use crate::layout::{user_token, Layout, TABS};
use crate::probe;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Gateway,
    Rails,
}

/// Who an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every agent of the one fan-out account (N recipients per event).
    OneAccount,
    /// The `groups` layout: each account's 100 subscribers, one event per account per tick
    /// (Chatwoot's shape; every subscriber receives one per tick).
    Groups,
}

/// How events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Publish {
    /// One `cable_events` row per event (the gateway's outbox).
    Outbox,
    /// One NOTIFY per recipient token, as Rails' PostgreSQL adapter broadcasts.
    Notify,
    /// One PUBLISH per recipient token, as Rails' Redis adapter broadcasts.
    Redis,
}

/// The events a fan-out publishes (`cable-bench run` and the floor take the same ones, so that
/// their figures compare).
#[derive(Debug, Clone, clap::Args)]
pub struct EventArgs {
    /// Events per second in `fanout` and `slow`.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Seconds of publishing in `fanout` and `slow`.
    #[arg(long, default_value_t = 12)]
    pub duration: u64,
    /// Bytes of padding in each event's `data.content`.
    #[arg(long, default_value_t = 200)]
    pub pad: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// What is being measured.
    #[arg(long, value_enum)]
    pub target: Target,
    /// How events are published. Default: outbox for the gateway, notify for Rails.
    #[arg(long, value_enum)]
    pub publish: Option<Publish>,
    /// Redis URL, for `--publish redis`.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// WebSocket URL of the server (an IP address, not a name).
    #[arg(long)]
    pub url: String,
    /// PostgreSQL URL of the server's database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// PID of the server process (RSS and CPU are read from /proc).
    #[arg(long)]
    pub server_pid: u32,
    /// PID of the PostgreSQL postmaster: its backends' CPU is reported too.
    #[arg(long)]
    pub db_pid: Option<u32>,
    /// Connections (clients).
    #[arg(long, short = 'n')]
    pub connections: usize,
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
    /// Seconds the idle connections are held.
    #[arg(long, default_value_t = 15)]
    pub hold: u64,
    #[command(flatten)]
    pub events: EventArgs,
    /// In `slow`, every this many-th client stops reading.
    #[arg(long, default_value_t = 10)]
    pub slow_every: usize,
    /// Most seconds to wait, after the last event was published, for deliveries still due
    /// (a saturated server's backlog); what has not arrived by then is reported missing.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Before measuring, wait until the server's CPU use stays under a third of a core for a
    /// second (presence answers and LISTENs after a storm finish), at most this many seconds.
    #[arg(long, default_value_t = 90)]
    pub settle: u64,
    /// Write every scenario's JSON (and the run's settings) here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// p50/p99/p99.9/max in milliseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
    })
}

fn loud(what: &str) {
    eprintln!("\n!!!!!!!! cable-bench: {what} !!!!!!!!\n");
}

struct Run {
    args: RunArgs,
    metrics_addr: Option<String>,
    db: tokio_postgres::Client,
    publishing: Publish,
    redis: Option<redis::aio::MultiplexedConnection>,
    fleet: Fleet,
    /// Server CPU per second while idle (for "net of idle" figures).
    idle_cpu_rate: f64,
}

impl Run {
    fn metrics(&self) -> Option<std::collections::HashMap<String, f64>> {
        self.metrics_addr.as_deref().and_then(probe::scrape)
    }

    fn cpu(&self) -> f64 {
        probe::cpu_seconds(self.args.server_pid).unwrap_or(f64::NAN)
    }

    fn db_cpu(&self) -> Option<f64> {
        self.args.db_pid.and_then(probe::tree_cpu_seconds)
    }

    /// Waits (bounded by `--settle`) until the server is quiet; returns the seconds waited.
    async fn settle(&self) -> f64 {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(self.args.settle);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut cpu = self.cpu();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.cpu();
            if now - cpu < 0.33 {
                break;
            }
            cpu = now;
        }
        (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0
    }

    fn rss(&self) -> u64 {
        probe::rss_bytes(self.args.server_pid).unwrap_or(0)
    }

    async fn storm(&mut self, layout: Layout, distinct_tokens: usize) -> Result<Value> {
        let n = self.args.connections;
        let m0 = self.metrics();
        let overflows0 = probe::listen_overflows();
        let cpu0 = self.cpu();
        let started = unix_us();
        let r: Merged = self.fleet.ask_merged(&Request::Connect { layout }).await?;
        let cpu1 = self.cpu();
        let m1 = self.metrics();
        let overflows1 = probe::listen_overflows();
        let all = r.sum.confirmed == n;
        if !all {
            loud(&format!(
                "storm ({layout:?}): {} of {n} confirmed, {} rejected, {} failed: {:?}",
                r.sum.confirmed, r.sum.rejected, r.sum.failed, r.sum.errors
            ));
        }
        let delta = |name: &str| -> Value {
            match (&m0, &m1) {
                (Some(a), Some(b)) => json!(probe::metric(b, name) - probe::metric(a, name)),
                _ => Value::Null,
            }
        };
        let overflow = match (overflows0, overflows1) {
            (Some(a), Some(b)) => json!(b.0 - a.0),
            _ => Value::Null,
        };
        Ok(json!({
            "layout": layout,
            "connections": n,
            "confirmed": r.sum.confirmed,
            "rejected": r.sum.rejected,
            "failed": r.sum.failed,
            "errors": r.sum.errors,
            "all_confirmed": all,
            "all_confirmed_s": if r.sum.last_confirm_us > 0 {
                json!(((r.sum.last_confirm_us.saturating_sub(started)) as f64 / 1e6 * 1000.0).round() / 1000.0)
            } else { Value::Null },
            "per_connection": summary(&r.confirms),
            "distinct_tokens": distinct_tokens,
            "auth_queries": delta("cable_auth_queries_total"),
            "auth_cache_hits": delta("cable_auth_cache_hits_total"),
            "auth_cache_misses": delta("cable_auth_cache_misses_total"),
            "listen_overflows": overflow,
            "server_cpu_s": ((cpu1 - cpu0) * 100.0).round() / 100.0,
        }))
    }

    async fn idle(&mut self, rss_base: u64) -> Result<Value> {
        let n = self.args.connections;
        let settled = self.settle().await;
        let rss_start = self.rss();
        let cpu0 = self.cpu();
        let split0 = probe::cpu_split(self.args.server_pid);
        let db0 = self.db_cpu();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(self.args.hold)).await;
        let split = match (split0, probe::cpu_split(self.args.server_pid)) {
            (Some(a), Some(b)) => json!({
                "user_s": ((b.0 - a.0) * 100.0).round() / 100.0,
                "system_s": ((b.1 - a.1) * 100.0).round() / 100.0,
            }),
            _ => Value::Null,
        };
        let held = t0.elapsed().as_secs_f64();
        let cpu1 = self.cpu();
        let db1 = self.db_cpu();
        let rss_end = self.rss();
        let check = self.fleet.ask_merged(&Request::Count).await?;
        self.idle_cpu_rate = (cpu1 - cpu0) / held;
        let per_conn = rss_end.saturating_sub(rss_base) as f64 / n.max(1) as f64;
        Ok(json!({
            "connections": n,
            "open_at_end": check.sum.confirmed - check.sum.ended,
            "held_s": (held * 10.0).round() / 10.0,
            "settled_after_s": settled,
            "rss_base_bytes": rss_base,
            "rss_start_bytes": rss_start,
            "rss_end_bytes": rss_end,
            "rss_per_connection_bytes": per_conn.round(),
            "idle_cpu_percent": (self.idle_cpu_rate * 1000.0).round() / 10.0,
            "idle_cpu_split": split,
            "db_cpu_percent": match (db0, db1) {
                (Some(a), Some(b)) => json!(((b - a) / held * 1000.0).round() / 10.0),
                _ => Value::Null,
            },
        }))
    }

    /// Drops every connection and waits (bounded) until the server has seen them go.
    async fn close(&mut self) -> Result<()> {
        self.fleet.ask(&Request::Close).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        if self.metrics_addr.is_some() {
            while Instant::now() < deadline {
                match self.metrics() {
                    Some(m) if probe::metric(&m, "cable_connections_open") > 0.0 => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    _ => break,
                }
            }
        } else {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok(())
    }

    /// Publishes `rate × duration` events and waits until every reading client has them
    /// (or nothing arrives for 10 s).
    async fn publish(
        &mut self,
        run: u64,
        pad: usize,
        name: &str,
        audience: Audience,
    ) -> Result<Value> {
        let settled = self.settle().await;
        let reset = self.fleet.ask_merged(&Request::Reset { run }).await?;
        let receivers = reset.sum.receivers;
        let events = (self.args.events.rate * self.args.events.duration as f64)
            .round()
            .max(1.0) as u64;
        let expected = events * receivers as u64;
        let groups = (audience == Audience::Groups).then(|| db::Groups::new(self.args.connections));
        let tokens: Vec<String> = match &groups {
            Some(groups) => groups.tokens.clone(),
            None => (0..self.args.connections).map(user_token).collect(),
        };
        let m0 = self.metrics();
        let cpu0 = self.cpu();
        let split0 = probe::cpu_split(self.args.server_pid);
        let client0 = self.fleet.cpu_seconds();
        let machine0 = probe::machine_busy_seconds();
        let db0 = self.db_cpu();
        let t0 = Instant::now();
        let mut publish_us = new_histogram();
        let period = Duration::from_secs_f64(1.0 / self.args.events.rate);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..events {
            tick.tick().await;
            let ts = unix_us();
            let data = db::event_data(run, seq, ts, pad);
            match (self.publishing, &groups) {
                (Publish::Outbox, None) => db::publish_outbox(&self.db, &data).await?,
                (Publish::Outbox, Some(groups)) => {
                    db::publish_outbox_groups(&self.db, groups, &data).await?
                }
                (Publish::Notify, None) => db::publish_notify(&self.db, &tokens, &data).await?,
                (Publish::Notify, Some(groups)) => {
                    db::publish_notify_each(&self.db, &tokens, &groups.payloads(&data)).await?
                }
                (Publish::Redis, _) => {
                    let payloads = match &groups {
                        Some(groups) => groups.payloads(&data),
                        None => vec![db::rails_payload(&data)],
                    };
                    let redis = self.redis.as_mut().expect("connected for --publish redis");
                    db::publish_redis(redis, &tokens, &payloads).await?
                }
            }
            let _ = publish_us.record(unix_us().saturating_sub(ts).max(1));
        }
        let published_s = t0.elapsed().as_secs_f64();
        let mut last = (0u64, Instant::now());
        let drain_deadline = Instant::now() + Duration::from_secs(self.args.drain);
        let mut drained = true;
        loop {
            let c = self.fleet.ask_merged(&Request::Count).await?;
            if c.sum.received >= expected {
                break;
            }
            if Instant::now() > drain_deadline {
                drained = false;
                break;
            }
            if c.sum.received != last.0 {
                last = (c.sum.received, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let window = t0.elapsed().as_secs_f64();
        let cpu = self.cpu() - cpu0;
        let client_cpu = self.fleet.cpu_seconds() - client0;
        let machine_cpu = match (machine0, probe::machine_busy_seconds()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let split = match (split0, probe::cpu_split(self.args.server_pid)) {
            (Some(a), Some(b)) => json!({
                "user_s": ((b.0 - a.0) * 100.0).round() / 100.0,
                "system_s": ((b.1 - a.1) * 100.0).round() / 100.0,
            }),
            _ => Value::Null,
        };
        let db_cpu = match (db0, self.db_cpu()) {
            (Some(a), Some(b)) => json!(((b - a) * 100.0).round() / 100.0),
            _ => Value::Null,
        };
        let m1 = self.metrics();
        let r = self.fleet.ask_merged(&Request::Report).await?;
        let delivered = r.sum.received;
        let exact = delivered == expected
            && r.sum.per_receiver_min == events
            && r.sum.per_receiver_max == events
            && r.sum.disorder == 0;
        if !exact {
            loud(&format!(
                "{name}: delivered {delivered} of {expected} expected (per receiver {}..{} of {events}, {} out of order, {} receivers ended, {} received nothing, {} rejects after confirm)",
                r.sum.per_receiver_min, r.sum.per_receiver_max, r.sum.disorder, r.sum.ended,
                r.sum.silent_receivers, r.sum.rejected_after_confirm
            ));
        }
        let net_cpu = (cpu - self.idle_cpu_rate * window).max(1e-9);
        // The gateway's own view: insert → read from the outbox, and insert → socket write.
        let mean_of = |name: &str| -> Value {
            match (&m0, &m1) {
                (Some(a), Some(b)) => {
                    let sum = probe::metric(b, &format!("{name}_sum"))
                        - probe::metric(a, &format!("{name}_sum"));
                    let count = probe::metric(b, &format!("{name}_count"))
                        - probe::metric(a, &format!("{name}_count"));
                    if count > 0.0 {
                        json!((sum / count * 1e6).round() / 1e3)
                    } else {
                        Value::Null
                    }
                }
                _ => Value::Null,
            }
        };
        // How much a counter of the gateway's grew over the window.
        let grew = |name: &str| -> Value {
            match (&m0, &m1) {
                (Some(a), Some(b)) => json!(probe::metric(b, name) - probe::metric(a, name)),
                _ => Value::Null,
            }
        };
        let too_slow = grew("cable_too_slow_disconnects_total");
        // A presence push to a big account's members is queued ahead of the events that
        // follow it: a fan-out that stalls with pushes in its window is explained by them.
        let presence_pushes = grew("cable_presence_pushes_total");
        Ok(json!({
            "connections": self.args.connections,
            "events": events,
            "rate_per_s": self.args.events.rate,
            "achieved_rate_per_s": ((events as f64 / published_s) * 100.0).round() / 100.0,
            "payload_pad_bytes": pad,
            "settled_after_s": settled,
            "receivers": receivers,
            "paused": r.sum.paused,
            "expected": expected,
            "delivered": delivered,
            "delivered_to_paused": r.sum.received_paused,
            "exact": exact,
            "drained_within_s": if drained { json!(self.args.drain) } else { Value::Null },
            "out_of_order": r.sum.disorder,
            "receivers_ended": r.sum.ended,
            "latency": summary(&r.latency),
            "publish_statement": summary(&publish_us),
            "window_s": (window * 100.0).round() / 100.0,
            "server_cpu_s": (cpu * 100.0).round() / 100.0,
            "server_cpu_split": split,
            "client_cpu_s": (client_cpu * 100.0).round() / 100.0,
            // Everything else on the machine in the window (other processes, the bench's
            // publisher); the database's backends are in `db_cpu_s`.
            "machine_busy_cpu_s": machine_cpu.map(|m| (m * 100.0).round() / 100.0),
            "other_cpu_s": machine_cpu.map(|m| {
                let db = db_cpu.as_f64().unwrap_or(0.0);
                ((m - cpu - client_cpu - db) * 100.0).round() / 100.0
            }),
            "deliveries_per_cpu_s": (delivered as f64 / cpu.max(1e-9)).round(),
            "deliveries_per_cpu_s_net_of_idle": (delivered as f64 / net_cpu).round(),
            "db_cpu_s": db_cpu,
            "too_slow_disconnects": too_slow,
            "presence_pushes": presence_pushes,
            "gateway_mean_outbox_lag_ms": mean_of("cable_outbox_lag_seconds"),
            "gateway_mean_write_latency_ms": mean_of("cable_delivery_latency_seconds"),
            "disconnects_seen": r.sum.disconnects,
            "rejected_after_confirm": r.sum.rejected_after_confirm,
            "silent_receivers": r.sum.silent_receivers,
        }))
    }
}

/// Why a run failed: the client processes (I/O) or the database.
#[derive(Debug)]
pub enum RunError {
    Io(std::io::Error),
    Db(tokio_postgres::Error),
    Redis(redis::RedisError),
}

pub type Result<T> = std::result::Result<T, RunError>;

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Io(e) => write!(f, "client processes or files: {e}"),
            RunError::Db(e) => write!(f, "database: {e}"),
            RunError::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

impl From<std::io::Error> for RunError {
    fn from(e: std::io::Error) -> Self {
        RunError::Io(e)
    }
}

impl From<redis::RedisError> for RunError {
    fn from(e: redis::RedisError) -> Self {
        RunError::Redis(e)
    }
}

impl From<tokio_postgres::Error> for RunError {
    fn from(e: tokio_postgres::Error) -> Self {
        RunError::Db(e)
    }
}

fn emit(results: &mut serde_json::Map<String, Value>, name: &str, value: Value) {
    println!("{}", json!({ "scenario": name, "result": value }));
    results.insert(name.to_string(), value);
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let mem_kb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_bytes": mem_kb.map(|k| k * 1024),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

pub async fn run(args: RunArgs) -> Result<Value> {
    let n = args.connections;
    let metrics_addr = match args.target {
        Target::Gateway => args
            .url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .map(str::to_owned),
        Target::Rails => None,
    };
    let db = db::connect(&args.database_url).await?;
    db::seed(&db, n).await?;
    let rss_base = probe::rss_bytes(args.server_pid).unwrap_or(0);
    let fleet = Fleet::spawn(&args.url, 0, n, &args.fleet)?;
    eprintln!(
        "cable-bench: {:?}, {n} connections from {} client process(es)",
        args.target,
        fleet.processes()
    );
    let publishing = args.publish.unwrap_or(match args.target {
        Target::Gateway => Publish::Outbox,
        Target::Rails => Publish::Notify,
    });
    let redis = match (publishing, &args.redis_url) {
        (Publish::Redis, Some(url)) => Some(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?,
        ),
        (Publish::Redis, None) => {
            return Err(RunError::Io(std::io::Error::other(
                "--publish redis needs --redis-url",
            )))
        }
        _ => None,
    };
    let mut run = Run {
        publishing,
        redis,
        metrics_addr,
        db,
        fleet,
        idle_cpu_rate: 0.0,
        args: args.clone(),
    };
    let mut results = serde_json::Map::new();

    let storm = run.storm(Layout::Groups, n).await?;
    emit(&mut results, "storm", storm);
    let idle = run.idle(rss_base).await?;
    emit(&mut results, "idle", idle);
    let groups = run
        .publish(3, args.events.pad, "fanout_groups", Audience::Groups)
        .await?;
    emit(&mut results, "fanout_groups", groups);
    run.close().await?;

    let storm = run.storm(Layout::Fanout, n).await?;
    emit(&mut results, "storm_one_account", storm);
    let fanout = run
        .publish(1, args.events.pad, "fanout", Audience::OneAccount)
        .await?;
    emit(&mut results, "fanout", fanout);
    let paused = run
        .fleet
        .ask_merged(&Request::Pause {
            every: args.slow_every,
        })
        .await?;
    eprintln!("cable-bench: {} clients stopped reading", paused.sum.paused);
    let slow = run
        .publish(2, args.events.pad, "slow", Audience::OneAccount)
        .await?;
    emit(&mut results, "slow", slow);
    run.close().await?;

    let storm = run.storm(Layout::Tabs, n.div_ceil(TABS)).await?;
    emit(&mut results, "storm_tabs", storm);
    run.close().await?;
    if let Some(m) = run.metrics() {
        // The gateway's own counters over the whole run, for whatever the client saw.
        let mut totals = serde_json::Map::new();
        let mut names: Vec<&String> = m
            .keys()
            .filter(|k| {
                k.starts_with("cable_connections_closed_total")
                    || k.starts_with("cable_revocations_total")
                    || k.starts_with("cable_too_slow_disconnects_total")
                    || k.starts_with("cable_commands_total")
                    || k.starts_with("cable_connections_refused_total")
            })
            .collect();
        names.sort();
        for k in names {
            totals.insert(k.clone(), json!(m[k]));
        }
        emit(&mut results, "gateway_totals", Value::Object(totals));
    }
    run.fleet.stop().await;

    let all = json!({
        "target": args.target,
        "connections": n,
        "machine": machine(),
        "settings": {
            "publish": publishing,
            "client_processes": crate::fleet::split(n, args.fleet.per_process).len(),
            "per_address": args.fleet.per_address,
            "hold_s": args.hold,
            "rate_per_s": args.events.rate,
            "duration_s": args.events.duration,
            "pad_bytes": args.events.pad,
            "slow_every": args.slow_every,
        },
        "scenarios": Value::Object(results),
    });
    if let Some(path) = &args.out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            path,
            serde_json::to_string_pretty(&all).expect("json") + "\n",
        )?;
    }
    Ok(all)
}
