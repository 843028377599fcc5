//! Centrifugo's JSON client protocol v2 (docs/reference.md §11) as it goes on the wire: the
//! commands a frame holds (one per line), and the replies, errors and pushes the server
//! sends. Codes and messages are Centrifugo's (its `disconnect.go` and error list), so that
//! centrifuge-js reacts to them as it does to Centrifugo.

use bytes::Bytes;
use serde_json::{Map, Value};

/// A client command's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Method {
    Connect,
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    PresenceStats,
    History,
    Send,
    Rpc,
    Refresh,
    SubRefresh,
}

impl Method {
    /// The key its command and reply carry, e.g. `presence_stats`.
    pub fn key(self) -> &'static str {
        self.into()
    }
}

/// One line of a client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `{}`: the answer to the server's ping.
    Pong,
    /// A command: its id (0 for `send`, which is not answered), method and parameters (an
    /// object; `{}` when it came without).
    Command {
        id: u32,
        method: Method,
        params: Map<String, Value>,
    },
    /// A command with a method this server does not know: error 104.
    Unknown { id: u32 },
}

/// Why a frame is not Centrifugo's protocol: the connection ends with 3501 (bad request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadFrame {
    #[error("a line is not a JSON object")]
    NotAnObject,
    #[error("a command's id is not a positive 32-bit number")]
    BadId,
    #[error("a command names more than one method")]
    SeveralMethods,
    #[error("a command's parameters are not an object")]
    BadParams,
    #[error("a command without id that is not a pong or send")]
    MissingId,
    #[error("more than {MAX_COMMANDS_PER_FRAME} commands in one frame")]
    TooMany,
}

/// The most commands one frame may hold.
pub const MAX_COMMANDS_PER_FRAME: usize = 128;

/// The commands of one client frame, in order (empty lines skipped).
pub fn parse(frame: &[u8]) -> Result<Vec<Line>, BadFrame> {
    let mut lines = Vec::new();
    for line in frame.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() == MAX_COMMANDS_PER_FRAME {
            return Err(BadFrame::TooMany);
        }
        lines.push(parse_line(line)?);
    }
    Ok(lines)
}

fn parse_line(line: &[u8]) -> Result<Line, BadFrame> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(line) else {
        return Err(BadFrame::NotAnObject);
    };
    let id = match object.remove("id") {
        None => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(BadFrame::BadId)?,
        Some(_) => return Err(BadFrame::BadId),
    };
    let mut entries = object.into_iter();
    let Some((key, params)) = entries.next() else {
        return if id == 0 {
            Ok(Line::Pong)
        } else {
            Ok(Line::Unknown { id })
        };
    };
    if entries.next().is_some() {
        return Err(BadFrame::SeveralMethods);
    }
    let params = match params {
        Value::Object(params) => params,
        Value::Null => Map::new(),
        _ => return Err(BadFrame::BadParams),
    };
    let Ok(method) = key.parse::<Method>() else {
        return if id == 0 {
            Err(BadFrame::MissingId)
        } else {
            Ok(Line::Unknown { id })
        };
    };
    if id == 0 && method != Method::Send {
        return Err(BadFrame::MissingId);
    }
    Ok(Line::Command { id, method, params })
}

/// A client error: code, message, and whether the client should retry the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub code: u32,
    pub message: &'static str,
    pub temporary: bool,
}

const fn error(code: u32, message: &'static str) -> Error {
    Error {
        code,
        message,
        temporary: false,
    }
}

