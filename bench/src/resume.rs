//! `cable-bench resume`: reliable streams under churn. N agents of the fan-out account connect
//! with the extended protocol (`actioncable-v1-ext-json`); events flow through the outbox at a
//! steady rate; a fraction of the clients drop their TCP connection mid-run, stay away for a
//! moment, and come back with `?sid=` and a `history` request from their last position, as
//! `@anycable/core` does. At the end every client must hold every event exactly once, in
//! order. Printed (and written with `--out`): whether that held, how long restores took
//! (reconnect → `confirm_history`), what the gateway did (restores, replayed messages, history
//! queries, from its `/metrics`) and the CPU the gateway and PostgreSQL spent, in the churn
//! window and in a quiet window of the same length before it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::layout::{source_address, Layout};
use crate::probe;

const EXT: &str = "actioncable-v1-ext-json";

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The gateway's WebSocket URL (ws://<ip>:<port>/cable).
    #[arg(long)]
    pub url: String,
    #[arg(long, short = 'n', default_value_t = 5000)]
    pub connections: usize,
    /// Events per second, through the outbox.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Fraction of the clients that drop and come back.
    #[arg(long, default_value_t = 0.1)]
    pub drop_fraction: f64,
    /// How long a dropped client stays away, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub away: f64,
    #[arg(long)]
    pub server_pid: u32,
    #[arg(long)]
    pub db_pid: u32,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, default_value_t = 1000)]
    pub per_address: usize,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

use crate::client::{open, Ws};

/// What one client saw.
#[derive(Default)]
struct Seen {
    sid: String,
    /// `bench_seq` of every event, in arrival order.
    seqs: Vec<u64>,
    /// The last position: stream id, epoch, offset.
    position: Option<(String, Value, i64)>,
}

/// Reads one frame as JSON (None when the socket ends).
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Records an event frame; returns the frame's `type` otherwise.
fn record(seen: &mut Seen, frame: &Value, run: u64) -> Option<String> {
    if let Some(kind) = frame["type"].as_str() {
        return Some(kind.to_string());
    }
    let data = &frame["message"]["data"];
    if data["bench_run"].as_u64() == Some(run) {
        if let Some(seq) = data["bench_seq"].as_u64() {
            seen.seqs.push(seq);
            if let (Some(stream), Some(offset)) =
                (frame["stream_id"].as_str(), frame["offset"].as_i64())
            {
                seen.position = Some((stream.to_string(), frame["epoch"].clone(), offset));
            }
        }
    }
    None
}

struct Client {
    i: usize,
    source: IpAddr,
    identifier: String,
}

