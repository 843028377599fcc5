//! Live subscriptions, indexed by scope, and the routing rules of CONTRACT §4 in one place.
//!
//! Every subscription of an account is indexed by: user principal, administrator, inbox
//! membership, contact session and stream name (its own `pubsub_token`; user subscriptions also
//! stream `account_<id>`). An event looks up only the index entries its rule names, so it costs
//! O(its recipients), not O(all connections). The rules (`candidates`) and the filters that
//! apply after them (`entitled`) are pure functions over those indexes.
//!
//! Delivery never blocks: each subscription's session has a bounded queue, and a full queue
//! disconnects that client (`too_slow`), see [`crate::session::SessionLink::send`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::auth::{Membership, Principal};
use crate::metrics::Metrics;
use crate::presence::PresenceKey;
use crate::session::{Outbound, SessionLink};

/// Events a contact subscription may ever receive (rule 5).
pub const CONTACT_EVENTS: [&str; 7] = [
    "conversation.created",
    "conversation.status_changed",
    "message.created",
    "message.updated",
    "conversation.typing_on",
    "conversation.typing_off",
    "presence.update",
];

/// Events never echoed to their actor (rule 6).
pub const TYPING_EVENTS: [&str; 2] = ["conversation.typing_on", "conversation.typing_off"];

/// One confirmed subscription, as the session's writer sees it.
pub struct Subscription {
    pub id: u64,
    /// `{"identifier":"<escaped raw id>","message":` (see [`crate::protocol::reply::message_prefix`]).
    pub prefix: Bytes,
    pub identifier: Arc<str>,
    pub session: SessionLink,
    /// Whose presence this subscription keeps alive.
    pub presence: PresenceKey,
    /// Cleared on unsubscribe or revocation: frames still queued for it are dropped.
    active: AtomicBool,
}

impl Subscription {
    pub fn new(
        identifier: Arc<str>,
        session: SessionLink,
        principal: &Principal,
    ) -> Arc<Subscription> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Subscription {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            prefix: crate::protocol::reply::message_prefix(&identifier),
            identifier,
            session,
            presence: PresenceKey::from(principal),
            active: AtomicBool::new(true),
        })
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

/// An event read from the outbox, encoded once for all its recipients.
#[derive(Debug)]
pub struct Event {
    pub id: i64,
    pub account_id: i64,
    pub event: String,
    pub inbox_id: Option<i64>,
    /// Sorted, without duplicates.
    pub contact_inbox_ids: Vec<i64>,
    pub user_id: Option<i64>,
    pub private: bool,
    pub actor_user_id: Option<i64>,
    pub actor_contact_inbox_id: Option<i64>,
    pub stream: Option<String>,
    /// `{"event":..,"data":..}}`: what follows a subscription's prefix, closing brace included.
    pub body: Bytes,
    /// Insert time, seconds since the Unix epoch (for the latency histogram).
    pub created_at: f64,
}

/// A live subscription with what the router knows about it.
struct Entry {
    sub: Arc<Subscription>,
    principal: Principal,
    token: Arc<str>,
}

#[derive(Default)]
struct AccountIndex {
    users: HashSet<u64>,
    admins: HashSet<u64>,
    by_user: HashMap<i64, HashSet<u64>>,
    /// Members of each inbox who are not administrators (administrators see every inbox).
    by_inbox: HashMap<i64, HashSet<u64>>,
    by_contact_inbox: HashMap<i64, HashSet<u64>>,
    by_token: HashMap<Arc<str>, HashSet<u64>>,
}

impl AccountIndex {
    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.by_contact_inbox.is_empty()
    }

    fn add(&mut self, id: u64, principal: &Principal, token: &Arc<str>) {
        self.by_token.entry(token.clone()).or_default().insert(id);
        match principal {
            Principal::User {
                user_id,
                membership,
                ..
            } => {
                self.users.insert(id);
                self.by_user.entry(*user_id).or_default().insert(id);
                if membership.administrator {
                    self.admins.insert(id);
                } else {
                    for inbox in membership.inbox_ids.iter() {
                        self.by_inbox.entry(*inbox).or_default().insert(id);
                    }
                }
            }
            Principal::Contact(contact) => {
                self.by_contact_inbox
                    .entry(contact.contact_inbox_id)
                    .or_default()
                    .insert(id);
            }
        }
    }

    fn remove(&mut self, id: u64, principal: &Principal, token: &Arc<str>) {
        fn take<K: std::hash::Hash + Eq>(map: &mut HashMap<K, HashSet<u64>>, key: &K, id: u64) {
            if let Some(set) = map.get_mut(key) {
                set.remove(&id);
                if set.is_empty() {
                    map.remove(key);
                }
            }
        }
        take(&mut self.by_token, token, id);
        match principal {
            Principal::User {
                user_id,
                membership,
                ..
            } => {
                self.users.remove(&id);
                self.admins.remove(&id);
                take(&mut self.by_user, user_id, id);
                for inbox in membership.inbox_ids.iter() {
                    take(&mut self.by_inbox, inbox, id);
                }
            }
            Principal::Contact(contact) => {
                take(&mut self.by_contact_inbox, &contact.contact_inbox_id, id)
            }
        }
    }
}

