// Centrifugo's own SDK (centrifuge 5.x) and server-API client (cent.js), unchanged, against
// two gateway processes of one database (docs/reference.md §11): server-side channels from the
// token, client subscriptions, the built-in account:<A> channel, publications from cent.js
// and from the outbox reaching every process, presence and join/leave, the connect proxy, every
// server-API error, a token refreshed after error 109, refusals as the SDK reports them, and
// shutdown (3001), after which the SDK reconnects by itself.
//
// Run from the repository root:   node --test tests/js/
// Environment: CABLE_PG_ADMIN_URL (required), CABLE_GATEWAY_BIN.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Centrifuge } from "centrifuge";
import { CentClient } from "cent.js";
import WebSocket from "ws";
import { createDatabase, eventually, spawnGateway } from "./harness.mjs";

const WAIT_MS = 10_000;
const SECRET = "centrifugo-js-secret";
const API_KEY = "centrifugo-js-api-key";
const CONFIG = {
  client: { token: { hmac_secret_key: SECRET } },
  http_api: { key: API_KEY },
  channel: {
    namespaces: [
      { name: "tickets", allow_subscribe_for_client: true },
      { name: "voice" },
      {
        name: "presence",
        allow_subscribe_for_client: true,
        presence: true,
        join_leave: true,
        allow_presence_for_subscriber: true,
      },
    ],
  },
};

/** An HS256 JWT, as a backend mints it for Centrifugo. */
function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${unsigned}.${crypto.createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
}

const seconds = () => Math.floor(Date.now() / 1000);

/** Everything a client and its subscriptions emitted, in order. */
function recorder(client) {
  const seen = [];
  for (const event of ["connected", "disconnected", "connecting", "publication", "subscribed", "error"]) {
    client.on(event, (ctx) => seen.push({ on: "client", event, ctx }));
  }
  const watch = (sub) => {
    for (const event of ["subscribed", "unsubscribed", "publication", "error"]) {
      sub.on(event, (ctx) => seen.push({ on: sub.channel, event, ctx }));
    }
    return sub;
  };
  const find = (what, test) => eventually(() => seen.find(test), WAIT_MS, `${what}; saw ${JSON.stringify(seen.map((s) => [s.on, s.event]))}`);
  return { seen, watch, find };
}

