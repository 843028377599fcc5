// The README's copy-paste snippets, run as printed (issue 32): @rails/actioncable under Node,
// the reliable-streams client in a browser (@anycable/web in headless Chromium) and under Node
// (@anycable/core with ws), the Rails broadcasters for both adapters, the outbox INSERTs, the
// broadcast API's curl line and the JWT minting line. Each block is taken from README.md by
// its `<!-- example: NAME -->` marker; only the documented URL (and, for the shell blocks, the
// environment a user would have set) is changed.
//
// Run from the repository root:   node --test tests/js/
// Environment: as tests/js/actioncable.test.mjs (CABLE_PG_ADMIN_URL required); CHROMIUM_BIN.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { REPO, createDatabase, eventually, spawnGateway, withTimeout } from "./harness.mjs";
import { Redis, freePort } from "./soak/cluster.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const STEP_TIMEOUT_MS = 15_000;
const DOCUMENTED_URL = "ws://127.0.0.1:8080/cable";
const PREFIX = "chatwoot_development_action_cable";
const JWT_SECRET = "readme-test-secret";
const BROADCAST_KEY = "readme-test-broadcast-key";
const CENTRIFUGO_API_KEY = "readme-test-centrifugo-api-key";
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
/** Python with websocket-client on its path (scripts/test puts a current one on PYTHONPATH). */
const PYTHON = "python3";

/** The fenced block after `<!-- example: NAME -->` in README.md. */
function example(name) {
  const readme = readFileSync(path.join(REPO, "README.md"), "utf8");
  const block = readme.split(`<!-- example: ${name} -->\n`)[1]?.match(/^```\w+\n([\s\S]*?)^```/m)?.[1];
  assert.ok(block, `README.md has a block after <!-- example: ${name} -->`);
  return block;
}

/** Lines a child process prints, awaitable by prefix. */
function lines(stream) {
  const seen = [];
  const waiters = new Set();
  readline.createInterface({ input: stream }).on("line", (line) => {
    seen.push(line);
    for (const waiter of [...waiters]) waiter();
  });
  return {
    seen,
    printed: (prefix, what) =>
      withTimeout(
        new Promise((resolve) => {
          const attempt = () => {
            const line = seen.find((l) => l.startsWith(prefix));
            if (line) {
              waiters.delete(attempt);
              resolve(line);
            }
          };
          waiters.add(attempt);
          attempt();
        }),
        STEP_TIMEOUT_MS,
        `${what}; printed ${JSON.stringify(seen)}`,
      ),
  };
}

/** Runs a README shell block with bash; resolves with its output, rejects on failure. */
function sh(block, env) {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", block], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    child.stderr.on("data", (chunk) => (out += chunk));
    child.once("exit", (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`exit ${code}: ${out}`))));
  });
}

