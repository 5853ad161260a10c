// amqpd dashboard: plain JavaScript over the management JSON API, no build step.
//
// Every page is a function that builds its static parts once and returns an update
// function; the router calls it every POLL_MS while the tab is visible. Lists are paged,
// sorted and filtered by the server (page, page_size, name, sort), so a broker with
// thousands of queues costs one page of rows per refresh. All text goes in through
// textContent: queue and client names are never parsed as HTML.
(function () {
  "use strict";

  const POLL_MS = 5000;
  const HISTORY_POINTS = 720; // one hour of 5 s samples, kept only while the page is open
  const COLORS = ["#2f6fde", "#8e44ad", "#16a085", "#2e7d32", "#e67e22", "#c62828"];
  const main = document.getElementById("main");
  const statusEl = document.getElementById("status");
  const alarmsEl = document.getElementById("alarms");
  let generation = 0;
  let timer = null;
  let charts = [];

  // -- small helpers ----------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  // Absolute URLs from the origin: a page opened as http://user:pass@host/ has the
  // credentials in its own URL, and fetch refuses URLs resolved against it. The browser
  // still sends the Basic credentials it used for the page (same origin, same realm).
  const BASE = location.origin + location.pathname.replace(/[^/]*$/, "");

  async function api(path) {
    const response = await fetch(BASE + path, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) {
      let reason = response.statusText;
      try { reason = (await response.json()).reason || reason; } catch (e) { /* not JSON */ }
      const error = new Error(`${path}: ${response.status} ${reason}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  const enc = encodeURIComponent;
  const intFmt = new Intl.NumberFormat("en-US");
  function fmtInt(n) { return n === null || n === undefined ? "–" : intFmt.format(n); }
  function fmtRate(r) {
    if (r === null || r === undefined) return "–";
    return (Math.abs(r) >= 100 ? intFmt.format(Math.round(r)) : r.toFixed(1)) + "/s";
  }
  function fmtPct(x) { return x === null || x === undefined ? "–" : Math.round(x * 100) + "%"; }
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  function fmtShort(n) {
    if (n === null || n === undefined) return "";
    const a = Math.abs(n);
    if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (n / 1e3).toFixed(0) + "k";
    return String(Math.round(n * 10) / 10);
  }
  function rateOf(stats, name) {
    const detail = stats && stats[name + "_details"];
    return detail ? detail.rate : 0;
  }
  function clientName(props) {
    if (!props) return "";
    if (props.connection_name) return String(props.connection_name);
    return [props.product, props.version].filter(Boolean).join(" ");
  }
  function queueLink(vhost, name) {
    return h("a", { href: `#/queue/${enc(vhost)}/${enc(name)}` }, name);
  }
  function exchangeLink(vhost, name) {
    return h("a", { href: `#/exchange/${enc(vhost)}/${enc(name || "amq.default")}` },
      name || "(default)");
  }
  function card(label, value, cls, title) {
    return h("div", { class: "card " + (cls || ""), title: title || null, "data-card": label },
      h("div", { class: "label" }, label), h("div", { class: "value" }, value));
  }
  function bar(fraction, bad) {
    const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
    const inner = h("i");
    inner.style.width = pct + "%";
    return h("span", { class: "bar" + (bad ? " bad" : "") }, inner);
  }

  // -- charts (uPlot) -----------------------------------------------------------------------

  // A time series chart that keeps the server's samples: points are appended when their
  // time is newer than the last one, so overlapping histories from each poll merge.
  function LiveChart(container, title, names, format) {
    this.names = names;
    this.data = [[]].concat(names.map(() => []));
    this.el = h("div", { class: "chart", "data-chart": title });
    this.waiting = h("p", { class: "note" }, "Collecting samples: the broker takes one every 5 s; a line needs two.");
    container.append(h("h2", null, title), this.waiting, this.el);
    this.plot = null;
    this.format = format || fmtShort;
    charts.push(this);
  }
  LiveChart.prototype.merge = function (times, columns) {
    const xs = this.data[0];
    const last = xs.length ? xs[xs.length - 1] : -Infinity;
    times.forEach((t, i) => {
      if (t <= last + 0.5) return;
      xs.push(t);
      this.names.forEach((name, k) => {
        const column = columns[name];
        this.data[k + 1].push(column && column[i] !== undefined ? column[i] : null);
      });
    });
    if (xs.length > HISTORY_POINTS) this.data = this.data.map((col) => col.slice(-HISTORY_POINTS));
    this.el.dataset.points = this.data[0].length; // for tests: a line needs two points
    this.waiting.hidden = this.data[0].length >= 2;
    this.draw();
  };
  LiveChart.prototype.draw = function () {
    if (typeof uPlot === "undefined") return;
    const width = Math.max(300, this.el.clientWidth || 600);
    if (!this.plot) {
      const format = this.format;
      this.plot = new uPlot({
        width, height: 200,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
        series: [{}].concat(this.names.map((name, k) => ({
          label: name, stroke: COLORS[k % COLORS.length], width: 2,
          value: (u, v) => (v === null || v === undefined ? "–" : format(v)),
        }))),
        axes: [
          { values: (u, values) => values.map((v) => new Date(v * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })), space: 80 },
          { values: (u, values) => values.map(fmtShort), size: 50 },
        ],
        legend: { live: false }, // the cards above show the current values
      }, this.data, this.el);
    } else {
      if (Math.abs(this.plot.width - width) > 20) this.plot.setSize({ width, height: 200 });
      this.plot.setData(this.data);
    }
  };
  LiveChart.prototype.destroy = function () { if (this.plot) this.plot.destroy(); };

  // -- sortable, server-paged tables ---------------------------------------------------------

  // columns: [{key, label, sort (API sort path or null), num, render(item) -> node|text,
  // cls(item) -> class, title}]; state: {sort, desc, page, size, name, regex} kept in the URL.
  function PagedTable(container, columns, state, onChange, rowAttrs) {
    this.columns = columns;
    this.state = state;
    this.onChange = onChange;
    this.rowAttrs = rowAttrs || (() => ({}));
    const filter = h("input", {
      type: "search", placeholder: "Filter by name", value: state.name || "",
      "aria-label": "filter by name",
    });
    let debounce = null;
    filter.addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { state.name = filter.value; state.page = 1; onChange(); }, 300);
    });
    const regex = h("input", { type: "checkbox", checked: state.regex === "1" });
    regex.addEventListener("change", () => { state.regex = regex.checked ? "1" : ""; state.page = 1; onChange(); });
    const size = h("select", { "aria-label": "rows per page" },
      [20, 50, 100, 200, 500].map((n) => h("option", { value: n, selected: String(n) === String(state.size) }, n + " rows")));
    size.addEventListener("change", () => { state.size = size.value; state.page = 1; onChange(); });
    this.prev = h("button", { onclick: () => { state.page = Math.max(1, +state.page - 1); onChange(); } }, "‹ Prev");
    this.next = h("button", { onclick: () => { state.page = +state.page + 1; onChange(); } }, "Next ›");
    this.info = h("span", { class: "muted" });
    container.append(h("div", { class: "controls" }, filter,
      h("label", { class: "muted" }, regex, " regex"), h("span", { class: "spacer" }),
      this.info, this.prev, this.next, size));
    this.head = h("tr");
    for (const column of columns) {
      const th = h("th", { class: (column.num ? "num " : "") + (column.sort ? "sortable" : ""), title: column.title || null },
        column.label);
      if (column.sort) {
        th.addEventListener("click", () => {
          if (state.sort === column.sort) state.desc = state.desc === "1" ? "" : "1";
          else { state.sort = column.sort; state.desc = column.num ? "1" : ""; }
          state.page = 1;
          onChange();
        });
      }
      column.th = th;
      this.head.append(th);
    }
    this.body = h("tbody");
    container.append(h("div", { class: "table-wrap" }, h("table", null, h("thead", null, this.head), this.body)));
  }
  PagedTable.prototype.query = function () {
    const s = this.state;
    const q = new URLSearchParams({ page: s.page || 1, page_size: s.size || 50 });
    if (s.name) q.set("name", s.name);
    if (s.regex) q.set("use_regex", "true");
    if (s.sort) q.set("sort", s.sort);
    if (s.desc) q.set("sort_reverse", "true");
    return q.toString();
  };
  PagedTable.prototype.render = function (envelope, noun) {
    for (const column of this.columns) {
      column.th.classList.toggle("sorted", Boolean(column.sort) && this.state.sort === column.sort);
      column.th.classList.toggle("asc", this.state.desc !== "1");
    }
    const rows = envelope.items.map((item) => h("tr", this.rowAttrs(item), this.columns.map((column) => {
      const value = column.render(item);
      const extra = column.cls ? column.cls(item) : "";
      return h("td", { class: (column.num ? "num " : "") + (extra || ""), "data-col": column.key }, value);
    })));
    if (!rows.length) {
      rows.push(h("tr", null, h("td", { colspan: this.columns.length, class: "muted" },
        envelope.total_count ? `No ${noun} match the filter.` : `No ${noun}.`)));
    }
    this.body.replaceChildren(...rows);
    const filtered = envelope.filtered_count !== envelope.total_count ?
      ` (${fmtInt(envelope.filtered_count)} match)` : "";
    this.info.textContent = `Page ${envelope.page} of ${envelope.page_count} · ` +
      `${fmtInt(envelope.total_count)} ${noun}${filtered}`;
    this.prev.disabled = envelope.page <= 1;
    this.next.disabled = envelope.page >= envelope.page_count;
  };

  // The table's state lives in the URL so a reload or a shared link shows the same view;
  // replaceState does not fire hashchange, so typing in the filter keeps its focus.
  function tableState(params, defaults) {
    const state = Object.assign({ page: 1, size: 50, name: "", regex: "", sort: "", desc: "" }, defaults);
    for (const key of Object.keys(state)) if (params.has(key)) state[key] = params.get(key);
    return state;
  }
  function saveState(path, state) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(state)) if (value !== "" && value !== null) q.set(key, value);
    history.replaceState(null, "", `#/${path}?${q}`);
  }
  // A page out of range (the list shrank) goes back to the last page.
  async function fetchPage(table, path, base) {
    try {
      return await api(`${base}?${table.query()}`);
    } catch (error) {
      if (error.status === 400 && +table.state.page > 1) {
        table.state.page = 1;
        return api(`${base}?${table.query()}`);
      }
      throw error;
    }
  }

  // -- alarms (every page) ---------------------------------------------------------------------

  function renderAlarms(extra) {
    const a = extra.alarms;
    const items = [];
    if (a.memory) {
      items.push(h("div", { class: "alarm", "data-alarm": "memory" },
        `Memory alarm: ${fmtBytes(a.memory_used)} of messages queued, high watermark ` +
        `${fmtBytes(a.memory_limit)} — publishers are blocked.`));
    }
    if (a.disk) {
      items.push(h("div", { class: "alarm", "data-alarm": "disk" },
        `Disk alarm: ${fmtBytes(a.disk_free)} free, limit ${fmtBytes(a.disk_free_limit)} — ` +
        "publishers are blocked."));
    }
    if (extra.blocked.length && !a.memory && !a.disk) {
      items.push(h("div", { class: "alarm", "data-alarm": "flow" },
        `${extra.blocked.length} publishing connection(s) held back by flow control ` +
        "(a queue they feed has a backlog its consumers are working through)."));
    }
    alarmsEl.replaceChildren(...items);
  }

  // -- overview -----------------------------------------------------------------------------

  const RATE_NAMES = ["published", "confirmed", "delivered", "acked", "redelivered", "unroutable"];

  function overviewPage(root) {
    root.append(h("h1", null, "Overview", h("small", { id: "product" })));
    const cards = h("div", { class: "cards" });
    const rates = h("div", { class: "cards" });
    const charts = h("div", { class: "grid two section" });
    const rateBox = h("div", { class: "panel" });
    const depthBox = h("div", { class: "panel" });
    charts.append(rateBox, depthBox);
    const rateChart = new LiveChart(rateBox, "Message rates (per second)", RATE_NAMES, fmtShort);
    const depthChart = new LiveChart(depthBox, "Ready messages", ["ready"], fmtInt);
    const blocked = h("div", { class: "panel" });
    const tops = h("div", { class: "grid four section" });
    root.append(cards, rates, charts, tops, blocked);
    const topDefs = [
      ["messages", "Deepest queues", fmtInt, "ready + unacked messages"],
      ["messages_ready_growth", "Fastest growing", fmtRate, "change of the ready count per second over the last 5 s"],
      ["oldest_message_age", "Longest waiting", fmtAge, "how long the next message to be delivered has been in its queue"],
      ["messages_unacknowledged", "Most unacknowledged", fmtInt, "delivered, not yet acknowledged"],
    ];

    return async function update() {
      const [overview, extra] = await Promise.all([api("api/overview"), api("api/dashboard/overview")]);
      renderAlarms(extra);
      document.getElementById("product").textContent =
        `${overview.product_name} ${overview.product_version} · ${overview.cluster_name}`;
      const q = overview.queue_totals;
      const o = overview.object_totals;
      const a = extra.alarms;
      cards.replaceChildren(
        card("Ready", fmtInt(q.messages_ready)),
        card("Unacked", fmtInt(q.messages_unacknowledged)),
        card("Total", fmtInt(q.messages)),
        card("Connections", fmtInt(o.connections)),
        card("Channels", fmtInt(o.channels)),
        card("Consumers", fmtInt(o.consumers)),
        card("Queues", fmtInt(o.queues)),
        card("Exchanges", fmtInt(o.exchanges)),
        card("Memory alarm", a.memory ? "ON" : "off", a.memory ? "bad" : "",
          `${fmtBytes(a.memory_used)} queued of ${fmtBytes(a.memory_limit)}`),
        card("Disk alarm", a.disk ? "ON" : "off", a.disk ? "bad" : "",
          a.disk_free === null ? "disk limit off" : `${fmtBytes(a.disk_free)} free, limit ${fmtBytes(a.disk_free_limit)}`),
        card("Blocked publishers", fmtInt(extra.blocked.length), extra.blocked.length ? "bad" : ""),
      );
      const s = overview.message_stats || {};
      const current = {
        published: rateOf(s, "publish"), confirmed: rateOf(s, "confirm"),
        delivered: rateOf(s, "deliver_get"), acked: rateOf(s, "ack"),
        redelivered: rateOf(s, "redeliver"),
        unroutable: rateOf(s, "return_unroutable") + rateOf(s, "drop_unroutable"),
      };
      rates.replaceChildren(...RATE_NAMES.map((name) =>
        card(name[0].toUpperCase() + name.slice(1), fmtRate(current[name]),
          name === "unroutable" && current[name] > 0 ? "warn" : "")));
      const hist = extra.history;
      rateChart.merge(hist.time, hist);
      depthChart.merge(hist.time, { ready: hist.messages_ready });

      tops.replaceChildren(...topDefs.map(([key, title, fmt, help]) => {
        const items = extra.top[key] || [];
        return h("div", { class: "panel", "data-top": key },
          h("h2", { title: help }, title),
          items.length ? h("table", { class: "top-list" }, h("tbody", null, items.map((item) =>
            h("tr", null, h("td", { class: "name" }, queueLink(item.vhost, item.name)),
              h("td", { class: "num" }, fmt(item.value)))))) :
            h("p", { class: "muted" }, "none"),
          h("p", { class: "note" }, help));
      }));

      blocked.replaceChildren(h("h2", null, `Blocked publishers (${extra.blocked.length})`),
        extra.blocked.length ? h("table", null,
          h("thead", null, h("tr", null, ["Connection", "Client", "User", "Vhost", "Why", "Told (connection.blocked)"].map((t) => h("th", null, t)))),
          h("tbody", null, extra.blocked.map((c) => h("tr", null,
            h("td", null, c.name), h("td", null, c.client), h("td", null, c.user),
            h("td", null, c.vhost), h("td", null, c.reason === "alarm" ? "resource alarm" : "flow control"),
            h("td", null, c.notified ? "yes" : "no"))))) :
          h("p", { class: "muted" }, "No publisher is blocked: the broker reads from every connection."));
    };
  }

  // -- queues -------------------------------------------------------------------------------

  const QUEUE_NOTES = [
    ["Ready to receive", "the share of the queue's consumers that could take a message right now: prefetch window not full, connection not congested, channel not paused by flow. Low with messages ready means consumers are the bottleneck. (RabbitMQ's “consumer utilisation” is a time fraction and reads empty both for idle and for fast queues; this is a present-tense count.)"],
    ["Prefetch used", "unacked messages held by the consumers divided by the sum of their prefetch limits; 100% means every window is full. Empty when no consumer has a limit."],
    ["Growth", "change of the ready count per second over the last 5 s sample (positive: filling up)."],
    ["Oldest", "how long the message at the head of the queue (the next to be delivered) has been waiting, from when the broker enqueued it (to 0.1 s; a message read back from disk counts from then). Empty when no ready message is in memory."],
    ["Rates", "per second between the last two 5 s samples of monotonic counters."],
  ];
  function notes(pairs) {
    return h("dl", { class: "note" }, pairs.map(([term, text]) => h("div", null, h("dt", null, term + ": "), h("dd", null, text))));
  }

  function queueColumns() {
    const stats = (item) => item.message_stats || {};
    return [
      { key: "name", label: "Name", sort: "name", render: (q) => queueLink(q.vhost, q.name), cls: () => "name" },
      { key: "vhost", label: "Vhost", sort: "vhost", render: (q) => q.vhost },
      { key: "type", label: "Type", sort: "type", render: (q) => [q.type, q.durable ? h("span", { class: "pill", title: "durable" }, "D") : null, q.exclusive ? h("span", { class: "pill", title: "exclusive" }, "Excl") : null, q.auto_delete ? h("span", { class: "pill", title: "auto-delete" }, "AD") : null] },
      { key: "state", label: "State", render: (q) => q.state },
      { key: "messages_ready", label: "Ready", sort: "messages_ready", num: true, render: (q) => fmtInt(q.messages_ready) },
      { key: "messages_unacknowledged", label: "Unacked", sort: "messages_unacknowledged", num: true, render: (q) => fmtInt(q.messages_unacknowledged) },
      { key: "messages", label: "Total", sort: "messages", num: true, render: (q) => fmtInt(q.messages) },
      { key: "consumers", label: "Consumers", sort: "consumers", num: true, render: (q) => fmtInt(q.consumers), cls: (q) => (q.consumers === 0 && q.messages_ready > 0 ? "warn" : "") },
      { key: "consumer_capacity", label: "Ready to receive", sort: "consumer_capacity", num: true, title: QUEUE_NOTES[0][1], render: (q) => (q.consumers ? fmtPct(q.consumer_capacity) : "–"), cls: (q) => (q.consumers ? "" : "dim") },
      { key: "prefetch_saturation", label: "Prefetch used", sort: "prefetch_saturation", num: true, title: QUEUE_NOTES[1][1], render: (q) => (q.prefetch_saturation === null ? "–" : [fmtPct(q.prefetch_saturation), bar(q.prefetch_saturation, q.prefetch_saturation >= 0.9)]), cls: (q) => (q.prefetch_saturation >= 0.9 ? "bad" : "") },
      { key: "publish", label: "In", sort: "message_stats.publish_details.rate", num: true, render: (q) => fmtRate(rateOf(stats(q), "publish")) },
      { key: "deliver_get", label: "Out", sort: "message_stats.deliver_get_details.rate", num: true, render: (q) => fmtRate(rateOf(stats(q), "deliver_get")) },
      { key: "ack", label: "Ack", sort: "message_stats.ack_details.rate", num: true, render: (q) => fmtRate(rateOf(stats(q), "ack")) },
      { key: "messages_ready_growth", label: "Growth", sort: "messages_ready_growth", num: true, title: QUEUE_NOTES[2][1], render: (q) => (q.messages_ready_growth > 0 ? "+" : "") + fmtRate(q.messages_ready_growth), cls: (q) => (q.messages_ready_growth > 0 ? "warn" : "") },
      { key: "oldest_message_age", label: "Oldest", sort: "oldest_message_age", num: true, title: QUEUE_NOTES[3][1], render: (q) => fmtAge(q.oldest_message_age) },
    ];
  }

  function queuesPage(root, params) {
    root.append(h("h1", null, "Queues"));
    const panel = h("div", { class: "panel" });
    root.append(panel);
    const state = tableState(params, { sort: "", desc: "" });
    let table;
    const refresh = () => { saveState("queues", state); update().catch(showError); };
    table = new PagedTable(panel, queueColumns(), state, refresh,
      (q) => ({ "data-name": q.name, "data-vhost": q.vhost }));
    panel.append(notes(QUEUE_NOTES));
    async function update() {
      const page = await fetchPage(table, "queues", "api/dashboard/queues");
      table.render(page, "queues");
    }
    return update;
  }

  function queuePage(root, params, vhost, name) {
    const title = h("h1", null, name, h("small", null, `vhost ${vhost}`));
    const cards = h("div", { class: "cards" });
    const charts = h("div", { class: "grid two section" });
    const rateBox = h("div", { class: "panel" });
    const depthBox = h("div", { class: "panel" });
    charts.append(rateBox, depthBox);
    const rateChart = new LiveChart(rateBox, "Rates (per second)", ["publish", "deliver_get", "ack"], fmtShort);
    const depthChart = new LiveChart(depthBox, "Ready messages", ["ready"], fmtInt);
    const consumers = h("div", { class: "panel" });
    const bindings = h("div", { class: "panel" });
    const info = h("div", { class: "panel" });
    root.append(title, cards, charts, consumers, bindings, info);
    const path = `api/dashboard/queues/${enc(vhost)}/${enc(name)}`;
    return async function update() {
      const q = await api(path);
      const s = q.message_stats || {};
      cards.replaceChildren(
        card("Ready", fmtInt(q.messages_ready)),
        card("Unacked", fmtInt(q.messages_unacknowledged)),
        card("Total", fmtInt(q.messages)),
        card("Consumers", fmtInt(q.consumers), q.consumers === 0 && q.messages_ready ? "warn" : ""),
        card("Ready to receive", q.consumers ? fmtPct(q.consumer_capacity) : "–", "", QUEUE_NOTES[0][1]),
        card("Prefetch used", q.prefetch_saturation === null ? "–" :
          `${fmtPct(q.prefetch_saturation)} (${q.prefetch_used}/${q.prefetch_limit})`,
          q.prefetch_saturation >= 0.9 ? "bad" : "", QUEUE_NOTES[1][1]),
        card("In", fmtRate(rateOf(s, "publish"))),
        card("Out", fmtRate(rateOf(s, "deliver_get"))),
        card("Ack", fmtRate(rateOf(s, "ack"))),
        card("Redelivered", fmtRate(rateOf(s, "redeliver"))),
        card("Growth", fmtRate(q.messages_ready_growth), q.messages_ready_growth > 0 ? "warn" : "", QUEUE_NOTES[2][1]),
        card("Oldest", fmtAge(q.oldest_message_age), "", QUEUE_NOTES[3][1]),
        card("Bytes", fmtBytes(q.message_bytes)),
      );
      rateChart.merge(q.history.time, q.history);
      depthChart.merge(q.history.time, { ready: q.history.messages_ready });
      consumers.replaceChildren(h("h2", null, `Consumers (${q.consumer_details.length})`),
        q.consumer_details.length ? h("div", { class: "table-wrap" }, h("table", null,
          h("thead", null, h("tr", null, ["Tag", "Client", "Channel", "User", "Ack", "Prefetch", "Unacked", "Priority", "Can take a message"].map((t) => h("th", null, t)))),
          h("tbody", null, q.consumer_details.map((c) => {
            const limit = c.prefetch_count || c.global_prefetch_count;
            return h("tr", { "data-consumer": c.consumer_tag },
              h("td", null, c.consumer_tag), h("td", null, c.client), h("td", null, c.channel),
              h("td", null, c.user), h("td", null, c.ack_required ? "manual" : "auto"),
              h("td", { class: "num" }, limit ? fmtInt(limit) + (c.prefetch_count ? "" : " (channel)") : "unlimited"),
              h("td", { class: "num " + (limit && c.unacked >= limit ? "bad" : "") }, fmtInt(c.unacked)),
              h("td", { class: "num" }, c.priority),
              h("td", { class: c.can_take ? "" : "warn", title: "no: prefetch window full, connection congested or channel paused by flow" }, c.can_take ? "yes" : "no"));
          })))) : h("p", { class: "muted" }, "No consumers."));
      bindings.replaceChildren(h("h2", null, `Bindings (${q.bindings.length})`), h("table", null,
        h("thead", null, h("tr", null, ["From exchange", "Routing key", "Arguments"].map((t) => h("th", null, t)))),
        h("tbody", null, q.bindings.map((b) => h("tr", null,
          h("td", null, exchangeLink(b.vhost, b.source)), h("td", null, b.routing_key),
          h("td", null, Object.keys(b.arguments).length ? JSON.stringify(b.arguments) : ""))))));
      const features = [q.durable ? "durable" : "transient", q.exclusive ? "exclusive" : null, q.auto_delete ? "auto-delete" : null].filter(Boolean).join(", ");
      info.replaceChildren(h("h2", null, "Details"), h("dl", { class: "kv" },
        h("dt", null, "Type"), h("dd", null, q.type), h("dt", null, "Features"), h("dd", null, features),
        h("dt", null, "Arguments"), h("dd", null, JSON.stringify(q.arguments)),
        h("dt", null, "Paged out"), h("dd", null, `${fmtInt(q.messages_paged_out)} messages, ${fmtBytes(q.message_bytes_paged_out)}`),
        h("dt", null, "Idle since"), h("dd", null, q.idle_since || "in use")),
        notes(QUEUE_NOTES));
    };
  }

  // -- exchanges ----------------------------------------------------------------------------

  function exchangesPage(root, params) {
    root.append(h("h1", null, "Exchanges"));
    const panel = h("div", { class: "panel" });
    root.append(panel);
    const state = tableState(params, { sort: "name" });
    let table;
    const refresh = () => { saveState("exchanges", state); update().catch(showError); };
    table = new PagedTable(panel, [
      { key: "name", label: "Name", sort: "name", render: (e) => exchangeLink(e.vhost, e.name) },
      { key: "vhost", label: "Vhost", sort: "vhost", render: (e) => e.vhost },
      { key: "type", label: "Type", sort: "type", render: (e) => e.type },
      { key: "features", label: "Features", render: (e) => [e.durable ? h("span", { class: "pill" }, "durable") : null, e.auto_delete ? h("span", { class: "pill" }, "auto-delete") : null, e.internal ? h("span", { class: "pill" }, "internal") : null] },
      { key: "arguments", label: "Arguments", render: (e) => (Object.keys(e.arguments || {}).length ? JSON.stringify(e.arguments) : "") },
    ], state, refresh, (e) => ({ "data-name": e.name }));
    async function update() { table.render(await fetchPage(table, "exchanges", "api/exchanges"), "exchanges"); }
    return update;
  }

  function exchangePage(root, params, vhost, name) {
    root.append(h("h1", null, name === "amq.default" ? "(default exchange)" : name, h("small", null, `vhost ${vhost}`)));
    const info = h("div", { class: "panel" });
    const outgoing = h("div", { class: "panel" });
    const incoming = h("div", { class: "panel" });
    root.append(info, outgoing, incoming);
    const base = `api/exchanges/${enc(vhost)}/${enc(name)}`;
    function bindingTable(items, other) {
      return h("table", null, h("thead", null, h("tr", null, [other === "destination" ? "To" : "From", "Kind", "Routing key", "Arguments"].map((t) => h("th", null, t)))),
        h("tbody", null, items.map((b) => {
          const target = other === "destination" ? b.destination : b.source;
          const kind = other === "destination" ? b.destination_type : "exchange";
          return h("tr", null, h("td", null, kind === "queue" ? queueLink(b.vhost, target) : exchangeLink(b.vhost, target)),
            h("td", null, kind), h("td", null, b.routing_key),
            h("td", null, Object.keys(b.arguments).length ? JSON.stringify(b.arguments) : ""));
        })));
    }
    return async function update() {
      const [e, source, destination] = await Promise.all([api(base), api(base + "/bindings/source"), api(base + "/bindings/destination")]);
      info.replaceChildren(h("dl", { class: "kv" }, h("dt", null, "Type"), h("dd", null, e.type),
        h("dt", null, "Features"), h("dd", null, [e.durable ? "durable" : "transient", e.auto_delete ? "auto-delete" : null, e.internal ? "internal" : null].filter(Boolean).join(", ")),
        h("dt", null, "Arguments"), h("dd", null, JSON.stringify(e.arguments))));
      outgoing.replaceChildren(h("h2", null, `Bindings from this exchange (${source.length})`), source.length ? bindingTable(source, "destination") : h("p", { class: "muted" }, name === "amq.default" ? "Every queue, by its name." : "None."));
      incoming.replaceChildren(h("h2", null, `Bindings to this exchange (${destination.length})`), destination.length ? bindingTable(destination, "source") : h("p", { class: "muted" }, "None."));
    };
  }

  // -- connections and channels --------------------------------------------------------------

  function connectionsPage(root, params) {
    root.append(h("h1", null, "Connections"));
    const panel = h("div", { class: "panel" });
    root.append(panel);
    const state = tableState(params, { sort: "name" });
    let table;
    const refresh = () => { saveState("connections", state); update().catch(showError); };
    table = new PagedTable(panel, [
      { key: "client", label: "Client", sort: "client_properties.connection_name", render: (c) => clientName(c.client_properties) || h("span", { class: "muted" }, "(unnamed)") },
      { key: "name", label: "Connection", sort: "name", render: (c) => c.name },
      { key: "user", label: "User", sort: "user", render: (c) => c.user },
      { key: "vhost", label: "Vhost", sort: "vhost", render: (c) => c.vhost },
      { key: "state", label: "State", sort: "state", render: (c) => c.state, cls: (c) => (c.state === "running" ? "" : "bad") },
      { key: "tls", label: "TLS", render: (c) => (c.ssl ? "yes" : "no") },
      { key: "channels", label: "Channels", sort: "channels", num: true, render: (c) => fmtInt(c.channels) },
      { key: "timeout", label: "Heartbeat", sort: "timeout", num: true, render: (c) => (c.timeout ? c.timeout + "s" : "off") },
      { key: "connected_at", label: "Connected for", sort: "connected_at", num: true, render: (c) => fmtAge((Date.now() - c.connected_at) / 1000) },
    ], state, refresh, (c) => ({ "data-name": c.name }));
    async function update() { table.render(await fetchPage(table, "connections", "api/connections"), "connections"); }
    return update;
  }

  function channelsPage(root, params) {
    root.append(h("h1", null, "Channels"));
    const panel = h("div", { class: "panel" });
    root.append(panel);
    const state = tableState(params, { sort: "name" });
    let table;
    const refresh = () => { saveState("channels", state); update().catch(showError); };
    table = new PagedTable(panel, [
      { key: "client", label: "Client", sort: "client", render: (c) => c.client || h("span", { class: "muted" }, "(unnamed)") },
      { key: "name", label: "Channel", sort: "name", render: (c) => c.name },
      { key: "user", label: "User", sort: "user", render: (c) => c.user },
      { key: "state", label: "State", sort: "state", render: (c) => c.state, cls: (c) => (c.state === "running" ? "" : "bad") },
      { key: "mode", label: "Mode", render: (c) => [c.confirm ? h("span", { class: "pill", title: "publisher confirms" }, "confirm") : null, c.transactional ? h("span", { class: "pill", title: "transactional" }, "tx") : null] },
      { key: "prefetch_count", label: "Prefetch", sort: "prefetch_count", num: true, render: (c) => (c.prefetch_count ? fmtInt(c.prefetch_count) : "unlimited") + (c.global_prefetch_count ? ` / ${fmtInt(c.global_prefetch_count)} channel` : "") },
      { key: "messages_unacknowledged", label: "Unacked", sort: "messages_unacknowledged", num: true, render: (c) => fmtInt(c.messages_unacknowledged), cls: (c) => (c.prefetch_saturation >= 0.9 ? "bad" : "") },
      { key: "prefetch_saturation", label: "Prefetch used", sort: "prefetch_saturation", num: true, title: "unacked messages on the channel divided by the sum of its consumers' prefetch limits", render: (c) => (c.prefetch_saturation === null ? "–" : [fmtPct(c.prefetch_saturation), bar(c.prefetch_saturation, c.prefetch_saturation >= 0.9)]) },
      { key: "consumer_count", label: "Consumers", sort: "consumer_count", num: true, render: (c) => fmtInt(c.consumer_count) },
    ], state, refresh, (c) => ({ "data-name": c.name }));
    async function update() { table.render(await fetchPage(table, "channels", "api/dashboard/channels"), "channels"); }
    return update;
  }

  // -- router ---------------------------------------------------------------------------------

  const PAGES = {
    "": overviewPage, queues: queuesPage, queue: queuePage, exchanges: exchangesPage,
    exchange: exchangePage, connections: connectionsPage, channels: channelsPage,
  };

  function showError(error) {
    statusEl.textContent = error.message;
    statusEl.classList.add("error");
  }

  function route() {
    generation += 1;
    const mine = generation;
    clearTimeout(timer);
    charts.forEach((c) => c.destroy());
    charts = [];
    const hash = location.hash.replace(/^#\/?/, "");
    const [path, query] = hash.split("?");
    const parts = path.split("/").map(decodeURIComponent);
    const page = PAGES[parts[0]] || overviewPage;
    document.querySelectorAll("#nav a").forEach((a) => {
      const target = a.dataset.page;
      a.classList.toggle("active", target === parts[0] || (target === "queues" && parts[0] === "queue") || (target === "exchanges" && parts[0] === "exchange"));
    });
    main.replaceChildren();
    const update = page(main, new URLSearchParams(query || ""), ...parts.slice(1));
    async function tick() {
      if (mine !== generation) return;
      if (!document.hidden) {
        try {
          await update();
          if (mine !== generation) return;
          statusEl.textContent = "updated " + new Date().toLocaleTimeString();
          statusEl.classList.remove("error");
          if (page !== overviewPage) renderAlarms(await api("api/dashboard/alarms"));
        } catch (error) {
          showError(error);
        }
      }
      if (mine === generation) timer = setTimeout(tick, POLL_MS);
    }
    tick();
  }

  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) route(); });
  window.addEventListener("resize", () => charts.forEach((c) => c.draw()));
  api("api/whoami").then((me) => {
    document.getElementById("who").textContent = `${me.name} (${me.tags.join(", ")})`;
  }).catch(() => {});
  route();
})();
