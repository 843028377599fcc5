// The topic WebSocket (docs/reference.md §12) with the clients its users write: Node's `ws`
// here, Python's websocket-client (WebSocketApp) in tests/python/topics_client.py, which this
// file runs against gateways it starts. Both go through every permission case, wildcards in
// both positions, resource and id filters, one copy for overlapping topics, order under 50
// events, unsubscribe, bad input, limits, two processes, revocation (4001) and shutdown (1012).
//
// Run from the repository root:   node --test tests/js/
// Environment: CABLE_PG_ADMIN_URL (required), CABLE_GATEWAY_BIN.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import WebSocket from "ws";
import { REPO, createDatabase, spawnGateway, withTimeout } from "./harness.mjs";

const WAIT_MS = 10_000;
/** Python with websocket-client on its path (scripts/test puts a current one on PYTHONPATH). */
const PYTHON = "python3";
const MAX_TOPICS = "5";

/** One `ws` connection; its frames in order, awaitable. */
class Feed {
  static async open(port, token) {
    const feed = new Feed(new WebSocket(`ws://127.0.0.1:${port}/ws?token=${token}`));
    await withTimeout(
      new Promise((resolve, reject) => feed.ws.once("open", resolve).once("error", reject)),
      WAIT_MS,
      `connect as ${token}`,
    );
    return feed;
  }