describe("the README's snippets, as printed", { timeout: 180_000 }, () => {
  const adminUrl = process.env.CABLE_PG_ADMIN_URL;
  let db = null;
  let gateway = null;
  let redis = null;
  let cableUrl = "";

  before(async () => {
    assert.ok(adminUrl, "CABLE_PG_ADMIN_URL is not set (scripts/test sets it)");
    db = await createDatabase(adminUrl, "cable_readme");
    redis = await new Redis(await freePort()).start();
    // As the README starts it for the Rails examples (scripts/dev passes these through).
    gateway = await spawnGateway(db.url, {
      CABLE_REDIS_URL: `redis://127.0.0.1:${redis.port}`,
      CABLE_RAILS_CHANNEL_PREFIX: PREFIX,
      CABLE_JWT_SECRET: JWT_SECRET,
      CABLE_BROADCAST_KEY: BROADCAST_KEY,
      CABLE_CENTRIFUGO_API_KEY: CENTRIFUGO_API_KEY,
    });
    cableUrl = `ws://127.0.0.1:${gateway.port}/cable`;
  });

  after(async () => {
    if (gateway) await gateway.kill("SIGTERM");
    redis?.stop();
    if (db) await db.drop();
  });

  const publish = (id) =>
    db.sql(`INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{"id": ${id}}')`);

  /** Runs a README Node block beside node_modules; returns its printed lines. */
  function runNode(t, name) {
    const block = example(name);
    assert.ok(block.includes(DOCUMENTED_URL), `${name} connects to the documented URL`);
    const file = path.join(HERE, `readme-${name}-${process.pid}.mjs`);
    writeFileSync(file, block.replace(DOCUMENTED_URL, cableUrl));
    t.after(() => rmSync(file, { force: true }));
    const child = spawn(process.execPath, [file], { stdio: ["ignore", "pipe", "pipe"] });
    t.after(() => child.kill("SIGKILL"));
    return lines(child.stdout);
  }

  test("0. @rails/actioncable under Node (\"Connecting clients\")", async (t) => {
    const out = runNode(t, "node");
    // presence.update follows the confirm: the subscription is live.
    await out.printed("presence.update ", "the example to print presence.update");
    await db.sql(`INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{"id": 7, "content": "from the README"}')`);
    const line = await out.printed("message.created ", "the example to print the event");
    assert.deepEqual(JSON.parse(line.slice("message.created ".length)), { id: 7, content: "from the README", account_id: 1 });
  });

  test("1. reliable streams under Node: @anycable/core with ws", async (t) => {
    const out = runNode(t, "anycable-node");
    await out.printed("presence.update ", "the client subscribed");
    await publish(101);
    // @anycable/core asks for history since the second it was made: an earlier test's event
    // may come first.
    const line = await out.printed('message.created {"id":101,', "the event printed");
    assert.deepEqual(JSON.parse(line.slice("message.created ".length)), { id: 101, account_id: 1 });
  });

  test("2. reliable streams in a browser: @anycable/web in headless Chromium", async (t) => {
    const block = example("anycable-browser");
    assert.ok(block.includes(DOCUMENTED_URL));
    // What a bundler does, done with an import map over tests/js/node_modules.
    const page = `<!doctype html><script type="importmap">${JSON.stringify({
      imports: {
        "@anycable/web": "/node_modules/@anycable/web/index.js",
        "@anycable/core": "/node_modules/@anycable/core/index.js",
        nanoevents: "/node_modules/nanoevents/index.js",
      },
    })}</script><script type="module" src="/example.js"></script>`;
    const server = http.createServer((request, response) => {
      const url = new URL(request.url, "http://x");
      if (url.pathname === "/") return response.writeHead(200, { "content-type": "text/html" }).end(page);
      if (url.pathname === "/example.js") {
        return response.writeHead(200, { "content-type": "text/javascript" }).end(block.replace(DOCUMENTED_URL, cableUrl));
      }
      const file = path.join(HERE, path.normalize(url.pathname));
      if (!file.startsWith(path.join(HERE, "node_modules"))) return response.writeHead(404).end();
      try {
        response.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(file));
      } catch {
        response.writeHead(404).end();
      }
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    t.after(() => server.close());
    const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
    t.after(() => browser.close());
    const tab = await browser.newPage();
    const logged = [];
    const errors = [];
    tab.on("console", (message) => logged.push(message.text()));
    tab.on("pageerror", (error) => errors.push(String(error)));
    await tab.goto(`http://127.0.0.1:${server.address().port}/`);
    await eventually(() => logged.some((l) => l.startsWith("presence.update ")), STEP_TIMEOUT_MS, `subscribed; logged ${logged} ${errors}`);
    await publish(102);
    const line = await eventually(
      () => logged.find((l) => l.startsWith('message.created {"id":102,')),
      STEP_TIMEOUT_MS,
      `the event; logged ${logged}`,
    );
    assert.deepEqual(JSON.parse(line.slice("message.created ".length)), { id: 102, account_id: 1 });
    assert.deepEqual(errors, []);
  });

  for (const adapter of ["redis", "postgresql"]) {
    test(`3. the Rails broadcaster (${adapter}) reaches Alice's subscription`, async (t) => {
      const out = runNode(t, "node");
      await out.printed("presence.update ", "Alice subscribed");
      await sh(example(`rails-${adapter}`), { REDIS_URL: `redis://127.0.0.1:${redis.port}`, DATABASE_URL: db.url });
      const line = await out.printed("notification.created ", "the broadcast printed");
      assert.deepEqual(JSON.parse(line.slice("notification.created ".length)), { id: 1 });
    });
  }

  test("4. the outbox INSERTs of \"Publishing events\" reach Alice as the rules say", async (t) => {
    const out = runNode(t, "node");
    await out.printed("presence.update ", "Alice subscribed");
    await db.sql(example("publish-sql"));
    // Alice administers account 1: everything but Bob's notification and Dave's stream.
    await out.printed("contact.created ", "the last of Alice's events");
    const events = out.seen.filter((l) => !l.startsWith("presence.update ")).map((l) => l.split(" ")[0]);
    assert.deepEqual(events, ["message.created", "message.created", "conversation.typing_on", "contact.created"]);
  });

  test("5. the curl line of the broadcast API reaches Alice", async (t) => {
    const out = runNode(t, "node");
    await out.printed("presence.update ", "Alice subscribed");
    const block = example("broadcast-curl");
    assert.ok(block.includes("http://127.0.0.1:8080/"));
    await sh(block.replace("http://127.0.0.1:8080/", `http://127.0.0.1:${gateway.port}/`), { CABLE_BROADCAST_KEY: BROADCAST_KEY });
    const line = await out.printed("notification.created ", "the broadcast printed");
    assert.deepEqual(JSON.parse(line.slice("notification.created ".length)), { id: 1 });
  });

  test("7. the topic WebSocket examples (\"Plain WebSocket topics\"): Python and Node", async (t) => {
    const documented = "ws://127.0.0.1:8080/ws";
    const topicsUrl = `ws://127.0.0.1:${gateway.port}/ws`;
    const python = example("topics-python");
    const node = example("topics-node");
    for (const block of [python, node]) assert.ok(block.includes(documented), "the examples connect to the documented URL");
    const pyFile = path.join(HERE, `readme-topics-${process.pid}.py`);
    const nodeFile = path.join(HERE, `readme-topics-${process.pid}.mjs`);
    writeFileSync(pyFile, python.replace(documented, topicsUrl));
    writeFileSync(nodeFile, node.replace(documented, topicsUrl));
    t.after(() => rmSync(pyFile, { force: true }));
    t.after(() => rmSync(nodeFile, { force: true }));
    const children = [spawn(PYTHON, ["-u", pyFile], { stdio: ["ignore", "pipe", "inherit"] }), spawn(process.execPath, [nodeFile], { stdio: ["ignore", "pipe", "inherit"] })];
    t.after(() => children.forEach((child) => child.kill("SIGKILL")));
    const [pyOut, nodeOut] = children.map((child) => lines(child.stdout));
    await pyOut.printed('{"type":"subscribed"', "Alice's Python client subscribed");
    await nodeOut.printed('{"type":"subscribed"', "Bob's Node client subscribed");
    // The INSERT scripts/dev prints.
    await db.sql(`INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{"id":1,"content":"hello"}')`);
    const stamp = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
    for (const [out, topic] of [
      [pyOut, "account_id:1:message:1"],
      [nodeOut, "user_id:2:message:1"],
    ]) {
      // Bob's feed shows presence too (his dashboard does): the event's line is looked for.
      const line = await eventually(
        () => out.seen.find((l) => l.includes(` ${topic} message.created `)),
        STEP_TIMEOUT_MS,
        `the event under ${topic}; printed ${JSON.stringify(out.seen)}`,
      );
      const [timestamp, shown, event, ...data] = line.split(" ");
      assert.match(timestamp, stamp);
      assert.deepEqual([shown, event], [topic, "message.created"]);
      assert.deepEqual(JSON.parse(data.join(" ")), { id: 1, content: "hello", account_id: 1 });
    }
  });

  test("8. Coming from Centrifugo: centrifuge and cent.js as printed", async (t) => {
    const block = example("centrifugo-node");
    assert.ok(block.includes("127.0.0.1:8080"), "the example names the documented address");
    const file = path.join(HERE, `readme-centrifugo-${process.pid}.mjs`);
    writeFileSync(file, block.replaceAll("127.0.0.1:8080", `127.0.0.1:${gateway.port}`));
    t.after(() => rmSync(file, { force: true }));
    const child = spawn(process.execPath, [file], {
      env: { ...process.env, CABLE_JWT_SECRET: JWT_SECRET, CABLE_CENTRIFUGO_API_KEY: CENTRIFUGO_API_KEY },
      stdio: ["ignore", "pipe", "inherit"],
    });
    t.after(() => child.kill("SIGKILL"));
    const out = lines(child.stdout);
    await out.printed("subscribed", "the example subscribed");
    const news = await out.printed("news ", "the cent.js publication on the token's channel");
    assert.deepEqual(JSON.parse(news.slice("news ".length)), { text: "hello from cent.js" });
    // The INSERT scripts/dev prints.
    await db.sql(`INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{"id":1,"content":"hello"}')`);
    const line = await eventually(
      () => out.seen.find((l) => l.startsWith("account:1 ") && l.includes('"message.created"')),
      STEP_TIMEOUT_MS,
      `the event on account:1; printed ${JSON.stringify(out.seen)}`,
    );
    assert.deepEqual(JSON.parse(line.slice("account:1 ".length)), {
      event: "message.created",
      data: { id: 1, content: "hello", account_id: 1 },
    });
  });

  test("6. the JWT minting line gives a token the gateway takes", async () => {
    const token = await sh(example("jwt-node"), { CABLE_JWT_SECRET: JWT_SECRET });
    assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    const ws = new WebSocket(`${cableUrl}?jid=${token}`, ["actioncable-v1-json"]);
    const frames = [];
    ws.on("message", (data) => frames.push(JSON.parse(data.toString())));
    await withTimeout(new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject)), STEP_TIMEOUT_MS, "connect");
    const identifier = JSON.stringify({ channel: "RoomChannel" });
    ws.send(JSON.stringify({ command: "subscribe", identifier }));
    await eventually(() => frames.some((f) => f.type === "confirm_subscription"), STEP_TIMEOUT_MS, `confirm; got ${JSON.stringify(frames)}`);
    ws.terminate();
  });
});
