// Shared by the JS suites: a throwaway database, gateway processes, and a TCP proxy a test can
// sever, for clients that must lose their connection the way a phone on a train does.

import { execFileSync, spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "../..");
export const GATEWAY_BIN = process.env.CABLE_GATEWAY_BIN
  ? path.resolve(process.env.CABLE_GATEWAY_BIN)
  : path.join(REPO, "target/debug/cable-gateway");
export const FIXTURES = path.join(REPO, "fixtures/demo.sql");
export const VERBOSE = process.env.CABLE_JS_VERBOSE === "1";

const COMMAND_TIMEOUT_MS = 30_000; // psql, migrate
const READY_TIMEOUT_MS = 20_000; // gateway start-up until its "listening on" line

/** Runs a command to completion; rejects with its output when it fails or takes too long. */
export function run(command, args, { env = process.env } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), COMMAND_TIMEOUT_MS);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${command}: ${error.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(stdout);
      else {
        const how = signal ? `was killed by ${signal}` : `exited with ${code}`;
        reject(new Error(`${command} ${args.join(" ")} ${how}\n${stderr}${stdout}`));
      }
    });
  });
}

export function psql(url, ...args) {
  return run("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", `--dbname=${url}`, ...args]);
}

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves once `check()` is truthy, polling (for state a test cannot be told about). */
export async function eventually(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * A database of its own, migrated and with the demo fixtures; dropped by `drop()` and, when the
 * process dies first, by an exit hook.
 */
export async function createDatabase(adminUrl, prefix) {
  const name = `${prefix}_${process.pid}_${Date.now()}`;
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  await psql(adminUrl, "-c", `CREATE DATABASE "${name}"`);
  let dropped = false;
  const emergency = () => {
    if (dropped) return;
    try {
      execFileSync("psql", ["-X", "-q", `--dbname=${adminUrl}`, "-c", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`], {
        stdio: "ignore",
        timeout: 10_000,
      });
    } catch {
      // best effort: the cluster is a throwaway one
    }
  };
  process.on("exit", emergency);
  await run(GATEWAY_BIN, ["migrate"], { env: { ...process.env, DATABASE_URL: url.href } });
  await psql(url.href, "-f", FIXTURES);
  return {
    url: url.href,
    sql: (statement) => psql(url.href, "-c", statement),
    async drop() {
      await psql(adminUrl, "-c", `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      dropped = true;
    },
  };
}

const gateways = new Set();
process.on("exit", () => gateways.forEach((child) => child.kill("SIGKILL")));

/** Starts `cable-gateway serve` on a free port; resolves once it prints its listening line. */
export function spawnGateway(databaseUrl, extraEnv = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(GATEWAY_BIN, ["serve", "--listen", "127.0.0.1:0"], {
      env: { ...process.env, DATABASE_URL: databaseUrl, ...extraEnv },
      stdio: ["ignore", "pipe", "pipe"],
    });
    gateways.add(child);
    const exited = new Promise((res) => child.once("exit", (code, signal) => res({ code, signal })));
    exited.then(() => gateways.delete(child));
    let log = "";
    child.stderr.setEncoding("utf8").on("data", (chunk) => {
      log = (log + chunk).slice(-8192);
      if (VERBOSE) process.stderr.write(chunk);
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`gateway printed no "listening on" line in time:\n${log}`));
    }, READY_TIMEOUT_MS);
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      const match = /^cable-gateway listening on 127\.0\.0\.1:(\d+)$/.exec(line.trim());
      if (!match) return;
      clearTimeout(timer);
      resolve({
        port: Number(match[1]),
        pid: child.pid,
        log: () => log,
        kill(signal = "SIGKILL") {
          child.kill(signal);
          return exited;
        },
      });
    });
    child.once("error", (error) => reject(new Error(`cannot start ${GATEWAY_BIN}: ${error.message}`)));
    exited.then(({ code }) => reject(new Error(`gateway exited (${code}) before listening:\n${log}`)));
  });
}

/**
 * A TCP proxy on loopback in front of a gateway. `sever()` cuts every connection at once, like
 * a network change; while `down` it refuses new ones (the client's reconnects fail); `target`
 * can be switched to another gateway.
 */
export function severableProxy(targetPort) {
  return new Promise((resolve) => {
    const open = new Set();
    const proxy = {
      target: targetPort,
      down: false,
      port: 0,
      connections: 0,
      sever() {
        for (const socket of open) socket.destroy();
        open.clear();
      },
      close() {
        proxy.sever();
        return new Promise((res) => server.close(res));
      },
    };
    const server = net.createServer((client) => {
      if (proxy.down) {
        client.destroy();
        return;
      }
      proxy.connections += 1;
      const upstream = net.connect(proxy.target, "127.0.0.1");
      for (const socket of [client, upstream]) {
        open.add(socket);
        socket.on("close", () => open.delete(socket));
        socket.on("error", () => {});
      }
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
    });
    server.listen(0, "127.0.0.1", () => {
      proxy.port = server.address().port;
      resolve(proxy);
    });
  });
}
