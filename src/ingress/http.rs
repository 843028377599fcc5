//! AnyCable's HTTP broadcast API, for backends that use anycable-rails' HTTP adapter (or any
//! HTTP client): `POST /_broadcast` with `Authorization: Bearer <CABLE_BROADCAST_KEY>` and a
//! body `{"stream":"<name>","data":"<JSON text>"}` or an array of such objects.
//!
//! | request | answer |
//! |---|---|
//! | valid, right key | 201 once the broadcasts are stored; each delivered on every process, in order |
//! | missing or wrong key | 401, nothing delivered |
//! | not `POST` | 405 |
//! | body over 16 × `CABLE_MAX_BROADCAST_SIZE` | 413, nothing delivered |
//! | body not JSON, not an object or array, an item without a string `stream` and `data`, a `data` that is not JSON text or is over `CABLE_MAX_BROADCAST_SIZE` | 422 naming the problem (and the item), nothing delivered |
//!
//! | the database does not answer | 503, nothing delivered |
//!
//! The whole request is checked before anything is delivered. Accepted broadcasts are
//! written to the outbox in one statement, in the request's order, as broadcast rows
//! (`payload` set, see [`super::outbox`]): every process's outbox reader then delivers them to
//! its subscribers of the stream, with outbox positions every process honours. A backend
//! behind a load balancer thus reaches every subscriber, whichever process it reached.

use serde_json::Value;
use sqlx::PgPool;

use crate::config::tuning::BROADCAST_BODY_FACTOR;
use crate::metrics::Metrics;

/// The `ingress` label of this ingress.
pub const INGRESS: &str = "http";

/// The answer to a broadcast request: status and a one-line body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn answer(status: u16, body: impl Into<String>) -> Answer {
    Answer {
        status,
        body: body.into(),
    }
}

/// Whether `given` (the Authorization header) carries `key`, compared in constant time.
pub fn authorized(given: Option<&[u8]>, key: &str) -> bool {
    let Some(token) = given.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    crate::secret::equal(token, key.as_bytes())
}

/// Checks a request body: the broadcasts it holds, as (stream, payload), or why not.
pub fn parse(body: &[u8], max_size: usize) -> Result<Vec<(String, String)>, Answer> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| answer(422, format!("the body is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(_) => vec![value],
        _ => {
            return Err(answer(
                422,
                "the body must be an object or an array of objects",
            ))
        }
    };
    let mut broadcasts = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let problem = |what: &str| answer(422, format!("item {i}: {what}"));
        let Value::Object(mut item) = item else {
            return Err(problem("not an object"));
        };
        let stream = match item.remove("stream") {
            Some(Value::String(stream)) if !stream.is_empty() => stream,
            _ => return Err(problem("\"stream\" must be a non-empty string")),
        };
        let data = match item.remove("data") {
            Some(Value::String(data)) => data,
            _ => return Err(problem("\"data\" must be a string holding JSON text")),
        };
        if data.len() > max_size {
            return Err(problem(&format!(
                "\"data\" is {} bytes, over CABLE_MAX_BROADCAST_SIZE ({max_size})",
                data.len()
            )));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&data).is_err() {
            return Err(problem("\"data\" is not JSON text"));
        }
        broadcasts.push((stream, data));
    }
    Ok(broadcasts)
}

/// Stores what [`parse`] accepted in the outbox, in order, in one statement.
pub async fn publish(pool: &PgPool, metrics: &Metrics, broadcasts: &[(String, String)]) -> Answer {
    match store(pool, metrics, INGRESS, broadcasts).await {
        Ok(()) => answer(201, ""),
        Err(e) => {
            tracing::warn!(error = %e, "storing broadcasts failed");
            answer(503, "the database did not answer; nothing was broadcast")
        }
    }
}

/// Stores broadcasts (stream, payload as JSON text) in the outbox, in order, in one
/// statement, as broadcast rows: every process delivers them to its subscribers of the
/// stream. Counted under `ingress`.
pub async fn store(
    pool: &PgPool,
    metrics: &Metrics,
    ingress: &'static str,
    broadcasts: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let (streams, payloads): (Vec<&str>, Vec<&str>) = broadcasts
        .iter()
        .map(|(stream, payload)| (stream.as_str(), payload.as_str()))
        .unzip();
    sqlx::query(
        "INSERT INTO cable_events (account_id, event, data, stream, payload)
         SELECT 0, 'broadcast', '{}', b.stream, b.payload
           FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS b(stream, payload, n)
          ORDER BY b.n",
    )
    .bind(streams)
    .bind(payloads)
    .execute(pool)
    .await?;
    for _ in broadcasts {
        metrics.broadcast(ingress);
    }
    Ok(())
}

/// The body size limit for `max_size` broadcasts.
pub fn body_limit(max_size: usize) -> usize {
    max_size.saturating_mul(BROADCAST_BODY_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_must_match_exactly() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        for given in [
            None,
            Some(&b"Bearer s3cre"[..]),
            Some(&b"Bearer s3cret2"[..]),
            Some(&b"bearer s3cret"[..]),
            Some(&b"s3cret"[..]),
            Some(&b"Basic s3cret"[..]),
        ] {
            assert!(!authorized(given, "s3cret"), "{given:?}");
        }
    }

    #[test]
    fn bodies_are_checked_whole_and_problems_named() {
        let ok = parse(br#"{"stream":"a","data":"{\"x\":1}"}"#, 100).unwrap();
        assert_eq!(ok, vec![("a".to_string(), "{\"x\":1}".to_string())]);
        let ok = parse(
            br#"[{"stream":"a","data":"1"},{"stream":"b","data":"[2]"}]"#,
            100,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        for (body, says) in [
            (&br#"nope"#[..], "not JSON"),
            (br#""a string""#, "object or an array"),
            (
                br#"[{"stream":"a","data":"1"}, 5]"#,
                "item 1: not an object",
            ),
            (br#"{"data":"1"}"#, "item 0: \"stream\""),
            (br#"{"stream":"","data":"1"}"#, "item 0: \"stream\""),
            (
                br#"{"stream":"a","data":{"x":1}}"#,
                "item 0: \"data\" must be a string",
            ),
            (
                br#"{"stream":"a","data":"{oops"}"#,
                "item 0: \"data\" is not JSON",
            ),
            (
                br#"{"stream":"a","data":"\"0123456789012345678901234567890123456789\""}"#,
                "over CABLE_MAX_BROADCAST_SIZE",
            ),
        ] {
            let refused = parse(body, 30).unwrap_err();
            assert_eq!(refused.status, 422);
            assert!(
                refused.body.contains(says),
                "{}: {}",
                String::from_utf8_lossy(body),
                refused.body
            );
        }
    }
}
