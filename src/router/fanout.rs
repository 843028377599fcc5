//! Writing one message to an audience: a stream's subscriptions, or an event's recipients
//! split over the machine's two cores when there are many.

use std::sync::Arc;

use super::index::Registry;
use crate::config::tuning::{PREFETCH_AHEAD, SPLIT_AUDIENCE_AT};
use crate::delivery::{tallied, Message, Subscription};
use crate::metrics::Metrics;
use crate::routing::account_of_stream;

/// The subscriptions streaming `stream` into `out` (its token's, and the user subscriptions
/// of `account_<id>`), sorted; whether there is any.
pub(super) fn stream_audience(registry: &Registry, stream: &str, out: &mut Vec<u64>) -> bool {
    out.clear();
    if let Some(ids) = registry.by_token.get(stream) {
        out.extend(ids.iter());
    }
    if let Some(index) = account_of_stream(stream).and_then(|id| registry.accounts.get(&id)) {
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
pub(super) fn deliver_all(
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
