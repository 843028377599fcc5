//! `cable-bench cluster`: scale-out on one database. Several gateway processes (started by
//! `scripts/bench`) share N connections, spread by the bench in equal parts, each part from
//! its own client process and its own 127.0.0.x source addresses. Clients use the `groups`
//! layout (accounts of 100: 20 agents, 80 contact sessions); each event is one outbox row
//! per account, so every event reaches every connection. At the end every connection must
//! hold every event exactly once, in order.
//!
//! Reported: each process's CPU and deliveries, PostgreSQL's CPU and transactions (from
//! `pg_stat_database`), both in an idle window and in the publishing window of the same
//! length, so that what one event costs the database can be read off as the difference.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Request;
use crate::fleet::{Fleet, Merged};
use crate::layout::Layout;
use crate::probe;
use crate::scenario::summary;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// WebSocket URLs of the gateway processes (ws://<ip>:<port>/cable), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub urls: Vec<String>,
    /// The processes' PIDs, in the same order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub pids: Vec<u32>,
    /// PID of the PostgreSQL postmaster (its backends' CPU is reported).
    #[arg(long)]
    pub db_pid: u32,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Connections in all, split equally over the processes.
    #[arg(long, short = 'n', default_value_t = 45_000)]
    pub connections: usize,
    /// Events per second (each is one row per account).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Seconds of publishing (and of the idle window before it).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    #[arg(long, default_value_t = 200)]
    pub pad: usize,
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
    /// Most seconds to wait for deliveries after the last event.
    #[arg(long, default_value_t = 60)]
    pub drain: u64,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Transactions and rows of this database so far (`pg_stat_database`; its counters are
/// flushed about once a second, so readings are taken after a pause).
/// Scans and rows read per table (`pg_stat_user_tables`): where the database's reads go.
async fn table_reads(
    db: &tokio_postgres::Client,
) -> Result<std::collections::BTreeMap<String, (f64, f64)>, String> {
    let rows = db
        .query(
            "SELECT relname::text,
                    (COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0))::float8,
                    (COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0))::float8
               FROM pg_stat_user_tables",
            &[],
        )
        .await
        .map_err(|e| format!("pg_stat_user_tables: {e}"))?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect())
}

async fn db_stats(db: &tokio_postgres::Client) -> Result<(f64, f64, f64), String> {
    let row = db
        .query_one(
            "SELECT (xact_commit + xact_rollback)::float8, tup_returned::float8,
                    tup_inserted::float8
               FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| format!("pg_stat_database: {e}"))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

type Tables = std::collections::BTreeMap<String, (f64, f64)>;

struct Reading {
    at: Instant,
    cpu: Vec<f64>,
    db_cpu: f64,
    stats: (f64, f64, f64),
    tables: Tables,
}

struct Window {
    seconds: f64,
    /// Per table: scans and rows read in the window.
    tables: Tables,
    gateway_cpu: Vec<f64>,
    db_cpu: f64,
    transactions: f64,
    rows_returned: f64,
    rows_inserted: f64,
}

struct Probe<'a> {
    args: &'a ClusterArgs,
    db: &'a tokio_postgres::Client,
}

impl Probe<'_> {
    async fn reading(&self) -> Result<Reading, String> {
        // Let the statistics collector catch up with what happened before.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let cpu = self
            .args
            .pids
            .iter()
            .map(|pid| probe::cpu_seconds(*pid).unwrap_or(f64::NAN))
            .collect();
        let db_cpu = probe::tree_cpu_seconds(self.args.db_pid).unwrap_or(f64::NAN);
        Ok(Reading {
            at: Instant::now(),
            cpu,
            db_cpu,
            stats: db_stats(self.db).await?,
            tables: table_reads(self.db).await?,
        })
    }

    async fn window(&self, start: &Reading) -> Result<Window, String> {
        let end = self.reading().await?;
        let tables = end
            .tables
            .iter()
            .map(|(name, (scans, rows))| {
                let (scans0, rows0) = start.tables.get(name).copied().unwrap_or_default();
                (name.clone(), (scans - scans0, rows - rows0))
            })
            .collect();
        Ok(Window {
            // The pause of the closing reading is part of the window.
            seconds: end.at.duration_since(start.at).as_secs_f64(),
            tables,
            gateway_cpu: end.cpu.iter().zip(&start.cpu).map(|(b, a)| b - a).collect(),
            db_cpu: end.db_cpu - start.db_cpu,
            transactions: end.stats.0 - start.stats.0,
            rows_returned: end.stats.1 - start.stats.1,
            rows_inserted: end.stats.2 - start.stats.2,
        })
    }
}