impl Client {
    async fn connect(&self, server: SocketAddr, url: &str, seen: &mut Seen) -> Result<Ws, String> {
        let mut ws = open(self.source, server, url, EXT).await?;
        let welcome = next(&mut ws).await.ok_or("closed before welcome")?;
        seen.sid = welcome["sid"].as_str().ok_or("no sid")?.to_string();
        let subscribe = json!({"command": "subscribe", "identifier": self.identifier});
        ws.send(Message::Text(subscribe.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let frame = next(&mut ws).await.ok_or("closed before confirm")?;
            if frame["type"] == "confirm_subscription" {
                return Ok(ws);
            }
        }
    }

    /// Comes back with the sid and asks for what it missed; returns the socket once the
    /// history is confirmed, and whether the session was restored.
    async fn resume(
        &self,
        server: SocketAddr,
        url: &str,
        seen: &mut Seen,
        run: u64,
    ) -> Result<(Ws, bool), String> {
        let url = format!("{url}?sid={}", seen.sid);
        let mut ws = open(self.source, server, &url, EXT).await?;
        let welcome = next(&mut ws).await.ok_or("closed before welcome")?;
        let restored = welcome["restored"] == true;
        seen.sid = welcome["sid"].as_str().ok_or("no sid")?.to_string();
        let streams = match &seen.position {
            Some((stream, epoch, offset)) => json!({ stream: {"epoch": epoch, "offset": offset} }),
            None => json!({}),
        };
        let command = if restored { "history" } else { "subscribe" };
        let request = json!({"command": command, "identifier": self.identifier,
                             "history": {"streams": streams}});
        ws.send(Message::Text(request.to_string()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let frame = next(&mut ws).await.ok_or("closed before confirm_history")?;
            match record(seen, &frame, run).as_deref() {
                Some("confirm_history") => return Ok((ws, restored)),
                Some("reject_history") => return Err(format!("client {}: reject_history", self.i)),
                _ => {}
            }
        }
    }
}

fn metrics_addr(url: &str) -> String {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn scrape(url: &str) -> std::collections::HashMap<String, f64> {
    probe::scrape(&metrics_addr(url)).unwrap_or_default()
}

pub async fn run(args: ResumeArgs) -> Result<Value, String> {
    let server: SocketAddr = metrics_addr(&args.url)
        .parse()
        .map_err(|e| format!("{}: {e}", args.url))?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let db = crate::db::connect(&args.database_url)
        .await
        .map_err(|e| format!("database: {e}"))?;
    crate::db::seed(&db, args.connections)
        .await
        .map_err(|e| format!("seed: {e}"))?;

    let n = args.connections;
    let events = (args.rate * args.duration as f64).round() as u64;
    let dropping = ((n as f64) * args.drop_fraction).round() as usize;
    let seen: Arc<Vec<Mutex<Seen>>> =
        Arc::new((0..n).map(|_| Mutex::new(Seen::default())).collect());
    let connected = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let restores: Arc<Mutex<Vec<f64>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    // Dropped clients leave at `leave` and come back `away` seconds later (spread over a
    // second so they do not all arrive in the same millisecond).
    let leave = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = Client {
            i,
            source: IpAddr::V4(source_address(i, args.per_address)),
            identifier: Layout::Fanout.subscriber(i).identifier(),
        };
        let (url, seen, connected, finished, restores, errors, leave) = (
            args.url.clone(),
            seen.clone(),
            connected.clone(),
            finished.clone(),
            restores.clone(),
            errors.clone(),
            leave.clone(),
        );
        let stride = (n / dropping.max(1)).max(1);
        let drops = dropping > 0 && i % stride == 0 && i / stride < dropping;
        let away = Duration::from_secs_f64(args.away + (i % 100) as f64 / 100.0);
        tasks.spawn(async move {
            let mut mine = Seen::default();
            let outcome = async {
                let mut ws = client.connect(server, &url, &mut mine).await?;
                connected.fetch_add(1, Ordering::Relaxed);
                if drops {
                    let leaving = leave.notified();
                    tokio::pin!(leaving);
                    leaving.as_mut().enable();
                    loop {
                        tokio::select! {
                            frame = next(&mut ws) => {
                                let frame = frame.ok_or("closed")?;
                                record(&mut mine, &frame, run);
                            }
                            _ = &mut leaving => break,
                        }
                    }
                    drop(ws); // the network goes away: no close frame
                    tokio::time::sleep(away).await;
                    let started = Instant::now();
                    let (back, restored) = client.resume(server, &url, &mut mine, run).await?;
                    if !restored {
                        return Err(format!("client {i}: session not restored"));
                    }
                    restores
                        .lock()
                        .push(started.elapsed().as_secs_f64() * 1000.0);
                    ws = back;
                }
                while (mine.seqs.len() as u64) < events {
                    let frame = next(&mut ws).await.ok_or("closed")?;
                    record(&mut mine, &frame, run);
                }
                Ok::<_, String>(())
            }
            .await;
            if let Err(e) = outcome {
                errors.lock().push(e);
            }
            *seen[i].lock() = mine;
            finished.fetch_add(1, Ordering::Relaxed);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while connected.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline || !errors.lock().is_empty() {
            return Err(format!(
                "only {} of {n} connected: {:?}",
                connected.load(Ordering::Relaxed),
                errors.lock().first()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("resume: {n} connected; publishing {events} events, {dropping} clients drop");

    // Publish; the quiet window is the first third, the churn window starts at the drop.
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let window = Duration::from_secs_f64(args.away + 2.0);
    let cpu = || {
        (
            probe::cpu_seconds(args.server_pid).unwrap_or(0.0),
            probe::tree_cpu_seconds(args.db_pid).unwrap_or(0.0),
        )
    };
    let before = scrape(&args.url);
    let mut quiet = None;
    let mut churn = None;
    let mut next_at = Instant::now();
    let quiet_start = Instant::now();
    let quiet_cpu = cpu();
    let drop_at = events / 3;
    let mut churn_start = None;
    for seq in 0..events {
        if seq == drop_at {
            if quiet.is_none() {
                let (g, d) = cpu();
                quiet = Some((g - quiet_cpu.0, d - quiet_cpu.1, quiet_start.elapsed()));
            }
            churn_start = Some((Instant::now(), cpu()));
            leave.notify_waiters();
        }
        if let Some((at, (g0, d0))) = churn_start {
            if churn.is_none() && at.elapsed() >= window {
                let (g, d) = cpu();
                churn = Some((g - g0, d - d0, at.elapsed()));
            }
        }
        let data = crate::db::event_data(run, seq, 0, 200);
        crate::db::publish_outbox(&db, &data)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        next_at += period;
        tokio::time::sleep_until(next_at.into()).await;
    }
    while finished.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = scrape(&args.url);
    let delta = |name: &str| probe::metric(&after, name) - probe::metric(&before, name);

    // Every client: every event once, in order.
    let mut exact = 0;
    let mut wrong = Vec::new();
    for (i, seen) in seen.iter().enumerate() {
        let seqs = &seen.lock().seqs;
        if seqs.len() as u64 == events && seqs.iter().enumerate().all(|(k, s)| *s == k as u64) {
            exact += 1;
        } else if wrong.len() < 5 {
            wrong.push(format!(
                "client {i}: {} events, first {:?}",
                seqs.len(),
                &seqs[..seqs.len().min(8)]
            ));
        }
    }
    let mut times = restores.lock().clone();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    let (quiet_g, quiet_d, quiet_len) = quiet.unwrap_or_default();
    let (churn_g, churn_d, churn_len) = churn.unwrap_or_default();
    let restored = delta("cable_session_restores_total");
    let result = json!({
        "connections": n,
        "events": events,
        "rate": args.rate,
        "dropped": dropping,
        "away_s": args.away,
        "clients_exact": exact,
        "all_exact": exact == n,
        "wrong": wrong,
        "errors": errors.lock().iter().take(5).collect::<Vec<_>>(),
        "restores": restored,
        "restore_ms_p50": pct(0.5),
        "restore_ms_p99": pct(0.99),
        "history_replayed": delta("cable_history_replayed_total"),
        "history_queries": delta("cable_history_queries_total"),
        "history_queries_per_restore": delta("cable_history_queries_total") / restored.max(1.0),
        "auth_queries": delta("cable_auth_queries_total"),
        "quiet_window_s": quiet_len.as_secs_f64(),
        "quiet_gateway_cpu_s": quiet_g,
        "quiet_db_cpu_s": quiet_d,
        "churn_window_s": churn_len.as_secs_f64(),
        "churn_gateway_cpu_s": churn_g,
        "churn_db_cpu_s": churn_d,
    });
    crate::report::emit(&result, args.out.as_deref())?;
    tasks.abort_all();
    Ok(result)
}
