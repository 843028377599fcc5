// The soak's publishers, one per ingress, each the way a backend publishes:
//   o1, o2   outbox rows (o2 holds its transactions open a while: commits out of id order)
//   pg       Rails' PostgreSQL adapter (tests/rails/broadcast.rb, ActionCable.server.broadcast)
//   redis    Rails' Redis adapter, with a Chatwoot-style channel prefix (the same script)
//   http     POST /_broadcast, through the load balancer
// Every publication carries {src, seq} in its data, and is logged with when it was sent and
// whether it is known to have been accepted (a failure mid-request leaves that unknown).

import { spawn } from "node:child_process";
import path from "node:path";
import readline from "node:readline";
import pg from "pg";
import { REPO } from "../harness.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const BROADCAST_TIMEOUT_MS = 5_000;

/** An outbox row for one conversation-shaped event of a random kind. */
function outboxRow(world, random, src, seq) {
  const account = random.pick(world.accounts);
  const contact = random.pick(account.contacts);
  const data = { src, seq };
  const row = { account_id: account.id, event: "message.created", data, inbox_id: null, contact_inbox_ids: null, user_id: null, private: false, stream: null };
  switch (random.pick(["inbox", "inbox", "private", "user", "account", "stream"])) {
    case "inbox":
      Object.assign(row, { inbox_id: contact.inbox, contact_inbox_ids: [contact.ci] });
      data.ci = [contact.ci];
      break;
    case "private":
      Object.assign(row, { inbox_id: contact.inbox, contact_inbox_ids: [contact.ci], private: true });
      Object.assign(data, { ci: [contact.ci], private: true });
      break;
    case "user": {
      const user = random.pick(account.users);
      Object.assign(row, { event: "notification.created", user_id: user.id });
      data.u = user.id;
      break;
    }
    case "account":
      Object.assign(row, { event: "conversation.status_changed", contact_inbox_ids: [contact.ci] });
      data.ci = [contact.ci];
      break;
    default: {
      const target = random.next() < 0.5 ? random.pick(account.users) : contact;
      row.stream = target.token;
      data.s = target.token;
      if (target.kind === "contact") data.ci = [target.ci];
    }
  }
  return row;
}

/** A broadcast as Chatwoot sends one: to a user's token, an account stream, or a contact's token. */
function broadcast(world, random, src, seq) {
  const account = random.pick(world.accounts);
  const roll = random.next();
  const data = { src, seq };
  let stream;
  if (roll < 0.35) stream = random.pick(account.users).token;
  else if (roll < 0.55) stream = `account_${account.id}`;
  else {
    const contact = random.pick(account.contacts);
    stream = contact.token;
    data.ci = [contact.ci];
    if (random.next() < 0.33) data.private = true;
  }
  data.s = stream;
  return { stream, payload: { event: "message.created", data } };
}

/** Runs `once(seq)` every `1000 / rate` ms until stopped; each call logs one publication. */
function paced(rate, log, src, once) {
  let running = true;
  const done = (async () => {
    for (let seq = 1; running; seq += 1) {
      const t0 = Date.now();
      let ok = false;
      let detail = null;
      try {
        detail = await once(seq);
        ok = true;
      } catch (error) {
        // What was being published stays known (`intended`): it may have gone out anyway.
        detail = { ...error.intended, error: String(error.message ?? error).slice(0, 200) };
      }
      log.push({ src, seq, t0, t1: Date.now(), ok, ...detail });
      await sleep(Math.max(0, 1000 / rate - (Date.now() - t0)));
    }
  })();
  return { stop: () => ((running = false), done) };
}

/** A pg client that reconnects after the database restarts. */
function reconnecting(url) {
  let client = null;
  return async (run) => {
    if (!client) {
      const fresh = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
      fresh.on("error", () => {});
      await fresh.connect();
      client = fresh;
    }
    try {
      return await run(client);
    } catch (error) {
      client.end().catch(() => {});
      client = null;
      throw error;
    }
  };
}

