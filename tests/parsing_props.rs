//! Property tests of the parsers. Inputs are generated the way clients build them (valid
//! commands, RoomChannel identifiers with ids as numbers or strings, frames fragmented
//! anywhere), then damaged in one known way, so every case reaches past the first check:
//!
//! - valid input round-trips: what is parsed is exactly what was encoded;
//! - damaged input gets exactly the bad-input kind, and so the verdict, of the table in
//!   `src/actioncable/protocol/bad_input.rs`;
//! - arbitrary input never panics, and identifiers are echoed byte for byte.

use cable_gateway::actioncable::channel::RoomParams;
use cable_gateway::actioncable::protocol::{reply, BadInput, Command, Identifier, Verdict};
use cable_gateway::connection::frame::WireFault;
use cable_gateway::connection::messages::{Inbound, Messages, ReadEnd};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// A token as clients send them: base58-ish, sometimes with characters JSON must escape.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9]{1,24}",
        "[a-z]{1,4}[\"\\\\/ é\u{1F600}]{1,3}[a-z]{0,4}"
    ]
}

/// An id as clients send it: a number or a numeric string (with stray spaces).
fn id() -> impl Strategy<Value = (i64, Value)> {
    (1..i64::MAX / 2, 0..3u8).prop_map(|(n, form)| {
        let value = match form {
            0 => json!(n),
            1 => json!(n.to_string()),
            _ => json!(format!(" {n} ")),
        };
        (n, value)
    })
}

/// A RoomChannel identifier as a client builds it, keys in any order, spacing as it likes,
/// plus the parameters it must parse to.
fn room_identifier() -> impl Strategy<Value = (String, RoomParams)> {
    let absent_user = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!(""))),
        Just(Some(json!("  ")))
    ];
    (
        token(),
        prop::option::of(id()),
        prop_oneof![
            id().prop_map(|(n, v)| (Some(n), Some(v))),
            absent_user.prop_map(|v| (None, v))
        ],
        prop::collection::vec(("[a-z_]{1,8}", "[a-z0-9]{0,6}"), 0..3),
        any::<(bool, u64)>(),
    )
        .prop_map(|(token, account, (user_id, user), extra, (pretty, seed))| {
            let mut pairs: Vec<(String, Value)> = vec![
                ("channel".into(), json!("RoomChannel")),
                ("pubsub_token".into(), json!(token)),
            ];
            if let Some((_, v)) = &account {
                pairs.push(("account_id".into(), v.clone()));
            }
            if let Some(v) = user {
                pairs.push(("user_id".into(), v));
            }
            for (k, v) in extra {
                let reserved = ["channel", "pubsub_token", "account_id", "user_id"];
                if !reserved.contains(&k.as_str()) && !pairs.iter().any(|(key, _)| *key == k) {
                    pairs.push((k, json!(v)));
                }
            }
            // A deterministic shuffle of the key order.
            let n = pairs.len();
            for i in (1..n).rev() {
                pairs.swap(i, (seed as usize).wrapping_mul(i + 7) % (i + 1));
            }
            let sep = if pretty { ", " } else { "," };
            let body: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{}", json!(k), v))
                .collect();
            let raw = format!("{{{}}}", body.join(sep));
            let params = RoomParams {
                pubsub_token: token,
                account_id: account.map(|(n, _)| n),
                user_id,
            };
            (raw, params)
        })
}

/// A valid command as a client encodes it.
fn command() -> impl Strategy<Value = (String, Command)> {
    let data =
        prop::collection::btree_map("[a-z]{1,6}", "[a-z0-9 ]{0,6}", 0..3).prop_map(|extra| {
            let mut map: Map<String, Value> =
                extra.into_iter().map(|(k, v)| (k, json!(v))).collect();
            map.insert("action".into(), json!("update_presence"));
            map
        });
    (room_identifier(), 0..3u8, data, any::<bool>()).prop_map(
        |((identifier, _), kind, data, data_as_string)| match kind {
            0 => (
                json!({"command": "subscribe", "identifier": identifier}).to_string(),
                Command::Subscribe {
                    identifier,
                    history: None,
                },
            ),
            1 => (
                json!({"command": "unsubscribe", "identifier": identifier}).to_string(),
                Command::Unsubscribe { identifier },
            ),
            _ => {
                let encoded = if data_as_string {
                    json!(Value::Object(data.clone()).to_string())
                } else {
                    Value::Object(data.clone())
                };
                (
                    json!({"command": "message", "identifier": identifier, "data": encoded})
                        .to_string(),
                    Command::Message { identifier, data },
                )
            }
        },
    )
}

