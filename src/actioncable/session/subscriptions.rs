//! The subscriptions of one connection, by raw identifier. Whatever is left when the
//! connection ends is unregistered by [`SessionSubscriptions::clear`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::delivery::Subscription;
use crate::router::Router;

pub struct SessionSubscriptions {
    router: Arc<Router>,
    by_identifier: HashMap<Arc<str>, Arc<Subscription>>,
}

impl SessionSubscriptions {
    pub fn new(router: Arc<Router>) -> Self {
        SessionSubscriptions {
            router,
            by_identifier: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_identifier.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_identifier.is_empty()
    }

    pub fn get(&self, identifier: &str) -> Option<&Arc<Subscription>> {
        self.by_identifier.get(identifier)
    }

    pub fn insert(&mut self, sub: Arc<Subscription>) {
        self.by_identifier.insert(sub.identifier.clone(), sub);
    }

    /// The raw identifiers of the live subscriptions (what a session restores).
    pub fn identifiers(&self) -> Vec<Arc<str>> {
        self.by_identifier
            .values()
            .filter(|sub| sub.is_active())
            .map(|sub| sub.identifier.clone())
            .collect()
    }

    /// Any one live subscription (who held a connection, for the inspector's log).
    pub fn any(&self) -> Option<&Arc<Subscription>> {
        self.by_identifier.values().find(|sub| sub.is_active())
    }

    /// Forgets the subscription (revoked meanwhile, so already unregistered).
    pub fn forget(&mut self, identifier: &str) {
        self.by_identifier.remove(identifier);
    }

    /// Ends the subscription; `false` if there was none with that identifier.
    pub fn unsubscribe(&mut self, identifier: &str) -> bool {
        match self.by_identifier.remove(identifier) {
            Some(sub) => {
                self.router.unregister(sub.id, None);
                true
            }
            None => false,
        }
    }

    /// Ends every subscription (the connection is closing).
    pub fn clear(&mut self) {
        for (_, sub) in self.by_identifier.drain() {
            self.router.unregister(sub.id, None);
        }
    }
}
