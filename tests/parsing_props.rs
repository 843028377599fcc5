//! Property tests : the command parser, identifier handling and the
//! RoomChannel parameter parsing never panic on any input, and identifiers survive the round
//! trip through reply frames byte for byte.

use cable_gateway::channel::RoomParams;
use cable_gateway::protocol::{reply, Command, Identifier};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Arbitrary JSON values, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("RoomChannel"),
            Just("subscribe"),
            Just("message"),
            Just("1"),
            Just("")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::hash_map(
                prop_oneof![
                    Just("command".to_string()),
                    Just("identifier".to_string()),
                    Just("data".to_string()),
                    Just("channel".to_string()),
                    Just("pubsub_token".to_string()),
                    Just("account_id".to_string()),
                    Just("user_id".to_string()),
                    Just("action".to_string()),
                    ".{0,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Whatever a command parses to, handling its identifier must not panic either.
fn exercise(text: &str) {
    if let Ok(command) = Command::parse(text) {
        let _ = command.kind();
        if let Ok(identifier) = Identifier::parse(command.identifier()) {
            let _ = RoomParams::parse(&identifier);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        exercise(&text);
        let _ = Identifier::parse(&text);
    }

    #[test]
    fn arbitrary_bytes_as_lossy_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn structured_commands_never_panic(command in any_json(), identifier in any_json(), data in any_json(), stringify in any::<(bool, bool)>()) {
        let identifier = if stringify.0 { Value::from(identifier.to_string()) } else { identifier };
        let data = if stringify.1 { Value::from(data.to_string()) } else { data };
        let frame = json!({"command": command, "identifier": identifier, "data": data});
        exercise(&frame.to_string());
    }

    #[test]
    fn room_identifiers_with_arbitrary_params_never_panic(params in prop::collection::hash_map(".{0,12}", any_json(), 0..6), token in any_json(), account in any_json(), user in any_json()) {
        let mut object: serde_json::Map<String, Value> = params.into_iter().collect();
        object.insert("channel".into(), "RoomChannel".into());
        object.insert("pubsub_token".into(), token);
        object.insert("account_id".into(), account);
        object.insert("user_id".into(), user);
        let raw = Value::Object(object).to_string();
        let identifier = Identifier::parse(&raw).expect("an object with a channel parses");
        let _ = RoomParams::parse(&identifier);
    }

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
