-- The event outbox (CONTRACT §4). A backend inserts rows in the same transaction as the
-- change they describe; the statement trigger rings the gateway's doorbell (NOTIFY without a
-- payload, delivered at commit). `xid` records the inserting transaction so the gateway can
-- tell which rows became visible since its previous read (see src/outbox.rs).

CREATE TABLE IF NOT EXISTS cable_events (
  id                      bigserial PRIMARY KEY,
  account_id              bigint NOT NULL,
  event                   text NOT NULL,
  data                    jsonb NOT NULL,
  inbox_id                bigint,
  contact_inbox_ids       bigint[],
  user_id                 bigint,
  private                 boolean NOT NULL DEFAULT false,
  actor_user_id           bigint,
  actor_contact_inbox_id  bigint,
  stream                  text,
  created_at              timestamptz NOT NULL DEFAULT now(),
  xid                     xid8 NOT NULL DEFAULT pg_current_xact_id()
);

CREATE INDEX IF NOT EXISTS cable_events_xid_idx ON cable_events (xid);
CREATE INDEX IF NOT EXISTS cable_events_created_at_idx ON cable_events (created_at);

CREATE OR REPLACE FUNCTION cable_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('cable_events', '');
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS cable_events_notify ON cable_events;
CREATE TRIGGER cable_events_notify
  AFTER INSERT ON cable_events
  FOR EACH STATEMENT EXECUTE FUNCTION cable_events_notify();
