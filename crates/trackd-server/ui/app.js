// trackd console. Everything from the server is shown with textContent or SVG text nodes,
// never parsed as HTML: event data is whatever a client sent.
"use strict";

const KEY = "trackd.secret";
const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);

// Bidirectional controls would reorder what is around them: show them as escapes.
const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
const visible = (s) => String(s ?? "").replace(BIDI, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = visible(v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function secret() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: "Bearer " + secret(), ...(options.headers || {}) },
  });
  if (response.status === 401 || response.status === 403) {
    signOut("Your key was refused: sign in again.");
    throw new Error("unauthorized");
  }
  return response;
}

async function errorText(response) {
  try { return (await response.json()).message; } catch { return response.statusText; }
}

// ---- sign-in ---------------------------------------------------------------------------

function showSignedIn(on) {
  $("sign-in").hidden = on;
  $("tabs").hidden = !on;
  $("sign-out").hidden = !on;
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  if (on) show("live");
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  live.stop();
  destinations.stop();
  $("destinations-list").replaceChildren();
  showSignedIn(false);
  $("live-list").replaceChildren();
  $("user-result").hidden = true;
  $("sign-in-error").textContent = message || "";
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  // The cheapest read the key must be allowed: one event.
  const response = await fetch("/api/v2/events?limit=1", { headers: { Authorization: "Bearer " + key } });
  if (!response.ok) {
    $("sign-in-error").textContent = await errorText(response);
    return;
  }
  sessionStorage.setItem(KEY, key);
  $("key").value = "";
  $("sign-in-error").textContent = "";
  showSignedIn(true);
}

function show(view) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.view === view);
  for (const v of ["live", "users", "counts", "destinations", "privacy"]) $("view-" + v).hidden = v !== view;
  if (view === "privacy") privacy.load();
  if (view === "live") live.start();
  if (view === "counts") counts.load();
  if (view === "destinations") destinations.start(); else destinations.stop();
}

// ---- an event, as a row ----------------------------------------------------------------