pub const INTERNAL: Error = Error {
    code: 100,
    message: "internal server error",
    temporary: true,
};
pub const UNAUTHORIZED: Error = error(101, "unauthorized");
pub const UNKNOWN_CHANNEL: Error = error(102, "unknown channel");
pub const PERMISSION_DENIED: Error = error(103, "permission denied");
pub const METHOD_NOT_FOUND: Error = error(104, "method not found");
pub const ALREADY_SUBSCRIBED: Error = error(105, "already subscribed");
pub const LIMIT_EXCEEDED: Error = error(106, "limit exceeded");
pub const BAD_REQUEST: Error = error(107, "bad request");
pub const NOT_AVAILABLE: Error = error(108, "not available");
pub const TOKEN_EXPIRED: Error = error(109, "token expired");
pub const EXPIRED: Error = error(110, "expired");
pub const TOO_MANY_REQUESTS: Error = error(111, "too many requests");
pub const UNRECOVERABLE_POSITION: Error = error(112, "unrecoverable position");

/// A disconnect: the close frame's code and reason. Below 3500 the client reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

pub const SHUTDOWN: Disconnect = Disconnect {
    code: 3001,
    reason: "shutdown",
};
pub const SERVER_ERROR: Disconnect = Disconnect {
    code: 3004,
    reason: "internal server error",
};
pub const CONNECTION_EXPIRED: Disconnect = Disconnect {
    code: 3005,
    reason: "connection expired",
};
pub const SUBSCRIPTION_EXPIRED: Disconnect = Disconnect {
    code: 3006,
    reason: "subscription expired",
};
pub const SLOW: Disconnect = Disconnect {
    code: 3008,
    reason: "slow",
};
pub const FORCE_RECONNECT: Disconnect = Disconnect {
    code: 3011,
    reason: "force reconnect",
};
pub const NO_PONG: Disconnect = Disconnect {
    code: 3012,
    reason: "no pong",
};
pub const INVALID_TOKEN: Disconnect = Disconnect {
    code: 3500,
    reason: "invalid token",
};
pub const BAD_REQUEST_DISCONNECT: Disconnect = Disconnect {
    code: 3501,
    reason: "bad request",
};
pub const STALE: Disconnect = Disconnect {
    code: 3502,
    reason: "stale",
};
pub const FORCE_NO_RECONNECT: Disconnect = Disconnect {
    code: 3503,
    reason: "force disconnect",
};

