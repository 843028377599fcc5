-- Chatwoot-compatible identity tables (CONTRACT §3).
-- Each table is created only where it is missing, so the gateway can run against a
-- real Chatwoot database without touching its schema.

DO $$
BEGIN
  IF to_regclass('users') IS NULL THEN
    CREATE TABLE users (
      id            bigserial PRIMARY KEY,
      name          varchar NOT NULL DEFAULT '',
      email         varchar,
      pubsub_token  varchar
    );
    CREATE UNIQUE INDEX index_users_on_pubsub_token ON users (pubsub_token);
  END IF;

  IF to_regclass('account_users') IS NULL THEN
    CREATE TABLE account_users (
      id            bigserial PRIMARY KEY,
      account_id    bigint NOT NULL,
      user_id       bigint NOT NULL,
      role          integer NOT NULL DEFAULT 0,
      availability  integer NOT NULL DEFAULT 0,
      auto_offline  boolean NOT NULL DEFAULT true
    );
    CREATE UNIQUE INDEX uniq_user_id_per_account_id ON account_users (account_id, user_id);
    CREATE INDEX index_account_users_on_user_id ON account_users (user_id);
  END IF;

  IF to_regclass('inbox_members') IS NULL THEN
    CREATE TABLE inbox_members (
      id        bigserial PRIMARY KEY,
      user_id   bigint NOT NULL,
      inbox_id  bigint NOT NULL
    );
    CREATE UNIQUE INDEX index_inbox_members_on_inbox_id_and_user_id ON inbox_members (inbox_id, user_id);
    CREATE INDEX index_inbox_members_on_user_id ON inbox_members (user_id);
  END IF;

  IF to_regclass('contacts') IS NULL THEN
    CREATE TABLE contacts (
      id          bigserial PRIMARY KEY,
      name        varchar NOT NULL DEFAULT '',
      account_id  bigint NOT NULL
    );
    CREATE INDEX index_contacts_on_account_id ON contacts (account_id);
  END IF;

  IF to_regclass('contact_inboxes') IS NULL THEN
    CREATE TABLE contact_inboxes (
      id            bigserial PRIMARY KEY,
      contact_id    bigint NOT NULL,
      inbox_id      bigint NOT NULL,
      source_id     varchar,
      pubsub_token  varchar
    );
    CREATE UNIQUE INDEX index_contact_inboxes_on_pubsub_token ON contact_inboxes (pubsub_token);
    CREATE INDEX index_contact_inboxes_on_contact_id ON contact_inboxes (contact_id);
  END IF;
END
$$;
