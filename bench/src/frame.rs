//! Classifies the server's text frames without a full JSON parse: a client process reads
//! hundreds of thousands of them per second on the cores the server also uses.
//!
//! Bench events carry `bench_run`, `bench_seq` and `bench_ts` (microseconds since the Unix
//! epoch, taken right before the publishing statement was sent) in their `data`. Key order
//! and whitespace are not relied on: jsonb reorders keys, Rails re-encodes.

use memchr::memmem;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Welcome,
    Ping,
    Confirm,
    Reject,
    Disconnect(String),
    Event {
        run: u64,
        seq: u64,
        ts_us: u64,
    },
    /// presence.update and anything else.
    Other,
}

/// The number after `"key":` (whitespace allowed), if any.
fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(text, key)? + key.len();
    let rest = &text[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = &rest[start..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 {
        return None;
    }
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

pub fn classify(text: impl AsRef<[u8]>) -> Frame {
    let bytes = text.as_ref();
    // Frames with a `type` are short and put it first or last.
    if bytes.starts_with(b"{\"type\":\"ping\"") {
        return Frame::Ping;
    }
    if bytes.starts_with(b"{\"type\":\"welcome\"") {
        return Frame::Welcome;
    }
    if bytes.ends_with(b"\"type\":\"confirm_subscription\"}") {
        return Frame::Confirm;
    }
    if bytes.ends_with(b"\"type\":\"reject_subscription\"}") {
        return Frame::Reject;
    }
    if bytes.starts_with(b"{\"type\":\"disconnect\"") {
        let reason = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        return Frame::Disconnect(reason);
    }
    // Events are small; a presence snapshot can be large and must not be scanned whole.
    let head = &bytes[..bytes.len().min(4096)];
    if memmem::find(head, b"\"bench_seq\"").is_some() {
        if let (Some(run), Some(seq), Some(ts_us)) = (
            number_after(head, b"\"bench_run\""),
            number_after(head, b"\"bench_seq\""),
            number_after(head, b"\"bench_ts\""),
        ) {
            return Frame::Event { run, seq, ts_us };
        }
    }
    Frame::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_and_rails_frames() {
        assert_eq!(classify(r#"{"type":"welcome"}"#), Frame::Welcome);
        assert_eq!(
            classify(r#"{"type":"ping","message":1700000000}"#),
            Frame::Ping
        );
        assert_eq!(
            classify(
                r#"{"identifier":"{\"channel\":\"RoomChannel\"}","type":"confirm_subscription"}"#
            ),
            Frame::Confirm
        );
        assert_eq!(
            classify(r#"{"identifier":"{}","type":"reject_subscription"}"#),
            Frame::Reject
        );
        assert_eq!(
            classify(r#"{"type":"disconnect","reason":"too_slow","reconnect":true}"#),
            Frame::Disconnect("too_slow".into())
        );
    }

    #[test]
    fn events_in_any_key_order_and_spacing() {
        let gateway = r#"{"identifier":"{\"channel\":\"RoomChannel\"}","message":{"event":"message.created","data":{"bench_ts":1700000000123456,"bench_run":3,"bench_seq":17,"account_id":9000}}}"#;
        assert_eq!(
            classify(gateway),
            Frame::Event {
                run: 3,
                seq: 17,
                ts_us: 1_700_000_000_123_456
            }
        );
        let spaced = r#"{"identifier":"x","message":{"data":{"bench_run" : 1, "bench_seq": 2, "bench_ts": 3}}}"#;
        assert_eq!(
            classify(spaced),
            Frame::Event {
                run: 1,
                seq: 2,
                ts_us: 3
            }
        );
    }

    #[test]
    fn presence_and_partial_events_are_other() {
        let presence = format!(
            r#"{{"identifier":"x","message":{{"event":"presence.update","data":{{"users":{{{}}}}}}}}}"#,
            (0..2000)
                .map(|i| format!("\"{i}\":\"online\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(classify(&presence), Frame::Other);
        assert_eq!(classify(r#"{"message":{"bench_seq":1}}"#), Frame::Other);
    }
}