/// `{"id":N,"<method>":<result>}`.
pub fn reply(id: u32, method: Method, result: &Value) -> Bytes {
    format!(r#"{{"id":{id},"{}":{result}}}"#, method.key()).into()
}

/// `{"id":N,"error":{"code":C,"message":"..","temporary":true}}` (`temporary` only when set).
pub fn error_reply(id: u32, error: Error) -> Bytes {
    error_reply_with(id, error.code, error.message, error.temporary)
}

/// [`error_reply`] with an error of someone else's (a connect proxy's).
pub fn error_reply_with(id: u32, code: u32, message: &str, temporary: bool) -> Bytes {
    let message = crate::delivery::quoted(message);
    let temporary = if temporary {
        r#","temporary":true"#
    } else {
        ""
    };
    format!(r#"{{"id":{id},"error":{{"code":{code},"message":{message}{temporary}}}}}"#).into()
}

/// `{"push":{"channel":"..","<kind>":<body>}}`.
pub fn push(channel: &str, kind: &str, body: &Value) -> Bytes {
    format!(
        r#"{{"push":{{"channel":{},"{kind}":{body}}}}}"#,
        crate::delivery::quoted(channel)
    )
    .into()
}

/// What goes before a publication's data on `channel`: `{"push":{"channel":"..","pub":{"data":`.
pub fn publication_prefix(channel: &str) -> Bytes {
    format!(
        r#"{{"push":{{"channel":{},"pub":{{"data":"#,
        crate::delivery::quoted(channel)
    )
    .into()
}

/// What closes a publication (after its data, and its offset where the channel keeps history).
pub const PUBLICATION_SUFFIX: &[u8] = b"}}}";

/// The server's ping, and the client's pong: an empty object.
pub const PING: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_frame_holds_commands_one_per_line() {
        let frame = b"{\"id\":1,\"connect\":{\"token\":\"t\",\"name\":\"js\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"news\"}}\n\n{}\n{\"send\":{\"data\":1}}\n{\"id\":3,\"presence_stats\":{\"channel\":\"c\"}}\n{\"id\":4,\"unsubscribe\":null}";
        let lines = parse(frame).unwrap();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[0],
            Line::Command {
                id: 1,
                method: Method::Connect,
                params: json!({"token": "t", "name": "js"})
                    .as_object()
                    .unwrap()
                    .clone(),
            }
        );
        assert!(matches!(
            lines[1],
            Line::Command {
                id: 2,
                method: Method::Subscribe,
                ..
            }
        ));
        assert_eq!(lines[2], Line::Pong);
        assert!(matches!(
            lines[3],
            Line::Command {
                id: 0,
                method: Method::Send,
                ..
            }
        ));
        assert!(matches!(
            lines[4],
            Line::Command {
                id: 3,
                method: Method::PresenceStats,
                ..
            }
        ));
        assert!(
            matches!(lines[5], Line::Command { id: 4, method: Method::Unsubscribe, ref params } if params.is_empty())
        );
    }

    #[test]
    fn unknown_methods_are_answered_and_malformed_lines_refused() {
        assert_eq!(
            parse(br#"{"id":5,"teleport":{}}"#).unwrap(),
            [Line::Unknown { id: 5 }]
        );
        assert_eq!(parse(br#"{"id":6}"#).unwrap(), [Line::Unknown { id: 6 }]);
        for (bad, why) in [
            (&b"nope"[..], BadFrame::NotAnObject),
            (b"[1]", BadFrame::NotAnObject),
            (br#"{"id":-1,"connect":{}}"#, BadFrame::BadId),
            (br#"{"id":"1","connect":{}}"#, BadFrame::BadId),
            (br#"{"id":4294967296,"connect":{}}"#, BadFrame::BadId),
            (
                br#"{"id":1,"connect":{},"subscribe":{}}"#,
                BadFrame::SeveralMethods,
            ),
            (br#"{"id":1,"connect":"x"}"#, BadFrame::BadParams),
            (br#"{"connect":{}}"#, BadFrame::MissingId),
            (br#"{"teleport":{}}"#, BadFrame::MissingId),
        ] {
            assert_eq!(parse(bad), Err(why), "{}", String::from_utf8_lossy(bad));
        }
        let many = "{}\n".repeat(MAX_COMMANDS_PER_FRAME + 1);
        assert_eq!(parse(many.as_bytes()), Err(BadFrame::TooMany));
    }

    #[test]
    fn replies_errors_and_pushes_are_centrifugos_shapes() {
        let value = |bytes: Bytes| serde_json::from_slice::<Value>(&bytes).unwrap();
        assert_eq!(
            value(reply(1, Method::PresenceStats, &json!({"num_clients": 2}))),
            json!({"id": 1, "presence_stats": {"num_clients": 2}})
        );
        assert_eq!(
            value(error_reply(2, PERMISSION_DENIED)),
            json!({"id": 2, "error": {"code": 103, "message": "permission denied"}})
        );
        assert_eq!(
            value(error_reply(3, INTERNAL)),
            json!({"id": 3, "error": {"code": 100, "message": "internal server error", "temporary": true}})
        );
        assert_eq!(
            value(push("a\"b", "leave", &json!({"info": {"user": "1"}}))),
            json!({"push": {"channel": "a\"b", "leave": {"info": {"user": "1"}}}})
        );
        let mut publication = publication_prefix("tickets:1").to_vec();
        publication.extend_from_slice(br#"{"x":1},"offset":7"#);
        publication.extend_from_slice(PUBLICATION_SUFFIX);
        assert_eq!(
            serde_json::from_slice::<Value>(&publication).unwrap(),
            json!({"push": {"channel": "tickets:1", "pub": {"data": {"x": 1}, "offset": 7}}})
        );
    }
}
