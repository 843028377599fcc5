//! A client process (`cable-bench client`): holds up to ~19,000 WebSocket connections, one
//! task each, and is driven by its parent over stdin/stdout, one JSON line per request and
//! per reply. Logs go to stderr.
//!
//! Each connection: bind a 127.0.0.x source address, connect, upgrade offering
//! `actioncable-v1-json`, wait for `welcome`, subscribe, wait for the confirm, then read
//! until told to stop. Events of the current run are counted per connection (exact
//! delivery check), checked for order, and their latency (now − `bench_ts`) is recorded in an
//! HDR histogram shared by the process.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::frame::Frame;
use crate::layout::{source_address, Layout};
use crate::wire::Conn;

/// Connect, upgrade, welcome, subscribe and confirm must all happen within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);

/// What the parent asks a client process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Open and subscribe every connection of this process, all at once; reply when each
    /// is confirmed, rejected or failed.
    Connect { layout: Layout },
    /// Count only events of `run` from now on; zero the counters and the histogram.
    Reset { run: u64 },
    /// Connections whose global index is a multiple of `every` stop reading.
    Pause { every: usize },
    /// Events received so far in this run (for draining).
    Count,
    /// Everything measured since the last reset.
    Report,
    /// Drop every connection.
    Close,
}

/// A histogram as (value, count) pairs, mergeable by the parent.
pub type Recorded = Vec<(u64, u64)>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub clients: usize,
    pub confirmed: usize,
    pub rejected: usize,
    pub failed: usize,
    /// Connections that ended after their confirm (closed by the server, or broken).
    pub ended: usize,
    pub paused: usize,
    pub errors: Vec<String>,
    /// Unix µs of the last confirm.
    pub last_confirm_us: u64,
    /// Per connection: µs from the Connect request to its confirm.
    pub confirm_us: Recorded,
    /// Events of the current run received by connections that are reading.
    pub received: u64,
    pub received_paused: u64,
    /// Connections that are confirmed, reading and open.
    pub receivers: usize,
    pub per_receiver_min: u64,
    pub per_receiver_max: u64,
    /// Events that arrived with a sequence number not above the previous one.
    pub disorder: u64,
    /// µs from `bench_ts` to receipt.
    pub latency_us: Recorded,
    /// `disconnect` frames received, by reason.
    pub disconnects: HashMap<String, u64>,
    /// `reject_subscription` frames received after the confirm (a revoked subscription).
    pub rejected_after_confirm: u64,
    /// Reading, open, confirmed connections that received no event of the current run.
    pub silent_receivers: usize,
}

const CONNECTING: u8 = 0;
const CONFIRMED: u8 = 1;
const REJECTED: u8 = 2;
const FAILED: u8 = 3;
const ENDED: u8 = 4;

#[derive(Default)]
struct Slot {
    status: AtomicU8,
    received: AtomicU64,
    /// Sequence number + 1 of the last event (0: none yet).
    next_seq: AtomicU64,
    disorder: AtomicU64,
    paused: AtomicBool,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn recorded(h: &Histogram<u64>) -> Recorded {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

struct Shared {
    first: usize,
    slots: Vec<Slot>,
    run: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    confirms: Mutex<Histogram<u64>>,
    last_confirm_us: AtomicU64,
    pending: AtomicUsize,
    settled: Notify,
    errors: Mutex<Vec<String>>,
    disconnects: Mutex<HashMap<String, u64>>,
    rejected_after_confirm: AtomicU64,
    pause: watch::Sender<usize>,
}

impl Shared {
    fn error(&self, e: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 5 && !errors.contains(&e) {
            errors.push(e);
        }
    }

    fn settle(&self, slot: &Slot, status: u8) {
        slot.status.store(status, Ordering::Release);
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }
}

pub struct ClientArgs {
    pub url: String,
    pub first: usize,
    pub count: usize,
    pub per_address: usize,
}

/// The client process: serve requests from stdin until it closes.
pub async fn serve(args: ClientArgs) -> std::io::Result<()> {
    let server = server_addr(&args.url)?;
    let shared = Arc::new(Shared {
        first: args.first,
        slots: (0..args.count).map(|_| Slot::default()).collect(),
        run: AtomicU64::new(u64::MAX),
        latency: Mutex::new(new_histogram()),
        confirms: Mutex::new(new_histogram()),
        last_confirm_us: AtomicU64::new(0),
        pending: AtomicUsize::new(0),
        settled: Notify::new(),
        errors: Mutex::new(Vec::new()),
        disconnects: Mutex::new(HashMap::new()),
        rejected_after_confirm: AtomicU64::new(0),
        pause: watch::channel(0).0,
    });
    let url: Arc<str> = args.url.into();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let request: Request = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let reply = match request {
            Request::Connect { layout } => {
                connect_all(&shared, &mut tasks, server, &url, layout, args.per_address).await
            }
            Request::Reset { run } => {
                for slot in &shared.slots {
                    slot.received.store(0, Ordering::Relaxed);
                    slot.next_seq.store(0, Ordering::Relaxed);
                    slot.disorder.store(0, Ordering::Relaxed);
                }
                shared.latency.lock().reset();
                shared.disconnects.lock().clear();
                shared.run.store(run, Ordering::Release);
                report(&shared)
            }
            Request::Pause { every } => {
                shared.pause.send_replace(every);
                // Give every task the chance to see it before events are sent.
                tokio::time::sleep(Duration::from_millis(200)).await;
                report(&shared)
            }
            Request::Count | Request::Report => report(&shared),
            Request::Close => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                shared.pause.send_replace(0);
                for slot in &shared.slots {
                    slot.status.store(CONNECTING, Ordering::Relaxed);
                    slot.paused.store(false, Ordering::Relaxed);
                }
                report(&shared)
            }
        };
        let mut out = serde_json::to_string(&reply).expect("replies serialize");
        out.push('\n');
        stdout.write_all(out.as_bytes()).await?;
        stdout.flush().await?;
    }
    tasks.abort_all();
    Ok(())
}

