//! ActionCable's PostgreSQL adapter, heard: a backend with `adapter: postgresql` in
//! `config/cable.yml` broadcasts with `NOTIFY "<channel>", '<payload>'`, where the channel is
//! `<channel_prefix>:<stream>` (or `<stream>`), replaced by the lowercase hex SHA-1 of that
//! whole name when it is longer than 63: characters in older Rails, bytes in newer Rails.
//!
//! For every stream with a live subscription on this process the gateway LISTENs, on the one
//! LISTEN connection ([`crate::listen`]), on each name Rails may use for it ([`channels`]):
//! the subscribe waits for the LISTEN before its confirm goes out, so a broadcast committed
//! after the confirm reaches it. When the last local subscription of a stream ends, its
//! channels are UNLISTENed. A name older Rails sends over 63 bytes arrives cut to 63 bytes,
//! which several streams may share; such a notification is skipped, never guessed. Notifications then take the stream ingress path
//! ([`super::streams`]); as with Rails, one sent while the LISTEN connection is down is lost
//! (every stream is listened to again when it is back).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha1::{Digest, Sha1};

use super::streams::{Skip, Streams};
use crate::listen::ListenHandle;

/// The `ingress` label of this ingress.
pub const INGRESS: &str = "postgres";
/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
const IDENTIFIER_MAX: usize = 63;

fn sha1_hex(name: &str) -> String {
    hex::encode(Sha1::digest(name.as_bytes()))
}

/// `name` as PostgreSQL keeps an identifier: at most 63 bytes, cut at a character boundary.
fn as_identifier(name: &str) -> &str {
    if name.len() <= IDENTIFIER_MAX {
        return name;
    }
    let mut end = IDENTIFIER_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The channel names Rails may NOTIFY a stream's broadcasts on, as PostgreSQL reports them.
pub fn channels(prefix: Option<&str>, stream: &str) -> Vec<String> {
    let name = match prefix {
        Some(prefix) => format!("{prefix}:{stream}"),
        None => stream.to_string(),
    };
    let by_chars = if name.chars().count() > IDENTIFIER_MAX {
        sha1_hex(&name)
    } else {
        // Older Rails sends it as it is; PostgreSQL cuts a long one to 63 bytes.
        as_identifier(&name).to_string()
    };
    let by_bytes = if name.len() > IDENTIFIER_MAX {
        sha1_hex(&name)
    } else {
        name
    };
    if by_chars == by_bytes {
        vec![by_chars]
    } else {
        vec![by_chars, by_bytes]
    }
}

/// The PostgreSQL adapter ingress: which streams each listened channel carries.
pub struct PgAdapter {
    prefix: Option<String>,
    listen: ListenHandle,
    streams: Arc<Streams>,
    /// channel → the streams it carries, each with how many live subscriptions want it.
    by_channel: Mutex<HashMap<String, Carried>>,
}

/// The streams one channel carries: one, except for names PostgreSQL cut to 63 bytes. A short
/// list, not a map: a map's table would be most of what a subscription costs here.
type Carried = Vec<(Arc<str>, usize)>;

/// Kept for a subscription's life: dropping it releases its streams' channels.
pub struct Lease {
    adapter: Arc<PgAdapter>,
    streams: Vec<Arc<str>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.adapter.release(&self.streams);
    }
}

impl PgAdapter {
    pub fn new(prefix: Option<String>, listen: ListenHandle, streams: Arc<Streams>) -> Arc<Self> {
        Arc::new(PgAdapter {
            prefix,
            listen,
            streams,
            by_channel: Mutex::new(HashMap::new()),
        })
    }

    /// What a subscription keeps while it lives when the adapter is on (`adapter`): the lease
    /// of its `streams`, acquired ([`PgAdapter::acquire`]); nothing when it is off.
    pub async fn lease_for(
        adapter: Option<&Arc<Self>>,
        streams: Vec<String>,
    ) -> Option<crate::router::Keep> {
        match adapter {
            Some(adapter) => Some(Box::new(adapter.acquire(streams).await)),
            None => None,
        }
    }

