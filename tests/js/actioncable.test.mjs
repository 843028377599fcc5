// The official browser client, @rails/actioncable, against a real cable-gateway.
//
// Run from the repository root:   node --test tests/js/
//
// Environment:
//   CABLE_PG_ADMIN_URL  (required) superuser URL of a throwaway PostgreSQL cluster,
//                       e.g. postgres://postgres@127.0.0.1:54321/postgres
//   CABLE_GATEWAY_BIN   gateway binary (default: target/debug/cable-gateway of this repository)
//   CABLE_JS_VERBOSE=1  forward the gateway's stderr and the ActionCable client's log to stderr
//
// The suite creates its own database, migrates it with `cable-gateway migrate`, loads
// fixtures/demo.sql, starts `cable-gateway serve --listen 127.0.0.1:0`, takes the port from
// the gateway's one stdout line, and drops the database at the end.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createRequire } from "node:module";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import WebSocket from "ws";
import { FIXTURES, GATEWAY_BIN, REPO, VERBOSE, psql, run, withTimeout } from "./harness.mjs";


// ---------------------------------------------------------------------------------------------
// @rails/actioncable under Node
//
// The package is written for browsers. Its "module" build is a `.js` file in a package without
// `"type": "module"`, so Node cannot import it as ESM; its "main" build is UMD, which Node loads
// as CommonJS. Under Node it needs:
//   * a WebSocket class: Node before 22 has no global WebSocket, so `ws` is installed as the adapter.
//     The client derives its state names by enumerating the adapter's static
//     CONNECTING/OPEN/CLOSING/CLOSED properties, which `ws` defines as enumerable.
//   * global addEventListener/removeEventListener: ConnectionMonitor.start()/stop() call the bare
//     globals to watch the page's "visibilitychange". Node has neither, so no-op stubs are
//     installed; the visibility handler (the only user of `document`) therefore never runs.
//   * `document` is otherwise used only to resolve a relative or <meta>-configured URL, which
//     never happens here because every consumer gets an absolute ws:// URL. No stub for it.
// Difference from a browser: `ws` fails the handshake outright ("Server sent no subprotocol")
// when the 101 response lacks Sec-WebSocket-Protocol although protocols were offered, whereas a
// browser opens the socket and the client then closes it for good. The client is broken either way.
// ---------------------------------------------------------------------------------------------
const require = createRequire(import.meta.url);
const ActionCable = require("@rails/actioncable");

globalThis.addEventListener ??= () => {};
globalThis.removeEventListener ??= () => {};

// The adapter is `ws` plus a record of socket errors (e.g. a failed handshake), so that a test
// that times out can say why. The statics the client enumerates are inherited from `ws`.
const socketErrors = [];
ActionCable.adapters.WebSocket = class RecordingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.on("error", (error) => socketErrors.push(error.message));
  }
};
ActionCable.logger.enabled = process.env.CABLE_JS_VERBOSE === "1";

const CONFIRM_TIMEOUT_MS = 5_000; // confirm/reject of a subscription (a single token lookup)
const STEP_TIMEOUT_MS = 10_000; // any other expected reaction (event, reply, frame)
const TEST_TIMEOUT_MS = 20_000; // backstop per test
const READY_TIMEOUT_MS = 20_000; // gateway start-up until its "listening on" line
const SHUTDOWN_TIMEOUT_MS = 10_000; // the README promises an exit within 10 s of SIGTERM

// ---------------------------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The gateway under test. Module-level so the exit/signal handlers can always reach it.
// ---------------------------------------------------------------------------------------------

let gateway = null; // ChildProcess of `cable-gateway serve`
let gatewayExit = null; // Promise<{code, signal}>
let gatewayStderr = ""; // tail of its log, for failure messages

function gatewayRunning() {
  return gateway !== null && gateway.exitCode === null && gateway.signalCode === null;
}

// The database this run created and has not dropped yet: {adminUrl, name}.
let pendingDatabase = null;

