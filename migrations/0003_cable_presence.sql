-- Presence shared by every gateway process on this database (CONTRACT §5).
-- One row per online subscriber principal; `seen_at` is refreshed in batches by each
-- process and rows past the TTL are expired by the sweeper.

CREATE TABLE IF NOT EXISTS cable_presence (
  account_id   bigint NOT NULL,
  kind         char(1) NOT NULL CHECK (kind IN ('u', 'c')),
  principal_id bigint NOT NULL,
  seen_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, kind, principal_id)
);

CREATE INDEX IF NOT EXISTS cable_presence_seen_at_idx ON cable_presence (seen_at);
