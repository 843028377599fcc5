//! Channel subscriptions (a Centrifugo channel by name): what reaches them.

use super::*;

#[test]
fn channel_subscriptions_get_their_streams_broadcasts_and_outbox_events_of_any_account() {
    let metrics = Arc::new(Metrics::new());
    let router = test_router(&metrics);
    let channel = |name: &str| {
        let session = SessionHandle::new(64, metrics.clone());
        let sub = Subscription::channel(name.into(), framing(), session);
        router.register_channel(sub.clone(), name.into(), Some(Bytes::new()), None);
        assert_eq!(sub.session.queue.take_now().len(), 1, "its confirm first");
        sub
    };
    let news = channel("news");
    let news_too = channel("news");
    let other = channel("tickets:1");
    // A user streaming the same name: its rules still apply to it.
    let user = agent(1, 1, false);
    let session = SessionHandle::new(64, metrics.clone());
    let user_sub = Subscription::new("{}".into(), framing(), session, &user, None);
    router.register(user_sub.clone(), user, "news".into(), None, None, false);
    let mut scratch = Vec::new();
    let taken = |sub: &Arc<Subscription>| sub.session.queue.take_now().len();
    // Rule 7 is about contacts: a broadcast hidden from them still reaches channels.
    assert_eq!(
        router.broadcast("news", Bytes::from_static(b"{}"), 0.0, false, &mut scratch),
        3
    );
    assert_eq!(
        [
            taken(&news),
            taken(&news_too),
            taken(&other),
            taken(&user_sub)
        ],
        [1, 1, 0, 1]
    );
    // An outbox event on the stream, in an account nobody here is in, and in account 1.
    for account_id in [7, 1] {
        let event = Arc::new(Event {
            id: 1,
            account_id,
            event: "message.created".into(),
            inbox_id: None,
            contact_inbox_ids: Vec::new(),
            user_id: None,
            private: false,
            actor_user_id: None,
            actor_contact_inbox_id: None,
            stream: Some("news".into()),
            message: Arc::new(Message::new(Bytes::from_static(b"{}"), 0.0, Position::None)),
        });
        let to_user = usize::from(account_id == 1);
        assert_eq!(router.dispatch(&event, &mut scratch), 2 + to_user);
        assert_eq!(
            [
                taken(&news),
                taken(&news_too),
                taken(&other),
                taken(&user_sub)
            ],
            [1, 1, 0, to_user]
        );
    }
    // Unsubscribed: nothing more, and the name is free once nobody streams it.
    assert!(router.unregister(news.id, None));
    assert!(!news.is_active());
    router.broadcast("news", Bytes::from_static(b"{}"), 0.0, true, &mut scratch);
    assert_eq!([taken(&news), taken(&news_too)], [0, 1]);
    assert!(router.unregister(news_too.id, None));
    assert!(router.unregister(user_sub.id, None));
    assert!(!router.registry.read().streams("news"));
    assert!(router.registry.read().streams("tickets:1"));
}
