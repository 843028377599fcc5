-- Presence of Centrifugo channels, shared by every gateway process on this database
-- (CONTRACT §11): one row per client subscribed to a channel whose namespace keeps presence.
-- Each process refreshes `seen_at` of its own clients; rows past CABLE_PRESENCE_TTL (a
-- process that died) are swept by any process, which announces their leave.

CREATE TABLE IF NOT EXISTS cable_channel_presence (
  channel    text NOT NULL,
  client     text NOT NULL,
  user_id    text NOT NULL,
  conn_info  jsonb,
  seen_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (channel, client)
);

CREATE INDEX IF NOT EXISTS cable_channel_presence_seen_at_idx ON cable_channel_presence (seen_at);
