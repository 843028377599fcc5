//! A client that stops reading is cut off (`too_slow`) and delays nobody else.

mod common;

use std::time::{Duration, Instant};

use common::events::*;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_as_too_slow_without_delaying_others() {
    const PAD: usize = 64 * 1024;
    const MAX_EVENTS: u64 = 1000;
    let db = TestDb::new().await;
    let mut config = db.config();
    config.send_queue = 16;
    let gw = start(config).await;
    let mut fast = Client::ready(gw.addr).await;
    fast.subscribe_ok(&user(ALICE, 1, 1)).await;
    // Subscribes, then is never polled again: its socket buffers fill, then its queue.
    let mut slow = Client::ready(gw.addr).await;
    slow.subscribe_ok(&user(BOB, 1, 2)).await;

    let pad = "x".repeat(PAD);
    let mut seq = 0u64;
    let mut slowest = Duration::ZERO;
    let mut after_drop = None;
    // Lock-step: the fast client must have each event before the next is published.
    while after_drop.is_none_or(|n| seq < n) {
        assert!(
            seq < MAX_EVENTS,
            "the slow client was never disconnected ({seq} events of {PAD} bytes)"
        );
        let published_at = Instant::now();
        db.publish(
            1,
            "message.created",
            json!({"tag": "big", "seq": seq, "pad": pad}),
            json!({}),
        )
        .await;
        let (_, message) = published(&mut fast).await;
        slowest = slowest.max(published_at.elapsed());
        assert_eq!(
            message["data"]["seq"], seq,
            "the fast client gets every event in order"
        );
        seq += 1;
        if after_drop.is_none() && metric(&gw, "cable_too_slow_disconnects_total", "") >= 1.0 {
            // Keep going a little: the fast client is unaffected afterwards too.
            after_drop = Some(seq + 20);
        }
    }
    assert!(
        slowest < Duration::from_secs(2),
        "the fast client waited {slowest:?} for an event"
    );

    // The slow client's connection ends. What it gets before that is an in-order prefix, and a
    // disconnect frame (if it made it through) says too_slow and to come back.
    let frames = slow.until_closed().await;
    let mut next_seq = 0;
    for frame in &frames {
        if frame["type"] == "disconnect" {
            assert_eq!(
                frame,
                &json!({"type": "disconnect", "reason": "too_slow", "reconnect": true})
            );
        } else if frame["message"]["data"]["tag"] == "big" {
            assert_eq!(frame["message"]["data"]["seq"], next_seq);
            next_seq += 1;
        }
    }
    assert!(next_seq < seq, "the slow client did not get everything");
    assert_eq!(metric(&gw, "cable_too_slow_disconnects_total", ""), 1.0);
}
