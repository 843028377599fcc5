// The soak (issue 26): three gateway processes behind a load balancer, a private PostgreSQL and
// redis-server, hundreds of clients of three kinds, publishers on every ingress, and faults
// injected from a seeded schedule. At the end it checks what the README promises and prints
// the seed, the schedule and one line per invariant; it exits 1 on any violation.
//
//   node tests/js/soak/main.mjs [--seconds N] [--seed S] [--clients N] [--out FILE]
//
// scripts/soak runs it with everything it needs (it owns the PostgreSQL cluster it restarts).

import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { createDatabase } from "../harness.mjs";
import { Balancer, Gateway, Redis, freePort, restartPostgres } from "./cluster.mjs";
import { connectFleet, pendingAtReset, waitFor } from "./clients.mjs";
import { extExactlyOnce, noDuplicateInOrder, nothingUnentitled, plainMissedNothing, truth } from "./check.mjs";
import { startPublishers } from "./publishers.mjs";
import { makeWorld, rng, worldSql } from "./world.mjs";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "90" },
    seed: { type: "string" },
    clients: { type: "string", default: "510" },
    out: { type: "string" },
    logs: { type: "string" },
  },
});
const seed = Number(args.seed ?? Math.floor(Math.random() * 2 ** 31));
const SECONDS = Number(args.seconds);
const CLIENTS = Number(args.clients);
const TTL_S = 6;
const KEY = "soak-broadcast-key";
const PREFIX = "soak_test_action_cable";
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const say = (line) => process.stdout.write(`${line}\n`);

const KINDS = ["kill", "term", "postgres", "redis", "cut", "stop"];

/** The fault schedule, drawn from the seed: every kind once per six, 3–6 s apart. */
function schedule(random, seconds) {
  const faults = [];
  let at = 0;
  let bag = [];
  for (;;) {
    at += random.int(3000, 6000);
    if (at > seconds * 1000) return faults;
    if (bag.length === 0) bag = random.shuffle(KINDS);
    faults.push({ at, kind: bag.pop(), slot: random.int(0, 2) });
  }
}

/** Offsets of every outbox row, as every process computes them from the rounds. */
const TRUTH = `
SELECT r.first_offset - 1 + row_number() OVER (PARTITION BY r.round ORDER BY e.id) AS off,
       e.id, e.account_id, e.event, e.data, e.inbox_id, e.contact_inbox_ids, e.user_id, e.private,
       e.stream, e.payload
  FROM cable_rounds r CROSS JOIN LATERAL (
    SELECT e.* FROM cable_events e
     WHERE e.xid >= pg_snapshot_xmax(r.prev_snapshot) AND e.xid < pg_snapshot_xmax(r.snapshot)
       AND pg_visible_in_snapshot(e.xid, r.snapshot)
    UNION ALL
    SELECT e.* FROM cable_events e
     WHERE e.xid = ANY(ARRAY(SELECT pg_snapshot_xip(r.prev_snapshot)))
       AND pg_visible_in_snapshot(e.xid, r.snapshot)) e
 ORDER BY 1`;

async function query(url, sql) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Runs one fault; returns what happened. */
async function inject(fault, { gateways, balancer, redis }) {
  const gateway = gateways[fault.slot];
  switch (fault.kind) {
    case "kill":
      await gateway.stop("SIGKILL");
      await sleep(1000);
      await gateway.start();
      return `SIGKILL gateway ${fault.slot}, restarted`;
    case "term": {
      const { ms, code } = await gateway.stop("SIGTERM");
      fault.termMs = ms;
      fault.termCode = code;
      await gateway.start();
      return `SIGTERM gateway ${fault.slot} (exited ${code} after ${ms} ms), restarted`;
    }
    case "postgres":
      await restartPostgres();
      return "PostgreSQL restarted";
    case "redis":
      await redis.restart();
      return "redis-server restarted";
    case "cut":
      return `cut ${balancer.cut(0.3)} client connections`;
    case "stop":
      gateway.signal("SIGSTOP");
      await sleep((TTL_S + 2) * 1000);
      gateway.signal("SIGCONT");
      return `SIGSTOP gateway ${fault.slot} for ${TTL_S + 2} s`;
    default:
      throw new Error(fault.kind);
  }
}

/** Who is online in cable_presence now, as "account/kind/id". */
async function onlineInDb(url) {
  const rows = await query(url, `SELECT account_id, kind, principal_id FROM cable_presence
                                  WHERE seen_at > now() - interval '${TTL_S} seconds'`);
  return new Set(rows.map((r) => `${r.account_id}/${r.kind}/${r.principal_id}`));
}

function onlineByClients(clients) {
  return new Set(
    clients.filter((c) => c.confirmed && !c.closed).map((c) => `${c.principal.account}/${c.principal.kind === "user" ? "u" : "c"}/${c.principal.id}`),
  );
}

const sameSet = (a, b) => a.size === b.size && [...a].every((x) => b.has(x));
const diff = (a, b) => [...a].filter((x) => !b.has(x)).slice(0, 5);

