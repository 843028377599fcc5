//! This process's live subscriptions, indexed by scope, so that an event costs O(its
//! recipients), not O(all connections).
//!
//! Every subscription of an account is indexed by: user principal, administrator, inbox
//! membership, contact session and stream name. An event looks up only the index entries the
//! rules of [`crate::routing`] name (`candidates`), then applies
//! [`crate::routing::entitled`]; the tests check that this gives exactly the audience
//! [`crate::routing::receives`] defines. The users an event to an inbox or a whole account
//! goes to are kept as a list per account until its index changes (`user_audience`): a big
//! account's events are written without a lookup per recipient.
//!
//! Delivery never blocks: each subscription's session has a bounded queue, and a full queue
//! disconnects that client (`too_slow`), see [`crate::delivery::SessionHandle::send`].
//!
//! # Files
//! - `index.rs`: the indexes, and the candidates of rules 1 and 2.
//! - `audience.rs`: the kept user audience of rules 3 and 4.
//! - `fanout.rs`: writing a message to an audience.
//! - `broadcast.rs`: stream broadcasts, by name, with rule 7 for contacts.
//! - `history.rs`: the stream history the router consults ([`StreamHistory`]).

mod audience;
mod broadcast;
mod fanout;
mod history;
mod index;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::auth::{Membership, PresenceKey, Principal};
use crate::delivery::{Event, Outbound, Position, Subscription};
use crate::metrics::Metrics;
use crate::routing::{entitled, is_typing};
use fanout::deliver_all;
pub use history::StreamHistory;
use index::{candidates, contact_candidates, put, take, ChannelEntry, Entry, Ids, Registry};

/// Something a subscription keeps while it lives; dropping it is its release.
pub type Keep = Box<dyn Send + Sync>;

/// The live subscriptions of this process.
pub struct Router {
    registry: RwLock<Registry>,
    metrics: Arc<Metrics>,
    /// Stream ingress history: broadcasts get their positions here, under the registry's lock.
    history: Arc<dyn StreamHistory>,
    /// The offset of the last outbox event dispatched (set under the registry's lock).
    outbox_offset: AtomicI64,
}

impl Router {
    /// `outbox_offset`: where the outbox reader starts (nothing at or below it is dispatched).
    pub fn new(
        metrics: Arc<Metrics>,
        history: Arc<dyn StreamHistory>,
        outbox_offset: i64,
    ) -> Router {
        Router {
            registry: RwLock::default(),
            metrics,
            history,
            outbox_offset: AtomicI64::new(outbox_offset),
        }
    }

    /// Makes `sub` live and queues `confirm` (when given) on its session in one step, so no
    /// event frame for it can be queued before its confirm. An extended-protocol subscription
    /// learns where live delivery starts for each of its streams, and starts `hold`ing live
    /// frames if asked (a replay follows).
    pub fn register(
        &self,
        sub: Arc<Subscription>,
        principal: Principal,
        token: Arc<str>,
        confirm: Option<Bytes>,
        keep: Option<Keep>,
        hold: bool,
    ) {
        let mut registry = self.registry.write();
        if let Some(positions) = &sub.positions {
            let streams = crate::routing::streams(&principal, &token)
                .into_iter()
                .map(|stream| {
                    let last = self.history.last(&stream);
                    (Arc::<str>::from(stream), last)
                })
                .collect();
            positions.start(self.outbox_offset.load(Ordering::Acquire), streams, hold);
        }
        registry
            .accounts
            .entry(principal.account_id())
            .or_default()
            .add(sub.id, &principal);
        put(&mut registry.by_token, token.clone(), sub.id);
        if let Some(confirm) = confirm {
            sub.session.send(Outbound::Frame(confirm));
        }
        registry.entries.insert(
            sub.id,
            Entry {
                sub,
                principal,
                token,
                _keep: keep,
            },
        );
        self.metrics.subscriptions_live.inc();
    }

