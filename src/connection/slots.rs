//! How many WebSocket connections this process holds, and its limit.
//!
//! The limit is `CABLE_MAX_CONNECTIONS`, or, when that is 0, derived from the file-descriptor
//! soft limit minus a reserve for the listener, the database pool and the LISTEN connection:
//! past it, an upgrade gets 503 instead of failing halfway for want of a descriptor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::tuning::FD_RESERVE;

pub struct Slots {
    open: AtomicUsize,
    drained: Notify,
    max: usize,
}

/// A taken slot; dropping it frees the slot.
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
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

impl Slots {
    /// `configured` 0 derives the limit from the descriptor limit, less `pool_size`.
    pub fn new(configured: usize, pool_size: u32) -> Arc<Slots> {
        let max = match (configured, fd_limit()) {
            (0, Some(fds)) => (fds as usize)
                .saturating_sub(FD_RESERVE + pool_size as usize)
                .max(1),
            (0, None) => usize::MAX,
            (configured, _) => configured,
        };
        Arc::new(Slots {
            open: AtomicUsize::new(0),
            drained: Notify::new(),
            max,
        })
    }

    /// Takes a slot, or `None` when the limit is reached.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// The limit in force.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves when no slot is taken.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}
