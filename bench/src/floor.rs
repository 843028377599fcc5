//! `cable-bench floor`: what fan-out costs on this machine when nothing else is done. A
//! minimal server of ours accepts the same client's N connections (upgrade, welcome, confirm
//! of whatever it subscribes), then, per event, writes one ready-made frame of the gateway's
//! frame size to every socket from as many threads as there are cores: no routing, no queue,
//! no database. It reports its fan-out time (first write to last) and its CPU per delivery;
//! the clients report latency from the moment the event was stamped, as they do for the
//! gateway (where the stamp is taken before the outbox insert). Gateway figures are quoted as
//! ratios to this floor, measured in the same run.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::client::{unix_us, Request};
use crate::fleet::Fleet;
use crate::layout::Layout;
use crate::scenario::summary;

#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    #[arg(long, short = 'n')]
    pub connections: usize,
    /// The same events as `cable-bench run`'s fan-out.
    #[command(flatten)]
    pub events: crate::scenario::EventArgs,
    /// Seconds of the idle phase first: a ping frame to every socket every 3 s, nothing else
    /// (the floor of an idle gateway's CPU; as `cable-bench run --hold`).
    #[arg(long, default_value_t = 15)]
    pub hold: u64,
    /// Writing threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    crate::wire::push_header(&mut frame, crate::wire::TEXT, false, payload.len());
    frame.extend_from_slice(payload);
    frame
}

