-- Refuse at insert what the outbox reader would only skip later: `data` that is not a JSON
-- object, and an empty event name. The reader keeps its own guard (and skips and counts such
-- rows), for rows inserted before these constraints: NOT VALID leaves existing rows alone,
-- so this migration cannot fail on a table that already holds some.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'cable_events_data_is_object') THEN
    ALTER TABLE cable_events
      ADD CONSTRAINT cable_events_data_is_object CHECK (jsonb_typeof(data) = 'object') NOT VALID;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'cable_events_event_not_empty') THEN
    ALTER TABLE cable_events
      ADD CONSTRAINT cable_events_event_not_empty CHECK (event <> '') NOT VALID;
  END IF;
END
$$;
