// The soak's clients, three kinds, each the official library as shipped (only its reconnect
// delays shortened where it takes a strategy):
//   plain    @rails/actioncable, a user's dashboard tab
//   contact  @rails/actioncable, a contact's chat widget
//   ext      @anycable/core with actioncable-v1-ext-json (session restore, history)
// Each records what it received (with when and, for ext, the position) and, for the plain
// kinds, when its subscription was confirmed and when it lost it.

import { createRequire } from "node:module";
import { ActionCableExtendedProtocol, ActionCableProtocol, JSONEncoder, createCable } from "@anycable/core";
import WebSocket from "ws";
import { params } from "./world.mjs";

const require = createRequire(import.meta.url);
const ActionCable = require("@rails/actioncable");

// @rails/actioncable under Node, as tests/js/actioncable.test.mjs explains: `ws` as its
// WebSocket, and no-op page visibility listeners. Its subscriptions hear of a lost connection
// only when the socket's close completes, which against a frozen server takes `ws`' close
// timeout (30 s) after the client gave up on it: the socket tells its client itself, at once.
globalThis.addEventListener ??= () => {};
globalThis.removeEventListener ??= () => {};
const byUrl = new Map();
ActionCable.adapters.WebSocket = class TellingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    this.client = byUrl.get(url);
    if (this.client) this.client.socket = this;
    this.on("close", () => this.lost());
  }

  close(...args) {
    this.lost();
    return super.close(...args);
  }

  /** Only the client's current socket speaks for it (an old one may close late). */
  lost() {
    if (this.client?.socket === this) this.client.disconnected();
  }
};
ActionCable.logger.enabled = false;

class Client {
  constructor(kind, principal) {
    this.kind = kind;
    this.principal = principal;
    this.received = [];
    this.intervals = [];
    this.presence = null;
    this.confirmed = false;
    this.subscribes = 0;
  }

  record(message, meta) {
    if (message?.event === "presence.update") {
      this.presence = { at: Date.now(), data: message.data };
      return;
    }
    this.received.push({ at: Date.now(), message, meta });
  }

  connected() {
    this.disconnected();
    this.confirmed = true;
    this.subscribes += 1;
    this.intervals.push([Date.now(), Infinity]);
  }

  disconnected() {
    if (!this.confirmed) return;
    this.confirmed = false;
    this.intervals[this.intervals.length - 1][1] = Date.now();
  }
}

/** A @rails/actioncable consumer with one RoomChannel subscription. */
export class PlainClient extends Client {
  constructor(kind, principal, url) {
    super(kind, principal);
    const own = `${url}?client=${byUrl.size}`;
    byUrl.set(own, this);
    this.consumer = ActionCable.createConsumer(own);
    const self = this;
    this.subscription = this.consumer.subscriptions.create(params(principal), {
      connected() {
        self.connected();
      },
      disconnected() {
        self.disconnected();
      },
      rejected() {
        self.rejected = (self.rejected ?? 0) + 1;
      },
      received(message) {
        self.record(message, null);
      },
    });
  }

  close() {
    this.disconnected();
    this.consumer.disconnect();
  }

  /** Where the client stands, for a report on one that did not come back. */
  state() {
    const connection = this.consumer.connection;
    return `socket ${connection.getState()}, monitor ${connection.monitor.isRunning() ? "running" : "stopped"}, ` +
      `subscriptions ${this.consumer.subscriptions.subscriptions.length}, rejected ${this.rejected ?? 0}`;
  }
}

/**
 * @anycable/core 1.1.7's extended protocol with its one known bug mended (README, "Reliable
 * streams": a known client issue). Its `reset(err)` calls the plain protocol's `reset()`
 * without the error, so a subscribe still waiting for its confirm when the connection drops
 * is rejected with `undefined`, which the cable takes for a failure: the channel is closed
 * for good instead of subscribed again on the next connect. Under the soak's faults (a
 * connection dropped every few seconds somewhere) that ends channels of unmodified clients
 * that no server can keep open. This passes the error on, as the plain protocol does, and
 * counts how often a subscribe was pending then.
 */
class MendedExtendedProtocol extends ActionCableExtendedProtocol {
  static pendingAtReset = 0;

  reset(err) {
    MendedExtendedProtocol.pendingAtReset += Object.keys(this.pendingSubscriptions).length;
    for (const identifier in this.pendingPresence) this.pendingPresence[identifier].reject(err);
    this.pendingPresence = {};
    return ActionCableProtocol.prototype.reset.call(this, err);
  }
}

/** How many pending subscribes the mended reset kept alive (each would have closed a channel). */
export const pendingAtReset = () => MendedExtendedProtocol.pendingAtReset;

