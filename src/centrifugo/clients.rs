//! This process's Centrifugo clients by user, so that the server API's `unsubscribe` and
//! `disconnect` reach a user's clients on every process: the API announces the order on
//! [`CHANNEL`] (`pg_notify`), and every process applies it to its own clients of that user.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::presence::ChannelPresence;
use super::protocol;
use super::wire::{Goodbyes, UNSUBSCRIBED_BY_SERVER};
use crate::delivery::{CloseReason, DisconnectReason, SessionHandle};
use crate::router::Router;

/// The notification channel of the API's orders.
pub const CHANNEL: &str = "cable_centrifugo_control";

/// One connected client, as orders reach it.
pub struct Handle {
    pub client: String,
    pub session: SessionHandle,
    pub goodbyes: Arc<Goodbyes>,
    /// Its subscriptions: channel → subscription id (kept by its reader).
    pub channels: Mutex<HashMap<String, u64>>,
}

/// Every connected client of this process, by user.
pub struct Clients {
    by_user: Mutex<HashMap<String, Vec<Arc<Handle>>>>,
    router: Arc<Router>,
    presence: Arc<ChannelPresence>,
}

/// An order of the server API.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    Unsubscribe {
        user: String,
        channel: String,
    },
    Disconnect {
        user: String,
        code: u16,
        reason: String,
    },
}

impl Order {
    /// As announced.
    pub fn payload(&self) -> String {
        match self {
            Order::Unsubscribe { user, channel } => {
                json!({"op": "unsubscribe", "user": user, "channel": channel})
            }
            Order::Disconnect { user, code, reason } => {
                json!({"op": "disconnect", "user": user, "code": code, "reason": reason})
            }
        }
        .to_string()
    }

    fn parse(payload: &str) -> Option<Order> {
        let value: Value = serde_json::from_str(payload).ok()?;
        let user = value["user"].as_str()?.to_string();
        match value["op"].as_str()? {
            "unsubscribe" => Some(Order::Unsubscribe {
                user,
                channel: value["channel"].as_str()?.to_string(),
            }),
            "disconnect" => Some(Order::Disconnect {
                user,
                code: u16::try_from(value["code"].as_u64()?).ok()?,
                reason: value["reason"].as_str().unwrap_or_default().to_string(),
            }),
            _ => None,
        }
    }

    /// Announces the order to every process (this one included), at once.
    pub async fn announce(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(self.payload())
            .execute(pool)
            .await?;
        Ok(())
    }
}

impl Clients {
    pub fn new(router: Arc<Router>, presence: Arc<ChannelPresence>) -> Arc<Clients> {
        Arc::new(Clients {
            by_user: Mutex::new(HashMap::new()),
            router,
            presence,
        })
    }

    pub fn add(&self, user: &str, handle: Arc<Handle>) {
        self.by_user
            .lock()
            .entry(user.to_string())
            .or_default()
            .push(handle);
    }

    pub fn remove(&self, user: &str, handle: &Arc<Handle>) {
        let mut by_user = self.by_user.lock();
        if let Some(list) = by_user.get_mut(user) {
            list.retain(|h| !Arc::ptr_eq(h, handle));
            if list.is_empty() {
                by_user.remove(user);
            }
        }
    }

    fn of(&self, user: &str) -> Vec<Arc<Handle>> {
        self.by_user.lock().get(user).cloned().unwrap_or_default()
    }

    /// An order announced by any process, applied to this process's clients.
    pub fn announced(self: &Arc<Self>, payload: &str) {
        let Some(order) = Order::parse(payload) else {
            return;
        };
        match order {
            Order::Disconnect { user, code, reason } => {
                for handle in self.of(&user) {
                    handle.goodbyes.choose_code(code, &reason);
                    handle
                        .session
                        .queue
                        .close(CloseReason::Disconnect(DisconnectReason::Remote));
                }
            }
            Order::Unsubscribe { user, channel } => {
                for handle in self.of(&user) {
                    let Some(id) = handle.channels.lock().remove(&channel) else {
                        continue;
                    };
                    let push = protocol::push(
                        &channel,
                        "unsubscribe",
                        &json!({"code": UNSUBSCRIBED_BY_SERVER, "reason": "server unsubscribe"}),
                    );
                    self.router.unregister(id, Some(push));
                    let (presence, client) = (self.presence.clone(), handle.client.clone());
                    let channel = channel.clone();
                    tokio::spawn(async move { presence.leave(&channel, &client, id).await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_go_through_their_announcement() {
        for order in [
            Order::Unsubscribe {
                user: "7".into(),
                channel: "news".into(),
            },
            Order::Disconnect {
                user: "7".into(),
                code: 3503,
                reason: "force disconnect".into(),
            },
        ] {
            assert_eq!(Order::parse(&order.payload()), Some(order));
        }
        assert_eq!(Order::parse(r#"{"op":"explode","user":"7"}"#), None);
    }
}