// Never leave a gateway (or, when interrupted, a database) behind, whatever happens to this
// process. The `after` hook does the orderly teardown; this is the synchronous last resort.
function emergencyCleanup() {
  if (gatewayRunning()) gateway.kill("SIGKILL");
  if (pendingDatabase) {
    const { adminUrl, name } = pendingDatabase;
    pendingDatabase = null;
    try {
      execFileSync(
        "psql",
        ["-X", "-q", `--dbname=${adminUrl}`, "-c", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`],
        { stdio: "ignore", timeout: 10_000 },
      );
    } catch {
      // best effort: the cluster is a throwaway one
    }
  }
}
process.on("exit", emergencyCleanup);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    emergencyCleanup();
    process.kill(process.pid, signal); // handler was `once`: this time the default action applies
  });
}

// Helper processes (redis-server, the Rails broadcasters): killed whatever happens.
const helpers = new Set();
process.on("exit", () => helpers.forEach((child) => child.kill("SIGKILL")));

/** Spawns a helper process; resolves with it and its stdout lines once `ready` matches one. */
function spawnHelper(command, args, env, ready, what) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ["pipe", "pipe", "pipe"] });
    helpers.add(child);
    child.once("exit", () => helpers.delete(child));
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr = (stderr + chunk).slice(-4096)));
    const lines = [];
    const waiters = new Set();
    const timer = setTimeout(() => reject(new Error(`${what} did not start: ${stderr}`)), READY_TIMEOUT_MS);
    child.once("error", (error) => reject(new Error(`cannot run ${command}: ${error.message}`)));
    child.once("exit", (code) => reject(new Error(`${what} exited (${code}): ${stderr}`)));
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      if (ready.test(line)) {
        clearTimeout(timer);
        resolve({ child, lines, waiters });
      } else {
        lines.push(line);
        for (const waiter of [...waiters]) waiter();
      }
    });
  });
}

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * A Rails backend's ActionCable (tests/rails/broadcast.rb, Debian's ruby-actioncable) with the
 * given subscription adapter: `broadcast(stream, message)` runs ActionCable.server.broadcast.
 */
async function railsBackend(adapter, env) {
  const script = path.join(REPO, "tests/rails/broadcast.rb");
  const { child, lines, waiters } = await spawnHelper(
    "ruby",
    [script],
    { ...process.env, ...env, CABLE_ADAPTER: adapter },
    /^ready /,
    `Rails (${adapter} adapter)`,
  );
  let sent = 0;
  return {
    child,
    async broadcast(stream, message) {
      child.stdin.write(`${stream}\t${JSON.stringify(message)}\n`);
      const want = ++sent;
      await withTimeout(
        new Promise((resolve) => {
          const attempt = () => {
            if (lines.filter((l) => l === "sent").length >= want) {
              waiters.delete(attempt);
              resolve();
            }
          };
          waiters.add(attempt);
          attempt();
        }),
        STEP_TIMEOUT_MS,
        `Rails to broadcast on ${stream}`,
      );
    },
  };
}

function logTail() {
  return gatewayStderr ? `\n--- gateway stderr (tail) ---\n${gatewayStderr}` : "";
}

/** Starts `cable-gateway serve` and resolves with its port once it accepts connections. */
function startGateway(databaseUrl, extraEnv = {}) {
  return new Promise((resolve, reject) => {
    gateway = spawn(GATEWAY_BIN, ["serve", "--listen", "127.0.0.1:0"], {
      env: { ...process.env, DATABASE_URL: databaseUrl, ...extraEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });
    gatewayExit = new Promise((res) => gateway.once("exit", (code, signal) => res({ code, signal })));

    gateway.stderr.setEncoding("utf8").on("data", (chunk) => {
      gatewayStderr = (gatewayStderr + chunk).slice(-8192);
      if (VERBOSE) process.stderr.write(chunk);
    });

    let ready = false;
    const timer = setTimeout(() => {
      if (ready) return;
      gateway.kill("SIGKILL");
      reject(new Error(`gateway printed no "listening on" line within ${READY_TIMEOUT_MS} ms${logTail()}`));
    }, READY_TIMEOUT_MS);

    readline.createInterface({ input: gateway.stdout }).on("line", (line) => {
      const match = /^cable-gateway listening on 127\.0\.0\.1:(\d+)$/.exec(line.trim());
      if (match && !ready) {
        ready = true;
        clearTimeout(timer);
        resolve(Number(match[1]));
      } else if (VERBOSE) {
        process.stderr.write(`[gateway stdout] ${line}\n`);
      }
    });
    gateway.once("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${GATEWAY_BIN}: ${error.message}`));
    });
    gateway.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (!ready) reject(new Error(`gateway exited (code ${code}, signal ${signal}) before listening${logTail()}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------------

let cableUrl = null; // ws://127.0.0.1:PORT/cable

/** An official-client consumer that is disconnected (and its socket closed) when the test ends. */
function newConsumer(t) {
  socketErrors.length = 0;
  const consumer = ActionCable.createConsumer(cableUrl);
  t.after(() => closeConsumer(consumer));
  return consumer;
}

async function closeConsumer(consumer) {
  consumer.disconnect(); // stops the monitor (no reconnects) and closes an open socket
  consumer.subscriptions.guarantor.stopGuaranteeing();
  const socket = consumer.connection.webSocket;
  if (!socket || socket.readyState === WebSocket.CLOSED) return;
  if (socket.readyState === WebSocket.CONNECTING) {
    socket.terminate();
    return;
  }
  // `ws` waits up to 30 s for the server's close frame; don't let that keep the suite alive.
  const closed = new Promise((resolve) => socket.once("close", resolve));
  socket.close();
  await withTimeout(closed, 2000, "the close handshake").catch(() => socket.terminate());
}

/**
 * Creates a subscription through the official client and records what its callbacks see.
 * `outcome` resolves with "connected" or "rejected", whichever callback fires first.
 */
function subscribe(consumer, params) {
  const state = { connected: 0, rejected: 0, disconnected: [], received: [] };
  const waiters = new Set();
  let settle;
  const outcome = new Promise((resolve) => (settle = resolve));
  const subscription = consumer.subscriptions.create(params, {
    connected() {
      state.connected += 1;
      settle("connected");
    },
    rejected() {
      state.rejected += 1;
      settle("rejected");
    },
    disconnected(info) {
      state.disconnected.push(info);
    },
    received(message) {
      state.received.push(message);
      for (const waiter of [...waiters]) waiter();
    },
  });

  const describeParams = JSON.stringify(params);
  const diagnostics = () =>
    `; client socket state: ${consumer.connection.getState()}, sub-protocol: ` +
    `${JSON.stringify(consumer.connection.getProtocol())}, socket errors: ${JSON.stringify(socketErrors)}, ` +
    `disconnected callbacks: ${JSON.stringify(state.disconnected)}`;
  return {
    subscription,
    state,
    /** Resolves with "connected" or "rejected". */
    outcome: () =>
      withTimeout(outcome, CONFIRM_TIMEOUT_MS, `confirm or reject of ${describeParams}`).catch((error) => {
        error.message += diagnostics();
        throw error;
      }),
    /** Resolves with check(received) once that is truthy, re-checked on every received message. */
    until(check, what) {
      return new Promise((resolve, reject) => {
        let timer;
        const attempt = () => {
          const value = check(state.received);
          if (value) {
            clearTimeout(timer);
            waiters.delete(attempt);
            resolve(value);
          }
        };
        timer = setTimeout(() => {
          waiters.delete(attempt);
          reject(
            new Error(
              `timed out after ${STEP_TIMEOUT_MS} ms waiting for ${what} on ${describeParams}; ` +
                `received so far: ${JSON.stringify(state.received)}${diagnostics()}`,
            ),
          );
        }, STEP_TIMEOUT_MS);
        waiters.add(attempt);
        attempt();
      });
    },
  };
}

/** A raw `ws` client, collecting every frame it receives. */
function rawConnect(protocols) {
  return new Promise((resolve, reject) => {
    const socket = protocols === undefined ? new WebSocket(cableUrl) : new WebSocket(cableUrl, protocols);
    const frames = [];
    const waiters = new Set();
    let response = null;
    socket.on("upgrade", (res) => (response = res));
    socket.on("message", (data, isBinary) => {
      frames.push(isBinary ? data : JSON.parse(data.toString("utf8")));
      for (const waiter of [...waiters]) waiter();
    });
    socket.once("error", (error) => reject(new Error(`WebSocket handshake failed: ${error.message}`)));
    socket.once("open", () =>
      resolve({
        socket,
        response,
        frames,
        nextFrame() {
          const index = frames.length;
          return withTimeout(
            new Promise((res) => {
              const attempt = () => {
                if (frames.length > index) {
                  waiters.delete(attempt);
                  res(frames[index]);
                }
              };
              waiters.add(attempt);
            }),
            STEP_TIMEOUT_MS,
            `frame #${index + 1} on a raw connection`,
          );
        },
      }),
    );
  });
}

