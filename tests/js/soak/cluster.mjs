// The soak's infrastructure, and the faults it suffers: gateway processes (killed, stopped,
// restarted), a load balancer that health-checks them on /ready and can cut every client's TCP
// connection, redis-server, and the private PostgreSQL cluster of scripts/soak.

import { spawn, execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { GATEWAY_BIN, REPO } from "../harness.mjs";

const READY_TIMEOUT_MS = 30_000;
const HEALTH_EVERY_MS = 250;

/** A free loopback port (for servers that must come back on the same one). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const children = new Set();
process.on("exit", () => children.forEach((child) => child.kill("SIGKILL")));

/**
 * One gateway slot: a `cable-gateway serve` process that can be killed, stopped and started
 * again (on a new port). Every incarnation's log is kept for the panic check.
 */
export class Gateway {
  constructor(slot, env) {
    this.slot = slot;
    this.env = env;
    this.child = null;
    this.port = 0;
    this.logs = [];
    this.exited = null;
  }

  start() {
    return new Promise((resolve, reject) => {
      const child = spawn(GATEWAY_BIN, ["serve", "--listen", "127.0.0.1:0"], {
        env: { ...process.env, ...this.env },
        stdio: ["ignore", "pipe", "pipe"],
      });
      children.add(child);
      const log = { pid: child.pid, text: "" };
      this.logs.push(log);
      child.stderr.setEncoding("utf8").on("data", (chunk) => {
        log.text += chunk;
        if (process.env.CABLE_SOAK_VERBOSE === "1") process.stderr.write(`[gw${this.slot}] ${chunk}`);
      });
      this.exited = new Promise((res) =>
        child.once("exit", (code, signal) => {
          children.delete(child);
          res({ code, signal });
        }),
      );
      const timer = setTimeout(() => reject(new Error(`gateway ${this.slot} did not listen:\n${log.text}`)), READY_TIMEOUT_MS);
      readline.createInterface({ input: child.stdout }).on("line", (line) => {
        const match = /^cable-gateway listening on 127\.0\.0\.1:(\d+)$/.exec(line.trim());
        if (!match) return;
        clearTimeout(timer);
        this.child = child;
        this.port = Number(match[1]);
        resolve(this);
      });
      this.exited.then(({ code }) => reject(new Error(`gateway ${this.slot} exited (${code}):\n${log.text}`)));
    });
  }

  get pid() {
    return this.child?.pid;
  }

  /** Resident memory in KB (VmRSS), or null if the process is gone. */
  rssKb() {
    try {
      const status = readFileSync(`/proc/${this.pid}/status`, "utf8");
      return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
    } catch {
      return null;
    }
  }

  signal(name) {
    this.child?.kill(name);
  }

  /** Sends `signal` and waits for the exit; returns how long it took (ms). */
  async stop(signal) {
    const started = Date.now();
    this.child.kill(signal);
    const exit = await this.exited;
    this.child = null;
    return { ms: Date.now() - started, ...exit };
  }
}

async function ready(port) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 400);
  try {
    const response = await fetch(`http://127.0.0.1:${port}/ready`, { signal: controller.signal });
    return response.status === 200;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A TCP load balancer in front of the gateways: each new connection goes to a random gateway
 * whose `/ready` answered 200 at the last check (every 250 ms), as a real one does with a
 * health check. `cut(fraction)` destroys that share of the open connections at once.
 */
export class Balancer {
  constructor(gateways, random) {
    this.gateways = gateways;
    this.random = random;
    this.healthy = new Map();
    this.open = new Set();
    this.routes = [];
    this.timer = null;
  }

  async start() {
    await this.check();
    this.timer = setInterval(() => this.check(), HEALTH_EVERY_MS);
    this.server = net.createServer((client) => this.route(client));
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
    return this;
  }

  async check() {
    await Promise.all(
      this.gateways.map(async (gateway) => {
        this.healthy.set(gateway.slot, gateway.child !== null && (await ready(gateway.port)));
      }),
    );
  }

  allHealthy() {
    return this.gateways.every((gateway) => this.healthy.get(gateway.slot));
  }

  route(client) {
    const up = this.gateways.filter((gateway) => this.healthy.get(gateway.slot));
    client.on("error", () => {});
    if (up.length === 0) {
      client.destroy();
      return;
    }
    const chosen = this.random.pick(up);
    // Which gateway each connection went to (by the client's port), for a transcript's reader.
    this.routes.push(`${new Date().toISOString().slice(11, 23)} :${client.remotePort} gw${chosen.slot}`);
    const upstream = net.connect(chosen.port, "127.0.0.1");
    const pair = { client, upstream };
    this.open.add(pair);
    upstream.on("error", () => {});
    const close = () => {
      this.open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", close);
    upstream.on("close", close);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Cuts `fraction` of the open connections, as a network change does; returns how many. */
  cut(fraction) {
    const victims = [...this.open].filter(() => this.random.next() < fraction);
    for (const { client, upstream } of victims) {
      client.destroy();
      upstream.destroy();
    }
    return victims.length;
  }

  close() {
    clearInterval(this.timer);
    for (const { client, upstream } of this.open) {
      client.destroy();
      upstream.destroy();
    }
    return new Promise((resolve) => this.server.close(resolve));
  }
}

/** redis-server on a fixed port, restartable there. */
export class Redis {
  constructor(port) {
    this.port = port;
    this.child = null;
  }

  start() {
    return new Promise((resolve, reject) => {
      const child = spawn(
        "redis-server",
        ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      children.add(child);
      child.once("exit", () => children.delete(child));
      let out = "";
      const timer = setTimeout(() => reject(new Error(`redis-server did not start: ${out}`)), READY_TIMEOUT_MS);
      child.stdout.setEncoding("utf8").on("data", (chunk) => {
        out += chunk;
        if (/Ready to accept connections/.test(out)) {
          clearTimeout(timer);
          this.child = child;
          resolve(this);
        }
      });
    });
  }

  async restart() {
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGKILL");
    await exited;
    await this.start();
  }

  stop() {
    this.child?.kill("SIGKILL");
  }
}

/** Stops the private PostgreSQL cluster (fast: every connection is cut) and starts it again. */
export function restartPostgres() {
  const script = `source ${path.join(REPO, "scripts/lib/pg.sh")} && pg_cluster_pause && pg_cluster_resume`;
  return new Promise((resolve, reject) => {
    execFile("bash", ["-c", script], { timeout: 60_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`restarting PostgreSQL failed: ${stderr}${stdout}`));
      else resolve();
    });
  });
}