describe("Centrifugo's SDK and cent.js, unchanged", { timeout: 120_000 }, () => {
  let db = null;
  let gateways = [];
  let configFile = "";
  let clients = [];

  before(async () => {
    db = await createDatabase(process.env.CABLE_PG_ADMIN_URL, "cable_centrifugo_js");
    configFile = path.join(os.tmpdir(), `cable-centrifugo-${process.pid}.json`);
    writeFileSync(configFile, JSON.stringify(CONFIG));
    for (let n = 0; n < 2; n++) {
      gateways.push(await spawnGateway(db.url, { CABLE_CENTRIFUGO_CONFIG: configFile }));
    }
  });

  after(async () => {
    clients.forEach((client) => client.disconnect());
    for (const gateway of gateways) await gateway.kill("SIGTERM");
    rmSync(configFile, { force: true });
    await db?.drop();
  });

  const connect = (port, options) => {
    const client = new Centrifuge(`ws://127.0.0.1:${port}/connection/websocket`, { websocket: WebSocket, ...options });
    clients.push(client);
    return client;
  };
  const api = (port) => new CentClient({ url: `http://127.0.0.1:${port}/api`, apiKey: API_KEY });

  test("server-side channels, client subscriptions and account:<A> get publications from every process", async () => {
    const [a, b] = gateways;
    // Bob: users.id 2, an agent of account 1 in inbox 1.
    const client = connect(a.port, { token: jwt({ sub: "2", exp: seconds() + 600, channels: ["voice:calls"] }) });
    const seen = recorder(client);
    const ticket = seen.watch(client.newSubscription("tickets:7"));
    const account = seen.watch(client.newSubscription("account:1"));
    const denied = seen.watch(client.newSubscription("voice:private"));
    const unknown = seen.watch(client.newSubscription("nowhere:1"));
    [ticket, account, denied, unknown].forEach((sub) => sub.subscribe());
    client.connect();
    await seen.find("connected", (s) => s.event === "connected");
    await seen.find("the server-side channel", (s) => s.on === "client" && s.event === "subscribed" && s.ctx.channel === "voice:calls");
    await seen.find("tickets:7 subscribed", (s) => s.on === "tickets:7" && s.event === "subscribed");
    await seen.find("account:1 subscribed", (s) => s.on === "account:1" && s.event === "subscribed");
    const refused = await seen.find("voice:private refused", (s) => s.on === "voice:private" && s.event === "unsubscribed");
    assert.equal(refused.ctx.code, 103);
    const unknownChannel = await seen.find("nowhere:1 refused", (s) => s.on === "nowhere:1" && s.event === "unsubscribed");
    assert.equal(unknownChannel.ctx.code, 102);

    // cent.js on the other process.
    assert.deepEqual(await api(b.port).publish({ channel: "tickets:7", data: { ticket: 7 } }), {});
    await api(b.port).publish({ channel: "voice:calls", data: { call: "ringing" } });
    const onTicket = await seen.find("the ticket publication", (s) => s.on === "tickets:7" && s.event === "publication");
    assert.deepEqual(onTicket.ctx.data, { ticket: 7 });
    const onClient = await seen.find("the server-side publication", (s) => s.on === "client" && s.event === "publication");
    assert.deepEqual([onClient.ctx.channel, onClient.ctx.data], ["voice:calls", { call: "ringing" }]);

    // The outbox: what Bob's dashboard would get, on account:1.
    await db.sql(`INSERT INTO cable_events (account_id, event, data, inbox_id) VALUES (1, 'message.created', '{"id": 71}', 1)`);
    await db.sql(`INSERT INTO cable_events (account_id, event, data, inbox_id) VALUES (1, 'message.created', '{"id": 72}', 2)`);
    await db.sql(`INSERT INTO cable_events (account_id, event, data) VALUES (1, 'conversation.updated', '{"id": 73}')`);
    const events = () =>
      seen.seen.filter((s) => s.on === "account:1" && s.event === "publication" && s.ctx.data.event !== "presence.update").map((s) => s.ctx.data);
    await eventually(() => events().length >= 2, WAIT_MS, `two events on account:1; got ${JSON.stringify(events())}`);
    assert.deepEqual(events(), [
      { event: "message.created", data: { id: 71, account_id: 1 } },
      { event: "conversation.updated", data: { id: 73, account_id: 1 } },
    ]);
  });

  test("presence and join/leave across processes, as the SDK asks for them", async () => {
    const [a, b] = gateways;
    const alice = connect(a.port, { token: jwt({ sub: "1", info: { name: "Alice" } }) });
    const bob = connect(b.port, { token: jwt({ sub: "2", info: { name: "Bob" } }) });
    const seenAlice = recorder(alice);
    const online = seenAlice.watch(alice.newSubscription("presence:online", { joinLeave: true }));
    for (const event of ["join", "leave"]) online.on(event, (ctx) => seenAlice.seen.push({ on: "presence:online", event, ctx }));
    online.subscribe();
    alice.connect();
    await seenAlice.find("Alice subscribed", (s) => s.on === "presence:online" && s.event === "subscribed");
    const bobOnline = bob.newSubscription("presence:online");
    bobOnline.subscribe();
    bob.connect();
    await bobOnline.ready(WAIT_MS);
    const joined = await seenAlice.find("Bob's join", (s) => s.event === "join" && s.ctx.info.user === "2");
    assert.deepEqual(joined.ctx.info.connInfo, { name: "Bob" });
    const presence = await online.presence();
    assert.deepEqual(Object.values(presence.clients).map((c) => c.user).sort(), ["1", "2"]);
    assert.deepEqual(await online.presenceStats(), { numClients: 2, numUsers: 2 });
    bobOnline.unsubscribe();
    const left = await seenAlice.find("Bob's leave", (s) => s.event === "leave" && s.ctx.info.user === "2");
    assert.equal(left.ctx.info.client, joined.ctx.info.client);
  });

  test("the connect proxy decides for the SDK: connect, refuse, disconnect", async () => {
    const http = await import("node:http");
    const asked = [];
    const proxy = http.createServer((request, response) => {
      let body = "";
      request.on("data", (chunk) => (body += chunk));
      request.on("end", () => {
        const connect = JSON.parse(body);
        asked.push(connect);
        const answer =
          connect.data?.as === "agent"
            ? { result: { user: "2", channels: ["voice:calls"], info: { name: "Bob" }, data: { hello: "Bob" } } }
            : connect.data?.as === "banned"
              ? { disconnect: { code: 4501, reason: "banned" } }
              : { error: { code: 4000, message: "not today" } };
        response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
      });
    });
    await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const proxied = await spawnGateway(db.url, {
      CABLE_CENTRIFUGO_CONFIG: configFile,
      CABLE_CENTRIFUGO_CONNECT_PROXY_URL: `http://127.0.0.1:${proxy.address().port}/centrifugo/connect`,
    });
    try {
      const client = connect(proxied.port, { data: { as: "agent" } });
      const seen = recorder(client);
      client.connect();
      const connected = await seen.find("connected through the proxy", (s) => s.event === "connected");
      assert.deepEqual(connected.ctx.data, { hello: "Bob" });
      await seen.find("the proxy's channel", (s) => s.on === "client" && s.event === "subscribed" && s.ctx.channel === "voice:calls");
      assert.equal(asked[0].client, connected.ctx.client);
      assert.deepEqual([asked[0].transport, asked[0].protocol, asked[0].encoding], ["websocket", "json", "json"]);
      await api(proxied.port).publish({ channel: "voice:calls", data: { via: "proxy" } });
      await seen.find("a publication on it", (s) => s.on === "client" && s.event === "publication" && s.ctx.data.via === "proxy");

      const banned = connect(proxied.port, { data: { as: "banned" } });
      const bannedSeen = recorder(banned);
      banned.connect();
      const gone = await bannedSeen.find("disconnected by the proxy", (s) => s.event === "disconnected");
      assert.deepEqual([gone.ctx.code, gone.ctx.reason], [4501, "banned"]);

      const refused = connect(proxied.port, { data: { as: "nobody" }, maxReconnectDelay: 200 });
      const refusedSeen = recorder(refused);
      refused.connect();
      // A permanent error of the connect (not temporary, 100 or more): the SDK gives up.
      const error = await refusedSeen.find("the proxy's error", (s) => s.event === "disconnected");
      assert.deepEqual([error.ctx.code, error.ctx.reason], [4000, "not today"]);
    } finally {
      await proxied.kill("SIGTERM");
      proxy.close();
    }
  });

  test("every server-API error: cent.js rejects, and the answer is Centrifugo's", async () => {
    const [a] = gateways;
    const post = async (method, body, key = API_KEY) => {
      const response = await fetch(`http://127.0.0.1:${a.port}/api/${method}`, {
        method: "POST",
        headers: { "X-API-Key": key, "content-type": "application/json" },
        body,
      });
      const text = await response.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {}
      return [response.status, json];
    };
    const wrongKey = new CentClient({ url: `http://127.0.0.1:${a.port}/api`, apiKey: "wrong" });
    await assert.rejects(wrongKey.publish({ channel: "tickets:1", data: {} }));
    assert.equal((await post("publish", "{}", "wrong"))[0], 401);
    await assert.rejects(api(a.port).publish({ channel: "", data: { x: 1 } }));
    assert.deepEqual(await post("publish", JSON.stringify({ channel: "", data: 1 })), [200, { error: { code: 107, message: "bad request" } }]);
    assert.deepEqual(await post("broadcast", JSON.stringify({ channels: [], data: 1 })), [200, { error: { code: 107, message: "bad request" } }]);
    await assert.rejects(api(a.port).getPresence({ channel: "tickets:1" }));
    assert.equal((await post("presence", JSON.stringify({ channel: "tickets:1" })))[1].error.code, 108);
    assert.equal((await post("presence", JSON.stringify({ channel: "nowhere:1" })))[1].error.code, 102);
    assert.equal((await post("history", JSON.stringify({ channel: "tickets:1" })))[1].error.code, 108);
    assert.equal((await post("publish", "{nope"))[0], 400);
    assert.equal((await post("teleport", "{}"))[0], 404);
    const rows = await db.sql("SELECT count(*) FROM cable_events WHERE payload IS NOT NULL AND stream IN ('', 'tickets:1')");
    assert.match(rows, /\b0\b/, "nothing was published by a refused request");
  });

  test("an expired token gets error 109, and the SDK connects with the one getToken gives", async () => {
    let asked = 0;
    const client = connect(gateways[0].port, {
      token: jwt({ sub: "9", exp: seconds() - 10 }),
      getToken: async () => {
        asked += 1;
        return jwt({ sub: "9", exp: seconds() + 600 });
      },
    });
    const seen = recorder(client);
    client.connect();
    await seen.find("connected with a fresh token", (s) => s.event === "connected");
    assert.equal(asked, 1);
  });

  test("a forged token: the SDK is told 3500 and does not come back", async () => {
    const client = connect(gateways[0].port, { token: `${jwt({ sub: "1" })}x` });
    const seen = recorder(client);
    client.connect();
    const disconnected = await seen.find("disconnected", (s) => s.event === "disconnected");
    assert.equal(disconnected.ctx.code, 3500);
    assert.equal(client.state, "disconnected");
  });

  test("shutdown: 3001, and the SDK starts reconnecting by itself", async () => {
    const doomed = await spawnGateway(db.url, { CABLE_CENTRIFUGO_CONFIG: configFile });
    const client = connect(doomed.port, { token: jwt({ sub: "5" }), minReconnectDelay: 100, maxReconnectDelay: 200 });
    const seen = recorder(client);
    client.connect();
    await seen.find("connected", (s) => s.event === "connected");
    await doomed.kill("SIGTERM");
    const connecting = await seen.find("connecting again", (s) => s.event === "connecting" && s.ctx.code === 3001);
    assert.equal(connecting.ctx.reason, "shutdown");
  });
});
