//! The bench's own rows: seeding tokens (users, memberships, contacts, contact sessions in
//! accounts 9000+) and publishing events, through the outbox (gateway) or as one NOTIFY per
//! recipient token (the way a Rails backend feeds ActionCable's PostgreSQL adapter).

use tokio_postgres::{Client, NoTls};

use crate::layout::{
    contact_token, group_account, is_group_agent, user_token, CONTACT_ID_BASE, FANOUT_ACCOUNT,
    USER_ID_BASE,
};

pub async fn connect(database_url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("cable-bench: database connection ended: {e}");
        }
    });
    Ok(client)
}

/// Makes sure clients 0..n exist (every layout), replacing older bench rows.
pub async fn seed(client: &Client, n: usize) -> Result<(), tokio_postgres::Error> {
    let have: i64 = client
        .query_one(
            "SELECT count(*) FROM users WHERE id >= $1 AND id < $2",
            &[&USER_ID_BASE, &(USER_ID_BASE + 10_000_000)],
        )
        .await?
        .get(0);
    let marker: i64 = client
        .query_one(
            "SELECT count(*) FROM users WHERE id = $1 AND pubsub_token = $2",
            &[
                &(USER_ID_BASE + n as i64 - 1),
                &user_token(n.saturating_sub(1)),
            ],
        )
        .await?
        .get(0);
    if have == n as i64 && marker == 1 {
        return Ok(());
    }
    let (lo, hi) = (USER_ID_BASE, USER_ID_BASE + 10_000_000);
    let (clo, chi) = (CONTACT_ID_BASE, CONTACT_ID_BASE + 10_000_000);
    let n = n as i64;
    client
        .batch_execute(&format!(
            "BEGIN;
             DELETE FROM account_users WHERE user_id >= {lo} AND user_id < {hi};
             DELETE FROM inbox_members WHERE user_id >= {lo} AND user_id < {hi};
             DELETE FROM users WHERE id >= {lo} AND id < {hi};
             DELETE FROM contact_inboxes WHERE id >= {clo} AND id < {chi};
             DELETE FROM contacts WHERE id >= {clo} AND id < {chi};
             DELETE FROM cable_presence WHERE account_id >= {FANOUT_ACCOUNT} AND account_id < {FANOUT_ACCOUNT} + 100000;"
        ))
        .await?;
    // Tokens are spelled by layout::user_token / contact_token; the SQL mirrors them and
    // the check below proves it.
    client
        .execute(
            "INSERT INTO users (id, name, pubsub_token)
             SELECT $1::bigint + i, 'bench agent ' || i, 'bench-u-' || lpad(i::text, 6, '0')
               FROM generate_series(0::bigint, $2::bigint - 1) AS i",
            &[&USER_ID_BASE, &n],
        )
        .await?;
    client
        .execute(
            "INSERT INTO account_users (account_id, user_id, role, availability, auto_offline)
             SELECT $3::bigint, $1::bigint + i, 0, 0, true FROM generate_series(0::bigint, $2::bigint - 1) AS i",
            &[&USER_ID_BASE, &n, &FANOUT_ACCOUNT],
        )
        .await?;
    let agents: Vec<i64> = (0..n as usize)
        .filter(|&i| is_group_agent(i))
        .map(|i| i as i64)
        .collect();
    let agent_accounts: Vec<i64> = agents.iter().map(|&i| group_account(i as usize)).collect();
    client
        .execute(
            "INSERT INTO account_users (account_id, user_id, role, availability, auto_offline)
             SELECT a, $1::bigint + i, 0, 0, true FROM unnest($2::bigint[], $3::bigint[]) AS t(i, a)",
            &[&USER_ID_BASE, &agents, &agent_accounts],
        )
        .await?;
    let contacts: Vec<i64> = (0..n as usize)
        .filter(|&i| !is_group_agent(i))
        .map(|i| i as i64)
        .collect();
    let contact_accounts: Vec<i64> = contacts
        .iter()
        .map(|&i| group_account(i as usize))
        .collect();
    client
        .execute(
            "INSERT INTO contacts (id, name, account_id)
             SELECT $1::bigint + i, 'bench visitor ' || i, a FROM unnest($2::bigint[], $3::bigint[]) AS t(i, a)",
            &[&CONTACT_ID_BASE, &contacts, &contact_accounts],
        )
        .await?;
    client
        .execute(
            "INSERT INTO contact_inboxes (id, contact_id, inbox_id, source_id, pubsub_token)
             SELECT $1::bigint + i, $1::bigint + i, a, 'bench-' || i, 'bench-c-' || lpad(i::text, 6, '0')
               FROM unnest($2::bigint[], $3::bigint[]) AS t(i, a)",
            &[&CONTACT_ID_BASE, &contacts, &contact_accounts],
        )
        .await?;
    client.batch_execute("COMMIT; ANALYZE").await?;
    // The SQL spelling of tokens must match layout.rs.
    let last = n as usize - 1;
    let probe: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM users WHERE pubsub_token = $1)
                  + (SELECT count(*) FROM contact_inboxes WHERE pubsub_token = $2)",
            &[&user_token(last), &contact_token(99)],
        )
        .await?
        .get(0);
    assert!(probe >= 1, "seeded tokens do not match layout.rs");
    Ok(())
}

/// An event's `data`: run, sequence, send time, and padding.
pub fn event_data(run: u64, seq: u64, ts_us: u64, pad: usize) -> String {
    format!(
        r#"{{"bench_run":{run},"bench_seq":{seq},"bench_ts":{ts_us},"conversation_id":1,"content":"{}"}}"#,
        "x".repeat(pad)
    )
}

