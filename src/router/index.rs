//! The router's indexes: every live subscription by id ([`Registry::entries`]), by token
//! (broadcasts name no account), and per account by user, administrator, inbox membership and
//! contact session ([`AccountIndex`]); and the candidates rules 1 and 2 of
//! [`crate::routing`] name, looked up in them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Keep;
use crate::auth::Principal;
use crate::delivery::{Event, Subscription};
use crate::routing::{account_of_stream, account_stream};

/// A live subscription with what the router knows about it.
pub(super) struct Entry {
    pub(super) sub: Arc<Subscription>,
    pub(super) principal: Principal,
    pub(super) token: Arc<str>,
    /// Held for the subscription's life and dropped when it ends (the LISTEN lease of its
    /// streams, see [`crate::ingress::postgres`]).
    pub(super) _keep: Option<Keep>,
}

/// The subscriptions under one index key. Most keys (a token, a user, a contact session) have
/// one, held inline; a set is allocated only for more (a user's tabs, an inbox's members).
/// Boxed, the set keeps the slot at 16 bytes (the extra allocation is only for keys of many).
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub(super) enum Ids {
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

    pub(super) fn iter(&self) -> impl Iterator<Item = u64> + Clone + '_ {
        let (one, many) = match self {
            Ids::One(one) => (Some(*one), None),
            Ids::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Adds `id` under `key`.
pub(super) fn put<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ids>, key: K, id: u64) {
    map.entry(key)
        .and_modify(|ids| ids.insert(id))
        .or_insert(Ids::One(id));
}

/// Removes `id` from under `key`, and the key when nothing is left under it.
pub(super) fn take<K, Q>(map: &mut HashMap<K, Ids>, key: &Q, id: u64)
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

/// Subscriptions an event is delivered to, shared by the events that have the same one.
pub(super) type Audience = Arc<[Arc<Subscription>]>;

#[derive(Default)]
pub(super) struct AccountIndex {
    pub(super) users: HashSet<u64>,
    pub(super) admins: HashSet<u64>,
    pub(super) by_user: HashMap<i64, Ids>,
    /// Members of each inbox who are not administrators (administrators see every inbox).
    pub(super) by_inbox: HashMap<i64, Ids>,
    pub(super) by_contact_inbox: HashMap<i64, Ids>,
    /// The user part of rules 3 and 4 (an inbox's, `Some`, or the whole account's, `None`), as
    /// dispatch last built it, while nothing in this index changes: see
    /// [`AccountIndex::user_audience`].
    pub(super) audiences: Mutex<HashMap<Option<i64>, Audience>>,
}

impl AccountIndex {
    pub(super) fn is_empty(&self) -> bool {
        self.users.is_empty() && self.by_contact_inbox.is_empty()
    }

    pub(super) fn add(&mut self, id: u64, principal: &Principal) {
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

    pub(super) fn remove(&mut self, id: u64, principal: &Principal) {
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
}

/// Rules 1 and 2 of [`crate::routing`], by index (an event with a stream or a user): the
/// subscriptions of the event's account it is addressed to (a superset is fine for rules 5
/// and 6, which are applied afterwards). Rules 3 and 4 are [`AccountIndex::user_audience`]
/// and [`contact_candidates`].
pub(super) fn candidates(
    registry: &Registry,
    index: &AccountIndex,
    event: &Event,
    out: &mut Vec<u64>,
) {
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
pub(super) fn contact_candidates(index: &AccountIndex, event: &Event, out: &mut Vec<u64>) {
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

/// A subscription to a channel by name alone, of no account and no principal (a Centrifugo
/// channel): it receives whatever is addressed to the stream of that name.
pub(super) struct ChannelEntry {
    pub(super) sub: Arc<Subscription>,
    pub(super) channel: Arc<str>,
    pub(super) _keep: Option<Keep>,
}

#[derive(Default)]
pub(super) struct Registry {
    pub(super) entries: HashMap<u64, Entry>,
    /// Channel subscriptions, by id; indexed by their channel in `by_token` with the rest.
    pub(super) channel_entries: HashMap<u64, ChannelEntry>,
    pub(super) accounts: HashMap<i64, AccountIndex>,
    /// Every subscription by its token, whatever its account (broadcasts name no account),
    /// and every channel subscription by its channel: the streams they receive.
    pub(super) by_token: HashMap<Arc<str>, Ids>,
}

impl Registry {
    /// The channel subscriptions of `stream`.
    pub(super) fn channel_subs<'a>(
        &'a self,
        stream: &str,
    ) -> impl Iterator<Item = &'a Arc<Subscription>> + 'a {
        self.by_token
            .get(stream)
            .into_iter()
            .flat_map(Ids::iter)
            .filter_map(|id| self.channel_entries.get(&id))
            .map(|entry| &entry.sub)
    }

    pub(super) fn streams(&self, stream: &str) -> bool {
        self.by_token.contains_key(stream)
            || account_of_stream(stream)
                .and_then(|id| self.accounts.get(&id))
                .is_some_and(|index| !index.users.is_empty())
    }
}
