// Opens N connections to the gateway (from several 127.0.0.x addresses), optionally subscribes
// each, and prints the gateway's RSS before, after connecting, and after a 20 s idle hold.
import { createRequire } from "node:module";
// `ws` from the directory it is run in (tests/js has it).
const WebSocket = createRequire(`${process.cwd()}/`)("ws");
import { readFileSync } from "node:fs";
const [port, pid, n, subscribe] = process.argv.slice(2).map((x, i) => (i < 3 ? Number(x) : x === "1"));
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) * 1024;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const base = rss();
const started = performance.now();
let confirmed = 0;
let rejected = 0;
const sockets = [];
for (let i = 0; i < n; i++) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/cable`, ["actioncable-v1-json"], { localAddress: `127.0.0.${2 + Math.floor(i / 4000)}` });
  ws.on("message", (m) => {
    const f = JSON.parse(m);
    if (f.type === "welcome") {
      if (subscribe) {
        // PROBE_LAYOUT=groups: the bench's layout (accounts of 100: 20 agents, 80 contacts);
        // otherwise agents only, 20 per account of 100.
        // PROBE_LAYOUT=one: every connection an agent of the bench's one fan-out account.
        const groups = process.env.PROBE_LAYOUT === "groups";
        const one = process.env.PROBE_LAYOUT === "one";
        const a = groups || one ? i : Math.floor(i / 20) * 100 + (i % 20);
        const pad = String(a).padStart(6, "0");
        const id = one
          ? JSON.stringify({ channel: "RoomChannel", pubsub_token: `bench-u-${pad}`, account_id: 9000, user_id: 900000000 + a })
          : JSON.stringify(groups && a % 100 >= 20
          ? { channel: "RoomChannel", pubsub_token: `bench-c-${pad}`, account_id: 9001 + Math.floor(a / 100) }
          : { channel: "RoomChannel", pubsub_token: `bench-u-${pad}`, account_id: 9001 + Math.floor(a / 100), user_id: 900000000 + a });
        ws.send(JSON.stringify({ command: "subscribe", identifier: id }));
      } else confirmed++;
    }
    if (f.type === "confirm_subscription") confirmed++;
    if (f.type === "reject_subscription") { rejected++; confirmed++; }
  });
  sockets.push(ws);
  if (process.env.PROBE_PACE !== "0" && i % 500 === 499) await sleep(50);
}
while (confirmed < n) await sleep(100);
const connected = rss();
const confirmedAfterMs = Math.round(performance.now() - started);
console.error("all confirmed");
const samples = [];
if (process.env.PROBE_TRIM_PAUSE) { console.error("trim now"); await sleep(Number(process.env.PROBE_TRIM_PAUSE)); }
for (let k = 0; k < (process.env.PROBE_SAMPLES ? Number(process.env.PROBE_SAMPLES) : 6); k++) { await sleep(10000); samples.push(Math.round((rss() - base) / n)); }
console.log(JSON.stringify({ n, subscribe, rejected, confirmed_after_ms: confirmedAfterMs, base, per_conn_connected: Math.round((connected - base) / n), per_conn_every_10s: samples }));
process.exit(0);