/// Routing rules 1–4: the subscriptions of the event's account an event is addressed to.
fn candidates(index: &AccountIndex, event: &Event, out: &mut Vec<u64>) {
    let extend =
        |out: &mut Vec<u64>, set: Option<&HashSet<u64>>| out.extend(set.into_iter().flatten());
    if let Some(stream) = &event.stream {
        // Rule 1: subscriptions streaming that name.
        if *stream == format!("account_{}", event.account_id) {
            out.extend(&index.users);
        }
        extend(out, index.by_token.get(stream.as_str()));
        out.sort_unstable();
        out.dedup();
    } else if let Some(user_id) = event.user_id {
        // Rule 2: one user only.
        extend(out, index.by_user.get(&user_id));
    } else {
        match event.inbox_id {
            // Rule 3: administrators and members of the inbox.
            Some(inbox_id) => {
                out.extend(&index.admins);
                extend(out, index.by_inbox.get(&inbox_id));
            }
            // Rule 4: every user subscription of the account.
            None => out.extend(&index.users),
        }
        // Rules 3 and 4: plus the listed contact sessions.
        for contact_inbox_id in &event.contact_inbox_ids {
            extend(out, index.by_contact_inbox.get(contact_inbox_id));
        }
    }
}

/// Rules 5 and 6, applied to every candidate whatever rule selected it.
fn entitled(principal: &Principal, event: &Event) -> bool {
    let typing = TYPING_EVENTS.contains(&event.event.as_str());
    match principal {
        Principal::Contact(contact) => {
            !event.private
                && CONTACT_EVENTS.contains(&event.event.as_str())
                && !(typing && event.actor_contact_inbox_id == Some(contact.contact_inbox_id))
        }
        Principal::User { user_id, .. } => !(typing && event.actor_user_id == Some(*user_id)),
    }
}

#[derive(Default)]
struct Registry {
    entries: HashMap<u64, Entry>,
    accounts: HashMap<i64, AccountIndex>,
}

/// The live subscriptions of this process.
pub struct Router {
    registry: RwLock<Registry>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Router {
        Router {
            registry: RwLock::default(),
            metrics,
        }
    }

    /// Makes `sub` live and queues `confirm` on its session in one step, so no event frame
    /// for it can be queued before its confirm.
    pub fn register(
        &self,
        sub: Arc<Subscription>,
        principal: Principal,
        token: Arc<str>,
        confirm: Bytes,
    ) {
        let mut registry = self.registry.write();
        registry
            .accounts
            .entry(principal.account_id())
            .or_default()
            .add(sub.id, &principal, &token);
        sub.session.send(Outbound::Frame(confirm));
        registry.entries.insert(
            sub.id,
            Entry {
                sub,
                principal,
                token,
            },
        );
        self.metrics.subscriptions_live.inc();
    }

    /// Ends a subscription: nothing more is delivered to it, queued frames included.
    /// `farewell` (a reject, on revocation) is queued last.
    pub fn unregister(&self, id: u64, farewell: Option<Bytes>) -> bool {
        let mut registry = self.registry.write();
        let Some(entry) = registry.entries.remove(&id) else {
            return false;
        };
        entry.sub.active.store(false, Ordering::Release);
        let account_id = entry.principal.account_id();
        if let Some(index) = registry.accounts.get_mut(&account_id) {
            index.remove(id, &entry.principal, &entry.token);
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

    /// Ends a subscription whose token stopped being valid: `reject_subscription` for its
    /// identifier, and nothing after it.
    pub fn revoke(&self, id: u64) -> bool {
        let identifier = match self.registry.read().entries.get(&id) {
            Some(entry) => entry.sub.identifier.clone(),
            None => return false,
        };
        self.unregister(id, Some(crate::protocol::reply::reject(&identifier)))
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
        index.remove(id, &entry.principal, &entry.token);
        if let Principal::User {
            membership: current,
            ..
        } = &mut entry.principal
        {
            *current = membership;
        }
        index.add(id, &entry.principal, &entry.token);
    }

    /// Every live subscription: id, principal and token (for revalidation).
    pub fn snapshot(&self) -> Vec<(u64, Principal, Arc<str>)> {
        let registry = self.registry.read();
        registry
            .entries
            .iter()
            .map(|(id, entry)| (*id, entry.principal.clone(), entry.token.clone()))
            .collect()
    }

    /// Queues `event` on every subscription entitled to it. Returns how many received it.
    pub fn dispatch(&self, event: &Arc<Event>, scratch: &mut Vec<u64>) -> usize {
        scratch.clear();
        let registry = self.registry.read();
        let Some(index) = registry.accounts.get(&event.account_id) else {
            return 0;
        };
        candidates(index, event, scratch);
        let mut delivered = 0;
        for id in scratch.iter() {
            let Some(entry) = registry.entries.get(id) else {
                continue;
            };
            if entitled(&entry.principal, event) {
                entry.sub.session.send(Outbound::Event {
                    sub: entry.sub.clone(),
                    event: event.clone(),
                });
                delivered += 1;
            }
        }
        delivered
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
}