// "2026-11-26T12:00:00.123456Z" → "2026-11-26 12:00:00Z".
function when(rfc3339) {
  return String(rfc3339 ?? "").replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function eventRow(e) {
  const who = e.user?.id ?? e.user?.email ?? "";
  const data = el("pre", { text: JSON.stringify(e.data, null, 2) });
  const details = el("details", {}, el("summary", { text: "data" }), data);
  return el("li", { class: "event" },
    el("div", { class: "head" },
      el("time", { text: when(e.received_at) }),
      el("span", { class: "who", text: who }),
      el("span", { class: "name", text: e.event_name }),
      el("span", { class: "source", text: e.source ?? "" })),
    details);
}

// ---- live ------------------------------------------------------------------------------

const live = {
  controller: null,
  paused: false,
  held: [],
  arrivals: [],
  duplicates: 0,

  start() {
    if (this.controller) return;
    this.connect();
    if (!this.ticker) this.ticker = setInterval(() => this.tick(), 1000);
  },

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  },

  restart() { this.stop(); this.start(); },

  status(text, ok) {
    $("live-status").textContent = text;
    $("live-status").classList.toggle("live", !!ok);
  },

  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    const params = new URLSearchParams();
    if ($("live-event").value.trim()) params.set("event_name", $("live-event").value.trim());
    if ($("live-user").value.trim()) params.set("user_id", $("live-user").value.trim());
    const query = params.toString() ? "?" + params : "";
    this.status("connecting", false);
    try {
      const response = await api("/api/v2/events/live" + query, { signal: controller.signal });
      if (!response.ok) throw new Error(await errorText(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        let newline;
        const arrived = [];
        while ((newline = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, newline);
          pending = pending.slice(newline + 1);
          if (line) this.message(JSON.parse(line), arrived);
        }
        // One DOM update per chunk, however many events it holds.
        if (arrived.length) this.render(arrived);
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    if (this.controller === controller) {
      // The stream ended (server restart, network): try again shortly.
      this.controller = null;
      this.status("reconnecting", false);
      setTimeout(() => { if (secret() && !this.controller && !$("view-live").hidden) this.start(); }, 2000);
    }
  },

  message(m, arrived) {
    if (m.type === "hello" || m.type === "heartbeat") this.status("live", true);
    else if (m.type === "duplicates") this.duplicates += m.count;
    else if (m.type === "event") {
      this.arrivals.push(Date.now());
      if (!this.paused) arrived.push(m.event);
      else {
        this.held.push(m.event);
        if (this.held.length > MAX_ROWS) this.held.shift();
      }
    }
    $("live-dups").textContent = this.duplicates;
  },

  render(events) {
    const list = $("live-list");
    for (const e of events) list.prepend(eventRow(e));
    while (list.children.length > MAX_ROWS) list.lastChild.remove();
    $("live-empty").hidden = list.children.length > 0;
  },

  tick() {
    const since = Date.now() - 5000;
    this.arrivals = this.arrivals.filter((t) => t >= since);
    $("live-rate").textContent = (this.arrivals.length / 5).toFixed(1);
    $("live-held").textContent = this.held.length;
  },

  togglePause() {
    this.paused = !this.paused;
    $("live-pause").textContent = this.paused ? "Resume" : "Pause";
    $("live-paused").hidden = !this.paused;
    if (!this.paused) { this.render(this.held); this.held = []; }
  },
};

// ---- users -----------------------------------------------------------------------------

const users = {
  key: null,
  cursor: null,

  async lookup(event) {
    event.preventDefault();
    const q = $("user-query").value.trim();
    $("user-error").textContent = "";
    $("user-result").hidden = true;
    // "." and ".." are relative segments to every URL parser ("/users/.." is "/", and
    // "%2E%2E" is read the same way): no encoding gets them into a path, so such an id
    // cannot be looked up here. By email, such a user is found and shown.
    if (q === "." || q === "..") {
      $("user-error").textContent = `id: "${q}" cannot be looked up by id in a browser (a URL reads it as a relative path); look this user up by email`;
      return;
    }
    const response = await api("/api/v2/users/" + encodeURIComponent(q));
    if (!response.ok) { $("user-error").textContent = await errorText(response); return; }
    const p = await response.json();
    this.key = p.id ?? p.email ?? q;
    this.profile(p);
    $("user-events").replaceChildren();
    this.cursor = null;
    await this.more();
    $("user-result").hidden = false;
  },

  profile(p) {
    const tags = el("dd");
    for (const t of p.tags || []) tags.append(el("span", { class: "chip", text: t }));
    const rows = [
      ["id", p.id], ["email", p.email], ["phone", p.phone_number],
      ["subscribed", p.subscribed ? "yes" : "no"], ["first seen", p.first_seen],
      ["last seen", p.last_seen], ["events", p.event_count],
    ];
    const list = el("dl", { class: "profile" });
    for (const [k, v] of rows) list.append(el("dt", { text: k }), el("dd", { text: v ?? "—" }));
    list.append(el("dt", { text: "tags" }), tags);
    list.append(el("dt", { text: "properties" }),
      el("dd", {}, el("pre", { text: JSON.stringify(p.properties ?? {}, null, 2) })));
    list.append(el("dt", { text: "channels" }),
      el("dd", {}, el("pre", { text: JSON.stringify(p.channels ?? [], null, 2) })));
    $("user-profile").replaceChildren(list);
  },

  async more() {
    // The user in the query, never in the path: an id such as ".." would make
    // "/users/../events" the URL of every user's events.
    const params = new URLSearchParams({ user_id: this.key, limit: "20" });
    if (this.cursor) params.set("cursor", this.cursor);
    const response = await api("/api/v2/events?" + params);
    if (!response.ok) { $("user-error").textContent = await errorText(response); return; }
    const page = await response.json();
    for (const e of page.events) $("user-events").append(eventRow(e));
    this.cursor = page.next_cursor;
    $("user-more").hidden = !this.cursor;
  },
};

// ---- counts ----------------------------------------------------------------------------

const COLORS = ["#2f6feb", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599", "#f08c00", "#5c940d"];
const RANGES = { hour: [3600, "hour"], day: [86400, "hour"], week: [7 * 86400, "day"] };
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = visible(text);
  return node;
}

const counts = {
  range: "hour",

  async load() {
    const [seconds, interval] = RANGES[this.range];
    const since = Math.floor(Date.now() / 1000) - seconds;
    const response = await api(`/api/v2/stats/events?since=${since}&interval=${interval}`);
    if (!response.ok) { $("counts-error").textContent = await errorText(response); return; }
    $("counts-error").textContent = "";
    const stats = await response.json();
    this.totals(stats.totals);
    this.chart(stats.buckets, interval, since, seconds);
  },

  totals(t) {
    const rejected = Object.values(t.rejected || {}).reduce((a, b) => a + b, 0);
    const box = (label, n) => el("div", { class: "card" }, el("b", { text: n }), el("span", { text: label }));
    $("totals").replaceChildren(box("accepted", t.accepted ?? 0), box("duplicates", t.duplicates ?? 0),
      box("rejected", rejected));
  },

  chart(buckets, interval, since, seconds) {
    const step = interval === "hour" ? 3600 : 86400;
    const first = Math.floor(since / step) * step;
    const slots = Math.ceil((since + seconds - first) / step) + 0;
    const names = [...new Set(buckets.flatMap((b) => Object.keys(b.counts)))].sort();
    const series = names.map(() => new Array(slots).fill(0));
    for (const b of buckets) {
      const i = Math.floor((Date.parse(b.start) / 1000 - first) / step);
      if (i < 0 || i >= slots) continue;
      names.forEach((n, s) => { series[s][i] += b.counts[n] || 0; });
    }
    const W = 720, H = 300, L = 44, R = 10, T = 10, B = 36;
    const max = Math.max(1, ...series.flat());
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "events per event name" });
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const slotW = (W - L - R) / slots;
    for (let k = 0; k <= 4; k++) {
      const v = Math.round((max * k) / 4);
      root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e5e7eb" }));
      root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v));
    }
    const labelEvery = Math.ceil(slots / 8);
    for (let i = 0; i < slots; i += labelEvery) {
      const t = new Date((first + i * step) * 1000);
      const label = interval === "hour" ? t.toISOString().slice(11, 16) : t.toISOString().slice(5, 10);
      root.append(svg("text", { x: L + slotW * (i + 0.5), y: H - B + 16, "text-anchor": "middle" }, label));
    }
    root.append(svg("text", { x: L, y: H - 4 }, interval === "hour" ? "hour (UTC)" : "day (UTC)"));
    const barW = Math.max(2, (slotW * 0.8) / Math.max(1, names.length));
    const tip = document.querySelector(".tip") || document.body.appendChild(el("div", { class: "tip", hidden: "" }));
    names.forEach((name, s) => {
      series[s].forEach((v, i) => {
        if (!v) return;
        const x = L + slotW * i + slotW * 0.1 + barW * s;
        const bar = svg("rect", { x, y: y(v), width: barW, height: y(0) - y(v), fill: COLORS[s % COLORS.length] });
        const t = new Date((first + i * step) * 1000).toISOString().slice(0, 16).replace("T", " ");
        const text = `${name}: ${v} at ${t}`;
        bar.append(svg("title", {}, text));
        bar.addEventListener("mousemove", (ev) => {
          tip.hidden = false;
          tip.textContent = visible(text);
          tip.style.left = ev.clientX + 12 + "px";
          tip.style.top = ev.clientY + 12 + "px";
        });
        bar.addEventListener("mouseleave", () => { tip.hidden = true; });
        root.append(bar);
      });
    });
    const legend = el("div", { class: "legend" });
    names.forEach((n, s) => {
      const item = el("span", { text: n });
      item.style.setProperty("--swatch", COLORS[s % COLORS.length]);
      legend.append(item);
    });
    if (!names.length) legend.append(el("span", { text: "no events in this range" }));
    $("chart").replaceChildren(root, legend);
  },
};

