// The inspector page (/inspect, docs/reference.md §9) in a real browser: Debian's headless Chromium,
// driven by playwright-core, against a running gateway with live clients and a stream of
// events. The page must show the numbers the test created, keep them current without a
// reload, throw no console error, and show no secret; a wrong token gets 401 and no data.
//
// Run from the repository root:   node --test tests/js/
// Environment: as tests/js/actioncable.test.mjs (CABLE_PG_ADMIN_URL required); CHROMIUM_BIN
// (default /usr/bin/chromium). The screenshot goes to target/inspector.png.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { REPO, createDatabase, eventually, spawnGateway, withTimeout } from "./harness.mjs";

const STEP_TIMEOUT_MS = 15_000;
const ADMIN_TOKEN = "inspector-test-token";
const DB_PASSWORD = "never-shown-pw";
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

/** A raw ActionCable client: connects, subscribes with `identifier`, waits for the confirm. */
async function client(port, identifier) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/cable`, ["actioncable-v1-json"]);
  const frames = [];
  ws.on("message", (data) => frames.push(JSON.parse(data.toString())));
  await withTimeout(new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject)), STEP_TIMEOUT_MS, "connect");
  const raw = JSON.stringify({ channel: "RoomChannel", ...identifier });
  ws.send(JSON.stringify({ command: "subscribe", identifier: raw }));
  await eventually(async () => frames.some((f) => f.type === "confirm_subscription"), STEP_TIMEOUT_MS, `confirm of ${raw}`);
  return ws;
}

describe("the inspector page in headless Chromium", { timeout: 120_000 }, () => {
  const adminUrl = process.env.CABLE_PG_ADMIN_URL;
  let db = null;
  let gateway = null;
  let browser = null;
  const sockets = [];
  let publishing = null;

  before(async () => {
    assert.ok(adminUrl, "CABLE_PG_ADMIN_URL is not set (scripts/test sets it)");
    db = await createDatabase(adminUrl, "cable_inspect");
    // A password in the URL (the test cluster trusts everyone, so it is not checked): the page
    // must mask it.
    const url = new URL(db.url);
    url.password = DB_PASSWORD;
    gateway = await spawnGateway(url.href, { CABLE_ADMIN_TOKEN: ADMIN_TOKEN });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  });

  after(async () => {
    clearInterval(publishing);
    sockets.forEach((ws) => ws.terminate());
    if (browser) await browser.close();
    if (gateway) await gateway.kill("SIGTERM");
    if (db) await db.drop();
  });

  const get = (path, headers = {}) => fetch(`http://127.0.0.1:${gateway.port}${path}`, { headers });

  test("1. without the right token: 401, WWW-Authenticate, no data", async () => {
    for (const [path, headers] of [
      ["/inspect", {}],
      ["/inspect/data", {}],
      ["/inspect/data?token=wrong", {}],
      ["/inspect/data", { Authorization: "Basic " + Buffer.from(`admin:wrong`).toString("base64") }],
    ]) {
      const response = await get(path, headers);
      assert.equal(response.status, 401, path);
      assert.match(response.headers.get("www-authenticate"), /^Basic /);
      const body = await response.text();
      assert.ok(!body.includes("accounts") && !body.includes("<html"), `no data in: ${body}`);
    }
    const basic = await get("/inspect/data", { Authorization: "Basic " + Buffer.from(`any:${ADMIN_TOKEN}`).toString("base64") });
    assert.equal(basic.status, 200);
  });

  test("2. without CABLE_ADMIN_TOKEN there is no page", async () => {
    const plain = await spawnGateway(db.url);
    try {
      const response = await fetch(`http://127.0.0.1:${plain.port}/inspect?token=${ADMIN_TOKEN}`);
      assert.equal(response.status, 404);
    } finally {
      await plain.kill("SIGTERM");
    }
  });

  test("3. the page shows live numbers, keeps them current, shows no secret", async () => {
    const port = gateway.port;
    // Account 1: Alice and Bob (users), Dave (contact) on three connections; account 2: Frank.
    const alice = await client(port, { pubsub_token: "demo-user-alice", account_id: 1, user_id: 1 });
    const bob = await client(port, { pubsub_token: "demo-user-bob", account_id: 1, user_id: 2 });
    const dave = await client(port, { pubsub_token: "demo-contact-dave", account_id: 1 });
    const frank = await client(port, { pubsub_token: "demo-user-frank", account_id: 2, user_id: 4 });
    sockets.push(alice, bob, dave, frank);
    // A stream of events to every user of account 1.
    let n = 0;
    publishing = setInterval(() => {
      n += 1;
      db.sql(`INSERT INTO cable_events (account_id, event, data) VALUES (1, 'message.created', '{"n": ${n}}')`).catch(() => {});
    }, 200);

    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    const problems = [];
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    const response = await page.goto(`http://127.0.0.1:${port}/inspect?token=${ADMIN_TOKEN}`);
    assert.equal(response.status(), 200);

    const text = (selector) => page.locator(selector).first().textContent({ timeout: 1000 }).catch(() => null);
    const row = (account, column) => text(`#accounts tr[data-account="${account}"] td.${column}`);
    const shows = async (expected) => {
      for (const [account, column, value] of expected) {
        if ((await row(account, column)) !== value) return false;
      }
      return true;
    };
    const expected = [
      [1, "connections", "3"],
      [1, "users", "2"],
      [1, "contacts", "1"],
      [1, "online-users", "2"],
      [1, "online-contacts", "1"],
      [2, "connections", "1"],
      [2, "users", "1"],
      [2, "contacts", "0"],
      [2, "online-users", "1"],
    ];
    await eventually(() => shows(expected), STEP_TIMEOUT_MS, "the page to show the accounts' numbers").catch(async (error) => {
      const rows = await page.locator("#accounts tbody").textContent();
      throw new Error(`${error.message}; the table says: ${rows}`);
    });
    assert.equal(await text("#total-connections"), "4");
    assert.equal(await text("#total-subscriptions"), "4");
    await eventually(async () => Number(await text("#messages-per-s")) > 0, STEP_TIMEOUT_MS, "messages delivered per second > 0");
    await eventually(async () => Number(await text("#events-per-s")) > 0, STEP_TIMEOUT_MS, "events read per second > 0");
    assert.equal(await page.locator('#ingress li[data-ingress="listen"]').getAttribute("data-state"), "up");

    // It updates without a reload: a client leaves, the page follows and lists why.
    const updates = Number(await page.locator("body").getAttribute("data-updates"));
    bob.close();
    await eventually(() => shows([[1, "connections", "2"], [1, "users", "1"]]), STEP_TIMEOUT_MS, "the page to follow a disconnect");
    await eventually(async () => (await text("#disconnects td.reason")) === "client_closed", STEP_TIMEOUT_MS, "the disconnect listed with its reason");
    assert.ok(Number(await page.locator("body").getAttribute("data-updates")) > updates, "the page polled again");
    // Charts have points (a sample every 2 s).
    await eventually(
      async () => (await page.evaluate(() => document.querySelectorAll(".chart canvas").length)) === 3,
      STEP_TIMEOUT_MS,
      "three charts drawn",
    );
    await eventually(
      async () => (await (await get(`/inspect/data?token=${ADMIN_TOKEN}`)).json()).series.t.length >= 2,
      STEP_TIMEOUT_MS,
      "two samples for the charts",
    );

    // No secret: tokens appear as a 4-character prefix at most, the password never.
    const html = await page.content();
    const data = await (await get(`/inspect/data?token=${ADMIN_TOKEN}`)).text();
    for (const secret of ["demo-user-bob", "demo-user-alice", "demo-contact-dave", DB_PASSWORD]) {
      assert.ok(!html.includes(secret), `the page shows ${secret}`);
      assert.ok(!data.includes(secret), `the data holds ${secret}`);
    }
    assert.ok(data.includes("demo…"), "the disconnect names its token by prefix");

    mkdirSync(path.join(REPO, "target"), { recursive: true });
    await page.screenshot({ path: path.join(REPO, "target/inspector.png"), fullPage: true });
    assert.deepEqual(problems, [], "console errors on the page");
  });
});