async function closeRaw(connection) {
  const { socket } = connection;
  if (socket.readyState === WebSocket.CLOSED) return;
  const closed = new Promise((resolve) => socket.once("close", resolve));
  socket.close();
  await withTimeout(closed, 2000, "the close handshake").catch(() => socket.terminate());
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

describe("@rails/actioncable against cable-gateway", { timeout: 120_000 }, () => {
  const adminUrl = process.env.CABLE_PG_ADMIN_URL;
  const databaseName = `cable_js_${process.pid}_${Date.now()}`;
  let databaseUrl = null;
  // Chatwoot's channel_prefix shape; the Rails backends below broadcast with it.
  const RAILS_PREFIX = "chatwoot_test_action_cable";
  let rails = null; // { postgresql, redis }: Rails backends, one per subscription adapter

  before(async () => {
    assert.ok(
      adminUrl,
      "CABLE_PG_ADMIN_URL is not set: point it at a superuser URL of a throwaway PostgreSQL " +
        "(e.g. postgres://postgres@127.0.0.1:54321/postgres); scripts/test does this for you",
    );
    const url = new URL(adminUrl);
    url.pathname = `/${databaseName}`;
    databaseUrl = url.href;

    await psql(adminUrl, "-c", `CREATE DATABASE "${databaseName}"`);
    pendingDatabase = { adminUrl, name: databaseName };
    await run(GATEWAY_BIN, ["migrate"], { env: { ...process.env, DATABASE_URL: databaseUrl } });
    await psql(databaseUrl, "-f", FIXTURES);

    // A Redis for Rails' Redis adapter, and the gateway hearing both of Rails' adapters.
    const redisPort = await freePort();
    await spawnHelper(
      "redis-server",
      ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      process.env,
      /Ready to accept connections/,
      "redis-server",
    );
    const redisUrl = `redis://127.0.0.1:${redisPort}`;
    const port = await startGateway(databaseUrl, {
      CABLE_REDIS_URL: redisUrl,
      CABLE_RAILS_CHANNEL_PREFIX: RAILS_PREFIX,
    });
    cableUrl = `ws://127.0.0.1:${port}/cable`;
    const railsEnv = { DATABASE_URL: databaseUrl, REDIS_URL: redisUrl, CHANNEL_PREFIX: RAILS_PREFIX };
    rails = {
      postgresql: await railsBackend("postgresql", railsEnv),
      redis: await railsBackend("redis", railsEnv),
    };
  });

  after(async () => {
    helpers.forEach((child) => child.kill("SIGKILL"));
    const problems = [];
    if (gatewayRunning()) {
      gateway.kill("SIGTERM");
      const exit = await withTimeout(gatewayExit, SHUTDOWN_TIMEOUT_MS, "the gateway to exit after SIGTERM").catch(
        (error) => {
          gateway.kill("SIGKILL");
          problems.push(error.message);
          return null;
        },
      );
      if (exit && exit.code !== 0) {
        problems.push(`gateway exited with code ${exit.code} (signal ${exit.signal}) after SIGTERM, expected 0`);
      }
    }
    if (pendingDatabase) {
      await psql(adminUrl, "-c", `DROP DATABASE IF EXISTS "${databaseName}" WITH (FORCE)`).then(
        () => (pendingDatabase = null),
        (error) => problems.push(`dropping ${databaseName}: ${error.message}`),
      );
    }
    assert.deepEqual(problems, [], `teardown problems${logTail()}`);
  });

  test("1. a user token subscribes (connected fires)", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const sub = subscribe(consumer, {
      channel: "RoomChannel",
      pubsub_token: "demo-user-alice",
      account_id: 1,
      user_id: 1,
    });
    assert.equal(await sub.outcome(), "connected");
    assert.equal(sub.state.rejected, 0);
  });

  test("2. a contact token subscribes (connected fires)", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const sub = subscribe(consumer, { channel: "RoomChannel", pubsub_token: "demo-contact-dave", account_id: 1 });
    assert.equal(await sub.outcome(), "connected");
    assert.equal(sub.state.rejected, 0);
  });

  test("3. an unknown token is rejected (and never connected)", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const sub = subscribe(consumer, {
      channel: "RoomChannel",
      pubsub_token: "no-such-token",
      account_id: 1,
      user_id: 1,
    });
    assert.equal(await sub.outcome(), "rejected");
    assert.equal(sub.state.connected, 0, "connected fired for a rejected subscription");
    // The client forgets a rejected subscription: it must not keep re-sending subscribe.
    assert.equal(consumer.subscriptions.findAll(sub.subscription.identifier).length, 0);
  });

  test("4. a user token with a foreign account_id is rejected", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const sub = subscribe(consumer, {
      channel: "RoomChannel",
      pubsub_token: "demo-user-alice",
      account_id: 2,
      user_id: 1,
    });
    assert.equal(await sub.outcome(), "rejected");
    assert.equal(sub.state.connected, 0, "connected fired for a rejected subscription");
  });

  test("5. an event inserted into cable_events is received", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const sub = subscribe(consumer, {
      channel: "RoomChannel",
      pubsub_token: "demo-user-alice",
      account_id: 1,
      user_id: 1,
    });
    assert.equal(await sub.outcome(), "connected");

    // The protocol: an event committed after the client saw the confirm WILL be delivered.
    await psql(
      databaseUrl,
      "-c",
      `INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{"id": 42, "content": "hi"}')`,
    );
    const message = await sub.until(
      (received) => received.find((m) => m && m.event === "message.created"),
      "the message.created event",
    );
    assert.deepEqual(message, {
      event: "message.created",
      data: { id: 42, content: "hi", account_id: 1 },
    });
  });

  test("6. perform('update_presence') is answered with presence.update", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const sub = subscribe(consumer, {
      channel: "RoomChannel",
      pubsub_token: "demo-user-alice",
      account_id: 1,
      user_id: 1,
    });
    assert.equal(await sub.outcome(), "connected");

    // The subscribe itself is also answered with a presence.update, and presence pushes (at most
    // about one per second per account) may add another. Three answers to three performs are
    // only there if update_presence itself is answered.
    const performs = 3;
    for (let i = 0; i < performs; i++) {
      assert.equal(sub.subscription.perform("update_presence"), true, "perform could not send");
    }
    const updates = await sub.until((received) => {
      const found = received.filter((m) => m && m.event === "presence.update");
      return found.length >= performs && found;
    }, `${performs} presence.update messages`);

    const { data } = updates[updates.length - 1];
    assert.equal(data.account_id, 1);
    assert.equal(typeof data.users, "object");
    assert.equal(data.users["1"], "online", "alice (availability online) is subscribed right now");
    assert.equal(data.users["3"], "busy", "carol has auto_offline false and availability busy");
    assert.equal(typeof data.contacts, "object", "answers to user subscriptions carry contacts");
  });

  test("7. the connection is kept fresh by pings", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const sub = subscribe(consumer, {
      channel: "RoomChannel",
      pubsub_token: "demo-user-bob",
      account_id: 1,
      user_id: 2,
    });
    // subscriptions.create() opened the socket synchronously; watch its frames from the start.
    const socket = consumer.connection.webSocket;
    const pings = [];
    const ping = withTimeout(
      new Promise((resolve) => {
        socket.on("message", (data) => {
          const frame = JSON.parse(data.toString("utf8"));
          if (frame.type === "ping") {
            // The client's own onmessage handler ran first and recorded the frame.
            pings.push({ frame, at: Date.now(), pingedAt: consumer.connection.monitor.pingedAt });
            resolve();
          }
        });
      }),
      5000, // pings come every 3 s
      "a ping frame",
    );
    ping.catch(() => {}); // awaited below; don't report it as unhandled if the subscribe fails first
    assert.equal(await sub.outcome(), "connected");
    await ping;

    const [{ frame, at, pingedAt }] = pings;
    assert.ok(Number.isInteger(frame.message), `ping message must be integer seconds: ${JSON.stringify(frame)}`);
    assert.ok(Math.abs(frame.message - at / 1000) < 5, `ping message is not the current unix time: ${frame.message}`);
    assert.ok(pingedAt && pingedAt <= at && at - pingedAt < 1000, "ConnectionMonitor did not record the ping");
    assert.equal(consumer.connection.monitor.connectionIsStale(), false);
    assert.equal(consumer.connection.isOpen(), true);
    assert.deepEqual(sub.state.disconnected, []);
  });

  // Rails unchanged: ActionCable.server.broadcast through Rails' own adapters, received by the
  // official client through the gateway. Chatwoot broadcasts {event, data} per recipient token.
  const notPresence = (received) => received.filter((m) => m && m.event !== "presence.update");

  for (const adapter of ["postgresql", "redis"]) {
    test(`10. Rails' ${adapter} adapter: a broadcast right after each confirm arrives`, { timeout: 60_000 }, async (t) => {
      // Each round a new consumer: with PostgreSQL the stream's channel is new to the gateway
      // (UNLISTENed when the previous round's consumer left) and must be LISTENed to before
      // the confirm.
      for (let round = 0; round < 5; round++) {
        const consumer = ActionCable.createConsumer(cableUrl);
        try {
          const sub = subscribe(consumer, { channel: "RoomChannel", pubsub_token: "demo-contact-dave", account_id: 1 });
          assert.equal(await sub.outcome(), "connected", `round ${round}`);
          const message = { event: "message.created", data: { id: round, content: `via ${adapter}` } };
          await rails[adapter].broadcast("demo-contact-dave", message);
          const got = await sub.until((received) => notPresence(received)[0], `round ${round}'s broadcast`);
          assert.deepEqual(got, message);
        } finally {
          await closeConsumer(consumer);
        }
      }
    });
  }

  test("11. Rails' broadcasts reach exactly their streams: a user's token and account_<id>", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const alice = subscribe(consumer, { channel: "RoomChannel", pubsub_token: "demo-user-alice", account_id: 1, user_id: 1 });
    const dave = subscribe(consumer, { channel: "RoomChannel", pubsub_token: "demo-contact-dave", account_id: 1 });
    assert.equal(await alice.outcome(), "connected");
    assert.equal(await dave.outcome(), "connected");
    await rails.redis.broadcast("account_1", { event: "contact.created", data: { id: 5 } });
    await rails.postgresql.broadcast("demo-user-alice", { event: "notification.created", data: { id: 9 } });
    await rails.postgresql.broadcast("demo-contact-dave", { event: "conversation.updated", data: { id: 7 } });
    await alice.until((r) => notPresence(r).length >= 2, "alice's two broadcasts");
    // Two channels through two ingresses: order is promised per channel only (docs/reference.md §7).
    assert.deepEqual(notPresence(alice.state.received).map((m) => m.event).sort(), ["contact.created", "notification.created"]);
    await dave.until((r) => notPresence(r).length >= 1, "dave's broadcast");
    // account_1 is a user stream: the contact did not get contact.created.
    assert.deepEqual(notPresence(dave.state.received).map((m) => m.event), ["conversation.updated"]);
  });

  test("12. private typing from Rails never reaches the widget (a fix over Rails)", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const consumer = newConsumer(t);
    const dave = subscribe(consumer, { channel: "RoomChannel", pubsub_token: "demo-contact-dave", account_id: 1 });
    assert.equal(await dave.outcome(), "connected");
    for (const adapter of ["postgresql", "redis"]) {
      await rails[adapter].broadcast("demo-contact-dave", {
        event: "conversation.typing_on",
        data: { conversation: { id: 7 }, user: { id: 2 }, is_private: true },
      });
      await rails[adapter].broadcast("demo-contact-dave", { event: "message.created", data: { id: 1, private: true } });
      await rails[adapter].broadcast("demo-contact-dave", { event: "conversation.typing_off", data: { is_private: false, via: adapter } });
    }
    await dave.until((r) => notPresence(r).length >= 2, "the two public broadcasts");
    assert.deepEqual(notPresence(dave.state.received), [
      { event: "conversation.typing_off", data: { is_private: false, via: "postgresql" } },
      { event: "conversation.typing_off", data: { is_private: false, via: "redis" } },
    ]);
  });

  test("13. perform('typing'): an agent types, the widget sees it; private typing never reaches it", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const agent = newConsumer(t);
    const widget = newConsumer(t);
    const admin = newConsumer(t);
    const bob = subscribe(agent, { channel: "RoomChannel", pubsub_token: "demo-user-bob", account_id: 1, user_id: 2 });
    const dave = subscribe(widget, { channel: "RoomChannel", pubsub_token: "demo-contact-dave", account_id: 1 });
    const alice = subscribe(admin, { channel: "RoomChannel", pubsub_token: "demo-user-alice", account_id: 1, user_id: 1 });
    for (const sub of [bob, dave, alice]) assert.equal(await sub.outcome(), "connected");
    // A private note being typed: the administrator sees it, the widget must not.
    assert.equal(bob.subscription.perform("typing", { conversation_id: 1, status: "on", is_private: true }), true);
    await alice.until((r) => notPresence(r).length >= 1, "the private typing at the administrator");
    const sent = performance.now();
    assert.equal(bob.subscription.perform("typing", { conversation_id: 1, status: "on" }), true);
    const seen = await dave.until((r) => notPresence(r).length >= 1 && notPresence(r), "the public typing at the widget");
    console.log(`# typing: the widget saw the agent's typing_on ${(performance.now() - sent).toFixed(1)} ms after perform()`);
    assert.deepEqual(seen, [
      {
        event: "conversation.typing_on",
        data: {
          conversation: { id: 1, inbox_id: 1, account_id: 1 },
          user: { id: 2, type: "user" },
          is_private: false,
          account_id: 1,
        },
      },
    ]);
    await alice.until((r) => notPresence(r).length >= 2, "both typings at the administrator");
    assert.deepEqual(notPresence(alice.state.received).map((m) => m.data.is_private), [true, false]);
    // Never echoed to the typist.
    assert.deepEqual(notPresence(bob.state.received), []);
  });

  test("8a. the 101 response selects actioncable-v1-json", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const connection = await rawConnect(["actioncable-v1-json", "actioncable-unsupported"]);
    t.after(() => closeRaw(connection));
    assert.equal(connection.response.headers["sec-websocket-protocol"], "actioncable-v1-json");
    assert.equal(connection.socket.protocol, "actioncable-v1-json");
    const first = connection.frames[0] ?? (await connection.nextFrame());
    assert.deepEqual(first, { type: "welcome" });
  });

  test("8b. a client offering no sub-protocol is accepted and welcomed", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const connection = await rawConnect(undefined);
    t.after(() => closeRaw(connection));
    assert.equal(connection.response.headers["sec-websocket-protocol"], undefined);
    assert.equal(connection.socket.protocol, "");
    const first = connection.frames[0] ?? (await connection.nextFrame());
    assert.deepEqual(first, { type: "welcome" });
  });
});