const INSERT = `INSERT INTO cable_events (account_id, event, data, inbox_id, contact_inbox_ids, user_id, private, stream)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`;

function outbox(url, world, random, rate, log, src, holdMs) {
  const db = reconnecting(url);
  return paced(rate, log, src, (seq) =>
    db(async (client) => {
      const row = outboxRow(world, random, src, seq);
      const values = [row.account_id, row.event, JSON.stringify(row.data), row.inbox_id, row.contact_inbox_ids, row.user_id, row.private, row.stream];
      if (!holdMs) return { id: Number((await client.query(INSERT, values)).rows[0].id) };
      await client.query("BEGIN");
      const id = Number((await client.query(INSERT, values)).rows[0].id);
      await sleep(random.int(holdMs[0], holdMs[1]));
      await client.query("COMMIT");
      return { id };
    }),
  );
}

/** tests/rails/broadcast.rb with one adapter, started again whenever it fails. */
function rails(adapter, env, world, random, rate, log) {
  let child = null;
  let lines = null;
  const start = () =>
    new Promise((resolve, reject) => {
      const proc = spawn("ruby", [path.join(REPO, "tests/rails/broadcast.rb")], {
        env: { ...process.env, CABLE_ADAPTER: adapter, ...env },
        stdio: ["pipe", "pipe", "ignore"],
      });
      const queue = [];
      const waiters = [];
      readline.createInterface({ input: proc.stdout }).on("line", (line) => {
        if (line.startsWith("ready")) resolve();
        else if (waiters.length) waiters.shift()(line);
        else queue.push(line);
      });
      proc.once("exit", () => {
        reject(new Error(`the ${adapter} broadcaster exited`));
        waiters.splice(0).forEach((waiter) => waiter("error exited"));
        if (child === proc) child = null;
      });
      child = proc;
      lines = () => new Promise((res) => (queue.length ? res(queue.shift()) : waiters.push(res)));
    });
  const src = adapter === "postgresql" ? "pg" : "redis";
  return paced(rate, log, src, async (seq) => {
    if (!child) await start();
    const { stream, payload } = broadcast(world, random, src, seq);
    const proc = child;
    proc.stdin.write(`${stream}\t${JSON.stringify(payload)}\n`);
    let timer;
    const answer = await Promise.race([lines(), new Promise((res) => (timer = setTimeout(() => res("error timeout"), BROADCAST_TIMEOUT_MS)))]);
    clearTimeout(timer);
    if (answer !== "sent") {
      proc.kill("SIGKILL");
      child = null;
      throw Object.assign(new Error(answer), { intended: { stream, payload } });
    }
    return { stream, payload };
  });
}

function http(balancerPort, key, world, random, rate, log) {
  return paced(rate, log, "http", async (seq) => {
    const { stream, payload } = broadcast(world, random, "http", seq);
    const response = await fetch(`http://127.0.0.1:${balancerPort}/_broadcast`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ stream, data: JSON.stringify(payload) }),
      signal: AbortSignal.timeout(BROADCAST_TIMEOUT_MS),
    });
    await response.text();
    if (response.status !== 201) throw new Error(`status ${response.status}`);
    return { stream, payload };
  });
}

/** Starts every publisher; `stop()` stops them all and resolves with the publication log. */
export function startPublishers({ databaseUrl, redisUrl, prefix, balancerPort, key, world, random }) {
  const log = [];
  const running = [
    outbox(databaseUrl, world, random, 12, log, "o1", null),
    outbox(databaseUrl, world, random, 3, log, "o2", [20, 200]),
    rails("postgresql", { DATABASE_URL: databaseUrl, CHANNEL_PREFIX: prefix }, world, random, 4, log),
    rails("redis", { REDIS_URL: redisUrl, CHANNEL_PREFIX: prefix }, world, random, 4, log),
    http(balancerPort, key, world, random, 4, log),
  ];
  return {
    log,
    async stop() {
      await Promise.all(running.map((publisher) => publisher.stop()));
      return log;
    },
  };
}
