//! Who the bench's clients are: deterministic tokens, ids and identifiers, so that the
//! parent, its client processes and the database seed agree without talking.
//!
//! Client `i` (0-based, global across client processes):
//! - `fanout` layout: every client is an agent (user subscription) of one account,
//!   [`FANOUT_ACCOUNT`]; the whole account receives every event.
//! - `groups` layout: accounts of [`GROUP_SIZE`] subscribers each ([`FIRST_GROUP_ACCOUNT`] +
//!   i / 100): the first [`GROUP_AGENTS`] of each are agents, the rest are contact sessions
//!   (chat widgets), the usual shape of a support platform's traffic.

use serde::{Deserialize, Serialize};

/// The account all fan-out agents belong to.
pub const FANOUT_ACCOUNT: i64 = 9000;
/// The first account of the `groups` layout.
pub const FIRST_GROUP_ACCOUNT: i64 = 9001;
/// Subscribers per account in the `groups` layout.
pub const GROUP_SIZE: usize = 100;
/// Agents among them; the rest are contact sessions.
pub const GROUP_AGENTS: usize = 20;
/// `users.id` of client 0; client i is `USER_ID_BASE + i`.
pub const USER_ID_BASE: i64 = 900_000_000;
/// `contacts.id` and `contact_inboxes.id` of client 0.
pub const CONTACT_ID_BASE: i64 = 900_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Fanout,
    Groups,
    /// Agents of the fan-out account with four connections (browser tabs) each: client i
    /// is agent i / 4. Shows whether token lookups are cached and coalesced.
    Tabs,
}

/// Connections per agent in the `tabs` layout.
pub const TABS: usize = 4;

/// What client `i` subscribes as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscriber {
    Agent {
        token: String,
        account_id: i64,
        user_id: i64,
    },
    Contact {
        token: String,
        account_id: i64,
    },
}

pub fn user_token(i: usize) -> String {
    format!("bench-u-{i:06}")
}

pub fn contact_token(i: usize) -> String {
    format!("bench-c-{i:06}")
}

pub fn group_account(i: usize) -> i64 {
    FIRST_GROUP_ACCOUNT + (i / GROUP_SIZE) as i64
}

pub fn is_group_agent(i: usize) -> bool {
    i % GROUP_SIZE < GROUP_AGENTS
}

impl Layout {
    pub fn subscriber(self, i: usize) -> Subscriber {
        match self {
            Layout::Fanout => Subscriber::Agent {
                token: user_token(i),
                account_id: FANOUT_ACCOUNT,
                user_id: USER_ID_BASE + i as i64,
            },
            Layout::Groups if is_group_agent(i) => Subscriber::Agent {
                token: user_token(i),
                account_id: group_account(i),
                user_id: USER_ID_BASE + i as i64,
            },
            Layout::Tabs => Layout::Fanout.subscriber(i / TABS),
            Layout::Groups => Subscriber::Contact {
                token: contact_token(i),
                account_id: group_account(i),
            },
        }
    }
}

impl Subscriber {
    /// The RoomChannel identifier (a JSON object as a string).
    pub fn identifier(&self) -> String {
        match self {
            Subscriber::Agent {
                token,
                account_id,
                user_id,
            } => serde_json::json!({
                "channel": "RoomChannel",
                "pubsub_token": token,
                "account_id": account_id,
                "user_id": user_id,
            })
            .to_string(),
            Subscriber::Contact { token, account_id } => serde_json::json!({
                "channel": "RoomChannel",
                "pubsub_token": token,
                "account_id": account_id,
            })
            .to_string(),
        }
    }

    /// The `subscribe` command for this subscriber.
    pub fn subscribe_command(&self) -> String {
        serde_json::json!({ "command": "subscribe", "identifier": self.identifier() }).to_string()
    }
}

/// The source address of client `i`: 127.0.0.2, .3, … with `per_address` clients each, so
/// that no single source address runs short of ephemeral ports.
pub fn source_address(i: usize, per_address: usize) -> std::net::Ipv4Addr {
    let n = 2 + i / per_address.max(1);
    assert!(n < 255 * 255, "too many source addresses");
    std::net::Ipv4Addr::new(127, 0, (n / 255) as u8, (n % 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_clients_are_agents_of_one_account() {
        let s = Layout::Fanout.subscriber(1234);
        assert_eq!(
            s,
            Subscriber::Agent {
                token: "bench-u-001234".into(),
                account_id: FANOUT_ACCOUNT,
                user_id: USER_ID_BASE + 1234
            }
        );
        let command: serde_json::Value = serde_json::from_str(&s.subscribe_command()).unwrap();
        let identifier: serde_json::Value =
            serde_json::from_str(command["identifier"].as_str().unwrap()).unwrap();
        assert_eq!(identifier["channel"], "RoomChannel");
        assert_eq!(identifier["user_id"], USER_ID_BASE + 1234);
    }

    #[test]
    fn groups_mix_agents_and_contacts() {
        assert!(matches!(
            Layout::Groups.subscriber(119),
            Subscriber::Agent {
                account_id: 9002,
                ..
            }
        ));
        match Layout::Groups.subscriber(120) {
            Subscriber::Contact { token, account_id } => {
                assert_eq!(token, "bench-c-000120");
                assert_eq!(account_id, 9002);
            }
            other => panic!("expected a contact, got {other:?}"),
        }
        let contacts = (0..1000).filter(|&i| !is_group_agent(i)).count();
        assert_eq!(contacts, 800);
    }

    #[test]
    fn tabs_share_tokens() {
        assert_eq!(Layout::Tabs.subscriber(7), Layout::Fanout.subscriber(1));
    }

    #[test]
    fn source_addresses_skip_the_servers_own() {
        assert_eq!(source_address(0, 4000).to_string(), "127.0.0.2");
        assert_eq!(source_address(3999, 4000).to_string(), "127.0.0.2");
        assert_eq!(source_address(4000, 4000).to_string(), "127.0.0.3");
        assert_eq!(source_address(253 * 10, 10).to_string(), "127.0.1.0");
    }
}
