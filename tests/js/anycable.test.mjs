// The unmodified @anycable/core client, with the extended protocol (actioncable-v1-ext-json),
// against real cable-gateway processes behind a proxy the test severs: the client loses its
// connection, events are published while it is away, it reconnects by itself (restoring its
// session by sid and asking for history), and every event must arrive exactly once, in order.
//
// Run from the repository root:   node --test tests/js/
// Environment: as tests/js/actioncable.test.mjs (CABLE_PG_ADMIN_URL required).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import readline from "node:readline";
import { createCable } from "@anycable/core";
import WebSocket from "ws";
import { VERBOSE, createDatabase, eventually, severableProxy, spawnGateway, withTimeout } from "./harness.mjs";

const STEP_TIMEOUT_MS = 10_000;
const TEST_TIMEOUT_MS = 30_000;

const ALICE = { pubsub_token: "demo-user-alice", account_id: 1, user_id: 1 };
const DAVE = { pubsub_token: "demo-contact-dave", account_id: 1 };

describe("@anycable/core (extended protocol) against cable-gateway", { timeout: 180_000 }, () => {
  const adminUrl = process.env.CABLE_PG_ADMIN_URL;
  let db = null;
  const gateways = [];

  before(async () => {
    assert.ok(adminUrl, "CABLE_PG_ADMIN_URL is not set (scripts/test sets it)");
    db = await createDatabase(adminUrl, "cable_anycable");
  });

  after(async () => {
    await Promise.all(gateways.map((gateway) => gateway.kill("SIGTERM")));
    if (db) await db.drop();
  });

  async function gateway(env = {}) {
    const started = await spawnGateway(db.url, env);
    gateways.push(started);
    return started;
  }

  // The tests share a database, and a client's first subscribe asks for history since the
  // client was made (@anycable/core's default): events are tagged with their test, and each
  // test looks at its own only.
  let current = 0;

  /** A gateway behind a proxy, and a client of it that reconnects quickly. */
  async function setup(t, env = {}) {
    current += 1;
    const first = await gateway(env);
    const proxy = await severableProxy(first.port);
    t.after(() => proxy.close());
    const cable = createCable(`ws://127.0.0.1:${proxy.port}/cable`, {
      protocol: "actioncable-v1-ext-json",
      websocketImplementation: WebSocket,
      logLevel: VERBOSE ? "debug" : "error",
      // Reconnect within a fifth of a second instead of the default seconds, to keep the
      // suite short; the client is otherwise as shipped.
      reconnectStrategy: () => 200,
    });
    t.after(() => cable.disconnect());
    return { first, proxy, cable };
  }

  /** Subscribes through the client and records every message and notification it gets. */
  async function subscribe(cable, params) {
    const channel = cable.subscribeTo("RoomChannel", params);
    const seen = { messages: [], info: [], closed: null };
    const waiters = new Set();
    const wake = () => waiters.forEach((waiter) => waiter());
    const mine = current;
    channel.on("message", (message) => {
      if (message.data?.test === mine) seen.messages.push(message);
      wake();
    });
    channel.on("info", (info) => {
      seen.info.push(info.type);
      wake();
    });
    channel.on("close", (error) => {
      seen.closed = error ? String(error.reason || error.message || error) : "closed";
      wake();
    });
    await withTimeout(channel.ensureSubscribed(), STEP_TIMEOUT_MS, "the subscription");
    const until = (check, what) =>
      withTimeout(
        new Promise((resolve) => {
          const attempt = () => {
            if (check(seen)) {
              waiters.delete(attempt);
              resolve(seen);
            }
          };
          waiters.add(attempt);
          attempt();
        }),
        STEP_TIMEOUT_MS,
        `${what}; seen ${JSON.stringify(seen)}`,
      );
    return { channel, seen, until, numbers: () => seen.messages.map((m) => m.data.n) };
  }

  /** Publishes message.created with data {n} in account 1; `columns` sets more of the row. */
  const publish = (n, columns = {}) => {
    const names = ["account_id", "event", "data", ...Object.keys(columns)];
    const values = ["1", "'message.created'", `'{"n": ${n}, "test": ${current}}'`, ...Object.values(columns)];
    return db.sql(`INSERT INTO cable_events (${names.join(", ")}) VALUES (${values.join(", ")})`);
  };
  const forDave = { inbox_id: "1", contact_inbox_ids: "'{1}'" };

  /** Waits until the gateway on `port` has read `n` outbox events (its /metrics). */
  const eventsRead = (port, n) =>
    eventually(
      async () => {
        const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        const line = text.split("\n").find((l) => l.startsWith("cable_events_read_total "));
        return line && Number(line.split(" ")[1]) >= n;
      },
      STEP_TIMEOUT_MS,
      `${n} events read`,
    );

  /** Cuts the client off and keeps it off until `back()`; resolves once it noticed. */
  async function cut(cable, proxy) {
    const disconnected = new Promise((resolve) => cable.once("disconnect", resolve));
    proxy.down = true;
    proxy.sever();
    await withTimeout(disconnected, STEP_TIMEOUT_MS, "the client to notice the cut");
    return {
      back() {
        const connected = new Promise((resolve) => cable.once("connect", resolve));
        proxy.down = false;
        return withTimeout(connected, STEP_TIMEOUT_MS, "the client to reconnect");
      },
    };
  }

  test("1. events published while the connection is cut arrive once, in order, after the reconnect", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { proxy, cable } = await setup(t);
    const alice = await subscribe(cable, ALICE);
    await publish(1);
    await alice.until((s) => s.messages.length === 1, "event 1");
    const away = await cut(cable, proxy);
    await publish(2);
    await publish(3);
    const reconnect = await away.back();
    assert.equal(reconnect.restored, true, "the session is restored by sid");
    await alice.until((s) => s.info.includes("history_received"), "confirm_history");
    await publish(4);
    await alice.until((s) => s.messages.length >= 4, "event 4");
    assert.deepEqual(alice.numbers(), [1, 2, 3, 4]);
  });

  test("2. the reconnect lands on a second gateway process", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { proxy, cable } = await setup(t);
    const second = await gateway();
    const alice = await subscribe(cable, ALICE);
    await publish(1);
    await alice.until((s) => s.messages.length === 1, "event 1");
    const away = await cut(cable, proxy);
    await publish(2);
    proxy.target = second.port;
    const reconnect = await away.back();
    assert.equal(reconnect.restored, true);
    await alice.until((s) => s.info.includes("history_received"), "confirm_history");
    await publish(3);
    await alice.until((s) => s.messages.length >= 3, "event 3");
    assert.deepEqual(alice.numbers(), [1, 2, 3]);
  });

  test("3. the gateway restarts while the client is away", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { first, proxy, cable } = await setup(t);
    const alice = await subscribe(cable, ALICE);
    await publish(1);
    await alice.until((s) => s.messages.length === 1, "event 1");
    const away = await cut(cable, proxy);
    await first.kill("SIGKILL");
    await publish(2);
    await publish(3);
    const restarted = await gateway();
    proxy.target = restarted.port;
    const reconnect = await away.back();
    assert.equal(reconnect.restored, true);
    await alice.until((s) => s.messages.length >= 3, "events 2 and 3");
    await publish(4);
    await alice.until((s) => s.messages.length >= 4, "event 4");
    assert.deepEqual(alice.numbers(), [1, 2, 3, 4]);
  });

  test("4. a transaction that commits out of id order during the gap is not lost", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { proxy, cable } = await setup(t);
    const alice = await subscribe(cable, ALICE);
    await publish(1);
    await alice.until((s) => s.messages.length === 1, "event 1");
    // Event 2 takes its id now and commits later, after event 3 was delivered.
    const late = await openTransaction(
      db.url,
      `INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{"n": 2, "test": ${current}}')`,
    );
    t.after(() => late.abandon());
    await publish(3);
    await alice.until((s) => s.messages.length === 2, "event 3");
    const away = await cut(cable, proxy);
    await late.commit();
    await publish(4);
    await away.back();
    await alice.until((s) => s.messages.length >= 4, "events 2 and 4");
    assert.deepEqual(alice.numbers(), [1, 3, 2, 4]);
  });

  test("5. a token revoked during the gap is not restored; the other subscription is", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { proxy, cable } = await setup(t);
    const alice = await subscribe(cable, ALICE);
    const dave = await subscribe(cable, DAVE);
    const away = await cut(cable, proxy);
    await db.sql(`UPDATE contact_inboxes SET pubsub_token = 'demo-contact-dave-rotated' WHERE id = 1`);
    t.after(() => db.sql(`UPDATE contact_inboxes SET pubsub_token = 'demo-contact-dave' WHERE id = 1`));
    await publish(1, forDave);
    const reconnect = await away.back();
    assert.equal(reconnect.restored, true);
    await dave.until((s) => s.closed !== null, "the revoked subscription to close");
    await alice.until((s) => s.messages.length === 1, "event 1 for the restored one");
    assert.deepEqual(dave.seen.messages, []);
  });

  test("6. a position that cannot be honoured gets reject_history (history_not_found)", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { first, proxy, cable } = await setup(t, { CABLE_HISTORY_MAX_SPAN: "2" });
    const alice = await subscribe(cable, ALICE);
    await publish(1);
    await alice.until((s) => s.messages.length === 1, "event 1");
    const away = await cut(cable, proxy);
    for (const n of [2, 3, 4, 5]) await publish(n);
    await eventsRead(first.port, 5);
    await away.back();
    await alice.until((s) => s.info.includes("history_not_found"), "reject_history");
    await publish(6);
    await alice.until((s) => s.messages.some((m) => m.data.n === 6), "event 6, live");
    assert.deepEqual(alice.numbers(), [1, 6], "nothing replayed, the subscription still live");
  });

  test("7. a contact's replay holds no private note and nothing of another session", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { proxy, cable } = await setup(t);
    const dave = await subscribe(cable, DAVE);
    await publish(1, forDave);
    await dave.until((s) => s.messages.length === 1, "event 1");
    const away = await cut(cable, proxy);
    await publish(2, { ...forDave, private: "true" });
    await publish(3, { inbox_id: "2", contact_inbox_ids: "'{2}'" });
    await publish(4, forDave);
    await away.back();
    await dave.until((s) => s.info.includes("history_received"), "confirm_history");
    await publish(5, forDave);
    await dave.until((s) => s.messages.length >= 3, "event 5");
    assert.deepEqual(dave.numbers(), [1, 4, 5]);
  });

  test("8. an expiring connection token is refreshed by the client; nothing is lost", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    current += 1;
    const secret = "anycable-test-secret";
    const { port } = await gateway({ CABLE_JWT_SECRET: secret });
    const now = () => Math.floor(Date.now() / 1000);
    const refreshed = [];
    const cable = createCable(`ws://127.0.0.1:${port}/cable`, {
      protocol: "actioncable-v1-ext-json",
      websocketImplementation: WebSocket,
      logLevel: VERBOSE ? "debug" : "error",
      reconnectStrategy: () => 200,
      // Alice, for two seconds: the gateway ends the connection with token_expired.
      auth: { token: mintJwt({ user_id: 1, account_id: 1, exp: now() + 2 }, secret) },
      async tokenRefresher(transport) {
        // An event published while the client has no connection.
        await publish(2);
        refreshed.push(now());
        transport.setToken(mintJwt({ user_id: 1, account_id: 1, exp: now() + 3600 }, secret));
      },
    });
    t.after(() => cable.disconnect());
    // No pubsub_token: the subscription acts as the connection's user.
    const alice = await subscribe(cable, {});
    await publish(1);
    await alice.until((s) => s.messages.length === 1, "event 1");
    await eventually(async () => refreshed.length === 1, STEP_TIMEOUT_MS, "the token refresher to run");
    await alice.until((s) => s.messages.length >= 2, "event 2, replayed after the refresh");
    await publish(3);
    await alice.until((s) => s.messages.length >= 3, "event 3");
    assert.deepEqual(alice.numbers(), [1, 2, 3]);
  });
});

/** An HS256 JWT of `claims` (what a backend mints for the client). */
function mintJwt(claims, secret) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  const signature = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

/** A psql session holding a transaction open: `commit()` ends it. */
async function openTransaction(url, statement) {
  const child = spawn("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", `--dbname=${url}`], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  const lines = [];
  const waiters = new Set();
  readline.createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(line.trim());
    waiters.forEach((waiter) => waiter());
  });
  const marker = (name) =>
    withTimeout(
      new Promise((resolve) => {
        const attempt = () => lines.includes(name) && (waiters.delete(attempt), resolve());
        waiters.add(attempt);
        attempt();
      }),
      STEP_TIMEOUT_MS,
      `psql to say ${name}`,
    );
  child.stdin.write(`BEGIN;\n${statement};\n\\echo inserted\n`);
  await marker("inserted");
  return {
    async commit() {
      child.stdin.write("COMMIT;\n\\echo committed\n");
      await marker("committed");
      child.stdin.end();
    },
    abandon() {
      child.kill("SIGKILL");
    },
  };
}
