// The soak's verdicts on delivery: what each client got, against the database's truth (every
// outbox row with its offset) and the publishers' log. Each returns {name, ok, detail}.

import { entitled } from "./world.mjs";

/** How long after a publication a connected client must have received it. */
export const GRACE_MS = 10_000;

const key = (src, seq) => `${src}#${seq}`;

/** Indexes the truth: outbox rows by offset and by publication, broadcasts from the log. */
export function truth(rows, log) {
  const byPublication = new Map();
  for (const row of rows) {
    const data = row.payload !== null ? JSON.parse(row.payload).data : row.data;
    if (data?.src) byPublication.set(key(data.src, data.seq), row);
  }
  // Rails' adapters leave no row: their publications are what the broadcaster sent, in the
  // shape of a broadcast row.
  // A publication its broadcaster saw fail (Redis or PostgreSQL restarting under it) may
  // still have gone out: receiving it is allowed (to whom its stream entitles), missing it too.
  const maybe = new Map();
  for (const p of log) {
    if (p.src === "pg" || p.src === "redis") {
      (p.ok ? byPublication : maybe).set(key(p.src, p.seq), { payload: JSON.stringify(p.payload), stream: p.stream });
    }
  }
  return { rows, byPublication, maybe };
}

function verdict(name, problems, detail) {
  return { name, ok: problems.length === 0, detail: problems.length ? problems.slice(0, 5).join("; ") : detail };
}

/** Every ext client got every outbox row it is entitled to exactly once, in offset order. */
export function extExactlyOnce(clients, known) {
  const problems = [];
  let checked = 0;
  for (const client of clients.filter((c) => c.kind === "ext")) {
    const expected = known.rows.filter((row) => entitled(client.principal, row)).map((row) => Number(row.off));
    const got = client.received
      .filter((r) => r.meta?.stream?.startsWith("cable_events/"))
      .map((r) => Number(r.meta.offset));
    checked += got.length;
    if (expected.length !== got.length || expected.some((off, i) => off !== got[i])) {
      const have = new Set(got);
      const missing = expected.filter((off) => !have.has(off));
      const dup = got.filter((off, i) => got.indexOf(off) !== i);
      const disorder = got.findIndex((off, i) => i > 0 && off <= got[i - 1]);
      problems.push(
        `${client.principal.token}: expected ${expected.length}, got ${got.length}` +
          ` (missing ${JSON.stringify(missing.slice(0, 5))}, duplicates ${JSON.stringify(dup.slice(0, 5))}` +
          `, first out of order at ${disorder})`,
      );
    }
  }
  return verdict("ext clients: every entitled outbox event exactly once, in order", problems, `${checked} deliveries`);
}

/** No client got anything twice, nor out of order (per publisher, and per stream for Rails' adapters). */
export function noDuplicateInOrder(clients) {
  const problems = [];
  let checked = 0;
  for (const client of clients) {
    const seen = new Set();
    const last = new Map();
    for (const { message } of client.received) {
      const data = message?.data;
      if (!data?.src) continue;
      checked += 1;
      const id = key(data.src, data.seq);
      if (seen.has(id)) problems.push(`${client.kind} ${client.principal.token}: ${id} twice`);
      seen.add(id);
      const lane = data.src === "pg" || data.src === "redis" ? `${data.src}/${data.s}` : data.src;
      if ((last.get(lane) ?? 0) >= data.seq) problems.push(`${client.kind} ${client.principal.token}: ${id} after ${last.get(lane)}`);
      last.set(lane, data.seq);
    }
  }
  return verdict("every client: no duplicate, nothing out of order", problems, `${checked} messages`);
}

/** Nothing a client received is outside what it is entitled to (contacts: no private event, no other session's). */
export function nothingUnentitled(clients, known) {
  const problems = [];
  let checked = 0;
  for (const client of clients) {
    for (const { message } of client.received) {
      const data = message?.data;
      if (!data?.src) {
        problems.push(`${client.kind} ${client.principal.token}: an unknown message ${JSON.stringify(message).slice(0, 120)}`);
        continue;
      }
      checked += 1;
      const entry = known.byPublication.get(key(data.src, data.seq)) ?? known.maybe.get(key(data.src, data.seq));
      if (!entry || !entitled(client.principal, entry)) {
        problems.push(`${client.kind} ${client.principal.token}: not entitled to ${key(data.src, data.seq)} ${JSON.stringify(data)}`);
      }
    }
  }
  return verdict("no contact got a private event or another session's, no user another account's", problems, `${checked} messages`);
}

/**
 * Plain clients missed nothing published while they were connected: a publication whose
 * send began after the subscription's confirm, and that was acknowledged at least
 * GRACE_MS before the subscription was lost, must have arrived. Rails' adapters lose what is
 * sent while their connection is down (as Rails does): their publications during a restart
 * of PostgreSQL (pg) or Redis (redis), until every gateway is ready again, are not counted.
 */
export function plainMissedNothing(clients, known, log, faults) {
  const outage = { pg: faults.filter((f) => f.kind === "postgres"), redis: faults.filter((f) => f.kind === "redis") };
  const problems = [];
  let checked = 0;
  for (const client of clients.filter((c) => c.kind !== "ext")) {
    const got = new Set(client.received.map(({ message }) => message?.data && key(message.data.src, message.data.seq)));
    for (const p of log) {
      if (!p.ok) continue;
      const entry = known.byPublication.get(key(p.src, p.seq));
      if (!entry) {
        if (p.src !== "pg" && p.src !== "redis") problems.push(`${key(p.src, p.seq)} was accepted but is not in the outbox`);
        continue;
      }
      if (!entitled(client.principal, entry)) continue;
      if (!client.intervals.some(([from, to]) => from <= p.t0 && to >= p.t1 + GRACE_MS)) continue;
      if ((outage[p.src] ?? []).some((f) => p.t1 >= f.start - 1000 && p.t0 <= f.recovered + 1000)) continue;
      checked += 1;
      if (!got.has(key(p.src, p.seq))) problems.push(`${client.kind} ${client.principal.token}: missed ${key(p.src, p.seq)} while connected`);
    }
  }
  return verdict("plain clients: nothing missed while connected", problems, `${checked} publications checked`);
}