    /// LISTENs on the channels of `streams` (those not listened to yet) and resolves once
    /// they are in place, or at once while the LISTEN connection is down (they are listened
    /// to when it is back).
    pub async fn acquire(self: &Arc<Self>, streams: Vec<String>) -> Lease {
        let streams: Vec<Arc<str>> = streams.into_iter().map(Arc::from).collect();
        let mut wanted = Vec::new();
        {
            let mut by_channel = self.by_channel.lock();
            for stream in &streams {
                for channel in channels(self.prefix.as_deref(), stream) {
                    let carried = by_channel.entry(channel.clone()).or_default();
                    match carried.iter_mut().find(|(carries, _)| carries == stream) {
                        Some((_, count)) => *count += 1,
                        None => {
                            carried.push((stream.clone(), 1));
                            carried.shrink_to_fit();
                        }
                    }
                    wanted.push(channel);
                }
            }
        }
        self.listen.acquire(wanted).await;
        Lease {
            adapter: self.clone(),
            streams,
        }
    }

    fn release(&self, streams: &[Arc<str>]) {
        let mut released = Vec::new();
        {
            let mut by_channel = self.by_channel.lock();
            for stream in streams {
                for channel in channels(self.prefix.as_deref(), stream) {
                    if let Some(carried) = by_channel.get_mut(&channel) {
                        if let Some(at) = carried.iter().position(|(carries, _)| carries == stream)
                        {
                            carried[at].1 -= 1;
                            if carried[at].1 == 0 {
                                carried.swap_remove(at);
                            }
                        }
                        if carried.is_empty() {
                            by_channel.remove(&channel);
                        }
                    }
                    released.push(channel);
                }
            }
        }
        self.listen.release(released);
    }

    /// A notification on a stream channel: deliver it to the stream the channel carries.
    /// Full names and SHA-1s belong to one stream each; only a name PostgreSQL cut to 63
    /// bytes can be shared, and then whose broadcast it is cannot be told: it is skipped
    /// and counted (`ambiguous_channel`) rather than delivered to the wrong subscribers.
    pub fn notified(&self, channel: &str, payload: &str) {
        let stream = {
            let by_channel = self.by_channel.lock();
            let Some(carried) = by_channel.get(channel) else {
                return;
            };
            match carried.as_slice() {
                [(stream, _)] => stream.clone(),
                _ => {
                    drop(by_channel);
                    self.streams.skip(INGRESS, channel, Skip::AmbiguousChannel);
                    return;
                }
            }
        };
        let _ = self.streams.deliver(INGRESS, &stream, payload.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_as_rails_makes_them() {
        // Short: the name itself, with or without the prefix.
        assert_eq!(channels(None, "abc"), ["abc"]);
        assert_eq!(
            channels(Some("app_production"), "abc"),
            ["app_production:abc"]
        );
        // Over 63 characters: the SHA-1 of the whole name, whichever Rails.
        let long = "x".repeat(70);
        let hash = sha1_hex(&format!("p:{long}"));
        assert_eq!(hash.len(), 40);
        assert_eq!(channels(Some("p"), &long), [hash]);
        // Exactly 63: the name.
        let edge = "y".repeat(61);
        assert_eq!(channels(Some("p"), &edge), [format!("p:{edge}")]);
        // At most 63 characters but over 63 bytes: older Rails sends the name (PostgreSQL
        // cuts it to 63 bytes), newer Rails the SHA-1: both are heard.
        let wide = "é".repeat(40); // 40 characters, 80 bytes
        let name = format!("p:{wide}");
        let both = channels(Some("p"), &wide);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0], as_identifier(&name));
        assert!(both[0].len() <= 63 && name.starts_with(&both[0]));
        assert_eq!(both[1], sha1_hex(&name));
    }

    #[test]
    fn sha1_is_lowercase_hex_of_the_whole_name() {
        // Known value: SHA-1("abc").
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
