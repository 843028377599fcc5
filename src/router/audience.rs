//! The user audience of an account's inbox-wide and account-wide events (rules 3 and 4), kept
//! between events while the account's index does not change.

use std::collections::HashMap;
use std::sync::Arc;

use super::index::{AccountIndex, Audience, Entry, Ids};
use crate::config::tuning::AUDIENCES_KEPT;
use crate::delivery::Subscription;

impl AccountIndex {
    /// The user subscriptions rules 3 (`inbox`: its members and the administrators) and 4
    /// (`None`: every user subscription) name, before rule 6 (typing is not echoed to its
    /// actor, applied while delivering). An account's big events (a message to every agent)
    /// go to the same subscriptions again and again: the list is kept until this index
    /// changes, so that an event costs no lookup and no reference count per recipient. At
    /// most [`AUDIENCES_KEPT`] are kept per account.
    pub(super) fn user_audience(
        &self,
        entries: &HashMap<u64, Entry>,
        inbox: Option<i64>,
    ) -> Audience {
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