/// One event for every agent of the fan-out account, through the outbox (autocommit).
pub async fn publish_outbox(client: &Client, data: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO cable_events (account_id, event, data) VALUES ($1, 'message.created', $2::text::jsonb)",
            &[&FANOUT_ACCOUNT, &data],
        )
        .await?;
    Ok(())
}

/// What a Rails backend broadcasts for an event: `{"event":..,"data":..}` with `account_id`.
pub fn rails_payload(data: &str) -> String {
    rails_payload_for(FANOUT_ACCOUNT, data)
}

fn rails_payload_for(account_id: i64, data: &str) -> String {
    format!(
        r#"{{"event":"message.created","data":{}}}"#,
        data.replacen('{', &format!(r#"{{"account_id":{account_id},"#), 1)
    )
}

/// The `groups` layout as an audience: Chatwoot's shape, accounts of 100 subscribers (20
/// agents, 80 widgets), each event of an account meant for all 100.
pub struct Groups {
    /// Every subscriber's token, and its account.
    pub tokens: Vec<String>,
    pub accounts: Vec<i64>,
    /// `[{"a":<account>,"c":[<contact session ids>]},...]`, for the outbox rows.
    outbox_rows: String,
}

impl Groups {
    /// The accounts of the layout (one outbox row per event each).
    pub fn accounts_count(&self) -> usize {
        let mut accounts = self.accounts.clone();
        accounts.dedup();
        accounts.len()
    }

    pub fn new(n: usize) -> Groups {
        let mut tokens = Vec::with_capacity(n);
        let mut accounts = Vec::with_capacity(n);
        let mut sessions: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
        for i in 0..n {
            let account = group_account(i);
            if is_group_agent(i) {
                tokens.push(user_token(i));
            } else {
                tokens.push(contact_token(i));
                sessions
                    .entry(account)
                    .or_default()
                    .push(CONTACT_ID_BASE + i as i64);
            }
            sessions.entry(account).or_default();
            accounts.push(account);
        }
        let rows: Vec<serde_json::Value> = sessions
            .into_iter()
            .map(|(a, c)| serde_json::json!({"a": a, "c": c}))
            .collect();
        Groups {
            tokens,
            accounts,
            outbox_rows: serde_json::Value::from(rows).to_string(),
        }
    }

    /// Each subscriber's broadcast of an event, as Chatwoot sends one per recipient.
    pub fn payloads(&self, data: &str) -> Vec<String> {
        self.accounts
            .iter()
            .map(|a| rails_payload_for(*a, data))
            .collect()
    }
}

/// One event per account of the `groups` layout, through the outbox: each row names its
/// account's contact sessions, so it reaches the account's agents and widgets (rule 4).
pub async fn publish_outbox_groups(
    client: &Client,
    groups: &Groups,
    data: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO cable_events (account_id, event, data, contact_inbox_ids)
             SELECT (g->>'a')::bigint, 'message.created', $2::text::jsonb,
                    ARRAY(SELECT jsonb_array_elements_text(g->'c')::bigint)
               FROM jsonb_array_elements($1::text::jsonb) AS g",
            &[&groups.outbox_rows, &data],
        )
        .await?;
    Ok(())
}

/// The same events as Rails' PostgreSQL adapter sends them: one NOTIFY per recipient.
pub async fn publish_notify_each(
    client: &Client,
    tokens: &[String],
    payloads: &[String],
) -> Result<(), tokio_postgres::Error> {
    client
        .query_one(
            "SELECT count(pg_notify(t, p)) FROM unnest($1::text[], $2::text[]) AS x(t, p)",
            &[&tokens, &payloads],
        )
        .await?;
    Ok(())
}

/// The same event the Rails way: one broadcast (NOTIFY on the stream's channel) per recipient
/// token, all in one statement and transaction (the cheapest way a backend can send them).
pub async fn publish_notify(
    client: &Client,
    tokens: &[String],
    data: &str,
) -> Result<(), tokio_postgres::Error> {
    let payload = rails_payload(data);
    client
        .query_one(
            "SELECT count(pg_notify(t, $2::text)) FROM unnest($1::text[]) AS t",
            &[&tokens, &payload],
        )
        .await?;
    Ok(())
}

/// The same event as Rails' Redis adapter sends it: one PUBLISH per recipient token (no
/// channel prefix), pipelined in one round trip; `payloads` has one per token, or one for all.
pub async fn publish_redis(
    redis: &mut redis::aio::MultiplexedConnection,
    tokens: &[String],
    payloads: &[String],
) -> redis::RedisResult<()> {
    let mut pipeline = redis::pipe();
    for (i, token) in tokens.iter().enumerate() {
        let payload = payloads.get(i).unwrap_or(&payloads[0]);
        pipeline.cmd("PUBLISH").arg(token).arg(payload).ignore();
    }
    pipeline.query_async::<()>(redis).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_json_the_client_can_classify() {
        let data = event_data(2, 5, 123, 3);
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["bench_seq"], 5);
        assert_eq!(v["content"], "xxx");
        let frame = format!(
            r#"{{"identifier":"x","message":{{"event":"message.created","data":{data}}}}}"#
        );
        assert_eq!(
            crate::frame::classify(&frame),
            crate::frame::Frame::Event {
                run: 2,
                seq: 5,
                ts_us: 123
            }
        );
    }
}
