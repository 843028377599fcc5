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

/// Descriptors kept free for the listener, the database pool, the LISTEN connection, logs.
const FD_RESERVE: usize = 64;

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
    max_connections: usize,
}

/// A counted session slot; dropping it frees the slot.
pub struct SessionGuard(Arc<Gateway>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.sessions_drained.notify_waiters();
        }
    }
}

/// The file-descriptor soft limit of this process, if it can be read.
pub fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
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
        let max_connections = match (config.max_connections, fd_limit()) {
            (0, Some(fds)) => (fds as usize)
                .saturating_sub(FD_RESERVE + config.db_pool_size as usize)
                .max(1),
            (0, None) => usize::MAX,
            (configured, _) => configured,
        };
        Arc::new(Gateway {
            max_connections,
            presence: Presence::new(
                pool.clone(),
                config.presence_ttl,
                config.presence_push_budget,
                metrics.clone(),
            ),
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

    /// Takes a session slot, or `None` when `max_connections` are open.
    pub fn try_session(self: &Arc<Self>) -> Option<SessionGuard> {
        let max = self.max_connections;
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| SessionGuard(self.clone()))
    }

    /// The connection limit in force (configured, or derived from the descriptor limit).
    pub fn max_connections(&self) -> usize {
        self.max_connections
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