    /// Makes `sub` live on `channel`: a subscription of no account and no principal that
    /// receives whatever is addressed to the stream of that name (broadcasts, and outbox
    /// events whose `stream` it is), and queues `confirm` first, as [`Router::register`]
    /// does. Revalidation does not see it: its protocol checks its own tokens.
    pub fn register_channel(
        &self,
        sub: Arc<Subscription>,
        channel: Arc<str>,
        confirm: Option<Bytes>,
        keep: Option<Keep>,
    ) {
        let mut registry = self.registry.write();
        put(&mut registry.by_token, channel.clone(), sub.id);
        if let Some(confirm) = confirm {
            sub.session.send(Outbound::Frame(confirm));
        }
        registry.channel_entries.insert(
            sub.id,
            ChannelEntry {
                sub,
                channel,
                _keep: keep,
            },
        );
        self.metrics.subscriptions_live.inc();
    }

    /// Ends a subscription: nothing more is delivered to it, queued frames included.
    /// `farewell` (a reject, on revocation) is queued last.
    pub fn unregister(&self, id: u64, farewell: Option<Bytes>) -> bool {
        let mut registry = self.registry.write();
        if let Some(entry) = registry.channel_entries.remove(&id) {
            entry.sub.deactivate();
            take(&mut registry.by_token, &*entry.channel, id);
            if let Some(frame) = farewell {
                entry.sub.session.send(Outbound::Frame(frame));
            }
            self.metrics.subscriptions_live.dec();
            return true;
        }
        let Some(entry) = registry.entries.remove(&id) else {
            return false;
        };
        entry.sub.deactivate();
        let account_id = entry.principal.account_id();
        take(&mut registry.by_token, &*entry.token, id);
        if let Some(index) = registry.accounts.get_mut(&account_id) {
            index.remove(id, &entry.principal);
            if index.is_empty() {
                registry.accounts.remove(&account_id);
            }
        }
        if let Some(frame) = farewell {
            entry.sub.session.send(Outbound::Frame(frame));
        }
        self.metrics.subscriptions_live.dec();
        true
    }

    /// Ends a subscription whose token stopped being valid: what its protocol says then
    /// (ActionCable's `reject_subscription`), and nothing after it.
    pub fn revoke(&self, id: u64) -> bool {
        let farewell = match self.registry.read().entries.get(&id) {
            Some(entry) => entry.sub.replies.ended(&entry.sub),
            None => return false,
        };
        self.unregister(id, farewell)
    }

    /// Replaces what is known of a user's role and inbox memberships.
    pub fn update_membership(&self, id: u64, membership: Membership) {
        let mut guard = self.registry.write();
        let registry = &mut *guard;
        let Some(entry) = registry.entries.get_mut(&id) else {
            return;
        };
        let Principal::User {
            membership: current,
            ..
        } = &mut entry.principal
        else {
            return;
        };
        if *current == membership {
            return;
        }
        let index = registry
            .accounts
            .entry(entry.principal.account_id())
            .or_default();
        index.remove(id, &entry.principal);
        if let Principal::User {
            membership: current,
            ..
        } = &mut entry.principal
        {
            *current = membership;
        }
        index.add(id, &entry.principal);
    }

    /// Who a live subscription belongs to, and its token.
    pub fn principal_of(&self, id: u64) -> Option<(Principal, Arc<str>)> {
        let registry = self.registry.read();
        let entry = registry.entries.get(&id)?;
        Some((entry.principal.clone(), entry.token.clone()))
    }

    /// The ids of every live subscription (revalidation walks them in chunks, [`Router::live`]).
    pub fn live_ids(&self) -> Vec<u64> {
        self.registry.read().entries.keys().copied().collect()
    }

    /// Principal and token of each of `ids` still live.
    pub fn live(&self, ids: &[u64]) -> Vec<(u64, Principal, Arc<str>)> {
        let registry = self.registry.read();
        ids.iter()
            .filter_map(|id| {
                let entry = registry.entries.get(id)?;
                Some((*id, entry.principal.clone(), entry.token.clone()))
            })
            .collect()
    }

    /// Whose presence the live subscriptions keep (the heartbeat, shutdown's departures), in
    /// [`PresenceKey::lock_order`].
    pub fn presence_keys(&self) -> Vec<PresenceKey> {
        let mut keys: Vec<PresenceKey> = {
            let registry = self.registry.read();
            registry
                .entries
                .values()
                .map(|entry| PresenceKey::from(&entry.principal))
                .collect()
        };
        PresenceKey::lock_order(&mut keys);
        keys
    }