  /** The HTTP status that refuses the upgrade for `token`. */
  static refused(port, token) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${token}`);
        ws.on("error", () => {}); // the refusal, reported below
        ws.once("unexpected-response", (_request, response) => {
          resolve(response.statusCode);
          ws.terminate();
        });
        ws.once("open", () => reject(new Error(`token ${token} accepted`)));
      }),
      WAIT_MS,
      `refusal of ${token}`,
    );
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => ws.once("close", (code) => resolve(code)));
    ws.on("message", (data) => {
      this.frames.push(JSON.parse(data.toString()));
      this.waiters.splice(0).forEach((wake) => wake());
    });
  }

  send(value) {
    this.ws.send(typeof value === "string" ? value : JSON.stringify(value));
  }

  next() {
    return withTimeout(
      new Promise((resolve) => {
        const attempt = () => (this.frames.length ? resolve(this.frames.shift()) : this.waiters.push(attempt));
        attempt();
      }),
      WAIT_MS,
      "a frame",
    );
  }

  /** The next event, presence snapshots skipped. */
  async event() {
    for (;;) {
      const frame = await this.next();
      assert.equal(frame.type, undefined, `expected an event, got ${JSON.stringify(frame)}`);
      if (frame.event_type !== "presence.update") return frame;
    }
  }

  async subscribe(topics) {
    this.send({ type: "subscribe", topics });
    return this.next();
  }

  async subscribeOk(topics) {
    assert.deepEqual(await this.subscribe(topics), { type: "subscribed", topics });
  }

  async error() {
    const frame = await this.next();
    assert.equal(frame.type, "error", JSON.stringify(frame));
    return [frame.code, frame.topic];
  }

  close() {
    this.ws.terminate();
  }
}

describe("the topic WebSocket with Node's ws", { timeout: 120_000 }, () => {
  let db = null;
  let gateway = null;
  let second = null;
  const publish = (account, event, data, inbox = "NULL") =>
    db.sql(`INSERT INTO cable_events (account_id, event, data, inbox_id) VALUES (${account}, '${event}', '${JSON.stringify(data)}', ${inbox})`);

  before(async () => {
    db = await createDatabase(process.env.CABLE_PG_ADMIN_URL, "cable_topics_node");
    gateway = await spawnGateway(db.url, { CABLE_MAX_TOPICS: MAX_TOPICS });
    second = await spawnGateway(db.url, { CABLE_MAX_TOPICS: MAX_TOPICS });
  });

  after(async () => {
    await gateway?.kill("SIGTERM");
    await second?.kill("SIGTERM");
    await db?.drop();
  });

  test("a token naming no user is refused with 401 before the upgrade", async () => {
    for (const token of ["", "nope", "demo-contact-dave"]) {
      assert.equal(await Feed.refused(gateway.port, token), 401, token);
    }
  });

  test("every permission case", async () => {
    const alice = await Feed.open(gateway.port, "demo-user-alice");
    assert.deepEqual(await alice.subscribe(["account_id:1:*:*", "account_id:2:*:*", "user_id:2:*:*"]), {
      type: "subscribed",
      topics: ["account_id:1:*:*"],
    });
    assert.deepEqual(await alice.error(), ["permission_denied", "account_id:2:*:*"]);
    assert.deepEqual(await alice.error(), ["permission_denied", "user_id:2:*:*"]);
    const bob = await Feed.open(gateway.port, "demo-user-bob");
    assert.deepEqual(await bob.subscribe(["account_id:1:*:*", "user_id:2:*:*"]), { type: "subscribed", topics: ["user_id:2:*:*"] });
    assert.deepEqual(await bob.error(), ["permission_denied", "account_id:1:*:*"]);
    const frank = await Feed.open(gateway.port, "demo-user-frank");
    await frank.subscribeOk(["account_id:2:*:*"]);
    await publish(1, "conversation.created", { id: 1 });
    await publish(2, "conversation.created", { id: 2 });
    assert.equal((await alice.event()).topic, "account_id:1:conversation:1");
    assert.equal((await bob.event()).topic, "user_id:2:conversation:1");
    assert.equal((await frank.event()).topic, "account_id:2:conversation:2");
    [alice, bob, frank].forEach((feed) => feed.close());
  });

  test("wildcards in both positions, filters by resource and id, one copy", async () => {
    const byResource = await Feed.open(gateway.port, "demo-user-alice");
    await byResource.subscribeOk(["account_id:1:message:*"]);
    const byId = await Feed.open(gateway.port, "demo-user-alice");
    await byId.subscribeOk(["account_id:1:*:11"]);
    const overlapping = await Feed.open(gateway.port, "demo-user-alice");
    await overlapping.subscribeOk(["account_id:1:*:*", "account_id:1:message:*", "account_id:1:*:11", "user_id:1:message:11"]);
    await publish(1, "conversation.updated", { id: 11 });
    await publish(1, "message.created", { id: 11 });
    await publish(1, "message.created", { id: 12 });
    assert.deepEqual([(await byResource.event()).topic, (await byResource.event()).topic], ["account_id:1:message:11", "account_id:1:message:12"]);
    assert.deepEqual([(await byId.event()).topic, (await byId.event()).topic], ["account_id:1:conversation:11", "account_id:1:message:11"]);
    const topics = [];
    for (let n = 0; n < 3; n++) topics.push((await overlapping.event()).topic);
    assert.deepEqual(topics, ["account_id:1:conversation:11", "user_id:1:message:11", "account_id:1:message:12"]);
    [byResource, byId, overlapping].forEach((feed) => feed.close());
  });

  test("50 events in commit order, across two processes", async () => {
    const feeds = [await Feed.open(gateway.port, "demo-user-bob"), await Feed.open(second.port, "demo-user-bob")];
    for (const feed of feeds) await feed.subscribeOk(["user_id:2:message:*"]);
    await db.sql("INSERT INTO cable_events (account_id, event, data, inbox_id) SELECT 1, 'message.created', jsonb_build_object('id', 100 + n), 1 FROM generate_series(1, 50) n");
    for (const feed of feeds) {
      const ids = [];
      for (let n = 0; n < 50; n++) ids.push((await feed.event()).data.id);
      assert.deepEqual(ids, Array.from({ length: 50 }, (_, n) => 101 + n));
      feed.close();
    }
  });

  test("unsubscribe, bad input and the topic limit", async () => {
    const alice = await Feed.open(gateway.port, "demo-user-alice");
    await alice.subscribeOk(["account_id:1:message:*", "account_id:1:contact:*"]);
    alice.send({ type: "unsubscribe", topics: ["account_id:1:message:*"] });
    assert.deepEqual(await alice.next(), { type: "unsubscribed", topics: ["account_id:1:message:*"] });
    for (const bad of ["not json", JSON.stringify({ type: "listen" }), JSON.stringify({ type: "subscribe", topics: "x" })]) {
      alice.send(bad);
      assert.equal((await alice.error())[0], "bad_request", bad);
    }
    assert.deepEqual(await alice.subscribe(["account_id:1:message"]), { type: "subscribed", topics: [] });
    assert.deepEqual(await alice.error(), ["bad_topic", "account_id:1:message"]);
    const more = ["a", "b", "c", "d", "e"].map((r) => `account_id:1:${r}:*`);
    assert.deepEqual(await alice.subscribe(more), { type: "subscribed", topics: more.slice(0, 4) });
    assert.deepEqual(await alice.error(), ["limit_exceeded", more[4]]);
    await publish(1, "message.created", { id: 200 });
    await publish(1, "contact.updated", { id: 201 });
    assert.equal((await alice.event()).topic, "account_id:1:contact:201");
    alice.send("x".repeat(70_000));
    assert.equal(await withTimeout(alice.closed, WAIT_MS, "close"), 1008);
  });

  test("a revoked token closes with 4001 on either process", async () => {
    await db.sql("INSERT INTO users (id, name, email, pubsub_token) VALUES (91, 'Nia', 'nia@example.com', 'node-nia')");
    await db.sql("INSERT INTO account_users (account_id, user_id, role) VALUES (1, 91, 0)");
    const feeds = [await Feed.open(gateway.port, "node-nia"), await Feed.open(second.port, "node-nia")];
    for (const feed of feeds) await feed.subscribeOk(["user_id:91:*:*"]);
    await db.sql("DELETE FROM account_users WHERE user_id = 91");
    for (const feed of feeds) assert.equal(await withTimeout(feed.closed, 5_000, "close on revocation"), 4001);
  });

  test("shutdown closes with 1012", async () => {
    const doomed = await spawnGateway(db.url);
    const alice = await Feed.open(doomed.port, "demo-user-alice");
    await alice.subscribeOk(["user_id:1:*:*"]);
    await doomed.kill("SIGTERM");
    assert.equal(await withTimeout(alice.closed, WAIT_MS, "close on shutdown"), 1012);
  });
});

describe("the topic WebSocket with Python's websocket-client", { timeout: 180_000 }, () => {
  test("tests/python/topics_client.py passes every scenario", async () => {
    const db = await createDatabase(process.env.CABLE_PG_ADMIN_URL, "cable_topics_py");
    const gateways = [];
    try {
      for (const env of [{ CABLE_MAX_TOPICS: MAX_TOPICS }, { CABLE_MAX_TOPICS: MAX_TOPICS }, {}]) {
        gateways.push(await spawnGateway(db.url, env));
      }
      const [main, other, doomed] = gateways;
      const child = spawn(PYTHON, ["-u", path.join(REPO, "tests/python/topics_client.py")], {
        env: {
          ...process.env,
          TOPICS_URL: `ws://127.0.0.1:${main.port}/ws`,
          TOPICS_URL_2: `ws://127.0.0.1:${other.port}/ws`,
          DOOMED_URL: `ws://127.0.0.1:${doomed.port}/ws`,
          DOOMED_PID: String(doomed.pid),
          DATABASE_URL: db.url,
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      child.stdout.on("data", (chunk) => (out += chunk));
      child.stderr.on("data", (chunk) => (out += chunk));
      const code = await withTimeout(new Promise((resolve) => child.once("exit", resolve)), 150_000, `the Python client; printed ${out}`);
      assert.equal(code, 0, out);
      assert.match(out, /all scenarios passed/);
    } finally {
      for (const gateway of gateways) await gateway.kill("SIGKILL");
      await db.drop();
    }
  });
});