async function presenceSettles(databaseUrl, clients) {
  // Whoever is connected is online; whoever left is gone within the TTL.
  const waitSettled = async () => {
    const deadline = Date.now() + (TTL_S + 4) * 1000;
    let db = await onlineInDb(databaseUrl);
    while (!sameSet(db, onlineByClients(clients)) && Date.now() < deadline) {
      await sleep(250);
      db = await onlineInDb(databaseUrl);
    }
    return db;
  };
  let db = await waitSettled();
  const truthBefore = onlineByClients(clients);
  const problems = [];
  if (!sameSet(db, truthBefore)) problems.push(`after the faults: not online ${diff(truthBefore, db)}, online but gone ${diff(db, truthBefore)}`);
  // Every tenth client leaves for good.
  const leaving = clients.filter((_, i) => i % 10 === 0);
  const leftAt = Date.now();
  for (const client of leaving) {
    client.closed = true;
    client.close();
  }
  db = await waitSettled();
  const truthAfter = onlineByClients(clients);
  if (!sameSet(db, truthAfter)) problems.push(`after ${leaving.length} left: not online ${diff(truthAfter, db)}, online but gone ${diff(db, truthAfter)}`);
  const settledMs = Date.now() - leftAt;
  return {
    name: "presence settled to the truth within the TTL",
    ok: problems.length === 0 && settledMs <= (TTL_S + 4) * 1000,
    detail: problems.length ? problems.join("; ") : `${truthAfter.size} online; ${leaving.length} left, gone after ${settledMs} ms (TTL ${TTL_S} s + sweep)`,
  };
}

