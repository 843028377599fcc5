-- The conversations table of a Chatwoot database (CONTRACT §3), read by the `typing` action
-- (CONTRACT §10): which inbox and which contact session a conversation belongs to, found by
-- its per-account `display_id`. Created only where it is missing, like the identity tables.

DO $$
BEGIN
  IF to_regclass('conversations') IS NULL THEN
    CREATE TABLE conversations (
      id                bigserial PRIMARY KEY,
      account_id        bigint NOT NULL,
      inbox_id          bigint NOT NULL,
      contact_id        bigint,
      contact_inbox_id  bigint,
      display_id        integer NOT NULL,
      status            integer NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX index_conversations_on_account_id_and_display_id
      ON conversations (account_id, display_id);
    CREATE INDEX index_conversations_on_inbox_id ON conversations (inbox_id);
  END IF;
END
$$;
