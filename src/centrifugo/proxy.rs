//! Centrifugo's connect proxy (docs/reference.md §11): a `connect` without a token is POSTed
//! to the backend as Centrifugo does, and the backend's answer decides: a `result` connects
//! (its user, `expire_at`, channels, info and data), an `error` is the connect's error reply,
//! a `disconnect` closes with its code and reason. No answer within the timeout: error 100,
//! temporary (the client tries again). `http://` endpoints; one request per connect.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The largest answer read from the proxy.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Where connects go, and how long they may take.
#[derive(Debug, Clone)]
pub struct ConnectProxy {
    host: String,
    port: u16,
    /// Path and query, as sent.
    target: String,
    /// `Host` header.
    authority: String,
    timeout: Duration,
}

/// Why the endpoint is not usable (reported at start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the connect proxy endpoint {0:?} is not an http:// URL with a host")]
pub struct BadEndpoint(pub String);

/// What the proxy decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Connect {
        user: String,
        expire_at: Option<u64>,
        channels: Vec<String>,
        info: Option<Value>,
        data: Option<Value>,
    },
    Error {
        code: u32,
        message: String,
        temporary: bool,
    },
    Disconnect {
        code: u16,
        reason: String,
    },
}

impl ConnectProxy {
    pub fn new(endpoint: &str, timeout: Duration) -> Result<ConnectProxy, BadEndpoint> {
        let bad = || BadEndpoint(endpoint.to_string());
        let url = url::Url::parse(endpoint).map_err(|_| bad())?;
        if url.scheme() != "http" {
            return Err(bad());
        }
        let host = url.host_str().ok_or_else(bad)?.to_string();
        let port = url.port_or_known_default().ok_or_else(bad)?;
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        Ok(ConnectProxy {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            target,
            authority,
            timeout,
        })
    }

    /// Asks the proxy about a connect: `client` (its id), the connect's `name`, `version`
    /// and `data`. `None` when it did not answer in time or answered nonsense (error 100).
    pub async fn ask(
        &self,
        client: &str,
        connect: &serde_json::Map<String, Value>,
    ) -> Option<Decision> {
        let mut request = json!({
            "client": client,
            "transport": "websocket",
            "protocol": "json",
            "encoding": "json",
        });
        for key in ["name", "version", "data"] {
            if let Some(value) = connect.get(key) {
                request[key] = value.clone();
            }
        }
        let answer = tokio::time::timeout(self.timeout, self.post(request.to_string())).await;
        match answer {
            Ok(Ok(body)) => decide(&body),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, endpoint = %self.authority, "connect proxy failed");
                None
            }
            Err(_) => {
                tracing::warn!(endpoint = %self.authority, timeout = ?self.timeout, "connect proxy did not answer in time");
                None
            }
        }
    }

    async fn post(&self, body: String) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::post(self.target.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()).into());
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await?
            .to_bytes();
        Ok(body)
    }
}

/// The decision in a proxy's answer, `None` if it holds none.
fn decide(body: &[u8]) -> Option<Decision> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    if let Some(disconnect) = answer.get("disconnect") {
        return Some(Decision::Disconnect {
            code: disconnect
                .get("code")?
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())?,
            reason: disconnect
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        });
    }
    if let Some(error) = answer.get("error") {
        return Some(Decision::Error {
            code: error
                .get("code")?
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())?,
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            temporary: error.get("temporary").and_then(Value::as_bool) == Some(true),
        });
    }
    let result = answer.get("result")?;
    let channels = match result.get("channels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|c| c.as_str().filter(|c| !c.is_empty()).map(str::to_string))
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    Some(Decision::Connect {
        user: result
            .get("user")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        expire_at: result
            .get("expire_at")
            .and_then(Value::as_u64)
            .filter(|e| *e > 0),
        channels,
        info: result.get("info").cloned().filter(|v| !v.is_null()),
        data: result.get("data").cloned().filter(|v| !v.is_null()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_as_centrifugo_says() {
        assert_eq!(
            decide(br#"{"result":{"user":"56","expire_at":1565436268,"channels":["news"],"info":{"a":1},"data":{"b":2}}}"#),
            Some(Decision::Connect {
                user: "56".into(),
                expire_at: Some(1565436268),
                channels: vec!["news".into()],
                info: Some(json!({"a": 1})),
                data: Some(json!({"b": 2})),
            })
        );
        assert_eq!(
            decide(br#"{"error":{"code":1000,"message":"custom"}}"#),
            Some(Decision::Error {
                code: 1000,
                message: "custom".into(),
                temporary: false
            })
        );
        assert_eq!(
            decide(br#"{"disconnect":{"code":4500,"reason":"banned"}}"#),
            Some(Decision::Disconnect {
                code: 4500,
                reason: "banned".into()
            })
        );
        for nonsense in [
            &b"nope"[..],
            b"{}",
            br#"{"result":{"channels":"x"}}"#,
            br#"{"error":{}}"#,
        ] {
            assert_eq!(decide(nonsense), None);
        }
    }

    #[test]
    fn endpoints_are_http_urls() {
        let proxy = ConnectProxy::new(
            "http://127.0.0.1:3000/centrifugo/connect?x=1",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("127.0.0.1", 3000));
        assert_eq!(proxy.target, "/centrifugo/connect?x=1");
        for bad in ["https://x/connect", "x", "ftp://x/"] {
            assert!(
                ConnectProxy::new(bad, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }
}