/// A valid command text damaged in one known way, with the kind of bad input it now is.
fn damaged() -> impl Strategy<Value = (String, BadInput)> {
    (command(), 0..7u8, "[a-z]{1,8}").prop_map(|((text, _), damage, word)| {
        let mut value: Value = serde_json::from_str(&text).unwrap();
        let object = value.as_object_mut().unwrap();
        match damage {
            0 => (format!("[{text}]"), BadInput::Malformed),
            1 => (text[..text.len() - 1].to_string(), BadInput::Malformed),
            2 => {
                object.insert("command".into(), json!(format!("x{word}")));
                (value.to_string(), BadInput::UnknownCommand)
            }
            3 => {
                object.remove("command");
                (value.to_string(), BadInput::UnknownCommand)
            }
            4 => {
                object.remove("identifier");
                (value.to_string(), BadInput::MissingIdentifier)
            }
            5 => {
                let identifier = object["identifier"].as_str().unwrap().to_string();
                object.insert(
                    "identifier".into(),
                    serde_json::from_str(&identifier).unwrap(),
                );
                (value.to_string(), BadInput::MissingIdentifier)
            }
            _ => {
                object.insert("command".into(), json!("message"));
                object.insert("data".into(), json!(format!("[\"{word}\"]")));
                (value.to_string(), BadInput::BadData)
            }
        }
    })
}

/// A client frame: masked, with the given first byte (FIN + opcode).
fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    cable_gateway::connection::frame::client_frame(first, payload, mask)
}

/// `text` as a text message split into fragments at the given cut points.
fn fragmented(text: &[u8], cuts: &[usize], mask: [u8; 4]) -> Vec<u8> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut bounds = vec![0];
    bounds.extend(cuts.into_iter().filter(|c| *c > 0 && *c < text.len()));
    bounds.push(text.len());
    let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { 0x1 } else { 0x0 };
        let fin = if i == pieces.len() - 1 { 0x80 } else { 0 };
        out.extend(frame(fin | opcode, piece, mask));
    }
    out
}

