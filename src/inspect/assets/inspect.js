// The inspector page: polls /inspect/data every second and draws what it says. Data goes into
// the page through textContent only (never as HTML).
"use strict";

(function () {
  const POLL_MS = 1000;
  const token = new URLSearchParams(location.search).get("token");
  const dataUrl = "/inspect/data" + (token ? "?token=" + encodeURIComponent(token) : "");
  const $ = (id) => document.getElementById(id);
  const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 }));
  const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");
  const lasted = (ms) => (ms < 1000 ? ms + " ms" : ms < 60000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms / 60000) + " min");

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fill(tbody, items, render) {
    const rows = items.map((item) => {
      const tr = document.createElement("tr");
      render(tr, item);
      return tr;
    });
    tbody.replaceChildren(...rows);
  }

  const charts = {};
  function chart(id, series) {
    const el = $(id);
    const opts = {
      width: Math.max(300, el.clientWidth - 12),
      height: 190,
      scales: { x: { time: true } },
      series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: true }))],
      axes: [{}, { size: 56 }],
      legend: { live: false },
    };
    charts[id] = new uPlot(opts, [[], ...series.map(() => [])], el);
  }
  chart("chart-throughput", [["events read/s", "#3566d6"], ["messages/s", "#1f8a4c"]]);
  chart("chart-lag", [["outbox lag p99", "#b9770e"]]);
  chart("chart-latency", [["p50", "#3566d6"], ["p99", "#c0392b"]]);

  function render(data) {
    $("total-connections").textContent = number(data.totals.connections);
    $("total-subscriptions").textContent = number(data.totals.subscriptions);
    $("total-user-subscriptions").textContent = number(data.totals.user_subscriptions);
    $("total-contact-subscriptions").textContent = number(data.totals.contact_subscriptions);
    $("total-accounts").textContent = number(data.totals.accounts);
    $("events-per-s").textContent = number(data.rates.events_read_per_s);
    $("messages-per-s").textContent = number(data.rates.messages_sent_per_s);

    $("ingress").replaceChildren(
      ...data.ingress.map((ingress) => {
        const state = !ingress.enabled ? "off" : ingress.up === false ? "down" : "up";
        const li = document.createElement("li");
        li.dataset.ingress = ingress.name;
        li.dataset.state = state;
        const name = document.createElement("strong");
        name.textContent = ingress.name + " ";
        const status = document.createElement("span");
        status.className = state;
        status.textContent = ingress.enabled && ingress.up === null ? "on" : state;
        li.append(name, status);
        if (ingress.target) {
          const target = document.createElement("div");
          target.className = "muted";
          target.textContent = ingress.target;
          li.append(target);
        }
        return li;
      }),
    );

    const shown = data.accounts.length;
    $("accounts-note").textContent =
      data.totals.accounts > shown ? `(largest ${shown} of ${data.totals.accounts})` : `(${data.totals.accounts})`;
    fill($("accounts").tBodies[0], data.accounts, (tr, account) => {
      tr.dataset.account = account.account_id;
      cell(tr, account.account_id, "account");
      cell(tr, number(account.connections), "connections");
      cell(tr, number(account.subscriptions), "subscriptions");
      cell(tr, number(account.user_subscriptions), "users");
      cell(tr, number(account.contact_subscriptions), "contacts");
      cell(tr, number(account.online.users), "online-users");
      cell(tr, number(account.online.contacts), "online-contacts");
      const ids = [
        ...account.online.user_ids.map((id) => "u" + id),
        ...account.online.contact_ids.map((id) => "c" + id),
      ];
      const more = account.online.users + account.online.contacts - ids.length;
      cell(tr, ids.join(" ") + (more > 0 ? ` +${more}` : ""), "online-ids");
    });

    fill($("disconnects").tBodies[0], data.disconnects, (tr, d) => {
      cell(tr, clock(d.at));
      cell(tr, d.reason, "reason");
      cell(tr, d.who ?? "–");
      cell(tr, d.account_id ?? "–");
      cell(tr, d.token ?? "–");
      cell(tr, d.subscriptions);
      cell(tr, lasted(d.duration_ms));
    });

    const s = data.series;
    charts["chart-throughput"].setData([s.t, s.events_read_per_s, s.messages_sent_per_s]);
    charts["chart-lag"].setData([s.t, s.outbox_lag_p99_ms]);
    charts["chart-latency"].setData([s.t, s.delivery_p50_ms, s.delivery_p99_ms]);

    $("status").textContent = `updated ${clock(data.generated_at)} · up ${lasted(data.uptime_s * 1000)} · v${data.version}`;
    document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
    document.body.dataset.generatedAt = String(data.generated_at);
  }

  async function poll() {
    try {
      const response = await fetch(dataUrl, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
    } catch (error) {
      $("status").textContent = `cannot read the gateway: ${error.message}`;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
