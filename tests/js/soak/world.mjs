// The soak's world: accounts, users, contacts and their tokens, the SQL that creates them, a
// seeded random source, and the oracle of who is entitled to what (docs/reference.md §4 rules 1–5 and
// §7's contact safety), written here independently of the gateway's own implementation.

export const CONTACT_EVENTS = new Set([
  "conversation.created",
  "conversation.status_changed",
  "message.created",
  "message.updated",
  "conversation.typing_on",
  "conversation.typing_off",
  "presence.update",
]);

/** mulberry32: a small seeded generator, good enough to draw a schedule and traffic from. */
export function rng(seed) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (items) => items[Math.floor(next() * items.length)],
    shuffle(items) {
      const out = [...items];
      for (let i = out.length - 1; i > 0; i -= 1) {
        const j = Math.floor(next() * (i + 1));
        [out[i], out[j]] = [out[j], out[i]];
      }
      return out;
    },
  };
}

const ACCOUNTS = 5;
const USERS_PER_ACCOUNT = 12;
const CONTACTS_PER_ACCOUNT = 40;

/** Accounts 101..105, each with two inboxes, an administrator, agents, and contact sessions. */
export function makeWorld() {
  const accounts = [];
  for (let i = 0; i < ACCOUNTS; i += 1) {
    const id = 101 + i;
    const inboxes = [id * 10 + 1, id * 10 + 2];
    const users = [];
    for (let j = 0; j < USERS_PER_ACCOUNT; j += 1) {
      const userId = 1000 + i * USERS_PER_ACCOUNT + j;
      const admin = j === 0;
      const memberOf = admin ? [] : j === USERS_PER_ACCOUNT - 1 ? inboxes : [inboxes[j % 2]];
      users.push({ kind: "user", id: userId, account: id, admin, inboxes: memberOf, token: `soak-u-${userId}` });
    }
    const contacts = [];
    for (let k = 0; k < CONTACTS_PER_ACCOUNT; k += 1) {
      const ci = 1000 + i * CONTACTS_PER_ACCOUNT + k;
      contacts.push({ kind: "contact", id: ci, ci, account: id, inbox: inboxes[k % 2], token: `soak-c-${ci}` });
    }
    accounts.push({ id, inboxes, users, contacts });
  }
  return { accounts };
}

/** The rows of the world, for a database that already holds the demo fixtures. */
export function worldSql(world) {
  const users = [];
  const accountUsers = [];
  const members = [];
  const contacts = [];
  const sessions = [];
  for (const account of world.accounts) {
    for (const u of account.users) {
      users.push(`(${u.id}, 'Soak ${u.id}', '${u.token}')`);
      accountUsers.push(`(${account.id}, ${u.id}, ${u.admin ? 1 : 0}, 0, true)`);
      for (const inbox of u.inboxes) members.push(`(${u.id}, ${inbox})`);
    }
    for (const c of account.contacts) {
      contacts.push(`(${c.id}, 'Visitor ${c.id}', ${account.id})`);
      sessions.push(`(${c.ci}, ${c.id}, ${c.inbox}, 'soak-${c.ci}', '${c.token}')`);
    }
  }
  return `BEGIN;
INSERT INTO users (id, name, pubsub_token) VALUES ${users.join(", ")};
INSERT INTO account_users (account_id, user_id, role, availability, auto_offline) VALUES ${accountUsers.join(", ")};
INSERT INTO inbox_members (user_id, inbox_id) VALUES ${members.join(", ")};
INSERT INTO contacts (id, name, account_id) VALUES ${contacts.join(", ")};
INSERT INTO contact_inboxes (id, contact_id, inbox_id, source_id, pubsub_token) VALUES ${sessions.join(", ")};
COMMIT;`;
}

/** The identifier of a principal's RoomChannel subscription. */
export function params(principal) {
  return principal.kind === "user"
    ? { channel: "RoomChannel", pubsub_token: principal.token, account_id: principal.account, user_id: principal.id }
    : { channel: "RoomChannel", pubsub_token: principal.token, account_id: principal.account };
}

/** The streams a subscription streams (§7): its token; users also `account_<id>`. */
export function streamsOf(principal) {
  return principal.kind === "user" ? [principal.token, `account_${principal.account}`] : [principal.token];
}

/** Whether a payload (`{event, data}`) may reach a contact through stream ingress (§7). */
export function contactsMayReceive(payload) {
  const data = payload?.data;
  if (!data || typeof data !== "object") return true;
  if (data.private === true) return false;
  const typing = payload.event === "conversation.typing_on" || payload.event === "conversation.typing_off";
  return !(typing && data.is_private === true);
}

/**
 * Whether a subscription of `principal` receives an outbox row (as read back from
 * cable_events): an event by §4's rules, or a broadcast row (payload set) by §7's.
 */
export function entitled(principal, row) {
  if (row.payload !== null) {
    if (!streamsOf(principal).includes(row.stream)) return false;
    return principal.kind === "user" || contactsMayReceive(JSON.parse(row.payload));
  }
  if (Number(row.account_id) !== principal.account) return false;
  const contact = principal.kind === "contact";
  let scoped;
  if (row.stream !== null) scoped = streamsOf(principal).includes(row.stream);
  else if (row.user_id !== null) scoped = !contact && Number(row.user_id) === principal.id;
  else if (row.inbox_id !== null) {
    scoped = contact
      ? (row.contact_inbox_ids ?? []).map(Number).includes(principal.ci)
      : principal.admin || principal.inboxes.includes(Number(row.inbox_id));
  } else scoped = contact ? (row.contact_inbox_ids ?? []).map(Number).includes(principal.ci) : true;
  if (!scoped) return false;
  return !contact || (!row.private && CONTACT_EVENTS.has(row.event));
}
