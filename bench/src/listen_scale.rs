//! `cable-bench listen-scale`: what many LISTENed channels cost PostgreSQL, the way the
//! gateway uses them for Rails' PostgreSQL adapter (one channel per stream with a live
//! subscription, all on one connection).
//!
//! For each size (e.g. 100, 5,000, 20,000 channels) one connection LISTENs on that many
//! channels, in batches of 500 statements as the gateway sends them; then another connection
//! NOTIFYs a burst on channels of the listened set (one statement, as Rails' per-recipient
//! broadcasts of one event would); and the time until the listener has every notification is
//! measured. Printed as one JSON line per size.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, NoTls};

/// LISTEN statements per round trip (as the gateway batches them).
const CHUNK: usize = 500;

fn channel(i: usize) -> String {
    format!("listen_scale_{i:06}")
}

pub async fn run(
    database_url: &str,
    sizes: &[usize],
    burst: usize,
) -> Result<Vec<Value>, tokio_postgres::Error> {
    let mut results = Vec::new();
    for &size in sizes {
        let (listener, mut connection) = tokio_postgres::connect(database_url, NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n.channel().to_string());
                }
            }
        });
        // LISTEN on `size` channels, timing each round trip.
        let t0 = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut last = Duration::ZERO;
        for start in (0..size).step_by(CHUNK) {
            let statements: Vec<String> = (start..(start + CHUNK).min(size))
                .map(|i| format!("LISTEN \"{}\"", channel(i)))
                .collect();
            let t = Instant::now();
            listener.batch_execute(&statements.join("; ")).await?;
            last = t.elapsed();
            slowest = slowest.max(last);
        }
        let listen_all = t0.elapsed();

        // A burst of notifications on listened channels, spread over the set.
        let (notifier, connection) = tokio_postgres::connect(database_url, NoTls).await?;
        tokio::spawn(connection);
        let n = burst.min(size);
        let targets: Vec<String> = (0..n).map(|k| channel(k * size / n)).collect();
        let t1 = Instant::now();
        notifier
            .query_one(
                "SELECT count(pg_notify(t, 'x')) FROM unnest($1::text[]) AS t",
                &[&targets],
            )
            .await?;
        let notified = t1.elapsed();
        let mut received = 0;
        while received < n {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(_)) => received += 1,
                _ => break,
            }
        }
        let delivered = t1.elapsed();
        // A single LISTEN once `size` channels are listened to.
        let t2 = Instant::now();
        listener
            .batch_execute(&format!("LISTEN \"{}\"", channel(size)))
            .await?;
        let one_more = t2.elapsed();
        let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
        let result = json!({
            "channels": size,
            "listen_all_ms": ms(listen_all),
            "listen_batch_of_500_slowest_ms": ms(slowest),
            "listen_batch_of_500_last_ms": ms(last),
            "one_more_listen_ms": ms(one_more),
            "burst_notifications": n,
            "burst_notify_statement_ms": ms(notified),
            "burst_all_received_ms": ms(delivered),
            "received": received,
            "per_notification_us": ((delivered.as_secs_f64() * 1e6 / n.max(1) as f64) * 10.0).round() / 10.0,
        });
        println!("{result}");
        results.push(result);
    }
    Ok(results)
}