    /// Delivers `event` to every subscription entitled to it. Returns how many received it.
    ///
    /// The audience is looked up under the registry's lock; the deliveries (socket writes,
    /// mostly) happen after it is released, split over two threads for a large audience. A
    /// subscription that ends meanwhile drops the frame ([`Subscription::is_active`]); one
    /// that starts meanwhile is not in the audience, and its confirm comes after this event.
    pub fn dispatch(&self, event: &Arc<Event>, scratch: &mut Vec<u64>) -> usize {
        scratch.clear();
        let mut channels = Vec::new();
        let (users, others) = {
            let registry = self.registry.read();
            if let Position::Outbox(offset) = event.message.position {
                self.outbox_offset.store(offset, Ordering::Release);
            }
            if let Some(stream) = &event.stream {
                // Channel subscriptions of the event's stream, whatever its account.
                channels.extend(registry.channel_subs(stream).cloned());
            }
            let Some(index) = registry.accounts.get(&event.account_id) else {
                drop(registry);
                return deliver_all(&channels, None, &event.message, &self.metrics);
            };
            let entitled_subs = |ids: &[u64]| -> Vec<Arc<Subscription>> {
                ids.iter()
                    .filter_map(|id| registry.entries.get(id))
                    .filter(|entry| entitled(&entry.principal, event))
                    .map(|entry| entry.sub.clone())
                    .collect()
            };
            if event.stream.is_none() && event.user_id.is_none() {
                // Rules 3 (an inbox's) and 4 (the account's): the kept audience of users, and
                // the listed contact sessions looked up.
                let users = index.user_audience(&registry.entries, event.inbox_id);
                contact_candidates(index, event, scratch);
                (Some(users), entitled_subs(scratch))
            } else {
                candidates(&registry, index, event, scratch);
                (None, entitled_subs(scratch))
            }
        };
        let not_echoed = is_typing(event).then_some(event.actor_user_id).flatten();
        let mut delivered = deliver_all(&others, None, &event.message, &self.metrics);
        if !channels.is_empty() {
            delivered += deliver_all(&channels, None, &event.message, &self.metrics);
        }
        if let Some(users) = users {
            delivered += deliver_all(&users, not_echoed, &event.message, &self.metrics);
        }
        delivered
    }

    /// Drops expired stream history, and the history of streams nobody here streams any longer.
    pub fn sweep_history(&self) {
        // The same lock order as a broadcast: the registry, then the history.
        let registry = self.registry.read();
        self.history.sweep(&|stream| registry.streams(stream));
    }

    /// Calls `f` with every user subscription of `account_id` (presence pushes).
    pub fn for_each_user_subscription(
        &self,
        account_id: i64,
        mut f: impl FnMut(&Arc<Subscription>),
    ) {
        let registry = self.registry.read();
        if let Some(index) = registry.accounts.get(&account_id) {
            for id in &index.users {
                if let Some(entry) = registry.entries.get(id) {
                    f(&entry.sub);
                }
            }
        }
    }

    /// The accounts with at least one live subscription.
    pub fn accounts(&self) -> Vec<i64> {
        self.registry.read().accounts.keys().copied().collect()
    }

    /// Live subscriptions per account: user and contact subscriptions, and the connections
    /// holding them (the inspector). One pass over the registry under its read lock.
    pub fn census(&self) -> Vec<AccountCensus> {
        let registry = self.registry.read();
        let mut sessions = HashSet::new();
        registry
            .accounts
            .iter()
            .map(|(account_id, index)| {
                sessions.clear();
                let contacts = index.by_contact_inbox.values().flat_map(Ids::iter);
                let contact_subscriptions = contacts.clone().count();
                for id in index.users.iter().copied().chain(contacts) {
                    if let Some(entry) = registry.entries.get(&id) {
                        sessions.insert(entry.sub.session.queue.id);
                    }
                }
                AccountCensus {
                    account_id: *account_id,
                    connections: sessions.len(),
                    user_subscriptions: index.users.len(),
                    contact_subscriptions,
                }
            })
            .collect()
    }
}

/// One account's live subscriptions on this process ([`Router::census`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountCensus {
    pub account_id: i64,
    /// Connections holding at least one subscription of the account.
    pub connections: usize,
    pub user_subscriptions: usize,
    pub contact_subscriptions: usize,
}