async function main() {
  const adminUrl = process.env.CABLE_PG_ADMIN_URL;
  if (!adminUrl) throw new Error("CABLE_PG_ADMIN_URL is not set: run scripts/soak");
  const random = { schedule: rng(seed), traffic: rng(seed + 1), clients: rng(seed + 2), balancer: rng(seed + 3) };
  const plan = schedule(random.schedule, SECONDS);
  say(`soak: seed ${seed}, ${SECONDS} s of faults, ${CLIENTS} clients, 3 gateways`);
  say(`schedule: ${plan.map((f) => `${(f.at / 1000).toFixed(1)}s ${f.kind}${["kill", "term", "stop"].includes(f.kind) ? ` gw${f.slot}` : ""}`).join(", ")}`);

  const world = makeWorld();
  const db = await createDatabase(adminUrl, "cable_soak");
  await db.sql(worldSql(world));
  const redis = await new Redis(await freePort()).start();
  const redisUrl = `redis://127.0.0.1:${redis.port}`;
  const env = {
    DATABASE_URL: db.url,
    CABLE_REDIS_URL: redisUrl,
    CABLE_RAILS_CHANNEL_PREFIX: PREFIX,
    CABLE_BROADCAST_KEY: KEY,
    CABLE_PRESENCE_TTL: `${TTL_S}s`,
  };
  const gateways = [0, 1, 2].map((slot) => new Gateway(slot, env));
  await Promise.all(gateways.map((gateway) => gateway.start()));
  const balancer = await new Balancer(gateways, random.balancer).start();
  const started = Date.now();
  const clients = await connectFleet(world, `ws://127.0.0.1:${balancer.port}/cable`, CLIENTS, random.clients);
  say(`fleet: ${clients.length} clients confirmed in ${Date.now() - started} ms`);
  const publishers = startPublishers({ databaseUrl: db.url, redisUrl, prefix: PREFIX, balancerPort: balancer.port, key: KEY, world, random: random.traffic });
  await sleep(8000);
  const rssBefore = gateways.map((gateway) => gateway.rssKb());

  const faults = [];
  const faultsFrom = Date.now();
  for (const fault of plan) {
    await sleep(Math.max(0, faultsFrom + fault.at - Date.now()));
    fault.start = Date.now();
    fault.what = await inject(fault, { gateways, balancer, redis });
    fault.end = Date.now();
    await waitFor(() => balancer.allHealthy(), 60_000, `every gateway ready after ${fault.what}`);
    fault.recovered = Date.now();
    faults.push(fault);
    say(`fault @${((fault.start - faultsFrom) / 1000).toFixed(1)}s: ${fault.what}; all ready after ${fault.recovered - fault.start} ms`);
  }

  // Settle: traffic goes on without faults, then stops; everyone catches up.
  await sleep(GRACE_SETTLE_MS);
  const log = await publishers.stop();
  const total = Number((await query(db.url, "SELECT count(*) AS n FROM cable_events"))[0].n);
  let rows = [];
  const back = await waitFor(() => clients.every((c) => c.confirmed), 60_000, "every client subscribed again").then(
    () => ({ name: "every client subscribed again after the faults", ok: true, detail: `${clients.length} clients` }),
    () => {
      const stuck = clients.filter((c) => !c.confirmed);
      return {
        name: "every client subscribed again after the faults",
        ok: false,
        detail: `${stuck.length} did not within 60 s: ` +
          stuck.slice(0, 5).map((c) => `${c.kind} ${c.principal.token} (${c.state()})`).join("; "),
      };
    },
  );
  const deadline = Date.now() + 60_000;
  for (;;) {
    rows = await query(db.url, TRUTH);
    const known = truth(rows, log);
    const caughtUp = rows.length === total && extExactlyOnce(clients, known).ok;
    if (caughtUp || Date.now() > deadline) break;
    await sleep(500);
  }
  const known = truth(rows, log);
  const rssAfter = gateways.map((gateway) => gateway.rssKb());
  const verdicts = [
    back,
    extExactlyOnce(clients, known),
    noDuplicateInOrder(clients),
    nothingUnentitled(clients, known),
    plainMissedNothing(clients, known, log, faults),
  ];
  verdicts.push(await presenceSettles(db.url, clients));
  const panics = gateways.flatMap((g) => g.logs.filter((l) => /panicked at/.test(l.text)).map((l) => `gw${g.slot} pid ${l.pid}`));
  verdicts.push({ name: "no panic in any gateway log", ok: panics.length === 0, detail: panics.length ? panics.join(", ") : `${gateways.reduce((n, g) => n + g.logs.length, 0)} processes` });
  const terms = faults.filter((f) => f.kind === "term");
  verdicts.push({
    name: "SIGTERM: exit 0 within 10 s",
    ok: terms.every((f) => f.termCode === 0 && f.termMs <= 10_000),
    detail: terms.map((f) => `${f.termMs} ms, exit ${f.termCode}`).join("; ") || "none scheduled",
  });
  const rss = gateways.map((g, i) => `gw${i} ${rssBefore[i]} → ${rssAfter[i]} KB`);
  verdicts.push({
    name: "every process's RSS within 10% of its level before the faults",
    ok: gateways.every((_, i) => rssAfter[i] !== null && rssAfter[i] <= rssBefore[i] * 1.1),
    detail: rss.join(", "),
  });

  const counts = {};
  for (const p of log) counts[p.src] = (counts[p.src] ?? 0) + (p.ok ? 1 : 0);
  say(`published: ${Object.entries(counts).map(([src, n]) => `${src} ${n}`).join(", ")}; outbox rows ${rows.length}`);
  say(`clients: ${clients.filter((c) => c.kind === "ext").length} ext, ${clients.filter((c) => c.kind === "plain").length} plain, ${clients.filter((c) => c.kind === "contact").length} contact; ${clients.reduce((n, c) => n + c.received.length, 0)} messages; ${clients.reduce((n, c) => n + c.subscribes, 0)} confirms`);
  say(`@anycable/core's reset bug (mended in the soak's clients): ${pendingAtReset()} subscribes were pending when a connection dropped; each would have closed its channel for good`);
  for (const v of verdicts) say(`invariant ${v.ok ? "ok  " : "FAIL"} ${v.name}: ${v.detail}`);
  const ok = verdicts.every((v) => v.ok);
  const logs = args.logs ?? mkdtempSync(path.join(tmpdir(), "cable-soak-"));
  mkdirSync(logs, { recursive: true });
  for (const gateway of gateways) {
    for (const log of gateway.logs) writeFileSync(path.join(logs, `gw${gateway.slot}-${log.pid}.log`), log.text);
  }
  // The transcript of every ext client that missed something, got something twice or out of
  // order (of any stream).
  for (const client of clients.filter((c) => c.kind === "ext")) {
    const failed = [extExactlyOnce([client], known), noDuplicateInOrder([client])].filter((v) => !v.ok);
    if (failed.length === 0) continue;
    const why = failed.map((v) => v.detail).join("\n");
    writeFileSync(path.join(logs, `ext-${client.principal.token}.log`), `${why}\n${client.transcriptText()}`);
  }
  writeFileSync(path.join(logs, "balancer.log"), balancer.routes.join("\n") + "\n");
  say(`gateway logs: ${logs}`);
  say(`soak ${ok ? "passed" : "FAILED"} (seed ${seed})`);
  if (args.out) {
    writeFileSync(
      args.out,
      JSON.stringify(
        {
          seed,
          seconds: SECONDS,
          clients: CLIENTS,
          schedule: plan,
          faults: faults.map(({ kind, slot, what, start, recovered }) => ({ kind, slot, what, at_ms: start - faultsFrom, recovered_ms: recovered - start })),
          published: counts,
          outbox_rows: rows.length,
          verdicts,
          ok,
        },
        null,
        2,
      ),
    );
  }

  for (const client of clients) if (!client.closed) client.close();
  await balancer.close();
  await Promise.all(gateways.map((gateway) => gateway.child && gateway.stop("SIGTERM")));
  redis.stop();
  await db.drop();
  return ok;
}

const GRACE_SETTLE_MS = 10_000;

// Interrupted (Ctrl-C, or scripts/bench's time limit): exit through the exit hooks, which kill
// every gateway and helper.
for (const signal of ["SIGINT", "SIGTERM"]) process.once(signal, () => process.exit(130));

main().then(
  (ok) => process.exit(ok ? 0 : 1),
  (error) => {
    say(`soak error (seed ${seed}): ${error.stack ?? error}`);
    process.exit(2);
  },
);