/** An @anycable/core cable with the extended protocol and one RoomChannel subscription. */
export class ExtClient extends Client {
  constructor(principal, url, random) {
    super("ext", principal);
    this.transcript = [];
    this.cable = createCable(url, {
      protocol: new MendedExtendedProtocol(),
      subprotocol: "actioncable-v1-ext-json",
      encoder: new JSONEncoder(),
      websocketFormat: "text",
      websocketImplementation: tracedWebSocket(this.transcript),
      logLevel: "error",
      reconnectStrategy: () => random.int(200, 1500),
    });
    this.historyNotFound = 0;
    this.channel = this.cable.subscribeTo("RoomChannel", params(principal));
    this.channel.on("message", (message, meta) => {
      this.record(message, meta);
      // What the application got, beside what the socket carried: a frame the client dropped
      // (its socket already given up) shows on the socket's lines only.
      if (meta?.stream?.startsWith("cable_events/")) {
        this.transcript.push({ at: new Date().toISOString().slice(11, 23), socket: "app", stream: "outbox", offset: meta.offset });
      } else if (message?.data?.src) {
        this.transcript.push({ at: new Date().toISOString().slice(11, 23), socket: "app", text: `got ${message.data.src}#${message.data.seq} ${meta?.stream ?? "-"} ${meta?.offset ?? "-"}` });
      }
    });
    this.channel.on("connect", () => this.connected());
    this.channel.on("disconnect", () => this.disconnected());
    this.channel.on("info", (info) => {
      if (info.type === "history_not_found") this.historyNotFound += 1;
    });
  }

  close() {
    this.disconnected();
    this.cable.disconnect();
  }

  state() {
    return `cable ${this.cable.state}, channel ${this.channel.state}, history_not_found ${this.historyNotFound}`;
  }

  /** The transcript as text: one line per frame but pings, runs of messages on one stream folded. */
  transcriptText() {
    const lines = [];
    let run = null;
    const flush = () => {
      if (run) lines.push(`${run.at} ${run.socket === "app" ? "app got" : `#${run.socket} <`} ${run.stream} ${run.from}..${run.to} (${run.n})`);
      run = null;
    };
    for (const entry of this.transcript) {
      if (entry.stream !== undefined) {
        if (run && run.socket === entry.socket && run.stream === entry.stream) {
          run.to = entry.offset;
          run.n += 1;
          continue;
        }
        flush();
        run = { at: entry.at, socket: entry.socket, stream: entry.stream, from: entry.offset, to: entry.offset, n: 1 };
        continue;
      }
      flush();
      lines.push(`${entry.at} ${entry.socket === "app" ? "app" : `#${entry.socket}`} ${entry.text}`);
    }
    flush();
    return lines.join("\n") + "\n";
  }
}

/**
 * A `ws` WebSocket that writes what goes over it into `transcript` (pings left out, a
 * message kept as its stream and offset): what an ext client that missed something saw.
 */
function tracedWebSocket(transcript) {
  let sockets = 0;
  const note = (socket, text) => transcript.push({ at: new Date().toISOString().slice(11, 23), socket, text });
  return class TracedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.number = ++sockets;
      note(this.number, "connecting");
      this.on("open", () => note(this.number, `open :${this._socket?.localPort}`));
      this.on("close", (code, reason) => note(this.number, `closed ${code} ${reason}`));
      this.on("message", (data) => {
        let frame;
        try {
          frame = JSON.parse(data.toString());
        } catch {
          return note(this.number, `< unparsable ${data.toString().slice(0, 80)}`);
        }
        if (frame.type === "ping") return;
        if (frame.message !== undefined && frame.type === undefined) {
          const seq = frame.message?.data?.src ? `${frame.message.data.src}#${frame.message.data.seq}` : "?";
          if (frame.stream_id?.startsWith("cable_events/")) {
            return transcript.push({ at: new Date().toISOString().slice(11, 23), socket: this.number, stream: "outbox", offset: frame.offset });
          }
          return note(this.number, `< ${seq} ${frame.stream_id ?? "-"} ${frame.offset ?? "-"}`);
        }
        note(this.number, `< ${JSON.stringify(frame)}`);
      });
    }

    send(data, ...rest) {
      note(this.number, `> ${typeof data === "string" ? data : data.toString()}`);
      return super.send(data, ...rest);
    }
  };
}

/**
 * The fleet: `total` clients in the soak's proportions (39% contacts, 31% ext users, 30%
 * plain users), principals taken in turn; resolves once every subscription is confirmed.
 */
export async function connectFleet(world, url, total, random) {
  const users = world.accounts.flatMap((account) => account.users);
  const contacts = world.accounts.flatMap((account) => account.contacts);
  const counts = { contact: Math.round(total * 0.39), ext: Math.round(total * 0.31) };
  counts.plain = total - counts.contact - counts.ext;
  const clients = [];
  for (let i = 0; i < counts.contact; i += 1) clients.push(new PlainClient("contact", contacts[i % contacts.length], url));
  for (let i = 0; i < counts.ext; i += 1) clients.push(new ExtClient(users[i % users.length], url, random));
  for (let i = 0; i < counts.plain; i += 1) clients.push(new PlainClient("plain", users[(i + 7) % users.length], url));
  await waitFor(() => clients.every((client) => client.confirmed), 60_000, "every client's first confirm");
  return clients;
}

export async function waitFor(check, ms, what) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
