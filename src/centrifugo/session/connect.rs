//! `connect`, by a connection token or the connect proxy, and `refresh`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::io::AsyncRead;

use super::{string_param, Client, Ends, Reader, VERSION};
use crate::centrifugo::clients::Handle;
use crate::centrifugo::protocol::{self, Method};
use crate::centrifugo::proxy::Decision;
use crate::centrifugo::token::Refused;
use crate::centrifugo::wire;

impl<R: AsyncRead + Unpin> Reader<R> {
    pub(super) async fn connect(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let client = crate::resume::sid::new_sid();
        let token = string_param(params, "token").filter(|t| !t.is_empty());
        let (claims, data) = match (token, &self.services.tokens, &self.services.proxy) {
            (Some(token), Some(tokens), _) => {
                match tokens.connection(token, crate::clock::unix_seconds()) {
                    Ok(claims) => (claims, None),
                    Err(Refused::Expired) => {
                        self.error(id, protocol::TOKEN_EXPIRED);
                        return Ok(());
                    }
                    Err(Refused::Invalid(why)) => {
                        tracing::info!(
                            session = self.session.queue.id,
                            reason = why,
                            "connection token refused"
                        );
                        return Err(protocol::INVALID_TOKEN);
                    }
                }
            }
            (None, _, Some(proxy)) => match proxy.ask(&client, params).await {
                Some(Decision::Connect {
                    user,
                    expire_at,
                    channels,
                    info,
                    data,
                }) => {
                    let claims = crate::centrifugo::token::ConnectionClaims {
                        user,
                        exp: expire_at,
                        channels,
                        info,
                    };
                    (claims, data)
                }
                Some(Decision::Error {
                    code,
                    message,
                    temporary,
                }) => {
                    self.send(protocol::error_reply_with(id, code, &message, temporary));
                    return Ok(());
                }
                Some(Decision::Disconnect { code, reason }) => {
                    self.goodbyes.choose_code(code, &reason);
                    return Err(protocol::FORCE_NO_RECONNECT);
                }
                None => {
                    self.error(id, protocol::INTERNAL);
                    return Ok(());
                }
            },
            _ => return Err(protocol::INVALID_TOKEN),
        };
        let handle = Arc::new(Handle {
            client: client.clone(),
            session: self.session.clone(),
            goodbyes: self.goodbyes.clone(),
            channels: Default::default(),
        });
        self.services.clients.add(&claims.user, handle.clone());
        self.client = Some(Client {
            id: client.clone(),
            user: claims.user.clone(),
            info: claims.info.clone(),
            handle,
        });
        self.seen
            .store(crate::clock::unix_seconds(), Ordering::Relaxed);
        self.exp = claims.exp;
        self.watch_deadline();
        let mut reply = json!({
            "client": client,
            "version": VERSION,
            "ping": wire::ping_interval(),
            "pong": true,
        });
        if let Some(exp) = claims.exp {
            reply["expires"] = json!(true);
            reply["ttl"] = json!(exp.saturating_sub(crate::clock::unix_seconds()));
        }
        if let Some(data) = data {
            reply["data"] = data;
        }
        // Server-side subscriptions: the reply names them, then they go live (a publication
        // must not come before the reply that tells the client of its channel).
        let mut subs = Map::new();
        let mut live = Vec::new();
        for channel in claims.channels {
            if self.subs.contains_key(&channel) || subs.contains_key(&channel) {
                continue;
            }
            subs.insert(channel.clone(), json!({}));
            live.push(channel);
        }
        if !subs.is_empty() {
            reply["subs"] = Value::Object(subs);
        }
        self.send(protocol::reply(id, Method::Connect, &reply));
        for channel in live {
            match self.go_live(&channel, None, false).await {
                Ok(()) => {}
                Err(error) => {
                    // The client was told of it: it gets an unsubscribe push instead.
                    tracing::info!(
                        session = self.session.queue.id,
                        channel,
                        code = error.code,
                        "server-side subscription refused"
                    );
                    self.send(protocol::push(
                        &channel,
                        "unsubscribe",
                        &json!({"code": wire::UNSUBSCRIBED_BY_SERVER, "reason": error.message}),
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn refresh(&mut self, id: u32, params: &Map<String, Value>) -> Ends {
        let (Some(tokens), Some(token)) = (&self.services.tokens, string_param(params, "token"))
        else {
            return Err(protocol::INVALID_TOKEN);
        };
        let claims = match tokens.connection(token, crate::clock::unix_seconds()) {
            Ok(claims) => claims,
            Err(Refused::Expired) => return Err(protocol::CONNECTION_EXPIRED),
            Err(Refused::Invalid(_)) => return Err(protocol::INVALID_TOKEN),
        };
        let client = self.client.as_ref().expect("refresh comes after connect");
        if claims.user != client.user {
            return Err(protocol::INVALID_TOKEN);
        }
        self.exp = claims.exp;
        self.watch_deadline();
        let mut reply = json!({"client": client.id, "version": VERSION});
        if let Some(exp) = claims.exp {
            reply["expires"] = json!(true);
            reply["ttl"] = json!(exp.saturating_sub(crate::clock::unix_seconds()));
        }
        self.send(protocol::reply(id, Method::Refresh, &reply));
        Ok(())
    }
}
