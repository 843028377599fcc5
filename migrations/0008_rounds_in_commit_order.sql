-- Nothing lost across processes (issue 26).
--
-- 1. A round's `created_at` is the time its rows became visible, and it follows round order.
--    Rounds used to be stamped with now(), the start of the appending transaction, taken
--    before it waited for the append lock: with several processes appending, a later round
--    could carry an earlier time than the round before it, and a `history` request with
--    `since` that looked rounds up by time skipped the earlier one. The gateway now stamps a
--    round after the lock and its snapshot (clock_timestamp(), never earlier than the
--    previous round's) and looks rounds up by number; rows written before this migration are
--    made monotonic here, in round order.
UPDATE cable_rounds r
   SET created_at = m.at
  FROM (SELECT round, max(created_at) OVER (ORDER BY round) AS at FROM cable_rounds) m
 WHERE r.round = m.round AND r.created_at < m.at;

-- 2. Stream broadcasts through the outbox: a row with `payload` set is a broadcast of that
--    JSON text to the subscriptions streaming `stream`, as Rails' adapters deliver one
--    (`{"identifier":..,"message":<payload>}`), on every process, in commit order, with
--    outbox positions. `POST /_broadcast` writes such rows (account_id 0, event 'broadcast',
--    data '{}'); the routing columns are not read for them.
ALTER TABLE cable_events ADD COLUMN IF NOT EXISTS payload text;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'cable_events_payload_has_stream') THEN
    ALTER TABLE cable_events
      ADD CONSTRAINT cable_events_payload_has_stream CHECK (payload IS NULL OR stream IS NOT NULL) NOT VALID;
  END IF;
END
$$;