// ---- destinations ----------------------------------------------------------------------

// "93" → "1m 33s"; the age of the oldest undelivered item.
function age(secs) {
  if (!secs) return "–";
  const units = [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]];
  const parts = [];
  let rest = secs;
  for (const [n, u] of units) {
    if (rest >= n && parts.length < 2) { parts.push(Math.floor(rest / n) + u); rest %= n; }
  }
  return parts.join(" ");
}

const destinations = {
  timer: null,
  start() {
    this.stop();
    this.load();
    this.timer = setInterval(() => this.load(), 2000);
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
  },
  async load() {
    let list;
    try {
      const response = await api("/api/v2/destinations");
      if (!response.ok) { $("destinations-error").textContent = await errorText(response); return; }
      list = (await response.json()).destinations;
    } catch (e) {
      if (e.message !== "unauthorized") $("destinations-error").textContent = "The server cannot be reached.";
      return;
    }
    $("destinations-error").textContent = "";
    $("destinations-empty").hidden = list.length > 0;
    $("destinations-list").replaceChildren(...list.map((d) => this.row(d)));
  },
  row(d) {
    const actions = el("td", { class: "actions" });
    const act = (label, action) => {
      const b = el("button", { type: "button", text: label, "data-action": action });
      b.addEventListener("click", () => this.act(d.name, action));
      actions.append(b);
    };
    if (d.state === "paused") act("Resume", "resume"); else act("Pause", "pause");
    if (d.dead_letters > 0) act("Redrive", "redrive");
    const cell = (text, cls) => el("td", { text: String(text), ...(cls ? { class: cls } : {}) });
    const tr = el("tr", { "data-name": d.name },
      cell(d.name, "name"),
      cell(d.kind),
      el("td", {}, el("span", { class: "state " + d.state, text: d.state })),
      cell(d.backlog.toLocaleString(), "num"),
      cell(age(d.oldest_undelivered_secs), "num"),
      cell(d.delivered.toLocaleString(), "num"),
      cell(d.dead_letters.toLocaleString(), "num"),
      cell(d.last_error ?? d.paused_reason ?? "", "last-error"),
      actions);
    return tr;
  },
  async act(name, action) {
    try {
      const response = await api(`/api/v2/destinations/${encodeURIComponent(name)}/${action}`, { method: "POST" });
      if (!response.ok) $("destinations-error").textContent = await errorText(response);
    } catch { /* signed out */ }
    this.load();
  },
};

