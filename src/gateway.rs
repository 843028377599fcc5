//! The state one gateway process shares between its tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use crate::auth::AuthCache;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::router::Router;

pub struct Gateway {
    pub config: ServeConfig,
    pub pool: PgPool,
    pub auth: AuthCache,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub presence: Presence,
    /// True while the LISTEN connection is up (`/ready` needs it).
    listener: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    sessions: AtomicUsize,
    sessions_drained: Notify,
}

/// Counts a live session; dropping it uncounts it.
pub struct SessionGuard<'a>(&'a Gateway);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.sessions_drained.notify_waiters();
        }
    }
}

impl Gateway {
    pub fn new(config: ServeConfig, pool: PgPool) -> Arc<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let auth = AuthCache::new(
            pool.clone(),
            metrics.clone(),
            config.auth_cache_ttl,
            config.auth_negative_ttl,
            config.auth_cache_size,
        );
        Arc::new(Gateway {
            presence: Presence::new(pool.clone(), config.presence_ttl, metrics.clone()),
            router: Router::new(metrics.clone()),
            auth,
            metrics,
            pool,
            config,
            listener: watch::channel(false).0,
            shutdown: watch::channel(false).0,
            sessions: AtomicUsize::new(0),
            sessions_drained: Notify::new(),
        })
    }

    pub fn track_session(&self) -> SessionGuard<'_> {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        SessionGuard(self)
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// Resolves when no session is left.
    pub async fn drained(&self) {
        loop {
            let notified = self.sessions_drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.sessions() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Tells every session to say `server_restart` and close.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn set_listener_live(&self, live: bool) {
        self.listener.send_replace(live);
    }

    pub fn listener_live(&self) -> bool {
        *self.listener.borrow()
    }

    /// A receiver tests and `/ready` can await instead of sleeping.
    pub fn listener_state(&self) -> watch::Receiver<bool> {
        self.listener.subscribe()
    }
}
