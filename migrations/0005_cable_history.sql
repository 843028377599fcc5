-- Reliable streams (CONTRACT §8): the outbox as history, and sessions a client can restore.
--
-- cable_rounds: the outbox's commit-order log, shared by every gateway process. A round says
-- "the rows that became visible between snapshot `prev_snapshot` and snapshot `snapshot`";
-- its rows, ordered by id, hold the offsets first_offset .. first_offset + count - 1. Rounds
-- are appended one at a time under an advisory lock, each snapshot taken after the previous
-- round committed, so they never overlap and leave nothing out, whatever order transactions
-- commit in (see src/ingress/outbox.rs). A position (epoch, offset) therefore means the same
-- on every process and across restarts.

CREATE TABLE IF NOT EXISTS cable_rounds (
  round          bigint PRIMARY KEY,
  prev_snapshot  pg_snapshot NOT NULL,
  snapshot       pg_snapshot NOT NULL,
  first_offset   bigint NOT NULL,
  count          integer NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS cable_rounds_first_offset_idx ON cable_rounds (first_offset);
CREATE INDEX IF NOT EXISTS cable_rounds_created_at_idx ON cable_rounds (created_at);

-- The first round: empty, it only fixes where the log starts.
INSERT INTO cable_rounds (round, prev_snapshot, snapshot, first_offset, count)
SELECT 0, pg_current_snapshot(), pg_current_snapshot(), 1, 0
 WHERE NOT EXISTS (SELECT 1 FROM cable_rounds);

-- The epoch of outbox positions: drawn once per database. It changes only if the history
-- itself is lost (this table recreated), and positions of another epoch are refused.
CREATE TABLE IF NOT EXISTS cable_epoch (
  epoch  text NOT NULL
);

INSERT INTO cable_epoch (epoch)
SELECT substr(md5(random()::text || clock_timestamp()::text), 1, 8)
 WHERE NOT EXISTS (SELECT 1 FROM cable_epoch);

-- Sessions of the extended protocol, restorable by `sid` on any process until `expires_at`.
-- While its connection lives a row is refreshed; `taken` marks one restored (it is never
-- restored twice, and the process that still holds its old socket closes it).
CREATE TABLE IF NOT EXISTS cable_sessions (
  sid            text PRIMARY KEY,
  subscriptions  jsonb NOT NULL,
  expires_at     timestamptz NOT NULL,
  taken          boolean NOT NULL DEFAULT false
);

CREATE INDEX IF NOT EXISTS cable_sessions_expires_at_idx ON cable_sessions (expires_at);