// ---- privacy: retention and the audit log --------------------------------------------------

const privacy = {
  next: null,
  async load() {
    $("audit-list").replaceChildren();
    this.next = null;
    try {
      const response = await api("/api/v2/project");
      if (!response.ok) { $("privacy-error").textContent = await errorText(response); return; }
      $("privacy-retention").textContent = (await response.json()).retention;
    } catch (e) {
      if (e.message !== "unauthorized") $("privacy-error").textContent = "The server cannot be reached.";
      return;
    }
    await this.page();
  },
  async page() {
    const cursor = this.next ? `&cursor=${encodeURIComponent(this.next)}` : "";
    let body;
    try {
      const response = await api(`/api/v2/audit?limit=50${cursor}`);
      if (!response.ok) { $("privacy-error").textContent = await errorText(response); return; }
      body = await response.json();
    } catch { return; }
    $("privacy-error").textContent = "";
    const cell = (text) => el("td", { text: String(text) });
    $("audit-list").append(...body.entries.map((e) =>
      el("tr", { "data-action": e.action }, cell(when(e.at)), cell(e.actor), cell(e.action), cell(e.target))));
    this.next = body.next_cursor;
    $("audit-more").hidden = !this.next;
  },
};

// ---- wiring ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.view));
  $("live-pause").addEventListener("click", () => live.togglePause());
  let debounce;
  for (const id of ["live-event", "live-user"]) {
    $(id).addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { $("live-list").replaceChildren(); live.restart(); }, 400);
    });
  }
  $("user-form").addEventListener("submit", (e) => users.lookup(e));
  $("user-more").addEventListener("click", () => users.more());
  $("audit-more").addEventListener("click", () => privacy.page());
  for (const r of document.querySelectorAll(".range")) {
    r.addEventListener("click", () => {
      for (const o of document.querySelectorAll(".range")) o.classList.toggle("active", o === r);
      counts.range = r.dataset.range;
      counts.load();
    });
  }
  showSignedIn(!!secret());
});
