use super::*;
use crate::auth::ContactRecord;
use crate::config::tuning::SPLIT_AUDIENCE_AT;
use crate::delivery::{Message, SessionHandle};
use crate::resume::rings::Rings;
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

/// Registers one subscription per principal (its confirm taken off its queue).
fn register_all(
    router: &Router,
    metrics: &Arc<Metrics>,
    population: &[Principal],
) -> Vec<(Arc<Subscription>, Principal)> {
    population
        .iter()
        .map(|principal| {
            let session = SessionHandle::new(1 << 16, metrics.clone());
            let sub = Subscription::new("{}".into(), framing(), session, principal, None);
            let token: Arc<str> = token_of(principal).into();
            router.register(
                sub.clone(),
                principal.clone(),
                token,
                Some(Bytes::new()),
                None,
                false,
            );
            sub.session.queue.take_now(); // the confirm
            (sub, principal.clone())
        })
        .collect()
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
            |((account_id, kind, inbox_id), mut contacts, (user_id, private), actors, stream)| {
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
                    message: Arc::new(Message::new(Bytes::new(), 0.0, Position::None)),
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
        let subs = register_all(&router, &metrics, &population);
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
        let sub = Subscription::new("{}".into(), framing(), session, &principal, None);
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
            message: Arc::new(Message::new(Bytes::from_static(b"{}"), 0.0, Position::None)),
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
            let sub = Subscription::new("{}".into(), framing(), session, principal, None);
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
        let body = Bytes::from_static(b"{}");
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

/// A wire protocol's framing for the router's tests (what it says is never read here).
fn framing() -> crate::delivery::Framing {
    struct Silent;
    impl crate::delivery::Replies for Silent {
        fn ended(&self, _: &crate::delivery::Subscription) -> Option<Bytes> {
            Some(Bytes::from_static(b"ended"))
        }
        fn history_done(&self, _: &str) -> Bytes {
            Bytes::new()
        }
        fn history_refused(&self, _: &str) -> Bytes {
            Bytes::new()
        }
    }
    crate::delivery::Framing {
        prefix: Bytes::new(),
        suffix: b"}",
        replies: &Silent,
        reframe: None,
    }
}

proptest! {
    /// A stream broadcast reaches exactly the subscriptions that stream its name by
    /// [`crate::routing::streams`], contacts only when it may be shown to them (rule 7), each
    /// once: the same rule the outbox's replay applies to broadcast rows.
    #[test]
    fn a_stream_broadcast_reaches_exactly_who_streams_it(
        population in prop::collection::vec(principal(), 0..12),
        streams in prop::collection::vec(
            prop_oneof![
                (1..3i64).prop_map(|a| format!("account_{a}")),
                (1..5i64).prop_map(|u| format!("u{u}")),
                (10..14i64).prop_map(|c| format!("c{c}")),
                Just("elsewhere".to_string()),
            ],
            1..6,
        ),
        contacts in any::<bool>(),
    ) {
        let metrics = Arc::new(Metrics::new());
        let router = test_router(&metrics);
        let subs = register_all(&router, &metrics, &population);
        let mut scratch = Vec::new();
        for stream in &streams {
            let delivered = router.broadcast(stream, Bytes::from_static(b"{}"), 0.0, contacts, &mut scratch);
            let mut expected = 0;
            for (sub, principal) in &subs {
                let got = sub.session.queue.take_now().len();
                let want = crate::routing::streams(principal, &token_of(principal)).contains(stream)
                    && (contacts || principal.is_user());
                expected += usize::from(want);
                prop_assert_eq!(got, usize::from(want), "{:?} on {}", principal, stream);
            }
            prop_assert_eq!(delivered, expected);
        }
    }
}

mod channels;
