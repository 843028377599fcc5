-- Revalidation driven by changes (issue 13): a statement trigger on each identity table
-- (CONTRACT §3) notifies `cable_auth` with the table's name when a change that can alter a
-- live subscription commits. The gateway then re-checks its live subscriptions at once, and
-- otherwise only in a slow full pass, instead of looking every token up every
-- `CABLE_REVALIDATE_INTERVAL` while nothing changes.
--
-- The triggers write nothing and read nothing: they only queue one notification per table per
-- transaction (identical notifications within a transaction are folded into one). Columns the
-- gateway does not read (a user's sign-in times, a contact's name) do not fire them, and
-- neither do inserts of users, contacts or contact sessions, which no live subscription holds
-- yet.
--
-- On a Chatwoot database these tables belong to the host. Creating a trigger needs the
-- TRIGGER privilege on the table; without it this migration installs none of them, says so
-- in a NOTICE, and the gateway keeps polling every `CABLE_REVALIDATE_INTERVAL` (it checks
-- which triggers exist at start and at every full pass, and logs a warning naming this).
-- Disabling them (`ALTER TABLE ... DISABLE TRIGGER`) or dropping them has the same effect.

CREATE OR REPLACE FUNCTION cable_auth_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('cable_auth', TG_TABLE_NAME);
  RETURN NULL;
END
$$;

-- Installs each of the five triggers that is missing; true when all five are there. The
-- migration calls it, and so does every `cable-gateway migrate` after it, so that running
-- that once as the tables' owner adds what a first run could not. A trigger already there is
-- left alone: no lock is taken on a host table that has it.
CREATE OR REPLACE FUNCTION cable_install_auth_triggers() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  wanted constant text[][] := ARRAY[
    ['users', 'UPDATE OF id, pubsub_token OR DELETE OR TRUNCATE'],
    ['account_users',
     'INSERT OR UPDATE OF account_id, user_id, role, availability, auto_offline OR DELETE OR TRUNCATE'],
    ['inbox_members', 'INSERT OR UPDATE OF user_id, inbox_id OR DELETE OR TRUNCATE'],
    ['contacts', 'UPDATE OF id, account_id OR DELETE OR TRUNCATE'],
    ['contact_inboxes', 'UPDATE OF id, contact_id, inbox_id, pubsub_token OR DELETE OR TRUNCATE']];
  i int;
BEGIN
  FOR i IN 1 .. array_length(wanted, 1) LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgname = 'cable_auth_changed'
                      AND tgrelid = to_regclass(wanted[i][1])) THEN
      EXECUTE format('CREATE TRIGGER cable_auth_changed AFTER %s ON %I '
                     'FOR EACH STATEMENT EXECUTE FUNCTION cable_auth_changed()',
                     wanted[i][2], wanted[i][1]);
    END IF;
  END LOOP;
  RETURN true;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'cable-gateway: no permission to add the cable_auth_changed triggers (%); the gateway will re-check live subscriptions every CABLE_REVALIDATE_INTERVAL instead. Run `cable-gateway migrate` as the owner of the identity tables to add them.', SQLERRM;
  RETURN false;
END
$$;

SELECT cable_install_auth_triggers();
