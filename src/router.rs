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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::auth::{Membership, PresenceKey, Principal};
use crate::config::tuning::{AUDIENCES_KEPT, PREFETCH_AHEAD, SPLIT_AUDIENCE_AT};
use crate::delivery::{tallied, Event, Message, Outbound, Position, Subscription};
use crate::metrics::Metrics;
use crate::resume::rings::Rings;
use crate::routing::{account_stream, entitled, is_typing};

/// A live subscription with what the router knows about it.
struct Entry {
    sub: Arc<Subscription>,
    principal: Principal,
    token: Arc<str>,
    /// Held for the subscription's life and dropped when it ends (the LISTEN lease of its
    /// streams, see [`crate::ingress::postgres`]).
    _held: Option<Held>,
}

/// Something a subscription keeps while it lives; dropping it is its release.
pub type Held = Box<dyn Send + Sync>;

/// The subscriptions under one index key. Most keys (a token, a user, a contact session) have
/// one, held inline; a set is allocated only for more (a user's tabs, an inbox's members).
/// Boxed, the set keeps the slot at 16 bytes (the extra allocation is only for keys of many).
#[derive(Debug)]
#[allow(clippy::box_collection)]
enum Ids {
    One(u64),
    Many(Box<HashSet<u64>>),
}

impl Ids {
    fn insert(&mut self, id: u64) {
        match self {
            Ids::One(one) if *one == id => {}
            Ids::One(one) => *self = Ids::Many(Box::new(HashSet::from([*one, id]))),
            Ids::Many(set) => {
                set.insert(id);
            }
        }
    }