fn server_addr(url: &str) -> std::io::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| std::io::Error::other(format!("only ws:// URLs are supported: {url}")))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.replace("localhost", "127.0.0.1");
    authority
        .parse()
        .map_err(|e| std::io::Error::other(format!("{url}: the host must be an IP address: {e}")))
}

async fn connect_all(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    server: SocketAddr,
    url: &Arc<str>,
    layout: Layout,
    per_address: usize,
) -> Reply {
    let started = unix_us();
    shared.confirms.lock().reset();
    shared.errors.lock().clear();
    shared.last_confirm_us.store(0, Ordering::Relaxed);
    shared.pending.store(shared.slots.len(), Ordering::Release);
    let settled = shared.settled.notified();
    tokio::pin!(settled);
    settled.as_mut().enable();
    for local in 0..shared.slots.len() {
        let shared = shared.clone();
        let url = url.clone();
        let global = shared.first + local;
        let source = IpAddr::V4(source_address(global, per_address));
        tasks.spawn(async move {
            run_connection(
                &shared, local, global, source, server, &url, layout, started,
            )
            .await
        });
    }
    if !shared.slots.is_empty() {
        let _ = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(5), settled).await;
    }
    report(shared)
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A TCP connection from `source` to `server`, without Nagle's delay.
async fn connect(source: IpAddr, server: SocketAddr) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    // The port is chosen at connect, per (source, server) pair, not at bind: bind's choice
    // must avoid every port still held by the previous run's closed connections (TIME_WAIT),
    // and after a 10k run a 15k storm spent seconds finding ports.
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connects from `source` and upgrades with tungstenite, offering `protocol` (whole messages;
/// the resume scenario).
pub async fn open(
    source: IpAddr,
    server: SocketAddr,
    url: &str,
    protocol: &'static str,
) -> Result<Ws, String> {
    let stream = connect(source, server).await?;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
    let config = WebSocketConfig {
        write_buffer_size: 0,
        ..WebSocketConfig::default()
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

/// Reads until `want` says stop; pings and the like are skipped.
async fn read_until(conn: &mut Conn, want: impl Fn(&Frame) -> bool) -> Result<Frame, String> {
    loop {
        match conn.next().await? {
            Some(frame) if want(&frame) => return Ok(frame),
            Some(_) => {}
            None => return Err("closed before confirm".into()),
        }
    }
}

async fn subscribe(
    source: IpAddr,
    server: SocketAddr,
    url: &str,
    command: String,
    seed: u32,
) -> Result<(Conn, bool), String> {
    let stream = connect(source, server).await?;
    let mut conn = Conn::upgrade(stream, server, url, "actioncable-v1-json", seed).await?;
    read_until(&mut conn, |f| matches!(f, Frame::Welcome)).await?;
    conn.send_text(&command).await?;
    let frame = read_until(&mut conn, |f| {
        matches!(f, Frame::Confirm | Frame::Reject | Frame::Disconnect(_))
    })
    .await?;
    match frame {
        Frame::Confirm => Ok((conn, true)),
        Frame::Reject => Ok((conn, false)),
        Frame::Disconnect(reason) => Err(format!("disconnect before confirm: {reason}")),
        _ => unreachable!("read_until returned an unwanted frame"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    shared: &Shared,
    local: usize,
    global: usize,
    source: IpAddr,
    server: SocketAddr,
    url: &str,
    layout: Layout,
    started_us: u64,
) {
    let slot = &shared.slots[local];
    let command = layout.subscriber(global).subscribe_command();
    let attempt = tokio::time::timeout(
        CONNECT_TIMEOUT,
        subscribe(source, server, url, command, global as u32),
    );
    let mut conn = match attempt.await {
        Ok(Ok((conn, true))) => {
            let now = unix_us();
            let _ = shared
                .confirms
                .lock()
                .record(now.saturating_sub(started_us).max(1));
            shared.last_confirm_us.fetch_max(now, Ordering::AcqRel);
            shared.settle(slot, CONFIRMED);
            conn
        }
        Ok(Ok((_, false))) => {
            shared.settle(slot, REJECTED);
            return;
        }
        Ok(Err(e)) => {
            shared.error(e);
            shared.settle(slot, FAILED);
            return;
        }
        Err(_) => {
            shared.error("timed out before confirm".into());
            shared.settle(slot, FAILED);
            return;
        }
    };

    let mut pause = shared.pause.subscribe();
    loop {
        tokio::select! {
            biased;
            changed = pause.changed() => {
                let every = *pause.borrow_and_update();
                if changed.is_ok() && every > 0 && global.is_multiple_of(every) {
                    slot.paused.store(true, Ordering::Release);
                    // Stop reading for good; `Close` aborts this task.
                    std::future::pending::<()>().await;
                }
            }
            message = conn.next() => match message {
                Ok(Some(Frame::Event { run, seq, ts_us })) => {
                    if run != shared.run.load(Ordering::Acquire) {
                        continue;
                    }
                    let now = unix_us();
                    slot.received.fetch_add(1, Ordering::Relaxed);
                    if seq < slot.next_seq.load(Ordering::Relaxed) {
                        slot.disorder.fetch_add(1, Ordering::Relaxed);
                    } else {
                        slot.next_seq.store(seq + 1, Ordering::Relaxed);
                    }
                    let _ = shared.latency.lock().record(now.saturating_sub(ts_us).max(1));
                }
                Ok(Some(Frame::Disconnect(reason))) => {
                    *shared.disconnects.lock().entry(reason).or_default() += 1;
                }
                Ok(Some(Frame::Reject)) => {
                    shared.rejected_after_confirm.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    slot.status.store(ENDED, Ordering::Release);
                    return;
                }
            }
        }
    }
}

fn report(shared: &Shared) -> Reply {
    let mut reply = Reply {
        clients: shared.slots.len(),
        per_receiver_min: u64::MAX,
        ..Reply::default()
    };
    for slot in &shared.slots {
        let received = slot.received.load(Ordering::Relaxed);
        reply.disorder += slot.disorder.load(Ordering::Relaxed);
        let paused = slot.paused.load(Ordering::Acquire);
        match slot.status.load(Ordering::Acquire) {
            CONFIRMED => reply.confirmed += 1,
            REJECTED => reply.rejected += 1,
            FAILED => reply.failed += 1,
            ENDED => {
                reply.confirmed += 1;
                reply.ended += 1;
            }
            _ => {}
        }
        if paused {
            reply.paused += 1;
            reply.received_paused += received;
        } else {
            reply.received += received;
            if slot.status.load(Ordering::Acquire) == CONFIRMED {
                reply.receivers += 1;
                reply.per_receiver_min = reply.per_receiver_min.min(received);
                reply.per_receiver_max = reply.per_receiver_max.max(received);
                if received == 0 {
                    reply.silent_receivers += 1;
                }
            }
        }
    }
    if reply.receivers == 0 {
        reply.per_receiver_min = 0;
    }
    reply.errors = shared.errors.lock().clone();
    reply.last_confirm_us = shared.last_confirm_us.load(Ordering::Acquire);
    reply.confirm_us = recorded(&shared.confirms.lock());
    reply.latency_us = recorded(&shared.latency.lock());
    reply.disconnects = shared.disconnects.lock().clone();
    reply.rejected_after_confirm = shared.rejected_after_confirm.load(Ordering::Relaxed);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_name_an_ip() {
        assert_eq!(
            server_addr("ws://127.0.0.1:8080/cable").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            server_addr("ws://localhost:9/cable").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(server_addr("wss://127.0.0.1:1/cable").is_err());
    }

    #[test]
    fn requests_round_trip_as_json_lines() {
        let line = serde_json::to_string(&Request::Connect {
            layout: Layout::Groups,
        })
        .unwrap();
        assert_eq!(line, r#"{"cmd":"connect","layout":"groups"}"#);
        let back: Request = serde_json::from_str(r#"{"cmd":"pause","every":10}"#).unwrap();
        assert!(matches!(back, Request::Pause { every: 10 }));
    }
}