pub async fn run(args: ClusterArgs) -> Result<Value, String> {
    if args.urls.len() != args.pids.len() || args.urls.is_empty() {
        return Err("--urls and --pids must name the same processes".into());
    }
    let processes = args.urls.len();
    let n = args.connections;
    let db = crate::db::connect(&args.database_url)
        .await
        .map_err(|e| format!("database: {e}"))?;
    crate::db::seed(&db, n)
        .await
        .map_err(|e| format!("seed: {e}"))?;
    let groups = crate::db::Groups::new(n);

    // One fleet per process, each with its own slice of the clients (and so of the source
    // addresses).
    let shares = crate::fleet::split(n, n.div_ceil(processes));
    let mut fleets = Vec::new();
    for ((first, count), url) in shares.iter().zip(&args.urls) {
        let fleet = Fleet::spawn(url, *first, *count, &args.fleet)
            .map_err(|e| format!("client processes: {e}"))?;
        fleets.push(fleet);
    }
    let connect_started = Instant::now();
    for (k, fleet) in fleets.iter_mut().enumerate() {
        let r = fleet
            .ask_merged(&Request::Connect {
                layout: Layout::Groups,
            })
            .await
            .map_err(|e| e.to_string())?;
        if r.sum.confirmed != shares[k].1 {
            return Err(format!(
                "process {k}: {} of {} confirmed ({} rejected, {} failed): {:?}",
                r.sum.confirmed, shares[k].1, r.sum.rejected, r.sum.failed, r.sum.errors
            ));
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!("cluster: {n} connected over {processes} processes in {connect_s:.1} s");

    let probe = Probe {
        args: &args,
        db: &db,
    };
    // Settle: presence answers and pushes of the storm finish.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The idle window.
    let start = probe.reading().await?;
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let idle = probe.window(&start).await?;

    // The publishing window.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut receivers = 0;
    for fleet in &mut fleets {
        receivers += fleet
            .ask_merged(&Request::Reset { run })
            .await
            .map_err(|e| e.to_string())?
            .sum
            .receivers;
    }
    let events = (args.rate * args.duration as f64).round().max(1.0) as u64;
    let expected = events * receivers as u64;
    let start = probe.reading().await?;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0..events {
        tick.tick().await;
        let data = crate::db::event_data(run, seq, crate::client::unix_us(), args.pad);
        crate::db::publish_outbox_groups(&db, &groups, &data)
            .await
            .map_err(|e| format!("publish: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.drain);
    loop {
        let mut received = 0;
        for fleet in &mut fleets {
            received += fleet
                .ask_merged(&Request::Count)
                .await
                .map_err(|e| e.to_string())?
                .sum
                .received;
        }
        if received >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let busy = probe.window(&start).await?;

    let mut replies = Vec::new();
    let mut per_process = Vec::new();
    for (k, fleet) in fleets.iter_mut().enumerate() {
        let reply = fleet
            .ask(&Request::Report)
            .await
            .map_err(|e| e.to_string())?;
        let merged = Merged::from(reply.clone());
        let cpu = busy.gateway_cpu[k];
        per_process.push(json!({
            "url": args.urls[k],
            "connections": shares[k].1,
            "delivered": merged.sum.received,
            "cpu_s": round2(cpu),
            "idle_cpu_s": round2(idle.gateway_cpu[k]),
            "deliveries_per_cpu_s": (merged.sum.received as f64 / cpu.max(1e-9)).round(),
            "latency": summary(&merged.latency),
        }));
        replies.extend(reply);
    }
    let all = Merged::from(replies);
    let exact = all.sum.received == expected
        && all.sum.per_receiver_min == events
        && all.sum.per_receiver_max == events
        && all.sum.disorder == 0;
    let rows_per_event = groups.accounts_count() as f64;
    let per_event = |busy_v: f64, idle_v: f64| {
        // Net of what the same time costs with no events.
        let net = busy_v - idle_v * busy.seconds / idle.seconds.max(1e-9);
        round2(net / events as f64)
    };
    // Per table, net of the idle window: scans and rows read per event.
    let mut tables = serde_json::Map::new();
    for (name, (scans, rows)) in &busy.tables {
        let (idle_scans, idle_rows) = idle.tables.get(name).copied().unwrap_or_default();
        let rows = per_event(*rows, idle_rows);
        let scans = per_event(*scans, idle_scans);
        if rows.abs() >= 1.0 || scans.abs() >= 0.5 {
            tables.insert(name.clone(), json!({"scans": scans, "rows_read": rows}));
        }
    }
    let result = json!({
        "db_reads_per_event_net_by_table": tables,
        "processes": processes,
        "connections": n,
        "layout": "groups",
        "accounts": groups.accounts_count(),
        "events": events,
        "rate_per_s": args.rate,
        "outbox_rows_per_event": rows_per_event,
        "expected": expected,
        "delivered": all.sum.received,
        "exact": exact,
        "out_of_order": all.sum.disorder,
        "receivers_ended": all.sum.ended,
        "connect_s": round2(connect_s),
        "latency": summary(&all.latency),
        "per_process": per_process,
        "window_s": round2(busy.seconds),
        "idle_window_s": round2(idle.seconds),
        "db_cpu_s": round2(busy.db_cpu),
        "db_idle_cpu_s": round2(idle.db_cpu),
        "db_cpu_ms_per_event_net": per_event(busy.db_cpu * 1000.0, idle.db_cpu * 1000.0),
        "db_transactions": busy.transactions,
        "db_idle_transactions": idle.transactions,
        "db_transactions_per_event_net": per_event(busy.transactions, idle.transactions),
        "db_rows_returned_per_event_net": per_event(busy.rows_returned, idle.rows_returned),
        "db_rows_inserted_per_event_net": per_event(busy.rows_inserted, idle.rows_inserted),
    });
    for fleet in fleets {
        fleet.stop().await;
    }
    crate::report::emit(&result, args.out.as_deref())?;
    Ok(result)
}