    /// Removes `id`; false when nothing is left (the key is then removed).
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Ids::One(one) => *one != id,
            Ids::Many(set) => {
                set.remove(&id);
                match set.iter().next() {
                    None => false,
                    Some(&last) if set.len() == 1 => {
                        // Back to one: the set's table is freed.
                        *self = Ids::One(last);
                        true
                    }
                    Some(_) => true,
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = u64> + Clone + '_ {
        let (one, many) = match self {
            Ids::One(one) => (Some(*one), None),
            Ids::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Adds `id` under `key`.
fn put<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ids>, key: K, id: u64) {
    map.entry(key)
        .and_modify(|ids| ids.insert(id))
        .or_insert(Ids::One(id));
}

/// Removes `id` from under `key`, and the key when nothing is left under it.
fn take<K, Q>(map: &mut HashMap<K, Ids>, key: &Q, id: u64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(ids) = map.get_mut(key) {
        if !ids.remove(id) {
            map.remove(key);
        }
    }
}

#[derive(Default)]
struct AccountIndex {
    users: HashSet<u64>,
    admins: HashSet<u64>,
    by_user: HashMap<i64, Ids>,
    /// Members of each inbox who are not administrators (administrators see every inbox).
    by_inbox: HashMap<i64, Ids>,
    by_contact_inbox: HashMap<i64, Ids>,
    /// The user part of rules 3 and 4 (an inbox's, `Some`, or the whole account's, `None`), as
    /// dispatch last built it, while nothing in this index changes: see
    /// [`AccountIndex::user_audience`].
    audiences: Mutex<HashMap<Option<i64>, Audience>>,
}

/// Subscriptions an event is delivered to, shared by the events that have the same one.
type Audience = Arc<[Arc<Subscription>]>;

impl AccountIndex {
    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.by_contact_inbox.is_empty()
    }

    fn add(&mut self, id: u64, principal: &Principal) {
        self.audiences.get_mut().clear();
        match principal {
            Principal::User {
                user_id,
                membership,
                ..
            } => {
                self.users.insert(id);
                put(&mut self.by_user, *user_id, id);
                if membership.administrator {
                    self.admins.insert(id);
                } else {
                    for inbox in membership.inbox_ids.iter() {
                        put(&mut self.by_inbox, *inbox, id);
                    }
                }
            }
            Principal::Contact(contact) => {
                put(&mut self.by_contact_inbox, contact.contact_inbox_id, id);
            }
        }
    }

    fn remove(&mut self, id: u64, principal: &Principal) {
        self.audiences.get_mut().clear();
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

    /// The user subscriptions rules 3 (`inbox`: its members and the administrators) and 4
    /// (`None`: every user subscription) name, before rule 6 (typing is not echoed to its
    /// actor, applied while delivering). An account's big events (a message to every agent)
    /// go to the same subscriptions again and again: the list is kept until this index
    /// changes, so that an event costs no lookup and no reference count per recipient. At
    /// most [`AUDIENCES_KEPT`] are kept per account.
    fn user_audience(&self, entries: &HashMap<u64, Entry>, inbox: Option<i64>) -> Audience {
        let mut audiences = self.audiences.lock();
        if let Some(audience) = audiences.get(&inbox) {
            return audience.clone();
        }
        let sub = |id: &u64| entries.get(id).map(|entry| entry.sub.clone());
        let mut audience: Vec<Arc<Subscription>> = match inbox {
            None => self.users.iter().filter_map(sub).collect(),
            Some(inbox) => {
                let members = self.by_inbox.get(&inbox).into_iter().flat_map(Ids::iter);
                self.admins
                    .iter()
                    .copied()
                    .chain(members)
                    .filter_map(|id| sub(&id))
                    .collect()
            }
        };
        audience.sort_by_cached_key(|sub| sub.session.queue.socket_order());
        let audience: Audience = audience.into();
        if audiences.len() >= AUDIENCES_KEPT {
            audiences.clear();
        }
        audiences.insert(inbox, audience.clone());
        audience
    }
}

/// Rules 1 and 2 of [`crate::routing`], by index (an event with a stream or a user): the
/// subscriptions of the event's account it is addressed to (a superset is fine for rules 5
/// and 6, which are applied afterwards). Rules 3 and 4 are [`AccountIndex::user_audience`]
/// and [`contact_candidates`].
fn candidates(registry: &Registry, index: &AccountIndex, event: &Event, out: &mut Vec<u64>) {
    if let Some(stream) = &event.stream {
        // Rule 1: subscriptions streaming that name.
        if *stream == account_stream(event.account_id) {
            out.extend(&index.users);
        }
        // Tokens are indexed across accounts: the ones of this account.
        let of_account = |id: &u64| {
            registry
                .entries
                .get(id)
                .is_some_and(|entry| entry.principal.account_id() == event.account_id)
        };
        let streaming = registry.by_token.get(stream.as_str());
        out.extend(streaming.into_iter().flat_map(Ids::iter).filter(of_account));
        out.sort_unstable();
        out.dedup();
    } else if let Some(user_id) = event.user_id {
        // Rule 2: one user only.
        out.extend(index.by_user.get(&user_id).into_iter().flat_map(Ids::iter));
    }
}

/// The contact sessions rules 3 and 4 name (beside their users, [`AccountIndex::user_audience`]).
fn contact_candidates(index: &AccountIndex, event: &Event, out: &mut Vec<u64>) {
    for contact_inbox_id in &event.contact_inbox_ids {
        out.extend(
            index
                .by_contact_inbox
                .get(contact_inbox_id)
                .into_iter()
                .flat_map(Ids::iter),
        );
    }
}

#[derive(Default)]
struct Registry {
    entries: HashMap<u64, Entry>,
    accounts: HashMap<i64, AccountIndex>,
    /// Every subscription by its token, whatever its account (broadcasts name no account).
    by_token: HashMap<Arc<str>, Ids>,
}

impl Registry {
    fn streams(&self, stream: &str) -> bool {
        self.by_token.contains_key(stream)
            || stream
                .strip_prefix("account_")
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|id| account_stream(*id) == stream)
                .and_then(|id| self.accounts.get(&id))
                .is_some_and(|index| !index.users.is_empty())
    }
}

/// The live subscriptions of this process.
pub struct Router {
    registry: RwLock<Registry>,
    metrics: Arc<Metrics>,
    /// Stream ingress history: broadcasts get their positions here, under the registry's lock.
    rings: Arc<Rings>,
    /// The offset of the last outbox event dispatched (set under the registry's lock).
    outbox_offset: AtomicI64,
}

impl Router {
    /// `outbox_offset`: where the outbox reader starts (nothing at or below it is dispatched).
    pub fn new(metrics: Arc<Metrics>, rings: Arc<Rings>, outbox_offset: i64) -> Router {
        Router {
            registry: RwLock::default(),
            metrics,
            rings,
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
        held: Option<Held>,
        hold: bool,
    ) {
        let mut registry = self.registry.write();
        if let Some(positions) = &sub.positions {
            let streams = crate::routing::streams(&principal, &token)
                .into_iter()
                .map(|stream| {
                    let last = self.rings.last(&stream);
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
                _held: held,
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
        let (users, others) = {
            let registry = self.registry.read();
            if let Position::Outbox(offset) = event.message.position {
                self.outbox_offset.store(offset, Ordering::Release);
            }
            let Some(index) = registry.accounts.get(&event.account_id) else {
                return 0;
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
        if let Some(users) = users {
            delivered += deliver_all(&users, not_echoed, &event.message, &self.metrics);
        }
        delivered
    }

    /// Whether any subscription streams `stream` here (its token, or `account_<id>` of an
    /// account with user subscriptions).
    pub fn streams(&self, stream: &str) -> bool {
        self.registry.read().streams(stream)
    }

    /// Drops expired stream history, and the history of streams nobody here streams any longer.
    pub fn sweep_history(&self) {
        // The same lock order as a broadcast: the registry, then the rings.
        let registry = self.registry.read();
        self.rings.sweep(|stream| registry.streams(stream));
    }

    /// Stream ingress history.
    pub fn rings(&self) -> &Rings {
        &self.rings
    }

    /// Queues a broadcast on every subscription streaming `stream` (its own token, or
    /// `account_<id>` for the user subscriptions of that account), contact subscriptions only
    /// if `contacts` ([`crate::routing`] rule 7), and keeps it in the stream's history. `body`
    /// is the payload followed by `}`. Returns how many received it.
    pub fn broadcast(
        &self,
        stream: &str,
        body: Bytes,
        created_at: f64,
        contacts: bool,
        scratch: &mut Vec<u64>,
    ) -> usize {
        let registry = self.registry.read();
        if !stream_audience(&registry, stream, scratch) {
            return 0;
        }
        let message = self.rings.record(stream, body, created_at, contacts);
        self.deliver_to_stream(&registry, scratch, &message, contacts)
    }

    /// Queues a broadcast read from the outbox, like [`Router::broadcast`] but at its outbox
    /// offset (no stream history of this process's: the outbox is its history). Like
    /// [`Router::dispatch`], it records the offset as dispatched under the registry's lock.
    pub fn broadcast_outbox(
        &self,
        stream: &str,
        message: &Arc<Message>,
        contacts: bool,
        scratch: &mut Vec<u64>,
    ) -> usize {
        let registry = self.registry.read();
        if let Position::Outbox(offset) = message.position {
            self.outbox_offset.store(offset, Ordering::Release);
        }
        if !stream_audience(&registry, stream, scratch) {
            return 0;
        }
        self.deliver_to_stream(&registry, scratch, message, contacts)
    }

    /// Delivers `message` to the subscriptions `ids` found by [`stream_audience`].
    fn deliver_to_stream(
        &self,
        registry: &Registry,
        ids: &[u64],
        message: &Arc<Message>,
        contacts: bool,
    ) -> usize {
        let mut delivered = 0;
        tallied(&self.metrics, || {
            for id in ids {
                let Some(entry) = registry.entries.get(id) else {
                    continue;
                };
                if contacts || entry.principal.is_user() {
                    entry.sub.deliver(message);
                    delivered += 1;
                }
            }
        });
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

/// The subscriptions streaming `stream` into `out` (its token's, and the user subscriptions
/// of `account_<id>`), sorted; whether there is any.
fn stream_audience(registry: &Registry, stream: &str, out: &mut Vec<u64>) -> bool {
    out.clear();
    if let Some(ids) = registry.by_token.get(stream) {
        out.extend(ids.iter());
    }
    let account = stream
        .strip_prefix("account_")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|id| account_stream(*id) == stream);
    if let Some(index) = account.and_then(|id| registry.accounts.get(&id)) {
        out.extend(&index.users);
        out.sort_unstable();
        out.dedup();
    }
    !out.is_empty()
}

/// Delivers `message` to `audience`; a large audience is split in two, the second half
/// written from a scoped thread (the machine's two cores both write, as the floor does).
/// Each thread counts what it wrote locally and adds it to the metrics once.
///
/// `not_echoed`: a user whose subscriptions are skipped (rule 6, applied here to a kept
/// audience of users). Returns how many were delivered to.
fn deliver_all(
    audience: &[Arc<Subscription>],
    not_echoed: Option<i64>,
    message: &Arc<Message>,
    metrics: &Metrics,
) -> usize {
    let deliver = |part: &[Arc<Subscription>]| {
        tallied(metrics, || {
            let mut delivered = 0;
            for (i, sub) in part.iter().enumerate() {
                // Each write waits on the kernel for microseconds: meanwhile the memory of
                // the next recipients is fetched, in two steps (the subscription, then what
                // it points to).
                if let Some(far) = part.get(i + PREFETCH_AHEAD * 2) {
                    far.prefetch();
                }
                if let Some(near) = part.get(i + PREFETCH_AHEAD) {
                    near.prefetch_queue();
                }
                let skipped = not_echoed
                    .is_some_and(|user_id| sub.presence.is_user && sub.presence.id == user_id);
                if !skipped {
                    sub.deliver(message);
                    delivered += 1;
                }
            }
            delivered
        })
    };
    if audience.len() < SPLIT_AUDIENCE_AT {
        return deliver(audience);
    }
    let (first, second) = audience.split_at(audience.len() / 2);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| deliver(second));
        let first = deliver(first);
        first + second.join().expect("a delivering thread")
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ContactRecord;
    use crate::delivery::{Message, SessionHandle};
    use crate::routing::{receives, CONTACT_EVENTS};
    use proptest::prelude::*;

    /// A user of `account_id` in no inbox, online.
    fn agent(account_id: i64, user_id: i64, administrator: bool) -> Principal {
        Principal::member(account_id, user_id, administrator, &[])
    }

    fn test_router(metrics: &Arc<Metrics>) -> Router {
        let rings = Rings::new(10, std::time::Duration::from_secs(60));
        Router::new(metrics.clone(), Arc::new(rings), 0)
    }

    /// A subscriber: user (account, user id, admin, inboxes) or contact (account, session id).
    fn principal() -> impl Strategy<Value = Principal> {
        let user = (
            1..3i64,
            1..5i64,
            any::<bool>(),
            prop::collection::vec(1..4i64, 0..3),
        )
            .prop_map(|(account_id, user_id, administrator, mut inboxes)| {
                inboxes.sort_unstable();
                inboxes.dedup();
                Principal::member(account_id, user_id, administrator, &inboxes)
            });
        let contact = (1..3i64, 10..14i64).prop_map(|(account_id, contact_inbox_id)| {
            Principal::Contact(ContactRecord {
                contact_inbox_id,
                contact_id: contact_inbox_id,
                inbox_id: 1,
                account_id,
            })
        });
        prop_oneof![user, contact]
    }

    fn token_of(principal: &Principal) -> String {
        match principal {
            Principal::User { user_id, .. } => format!("u{user_id}"),
            Principal::Contact(c) => format!("c{}", c.contact_inbox_id),
        }
    }

    fn event() -> impl Strategy<Value = Event> {
        let kinds = prop_oneof![
            Just("message.created"),
            Just("conversation.typing_on"),
            Just("conversation.updated"),
            Just(CONTACT_EVENTS[0]),
        ];
        let stream = prop_oneof![
            Just(None),
            Just(Some("account_1".to_string())),
            Just(Some("account_2".to_string())),
            (1..5i64).prop_map(|u| Some(format!("u{u}"))),
            (10..14i64).prop_map(|c| Some(format!("c{c}"))),
        ];
        (
            (1..3i64, kinds, prop::option::of(1..4i64)),
            prop::collection::vec(10..14i64, 0..3),
            (prop::option::of(1..5i64), any::<bool>()),
            (prop::option::of(1..5i64), prop::option::of(10..14i64)),
            stream,
        )
            .prop_map(
                |(
                    (account_id, kind, inbox_id),
                    mut contacts,
                    (user_id, private),
                    actors,
                    stream,
                )| {
                    contacts.sort_unstable();
                    contacts.dedup();
                    Event {
                        id: 1,
                        account_id,
                        event: kind.to_string(),
                        inbox_id,
                        contact_inbox_ids: contacts,
                        user_id,
                        private,
                        actor_user_id: actors.0,
                        actor_contact_inbox_id: actors.1,
                        stream,
                        message: Arc::new(Message {
                            body: Bytes::new(),
                            created_at: 0.0,
                            position: Position::None,
                        }),
                    }
                },
            )
    }

    proptest! {
        /// The indexes give exactly the audience the pure rules define, each recipient once,
        /// also after memberships change and subscriptions leave.
        #[test]
        fn dispatch_reaches_exactly_who_the_rules_name(
            population in prop::collection::vec(principal(), 0..12),
            events in prop::collection::vec(event(), 1..8),
            leaving in prop::collection::vec(any::<bool>(), 12),
            promote in prop::collection::vec(any::<bool>(), 12),
        ) {
            let metrics = Arc::new(Metrics::new());
            let router = test_router(&metrics);
            let mut subs = Vec::new();
            for principal in &population {
                let session = SessionHandle::new(1 << 16, metrics.clone());
                let sub = Subscription::new("{}".into(), session, principal, None);
                let token: Arc<str> = token_of(principal).into();
                router.register(sub.clone(), principal.clone(), token, Some(Bytes::new()), None, false);
                sub.session.queue.take_now(); // the confirm
                subs.push((sub, principal.clone()));
            }
            let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
            let mut scratch = Vec::new();
            // Every event once before the changes (audiences are kept), then again after.
            let check = |router: &Router, kept: &[(Arc<Subscription>, Principal)], scratch: &mut Vec<u64>| -> Result<(), TestCaseError> {
                for event in &events {
                    let delivered = router.dispatch(event, scratch);
                    let mut expected = 0;
                    for (sub, principal) in kept {
                        let got = sub.session.queue.take_now().len();
                        let want = receives(principal, &token_of(principal), event);
                        expected += usize::from(want);
                        prop_assert_eq!(got, usize::from(want), "{:?} {:?}", principal, event);
                    }
                    prop_assert_eq!(delivered, expected);
                }
                Ok(())
            };
            check(&router, &subs, &mut scratch)?;
            // Some leave, some become administrators of inbox 3 as well.
            let mut kept = Vec::new();
            for (i, (sub, mut principal)) in subs.into_iter().enumerate() {
                if leaving[i] {
                    router.unregister(sub.id, None);
                    continue;
                }
                if let (true, Principal::User { membership, .. }) = (promote[i], &mut principal) {
                    let mut inboxes = membership.inbox_ids.to_vec();
                    inboxes.push(3);
                    inboxes.sort_unstable();
                    inboxes.dedup();
                    membership.inbox_ids = inboxes.into();
                    router.update_membership(sub.id, membership.clone());
                }
                kept.push((sub, principal));
            }
            check(&router, &kept, &mut scratch)?;
        }
    }

    /// An audience large enough to be written from two threads, kept between events: typing
    /// skips its actor's subscriptions in either half, and a change to the account (a
    /// subscription leaves, one joins) is seen by the next event.
    #[test]
    fn a_kept_audience_skips_the_typing_actor_and_follows_changes() {
        let metrics = Arc::new(Metrics::new());
        let router = test_router(&metrics);
        let register = |user_id: i64| {
            let principal = agent(1, user_id, true);
            let session = SessionHandle::new(64, metrics.clone());
            let sub = Subscription::new("{}".into(), session, &principal, None);
            let token: Arc<str> = format!("u{user_id}").into();
            router.register(
                sub.clone(),
                principal,
                token,
                Some(Bytes::new()),
                None,
                false,
            );
            sub.session.queue.take_now();
            sub
        };
        // Users 1..=n, each with one subscription; user 7 has two more (tabs), so that its
        // subscriptions are likely in both halves of the audience.
        let n = SPLIT_AUDIENCE_AT as i64 + 100;
        let mut subs: Vec<(i64, Arc<Subscription>)> = (1..=n).map(|u| (u, register(u))).collect();
        subs.push((7, register(7)));
        subs.push((7, register(7)));
        let event = |kind: &str, inbox_id: Option<i64>| {
            Arc::new(Event {
                id: 1,
                account_id: 1,
                event: kind.to_string(),
                inbox_id,
                contact_inbox_ids: Vec::new(),
                user_id: None,
                private: false,
                actor_user_id: Some(7),
                actor_contact_inbox_id: None,
                stream: None,
                message: Arc::new(Message {
                    body: Bytes::from_static(b"{}}"),
                    created_at: 0.0,
                    position: Position::None,
                }),
            })
        };
        let mut scratch = Vec::new();
        let received = |subs: &[(i64, Arc<Subscription>)]| -> Vec<i64> {
            subs.iter()
                .filter(|(_, sub)| sub.session.queue.take_now().len() == 1)
                .map(|(user, _)| *user)
                .collect()
        };
        for inbox in [None, Some(2)] {
            // Twice each: built, then kept.
            for _ in 0..2 {
                let all = router.dispatch(&event("message.created", inbox), &mut scratch);
                assert_eq!(all, subs.len());
                assert_eq!(received(&subs).len(), subs.len());
                let typing = router.dispatch(&event("conversation.typing_on", inbox), &mut scratch);
                assert_eq!(typing, subs.len() - 3);
                let got = received(&subs);
                assert_eq!(got.len(), subs.len() - 3);
                assert!(!got.contains(&7), "typing is not echoed to its actor");
            }
        }
        // One leaves, one joins: the next event sees both.
        let (_, gone) = subs.remove(10);
        assert!(router.unregister(gone.id, None));
        subs.push((n + 1, register(n + 1)));
        assert_eq!(
            router.dispatch(&event("message.created", None), &mut scratch),
            subs.len()
        );
        assert_eq!(received(&subs).len(), subs.len());
        assert!(gone.session.queue.take_now().is_empty());
    }

    #[test]
    fn broadcasts_reach_the_streams_subscribers_and_contacts_only_if_allowed() {
        let metrics = Arc::new(Metrics::new());
        let router = test_router(&metrics);
        let user = |account_id, user_id| agent(account_id, user_id, false);
        let contact = |account_id, id| {
            Principal::Contact(ContactRecord {
                contact_inbox_id: id,
                contact_id: id,
                inbox_id: 1,
                account_id,
            })
        };
        let parties = [
            ("u1", user(1, 1)),
            ("u2", user(1, 2)),
            ("u9", user(2, 9)),
            ("c1", contact(1, 10)),
            ("account_1", user(2, 8)), // a token that looks like a stream name
        ];
        let subs: Vec<_> = parties
            .iter()
            .map(|(token, principal)| {
                let session = SessionHandle::new(64, metrics.clone());
                let sub = Subscription::new("{}".into(), session, principal, None);
                router.register(
                    sub.clone(),
                    principal.clone(),
                    (*token).into(),
                    Some(Bytes::new()),
                    None,
                    false,
                );
                sub.session.queue.take_now();
                sub
            })
            .collect();
        let got = |stream: &str, contacts: bool| -> Vec<&str> {
            let mut scratch = Vec::new();
            let body = Bytes::from_static(b"{}}");
            let n = router.broadcast(stream, body, 0.0, contacts, &mut scratch);
            let names: Vec<&str> = parties
                .iter()
                .zip(&subs)
                .filter(|(_, sub)| !sub.session.queue.take_now().is_empty())
                .map(|((token, _), _)| *token)
                .collect();
            assert_eq!(n, names.len());
            names
        };
        assert_eq!(got("u1", true), ["u1"]);
        assert_eq!(got("c1", true), ["c1"]);
        assert_eq!(got("c1", false), Vec::<&str>::new());
        assert_eq!(got("account_1", true), ["u1", "u2", "account_1"]);
        assert_eq!(got("account_01", true), Vec::<&str>::new());
        assert_eq!(got("account_2", true), ["u9", "account_1"]);
        assert_eq!(got("nobody", true), Vec::<&str>::new());
        router.unregister(subs[0].id, None);
        assert_eq!(got("u1", true), Vec::<&str>::new());
    }
}
