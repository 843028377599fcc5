//! The presence rules, as pure functions: who is online, when that ends, and how often
//! anything happens.
//!
//! - **Online** in an account: a user or contact with a `cable_presence` row there. A row
//!   exists from the principal's first subscribe until it **expires**: when its `seen_at` is
//!   more than `CABLE_PRESENCE_TTL` old ([`expired`]). `seen_at` is refreshed by every sign of
//!   life: a subscribe, `update_presence`, each heartbeat of a live connection
//!   ([`heartbeat_period`]), and a connection's end (so the TTL counts from the departure).
//!   Expired rows are deleted by whichever process's sweeper ([`sweep_period`]) finds them
//!   first, so presence ends between TTL and TTL + one sweep period after the last sign of life.
//! - **The online set** (`presence.update`) of an account ([`online_set`]): `users` = every online
//!   user with their `account_users.availability`, plus every user whose `auto_offline` is
//!   false (they are shown whether connected or not); `contacts` = every online contact, and
//!   only in messages to user subscriptions.
//! - **Pushes**: when an account's online set changes, its user subscriptions get a fresh
//!   online set, at most about once a second per account and bounded in bytes: after a push of B
//!   bytes in all (online set × recipients), the next one waits [`push_wait`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::config::tuning::{
    HEARTBEAT_MAX, HEARTBEAT_MIN, PUSH_INTERVAL_MIN, SWEEP_MAX, SWEEP_MIN,
};

/// Whether a row last seen `age` ago has expired.
pub fn expired(age: Duration, ttl: Duration) -> bool {
    age > ttl
}

/// [`expired`] as SQL, for a `cable_presence` row `p`, the TTL bound in seconds as `ttl`
/// (a parameter such as `$2`): every statement that asks whether a row has expired asks it so.
pub fn expired_sql(ttl: &str) -> String {
    format!("p.seen_at < now() - make_interval(secs => {ttl})")
}

/// The opposite of [`expired_sql`]: the row is live.
pub fn live_sql(ttl: &str) -> String {
    format!("NOT ({})", expired_sql(ttl))
}

/// How often a process refreshes every live subscription's row: three chances per TTL.
pub fn heartbeat_period(ttl: Duration) -> Duration {
    (ttl / 3).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
}

/// How often expired rows are looked for.
pub fn sweep_period(ttl: Duration) -> Duration {
    (ttl / 10).clamp(SWEEP_MIN, SWEEP_MAX)
}

/// How long an account waits for its next push after one of `bytes` in all.
pub fn push_wait(bytes: u64, budget_per_second: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / budget_per_second.max(1) as f64).max(PUSH_INTERVAL_MIN)
}

/// `account_users.availability` as it is shown.
pub fn availability(value: i32) -> &'static str {
    match value {
        1 => "offline",
        2 => "busy",
        _ => "online",
    }
}

/// A user of the account, as the online-set query reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountUser {
    pub user_id: i64,
    pub availability: i32,
    pub auto_offline: bool,
    /// Has a live (unexpired) presence row.
    pub online: bool,
}

/// `users` and `contacts` of one account's `presence.update`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OnlineSet {
    pub users: BTreeMap<i64, &'static str>,
    pub contacts: BTreeMap<i64, &'static str>,
}

/// The online set of an account from its users and its online contacts.
pub fn online_set(users: &[AccountUser], online_contacts: &[i64]) -> OnlineSet {
    OnlineSet {
        users: users
            .iter()
            .filter(|u| u.online || !u.auto_offline)
            .map(|u| (u.user_id, availability(u.availability)))
            .collect(),
        contacts: online_contacts.iter().map(|id| (*id, "online")).collect(),
    }
}

impl OnlineSet {
    /// The body of a `presence.update` message (framed by each subscription's protocol); `contacts`
    /// only for user subscriptions.
    pub fn body(&self, account_id: i64, for_user: bool) -> Bytes {
        let map = |m: &BTreeMap<i64, &'static str>| -> Map<String, Value> {
            m.iter().map(|(id, s)| (id.to_string(), json!(s))).collect()
        };
        let mut data = json!({ "account_id": account_id, "users": map(&self.users) });
        if for_user {
            data["contacts"] = Value::Object(map(&self.contacts));
        }
        json!({ "event": "presence.update", "data": data })
            .to_string()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn who_is_in_an_online_set() {
        let user = |user_id, availability, auto_offline, online| AccountUser {
            user_id,
            availability,
            auto_offline,
            online,
        };
        // (user, expected entry)
        let rows = [
            (user(1, 0, true, true), Some("online")),
            (user(2, 2, true, true), Some("busy")),
            (user(3, 1, true, true), Some("offline")),
            (user(4, 0, true, false), None),
            (user(5, 2, false, false), Some("busy")),
            (user(6, 0, false, true), Some("online")),
            (user(7, 9, true, true), Some("online")),
        ];
        let users: Vec<AccountUser> = rows.iter().map(|(u, _)| *u).collect();
        let set = online_set(&users, &[30, 31]);
        for (u, want) in rows {
            assert_eq!(set.users.get(&u.user_id).copied(), want, "{u:?}");
        }
        assert_eq!(set.contacts.keys().copied().collect::<Vec<_>>(), [30, 31]);
    }

    #[test]
    fn contacts_are_shown_to_users_only() {
        let set = online_set(&[], &[5]);
        let user_body = set.body(1, true);
        let contact_body = set.body(1, false);
        let parse = |b: &Bytes| -> Value { serde_json::from_slice(b).unwrap() };
        assert_eq!(parse(&user_body)["data"]["contacts"]["5"], "online");
        assert!(parse(&contact_body)["data"].get("contacts").is_none());
        assert_eq!(parse(&contact_body)["data"]["account_id"], 1);
    }

    #[test]
    fn expiry_and_periods() {
        // (ttl, age, expired)
        for (ttl, age, want) in [
            (S(30), S(29), false),
            (S(30), S(30), false),
            (S(30), MS(30_001), true),
            (S(1), S(2), true),
        ] {
            assert_eq!(expired(age, ttl), want, "ttl {ttl:?} age {age:?}");
        }
        // (ttl, heartbeat, sweep)
        for (ttl, heartbeat, sweep) in [
            (S(30), S(10), S(1)),
            (S(3), S(1), MS(300)),
            (MS(100), MS(100), MS(100)),
            (S(600), S(10), S(1)),
        ] {
            assert_eq!(heartbeat_period(ttl), heartbeat, "heartbeat for {ttl:?}");
            assert_eq!(sweep_period(ttl), sweep, "sweep for {ttl:?}");
        }
    }

    #[test]
    fn pushes_wait_at_least_a_second_and_longer_when_large() {
        // (bytes pushed, budget per second, wait)
        for (bytes, budget, want) in [
            (100, 8 << 20, S(1)),
            (16 << 20, 8 << 20, S(2)),
            (3000, 1000, S(3)),
            (5, 0, S(5)),
        ] {
            assert_eq!(
                push_wait(bytes, budget),
                want,
                "{bytes} bytes at {budget}/s"
            );
        }
    }
}