/// Everything a reader assembles from `bytes`, up to the end or a connection-ending error.
fn read_all(bytes: &[u8], limit: usize) -> (Vec<Inbound>, Option<WireFault>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The first third as if it had come behind the upgrade request: the reader reads
        // those bytes first, then the socket.
        let (early, rest) = bytes.split_at(bytes.len() / 3);
        let mut messages = Messages::new(rest, limit, early.to_vec());
        let mut seen = Vec::new();
        loop {
            match messages.next().await {
                Ok(Inbound::Nothing) => {}
                Ok(inbound) => seen.push(inbound),
                Err(ReadEnd::Bad(kind)) => return (seen, Some(kind)),
                Err(ReadEnd::Io(_)) => return (seen, None),
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A client's command parses to exactly what it encoded.
    #[test]
    fn commands_round_trip((text, expected) in command()) {
        prop_assert_eq!(Command::parse(&text), Ok(expected));
    }

    /// A RoomChannel identifier yields exactly its parameters, whatever the key order, id
    /// form (number, numeric string) or blank `user_id` (a contact).
    #[test]
    fn room_identifiers_round_trip((raw, expected) in room_identifier()) {
        let identifier = Identifier::parse(&raw).expect("a client identifier parses");
        prop_assert_eq!(&*identifier.raw, raw.as_str());
        prop_assert_eq!(RoomParams::parse(&identifier, None).expect("valid params"), expected);
    }

    /// A command damaged in one way is that kind of bad input, ignored as the table says.
    #[test]
    fn damaged_commands_get_the_tables_verdict((text, kind) in damaged()) {
        let got: BadInput = Command::parse(&text).expect_err("damaged").into();
        prop_assert_eq!(got, kind);
        prop_assert_eq!(got.verdict(), Verdict::Ignore);
    }

    /// Messages fragmented anywhere, interleaved with pings, arrive whole and in order.
    #[test]
    fn fragmented_messages_arrive_whole(
        texts in prop::collection::vec(command().prop_map(|(t, _)| t), 1..5),
        cuts in prop::collection::vec(prop::collection::vec(any::<usize>(), 0..4), 5),
        pings in prop::collection::vec(any::<bool>(), 5),
        mask in any::<[u8; 4]>(),
    ) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            if pings[i] {
                wire.extend(frame(0x89, b"hi", mask));
                expected.push(Inbound::Ping(b"hi".to_vec()));
            }
            wire.extend(fragmented(text.as_bytes(), &cuts[i], mask));
            expected.push(Inbound::Text(text.clone().into_bytes()));
        }
        let (seen, ended) = read_all(&wire, 64 * 1024);
        prop_assert_eq!(ended, None);
        prop_assert_eq!(seen, expected);
    }

    /// Frame-level bad input gets the table's kind: binary and stray continuations are
    /// ignored (and what follows is still read), too large and RFC violations end reading.
    #[test]
    fn bad_frames_get_the_tables_verdict(
        (text, _) in command(),
        damage in 0..5u8,
        cuts in prop::collection::vec(any::<usize>(), 0..3),
        mask in any::<[u8; 4]>(),
    ) {
        let limit = text.len() + 16;
        let good = fragmented(text.as_bytes(), &cuts, mask);
        let (bad, kind) = match damage {
            0 => (frame(0x82, b"\x00\x01", mask), WireFault::Binary),
            1 => (frame(0x80, b"tail", mask), WireFault::StrayContinuation),
            2 => (fragmented(&vec![b'x'; limit + 1], &cuts, mask), WireFault::TooLarge),
            3 => {
                let mut unmasked = frame(0x81, b"{}", mask);
                unmasked[1] &= 0x7f;
                unmasked.drain(2..6);
                (unmasked, WireFault::FrameViolation)
            }
            _ => (frame(0x09, b"split ping", mask), WireFault::FrameViolation),
        };
        let mut wire = bad;
        wire.extend(good);
        let (seen, ended) = read_all(&wire, limit);
        // ActionCable's table decides what each fault gets.
        match BadInput::from(kind).verdict() {
            Verdict::Ignore => {
                prop_assert_eq!(ended, None);
                prop_assert_eq!(seen, vec![Inbound::Bad(kind), Inbound::Text(text.into_bytes())]);
            }
            Verdict::Disconnect(_) | Verdict::Drop => {
                prop_assert_eq!(ended, Some(kind));
                prop_assert!(seen.is_empty());
            }
            Verdict::Reject => unreachable!("frames are never rejected"),
        }
    }

    /// Whatever text a client sends, parsing never panics.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        if let Ok(command) = Command::parse(&text) {
            if let Some(Ok(identifier)) = command.identifier().map(Identifier::parse) {
                let _ = RoomParams::parse(&identifier, None);
            }
        }
        let _ = Identifier::parse(&text);
    }

    /// Any identifier string comes back byte for byte in confirm, reject and messages.
    #[test]
    fn any_identifier_string_is_echoed_byte_for_byte(raw in ".{0,120}") {
        for frame in [reply::confirm(&raw), reply::reject(&raw)] {
            let parsed: Value = serde_json::from_slice(&frame).expect("reply frames are JSON");
            prop_assert_eq!(parsed["identifier"].as_str(), Some(raw.as_str()));
        }
        let mut message = reply::message_prefix(&raw).to_vec();
        message.extend_from_slice(br#"{"event":"e","data":{}}}"#);
        let parsed: Value = serde_json::from_slice(&message).expect("message frames are JSON");
        prop_assert_eq!(parsed["identifier"].as_str(), Some(raw.as_str()));
    }
}