/// Upgrade, welcome, and the confirm of the client's subscribe; returns the socket, blocking.
async fn handshake(mut stream: tokio::net::TcpStream) -> Result<std::net::TcpStream, String> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 || request.len() > 16 * 1024 {
            return Err("bad upgrade request".into());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .ok_or("no Sec-WebSocket-Key")?;
    let mut reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: actioncable-v1-json\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    reply.extend_from_slice(&text_frame(br#"{"type":"welcome"}"#));
    stream.write_all(&reply).await.map_err(|e| e.to_string())?;
    // One masked client frame: the subscribe.
    let mut head = [0u8; 2];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.map_err(|e| e.to_string())?),
        127 => stream.read_u64().await.map_err(|e| e.to_string())?,
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    stream
        .read_exact(&mut mask)
        .await
        .map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; len.min(64 * 1024) as usize];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| e.to_string())?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    let command: Value = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
    let confirm = json!({"identifier": command["identifier"], "type": "confirm_subscription"});
    stream
        .write_all(&text_frame(confirm.to_string().as_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    let stream = stream.into_std().map_err(|e| e.to_string())?;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The gateway's frame for event `seq` of `run` to client 0 of the fan-out account: its
/// identifier, and `data` as PostgreSQL's jsonb prints it (`", "` and `": "`), so that the
/// floor writes as many bytes as the gateway does.
fn event_frame(run: u64, seq: u64, ts: u64, pad: usize) -> Vec<u8> {
    let identifier = Layout::Fanout.subscriber(0).identifier();
    let data = format!(
        r#"{{"content": "{}", "bench_ts": {ts}, "bench_run": {run}, "bench_seq": {seq}, "account_id": {}, "conversation_id": 1}}"#,
        "x".repeat(pad),
        crate::layout::FANOUT_ACCOUNT
    );
    let message = format!(
        "{{\"identifier\":{},\"message\":{{\"event\":\"message.created\",\"data\":{data}}}}}",
        serde_json::to_string(&identifier).expect("a string")
    );
    text_frame(message.as_bytes())
}

pub async fn run(args: FloorArgs) -> Result<Value, String> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let sockets: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    let accepted = sockets.clone();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                if let Ok(socket) = handshake(stream).await {
                    accepted.lock().push(socket);
                }
            });
        }
    });
    let url = format!("ws://{addr}/cable");
    let mut fleet = Fleet::spawn(&url, 0, args.connections, &args.fleet)
        .map_err(|e| format!("client processes: {e}"))?;
    let connected = fleet
        .ask_merged(&Request::Connect {
            layout: Layout::Fanout,
        })
        .await
        .map_err(|e| e.to_string())?;
    accept.abort();
    let run = unix_us();
    let reset = fleet
        .ask_merged(&Request::Reset { run })
        .await
        .map_err(|e| e.to_string())?;
    let sockets = std::mem::take(&mut *sockets.lock());
    let n = sockets.len();
    eprintln!(
        "floor: {n} sockets ({} confirmed, {} receivers), {threads} writing threads",
        connected.sum.confirmed, reset.sum.receivers
    );
    let chunk = n.div_ceil(threads).max(1);
    let mut sockets = sockets;
    let mut chunks: Vec<&mut [std::net::TcpStream]> = sockets.chunks_mut(chunk).collect();
    let me = std::process::id();

    // Idle: pings only, every 3 s, as the gateway sends them.
    let idle_cpu0 = crate::probe::cpu_seconds(me).unwrap_or(0.0);
    let idle_start = Instant::now();
    let mut pinged = 0u64;
    while idle_start.elapsed() < Duration::from_secs(args.hold) {
        let ping = text_frame(
            format!(r#"{{"type":"ping","message":{}}}"#, unix_us() / 1_000_000).as_bytes(),
        );
        std::thread::scope(|scope| {
            for part in chunks.iter_mut() {
                let ping = &ping;
                scope.spawn(move || {
                    for socket in part.iter_mut() {
                        let _ = socket.write_all(ping);
                    }
                });
            }
        });
        pinged += 1;
        let next = idle_start + Duration::from_secs(3) * pinged as u32;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(
                wait.min(Duration::from_secs(args.hold).saturating_sub(idle_start.elapsed())),
            );
        }
    }
    let idle_s = idle_start.elapsed().as_secs_f64();
    let idle_cpu = crate::probe::cpu_seconds(me).unwrap_or(0.0) - idle_cpu0;

    let events = (args.events.rate * args.events.duration as f64)
        .round()
        .max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / args.events.rate);
    let cpu0 = crate::probe::cpu_seconds(me).unwrap_or(0.0);
    let mut fanout_us = hdrhistogram::Histogram::<u64>::new(3).expect("a histogram");
    let mut frame_len = 0;
    let start = Instant::now();
    for seq in 0..events {
        let due = start + period * seq as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ts = unix_us();
        let frame = event_frame(run, seq, ts, args.events.pad);
        frame_len = frame.len();
        let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
            let workers: Vec<_> = chunks
                .iter_mut()
                .map(|part| {
                    let frame = &frame;
                    scope.spawn(move || {
                        let begun = Instant::now();
                        for socket in part.iter_mut() {
                            let _ = socket.write_all(frame);
                        }
                        (begun, Instant::now())
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a writer"))
                .collect()
        });
        let first = spans.iter().map(|s| s.0).min().expect("a writer");
        let last = spans.iter().map(|s| s.1).max().expect("a writer");
        let _ = fanout_us.record(last.duration_since(first).as_micros().max(1) as u64);
    }
    let cpu = crate::probe::cpu_seconds(me).unwrap_or(0.0) - cpu0;
    let expected = events * reset.sum.receivers as u64;
    let drain = Instant::now() + Duration::from_secs(30);
    loop {
        let count = fleet
            .ask_merged(&Request::Count)
            .await
            .map_err(|e| e.to_string())?;
        if count.sum.received >= expected || Instant::now() > drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = fleet
        .ask_merged(&Request::Report)
        .await
        .map_err(|e| e.to_string())?;
    let deliveries = events * n as u64;
    let result = json!({
        "scenario": "floor",
        "connections": n,
        "events": events,
        "frame_bytes": frame_len,
        "threads": threads,
        "idle_s": (idle_s * 100.0).round() / 100.0,
        "idle_pings_cpu_percent": (idle_cpu / idle_s.max(1e-9) * 1000.0).round() / 10.0,
        "delivered_exactly": report.sum.received == expected,
        "fanout_time": summary(&fanout_us),
        "cpu_s": (cpu * 1000.0).round() / 1000.0,
        "cpu_us_per_delivery": (cpu / deliveries.max(1) as f64 * 1e6 * 100.0).round() / 100.0,
        "deliveries_per_cpu_s": (deliveries as f64 / cpu.max(1e-9)).round(),
        "latency": summary(&report.latency),
    });
    crate::report::emit(&result, args.out.as_deref())?;
    drop(chunks);
    drop(sockets);
    fleet.stop().await;
    Ok(result)
}
