// wahook console: plain JavaScript on the operator API (/api/v1). No build step, no
// dependencies; every piece of data goes into the page as text (never as HTML).
"use strict";

const TOKEN_KEY = "wahook.token";
const RANKS = { viewer: 0, operator: 1, admin: 2 };
let me = null;
let timers = [];

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const ICONS = {
  edit: "M4 20h4L19 9l-4-4L4 16v4zm11-17 4 4",
  trash: "M5 7h14M10 7V4h4v3m-7 0 1 13h8l1-13M10 11v6m4-6v6",
  send: "M3 20 21 12 3 4v6l12 2-12 2z",
  key: "M15 7a4 4 0 1 1-3.9 4.9L4 19v2h3v-2h2v-2h2l1.1-1.1A4 4 0 0 1 15 7z",
};

/// A small line icon (the page's own SVG: no icon font, no emoji font needed).
function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "glyph");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", ICONS[name]);
  svg.append(path);
  return svg;
}

function when(t) {
  if (!t) return "—";
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

function can(role) {
  return me && RANKS[me.role] >= RANKS[role];
}

function toast(text, bad) {
  const t = el("div", { class: bad ? "toast bad" : "toast" }, text);
  document.getElementById("toasts").append(t);
  setTimeout(() => t.remove(), 4000);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A stored file, fetched with the token (an <img src> cannot carry it) and shown from a blob URL.
async function mediaBlobUrl(url) {
  const res = await fetch(url, { headers: { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) } });
  if (!res.ok) throw new Error(`the file answered ${res.status}`);
  return URL.createObjectURL(await res.blob());
}

function fileSize(n) {
  if (n == null) return "";
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} KB` : `${(n / 1048576).toFixed(1)} MB`;
}

// A message's file: the image or sticker inline, audio and video with a player, a document as a
// download link with its name; pending and failed files say so (failed with the reason).
function mediaView(m) {
  const f = m.media;
  if (!f) return null;
  const box = el("div", { class: "media " + f.status, "data-media-status": f.status, "data-media-id": String(f.id) });
  if (f.status !== "stored") {
    const label = f.status === "pending" ? `${f.kind}: being fetched…` :
      f.status === "deleted" ? `${f.kind}: deleted (${f.error || "retention"})` : `${f.kind} could not be fetched: ${f.error || "unknown reason"}`;
    box.append(el("span", { class: "mark " + (f.status === "failed" ? "failed" : ""), role: f.status === "failed" ? "alert" : null }, label));
    return box;
  }
  const name = f.filename || `${f.kind}-${f.id}`;
  mediaBlobUrl(f.url).then((src) => {
    let node;
    if (f.kind === "image" || f.kind === "sticker") {
      node = el("img", { src, alt: m.content || f.kind, class: f.kind === "sticker" ? "sticker" : "photo" });
    } else if (f.kind === "audio") {
      node = el("audio", { src, controls: "", "aria-label": f.voice ? "voice note" : "audio" });
    } else if (f.kind === "video") {
      node = el("video", { src, controls: "", class: "photo" });
    } else {
      node = el("a", { href: src, download: name, class: "download" }, `⬇ ${name} (${fileSize(f.size)})`);
    }
    box.replaceChildren(node, f.transcript ? el("div", { class: "transcript" }, `“${f.transcript}”`) : "");
  }).catch((e) => box.replaceChildren(el("span", { class: "mark failed" }, `${f.kind}: ${e.message}`)));
  box.append(el("span", { class: "meta" }, `${f.kind} · ${fileSize(f.size)} · loading…`));
  return box;
}

function locationView(m) {
  const l = m.location;
  if (!l) return null;
  const href = `https://www.openstreetmap.org/?mlat=${l.latitude}&mlon=${l.longitude}#map=16/${l.latitude}/${l.longitude}`;
  return el("a", { href, target: "_blank", rel: "noopener noreferrer", class: "map" },
    `📍 ${l.name || "Location"} (${l.latitude}, ${l.longitude}) — open the map`);
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch("/api/v1" + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "network", "wahook did not answer: " + e.message);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (res.status === 401 && me) {
    signOut("Your token is no longer valid: sign in again.");
    throw new ApiError(401, "unauthorized", "signed out");
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(res.status, err.code || "error", err.message || res.statusText);
  }
  return data;
}

/// Uploads a file (its bytes, its type) through wahook to the Graph API: its media id.
async function uploadFile(phoneNumberId, file) {
  const res = await fetch("/api/v1/media" + qs({ phone_number_id: phoneNumberId, filename: file.name }), {
    method: "POST",
    headers: { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY), "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, (data && data.error && data.error.code) || "error", (data && data.error && data.error.message) || res.statusText);
  return data;
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) p.set(k, v);
  const s = p.toString();
  return s ? "?" + s : "";
}

function main() { return document.getElementById("main"); }

function show(...nodes) {
  const m = main();
  // A missing part (null) is left out, never shown as the word "null".
  m.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
}

function errorBox(e) {
  return el("p", { class: "error", role: "alert" }, e.message || String(e));
}

function loading() { return el("p", { class: "muted", "aria-busy": "true" }, "Loading…"); }

/// A table of rows, or the empty message.
function table(caption, headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted", "data-empty": "" }, empty);
  // On a phone a row is a card: each cell says which column it is.
  for (const row of rows) [...row.children].forEach((td, i) => { if (headers[i]) td.dataset.label = headers[i]; });
  return el("table", {},
    el("caption", { class: "muted" }, caption),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

/// A modal dialog (native <dialog>: focus stays inside, Escape closes). `build(form, close)`
/// fills the form; `submit(form)` runs on submit and closes the dialog when it resolves.
function dialog(title, build, submit, submitLabel) {
  const id = "dlg-" + Math.random().toString(36).slice(2);
  const problem = el("p", { class: "error", role: "alert", hidden: true });
  const form = el("form", { method: "dialog", "aria-labelledby": id });
  const d = el("dialog", { "aria-labelledby": id }, form);
  const close = () => { d.close(); };
  form.append(el("h2", { id }, title));
  build(form, close);
  form.append(problem,
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "secondary", onclick: close }, "Cancel"),
      el("button", { type: "submit" }, submitLabel || "Save")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!form.reportValidity()) return;
    problem.hidden = true;
    try {
      await submit(form);
      close();
    } catch (e) {
      if (e.keepOpen) return;
      problem.textContent = e.message;
      problem.hidden = false;
    }
  });
  d.addEventListener("close", () => d.remove());
  document.body.append(d);
  d.showModal();
  const first = form.querySelector("input, select, textarea");
  if (first) first.focus();
  return d;
}

function confirmDialog(title, text, label, action) {
  return dialog(title, (form) => form.append(el("p", {}, text)), action, label);
}

function field(label, input) {
  return el("label", {}, label, input);
}

// ---------- sign in ----------

// ---------- live updates ----------

// GET /api/v1/stream read with fetch (so the token stays in a header, never in a URL), parsed
// as server-sent events; reconnects with Last-Event-ID, backing off; the open screen's handler
// gets each event.
let live = null;
let liveId = null;
let onLive = null;

function liveMark(state) {
  const mark = document.getElementById("live");
  mark.hidden = false;
  mark.dataset.state = state;
  mark.textContent = state === "live" ? "● live" : "○ reconnecting…";
  mark.title = state === "live" ? "Updates as they happen" : "The live connection dropped: reconnecting";
}

function startLive() {
  if (live) return;
  const ctl = new AbortController();
  live = ctl;
  (async () => {
    let wait = 500;
    while (!ctl.signal.aborted) {
      try {
        const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
        if (liveId) headers["Last-Event-ID"] = liveId;
        const res = await fetch("/api/v1/stream", { headers, signal: ctl.signal });
        if (res.status === 401) { signOut("Your token is no longer valid: sign in again."); return; }
        if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
        liveMark("live");
        wait = 500;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
          let end;
          while ((end = buf.indexOf("\n\n")) >= 0) {
            const raw = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const ev = { event: "message", data: "", id: null };
            for (const line of raw.split("\n")) {
              if (!line || line.startsWith(":")) continue;
              const at = line.indexOf(":");
              const key = at < 0 ? line : line.slice(0, at);
              const val = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
              if (key === "event") ev.event = val;
              else if (key === "data") ev.data += val;
              else if (key === "id") ev.id = val;
            }
            if (ev.id) liveId = ev.id;
            let data = {};
            try { data = JSON.parse(ev.data || "{}"); } catch (_) { data = {}; }
            if (onLive && ev.event !== "ready") onLive(ev.event, data);
          }
        }
      } catch (_) {
        if (ctl.signal.aborted) return;
      }
      liveMark("reconnecting");
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 10000);
    }
  })();
}

function stopLive() {
  if (live) live.abort();
  live = null;
  liveId = null;
  onLive = null;
  document.getElementById("live").hidden = true;
}

/// Runs `fn` once after a burst of calls has been quiet for `ms`.
function debounced(fn, ms) {
  let t = null;
  return () => { clearTimeout(t); t = setTimeout(fn, ms); };
}

// A reply being written survives the screen's live refreshes (and keeps its idempotency key).
const drafts = {};

function signOut(message) {
  stopLive();
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  renderSignIn(message);
}

function renderSignIn(message) {
  stopTimers();
  document.getElementById("nav").hidden = true;
  document.getElementById("global-search").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("input", { id: "token", name: "token", type: "password", required: true, autocomplete: "off" });
  const problem = el("p", { class: "error", role: "alert", hidden: !message }, message || "");
  const form = el("form", { class: "signin", "aria-labelledby": "signin-title" },
    el("h1", { id: "signin-title" }, "Sign in"),
    el("p", { class: "muted" }, "Paste an API token (wahook user create … prints one). It is kept in this tab's session storage only."),
    field("API token", input),
    problem,
    el("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      me = await api("GET", "/me");
      const target = location.hash && location.hash !== "#/" ? location.hash : "#/overview";
      // A changed hash routes by itself (hashchange); the same one needs a nudge.
      if (location.hash !== target) location.hash = target;
      else route();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      problem.textContent = e.status === 401 ? "That token is unknown, revoked, or its user is inactive." : e.message;
      problem.hidden = false;
    }
  });
  show(form);
  input.focus();
}

// ---------- routing ----------

function stopTimers() {
  timers.forEach(clearInterval);
  timers = [];
}

const VIEWS = {
  overview: renderOverview,
  users: renderUsers,
  events: renderEvents,
  dlq: renderDlq,
  conversations: renderConversations,
  leads: renderLeads,
  templates: renderTemplates,
  search: renderSearch,
};

async function route() {
  stopTimers();
  onLive = null;
  if (!sessionStorage.getItem(TOKEN_KEY)) return renderSignIn();
  if (!me) {
    try { me = await api("GET", "/me"); } catch (e) { return renderSignIn(e.status === 401 ? "" : e.message); }
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("global-search").hidden = false;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("who").textContent = me.actor + " · " + me.role;
  startLive();
  const [, name, ...rest] = (location.hash || "#/overview").split("/");
  const arg = rest.join("/");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === "#/" + name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const view = VIEWS[name] || renderOverview;
  show(loading());
  try {
    await view(arg);
  } catch (e) {
    show(errorBox(e));
  }
  main().focus({ preventScroll: true });
}

// ---------- overview ----------

const samples = [];

function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1].count : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      const le = b.le === "+Inf" ? prevLe : Number(b.le);
      const width = b.count - prevCount;
      return width > 0 ? prevLe + (le - prevLe) * ((rank - prevCount) / width) : le;
    }
    prevLe = b.le === "+Inf" ? prevLe : Number(b.le);
    prevCount = b.count;
  }
  return prevLe;
}

function deltaBuckets(a, b) {
  return b.ack_buckets.map((x) => {
    const before = a.ack_buckets.find((y) => y.le === x.le);
    return { le: x.le, count: x.count - (before ? before.count : 0) };
  });
}

function sparkline(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  const pts = values.filter((v) => v !== null && isFinite(v));
  if (pts.length > 1) {
    const max = Math.max(...pts, 1e-9), min = Math.min(...pts, 0);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts.map((v, i) =>
      `${(i / (pts.length - 1)) * 100},${28 - ((v - min) / (max - min || 1)) * 26}`).join(" "));
    svg.append(line);
  }
  return svg;
}

async function renderOverview() {
  const cards = el("div", { class: "cards", id: "overview-cards" });
  let status = el("p", { class: "muted" }, "Refreshed every 3 seconds from this node's own figures; rates and the p99 are over the last interval.");
  show(el("h1", {}, "Overview"), status, cards);
  const draw = () => {
    const series = (f) => samples.map(f);
    const pairs = samples.slice(1).map((s, i) => [samples[i], s]);
    const rate = pairs.map(([a, b]) => (b.webhooks_received_total - a.webhooks_received_total) / Math.max((new Date(b.at) - new Date(a.at)) / 1000, 0.001));
    const p99 = pairs.map(([a, b]) => { const q = quantile(deltaBuckets(a, b), 0.99); return q === null ? null : q * 1000; });
    const last = samples[samples.length - 1] || {};
    const lastOf = (xs) => (xs.length ? xs[xs.length - 1] : null);
    const fmt = (v, unit, digits) => (v === null || v === undefined || !isFinite(v) ? "—" : v.toFixed(digits ?? 0) + (unit || ""));
    const card = (title, value, values) => el("section", { class: "card", "aria-label": title },
      el("h2", {}, title), el("div", { class: "value" }, value), sparkline(values));
    cards.replaceChildren(
      card("Ack p99", fmt(lastOf(p99), " ms", 1), p99),
      card("Webhooks per second", fmt(lastOf(rate), "/s", 1), rate),
      card("Backlog (pending events)", fmt(last.inbox_pending_events), series((s) => s.inbox_pending_events)),
      card("Oldest pending", fmt(last.inbox_oldest_pending_age_seconds, " s", 1), series((s) => s.inbox_oldest_pending_age_seconds)),
      card("DLQ depth", fmt(last.dlq_open), series((s) => s.dlq_open)),
      card("Live conversation actors", fmt(last.live_conversation_actors), series((s) => s.live_conversation_actors)),
      card("Agent replies sent", fmt(last.agent_replies_sent_total), series((s) => s.agent_replies_sent_total)),
      card("Agent reply failures", fmt(last.agent_replies_failed_total), series((s) => s.agent_replies_failed_total)),
    );
  };
  const tick = async () => {
    try {
      samples.push(await api("GET", "/stats/live"));
      while (samples.length > 60) samples.shift();
      draw();
    } catch (e) {
      status.replaceWith(status = errorBox(e));
    }
  };
  await tick();
  timers.push(setInterval(tick, 3000));
}

// ---------- users ----------

function userDialog(user, done) {
  const editing = !!user;
  dialog(editing ? "Edit user" : "Add user", (form) => {
    form.append(
      field("Name", el("input", { name: "name", type: "text", required: true, maxlength: 200, value: user ? user.name : "" })),
      field("Email", el("input", { name: "email", type: "email", required: true, maxlength: 254, value: user ? user.email : "" })),
      field("Role", el("select", { name: "role" },
        ["viewer", "operator", "admin"].map((r) => el("option", { value: r, selected: (user ? user.role : "viewer") === r }, r)))),
      el("label", { class: "check" }, el("input", { name: "is_active", type: "checkbox", checked: user ? user.is_active : true }), "Active"));
  }, async (form) => {
    const body = {
      name: form.elements.name.value.trim(),
      email: form.elements.email.value.trim(),
      role: form.elements.role.value,
      is_active: form.elements.is_active.checked,
    };
    const saved = editing ? await api("PATCH", "/users/" + user.id, body) : await api("POST", "/users", body);
    toast(editing ? `User ${saved.name} saved` : `User ${saved.name} added`);
    done();
  }, editing ? "Save" : "Add user");
}

/// A user's tokens (admin): issue one (shown once, with a copy button), revoke one.
function tokensDialog(u) {
  const list = el("div", { class: "tokens" }, loading());
  const shown = el("div", { class: "new-token", hidden: true });
  const name = el("input", { type: "text", id: "token-name", required: true, maxlength: 100, value: "console" });
  const load = async () => {
    try {
      const r = await api("GET", "/tokens" + qs({ user_id: u.id }));
      const rows = r.items.map((t) => el("tr", { "data-token": t.id },
        el("td", {}, t.name), el("td", {}, when(t.created_at)), el("td", {}, t.last_used_at ? when(t.last_used_at) : "never"),
        el("td", {}, t.revoked_at ? el("span", { class: "badge" }, "revoked") : el("span", { class: "badge ok" }, "live")),
        el("td", { class: "actions" }, t.revoked_at ? null : el("button", { type: "button", class: "danger", onclick: async () => {
          try { await api("DELETE", "/tokens/" + t.id); toast(`Token ${t.name} revoked`); load(); } catch (e) { toast(e.message, true); }
        } }, "Revoke"))));
      list.replaceChildren(table("Tokens", ["Name", "Created", "Last used", "Status", ""], rows, "No tokens yet."));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  dialog(`Tokens of ${u.name}`, (form) => {
    form.append(list, field("New token's name", name), shown);
    load();
  }, async () => {
    const t = await api("POST", "/tokens", { user_id: u.id, name: name.value.trim() });
    const value = el("input", { type: "text", id: "new-token", readonly: true, value: t.token, "aria-label": "The new token" });
    const copy = el("button", { type: "button", class: "secondary", id: "copy-token", onclick: async () => {
      try { await navigator.clipboard.writeText(t.token); toast("Copied"); } catch (_) { value.select(); document.execCommand("copy"); toast("Copied"); }
    } }, "Copy");
    shown.replaceChildren(el("p", {}, "Shown this once: give it to " + u.name + " now."), el("div", { class: "bar" }, value, copy));
    shown.hidden = false;
    load();
    // The dialog stays open so the token can be copied.
    throw Object.assign(new Error(""), { keepOpen: true });
  }, "Issue token");
}

async function renderUsers() {
  const search = el("input", { type: "search", id: "user-search", placeholder: "Search by name" });
  const list = el("div", {}, loading());
  const load = async () => {
    list.replaceChildren(loading());
    try {
      const page = await api("GET", "/users" + qs({ search: search.value.trim(), limit: 200 }));
      const rows = page.items.map((u) => el("tr", { "data-user": u.email },
        el("td", {}, u.name),
        el("td", {}, u.email),
        el("td", {}, u.role),
        el("td", {}, el("span", { class: u.is_active ? "badge ok" : "badge" }, u.is_active ? "active" : "inactive")),
        el("td", { class: "actions" }, can("admin") ? [
          u.is_active ? el("button", { type: "button", class: "icon", "aria-label": "Tokens of " + u.name, title: "Tokens", onclick: () => tokensDialog(u) }, icon("key")) : null,
          el("button", { type: "button", class: "icon", "aria-label": "Edit " + u.name, title: "Edit", onclick: () => userDialog(u, load) }, icon("edit")),
          u.is_active ? el("button", {
            type: "button", class: "icon", "aria-label": "Deactivate " + u.name, title: "Deactivate",
            onclick: () => confirmDialog("Deactivate user", `Deactivate ${u.name} (${u.email})? Their tokens stop working at once.`, "Deactivate", async () => {
              await api("DELETE", "/users/" + u.id);
              toast(`User ${u.name} deactivated`);
              load();
            }),
          }, icon("trash")) : null,
        ] : [])));
      list.replaceChildren(table("Users", ["Name", "Email", "Role", "Status", "Actions"], rows,
        search.value ? "No user matches." : "No users yet."));
    } catch (e) {
      list.replaceChildren(errorBox(e));
    }
  };
  let debounce;
  search.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(load, 250); });
  show(
    el("div", { class: "bar" },
      el("h1", { class: "grow" }, "Users"),
      can("admin") ? el("button", { type: "button", id: "add-user", onclick: () => userDialog(null, load) }, "Add user") : null),
    el("div", { class: "bar" }, field("Search", search)),
    list);
  await load();
}

// ---------- events ----------

async function renderEvents(id) {
  const status = el("select", { id: "event-status" }, ["", "pending", "processed", "failed", "dead"].map((s) => el("option", { value: s }, s || "any")));
  const source = el("select", { id: "event-source" }, ["", "meta", "kapso"].map((s) => el("option", { value: s }, s || "any")));
  const search = el("input", { type: "search", id: "event-search", placeholder: "wamid, phone or correlation id", maxlength: 200 });
  const from = el("input", { type: "datetime-local", id: "event-from" });
  const to = el("input", { type: "datetime-local", id: "event-to" });
  const list = el("div", {});
  const detail = el("div", { id: "event-detail" });
  // Newest first; "Older" follows the cursor, "Newer" goes back the way it came.
  let cursors = [];
  let cursor = "";
  const iso = (input) => input.value ? new Date(input.value).toISOString() : "";
  const load = async () => {
    list.replaceChildren(loading());
    try {
      const page = await api("GET", "/events" + qs({ status: status.value, source: source.value, search: search.value.trim(),
        from: iso(from), to: iso(to), after: cursor, limit: 50 }));
      const rows = page.items.map((e) => el("tr", { "data-event": e.id },
        el("td", {}, el("a", { href: "#/events/" + e.id }, e.id)), el("td", {}, e.source), el("td", { class: "type" }, e.event_type || "—"),
        el("td", {}, el("span", { class: e.status === "processed" ? "badge ok" : e.status === "pending" ? "badge warn" : "badge bad" }, e.status)),
        el("td", {}, e.attempts), el("td", {}, when(e.received_at)), el("td", {}, e.last_error || e.notes || ""),
        el("td", { class: "actions" },
          el("a", { href: "#/events/" + e.id, class: "button secondary" }, "Open"),
          can("operator") ? el("button", { type: "button", class: "secondary", onclick: () => replay([e.id]) }, "Replay") : null)));
      list.replaceChildren(table("Events, newest first", ["Id", "Source", "Type", "Status", "Attempts", "Received", "Error or notes", ""], rows, "No events match."),
        el("div", { class: "pager bar" },
          cursors.length ? el("button", { type: "button", class: "secondary", id: "events-newer", onclick: () => { cursor = cursors.pop(); load(); } }, "← Newer") : null,
          page.next ? el("button", { type: "button", class: "secondary", id: "events-older", onclick: () => { cursors.push(cursor); cursor = page.next; load(); } }, "Older →") : null));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  const reload = () => { cursors = []; cursor = ""; load(); };
  const replay = (ids) => confirmDialog("Replay event", `Process event ${ids.join(", ")} again? Nothing already applied changes twice.`, "Replay", async () => {
    const r = await api("POST", "/events/replay", { ids });
    toast(`${r.replayed} event(s) replayed`);
    load();
  });
  const openEvent = async (eid) => {
    detail.replaceChildren(loading());
    try {
      const e = await api("GET", "/events/" + eid);
      detail.replaceChildren(el("section", { "aria-label": "Event " + eid },
        el("h2", {}, `Event ${eid} · ${e.event_type || e.source} · ${e.status}`),
        el("p", {}, "Correlation id: ", el("code", { id: "event-correlation" }, e.correlation_id), ` · received ${when(e.received_at)}`),
        e.dlq ? el("p", { id: "event-dlq" }, el("a", { href: "#/dlq/" + e.dlq.id }, `DLQ row ${e.dlq.id}`), `: ${e.dlq.resolution_status}, parked ${e.dlq.attempts} time(s), next retry ${when(e.dlq.next_retry_at)} — ${e.dlq.error}`)
          : el("p", { class: "muted" }, "Never parked in the DLQ."),
        (e.conversations || []).length ? el("p", { id: "event-conversations" }, "Conversations: ", ...e.conversations.map((c) => el("a", { href: "#/conversations/" + c, class: "chip" }, "#" + c))) : null,
        e.notes ? el("p", {}, "Notes: " + e.notes) : null,
        can("operator") ? el("p", {}, el("button", { type: "button", class: "secondary", id: "event-replay", onclick: () => replay([eid]) }, "Replay")) : null,
        el("h3", {}, "Headers"),
        el("pre", { tabindex: "0", "aria-label": "Headers" }, JSON.stringify(e.headers, null, 2)),
        el("h3", {}, "Payload"),
        el("pre", { tabindex: "0", "aria-label": "Payload" }, JSON.stringify(e.payload, null, 2))));
      detail.scrollIntoView();
    } catch (err) { detail.replaceChildren(errorBox(err)); }
  };
  search.addEventListener("input", debounced(reload, 250));
  for (const f of [status, source, from, to]) f.addEventListener("change", reload);
  show(el("h1", {}, "Events"), el("div", { class: "bar" }, field("Search", search), field("Status", status), field("Source", source),
    field("Received from", from), field("to", to)), list, detail);
  await load();
  if (id) await openEvent(Number(id));
}

// ---------- DLQ ----------

async function renderDlq(id) {
  const status = el("select", { id: "dlq-status" }, ["pending", "retrying", "dead", "resolved", "discarded", ""].map((s) => el("option", { value: s }, s || "any")));
  if (id) status.value = "";
  const needle = el("input", { type: "text", id: "dlq-error-filter", placeholder: "error contains…" });
  const list = el("div", {});
  const act = async (row, action) => {
    try {
      const after = await api("POST", `/dlq/${row.id}/${action}`);
      toast(`DLQ row ${row.id}: ${action} → ${after.resolution_status}`);
      load();
    } catch (e) { toast(e.message, true); }
  };
  const BADGES = { resolved: "badge ok", discarded: "badge", pending: "badge warn", retrying: "badge warn", dead: "badge bad" };
  const load = async () => {
    list.replaceChildren(loading());
    try {
      const page = await api("GET", "/dlq" + qs({ status: status.value, limit: 200 }));
      const rows = page.items.map((r) => el("tr", { "data-dlq": r.id, class: Number(id) === r.id ? "picked" : null },
        el("td", {}, r.id), el("td", {}, el("a", { href: "#/events/" + r.event_id }, `${r.source} · event ${r.event_id}`), r.event_type ? el("div", { class: "muted" }, r.event_type) : null),
        el("td", {}, r.error),
        el("td", {}, r.attempts), el("td", {}, r.resolution_status === "dead" ? "never (dead)" : when(r.next_retry_at)),
        el("td", {}, el("span", { class: BADGES[r.resolution_status] || "badge", "data-status": "" }, r.resolution_status)),
        el("td", { class: "actions" }, can("operator") && (r.resolution_status === "pending" || r.resolution_status === "dead") ? [
          r.resolution_status === "pending" ? el("button", { type: "button", class: "secondary", onclick: () => act(r, "retry") }, "Retry") : null,
          el("button", { type: "button", class: "secondary", onclick: () => confirmDialog("Resolve DLQ row", `Mark row ${r.id} resolved (fixed elsewhere)? It will not be retried.`, "Resolve", () => act(r, "resolve")) }, "Resolve"),
          el("button", { type: "button", class: "danger", onclick: () => confirmDialog("Discard DLQ row", `Discard row ${r.id}? Its event will never be processed.`, "Discard", () => act(r, "discard")) }, "Discard"),
        ] : [])));
      list.replaceChildren(table("Dead-letter rows, newest first", ["Id", "Event", "Error", "Times parked", "Next retry", "Status", ""], rows, "Nothing in the dead-letter queue."));
      if (id) { const picked = list.querySelector("tr.picked"); if (picked) picked.scrollIntoView(); }
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  const bulk = async () => {
    try {
      const body = needle.value.trim() ? { error_contains: needle.value.trim() } : {};
      const r = await api("POST", "/dlq/retry", body);
      toast(`${r.retried} row(s) retried`);
      load();
    } catch (e) { toast(e.message, true); }
  };
  status.addEventListener("change", load);
  show(el("h1", {}, "Dead-letter queue"),
    el("div", { class: "bar" }, field("Status", status),
      can("operator") ? [field("Bulk retry filter", needle), el("button", { type: "button", id: "bulk-retry", onclick: bulk }, "Retry all pending")] : []),
    list);
  // Rows change on their own (parked, re-driven, resolved): the live stream says when.
  const reload = debounced(() => { if (!document.querySelector("dialog")) load(); }, 300);
  onLive = (event) => { if (event === "dlq" || event === "reset") reload(); };
  await load();
}

// ---------- search ----------

/// The header's search: a phone, name, BSUID or wamid finds conversations; a wamid, phone or
/// correlation id finds events.
async function renderSearch(q) {
  const term = decodeURIComponent(q || "").trim();
  if (!term) return show(el("h1", {}, "Search"), el("p", { class: "muted" }, "Type a phone, name, wamid or correlation id in the search box."));
  const [convs, events] = await Promise.all([
    api("GET", "/conversations" + qs({ search: term, limit: 20 })),
    api("GET", "/events" + qs({ search: term, limit: 20 })),
  ]);
  const cRows = convs.items.map((c) => el("tr", { "data-conversation": c.id },
    el("td", {}, el("a", { href: "#/conversations/" + c.id }, conversationTitle(c))), el("td", {}, c.contact),
    el("td", {}, el("span", { class: "badge" }, c.state)), el("td", {}, when(c.last_message_at))));
  const eRows = events.items.map((e) => el("tr", { "data-event": e.id },
    el("td", {}, el("a", { href: "#/events/" + e.id }, e.id)), el("td", {}, e.event_type || e.source),
    el("td", {}, e.status), el("td", {}, when(e.received_at)), el("td", {}, el("code", {}, e.correlation_id))));
  show(el("h1", {}, `Search: ${term}`),
    el("h2", {}, "Conversations"), table("Conversations found", ["Contact", "Address", "State", "Last activity"], cRows, "No conversation matches."),
    el("h2", {}, "Events"), table("Events found, newest first", ["Id", "Type", "Status", "Received", "Correlation id"], eRows, "No event matches."));
}

// ---------- conversations ----------

const TICKS = { sent: ["✓", "sent"], delivered: ["✓✓", "delivered"], read: ["✓✓", "read"], failed: ["✗", "failed"] };

async function renderConversations(id) {
  if (id) return renderConversation(id);
  const state = el("select", { id: "conversation-state" }, ["", "open", "human", "inactive", "closed"].map((s) => el("option", { value: s }, s || "any")));
  const since = el("input", { type: "datetime-local", id: "conversation-since" });
  const search = el("input", { type: "search", id: "conversation-search", placeholder: "phone, name or user id", maxlength: 200 });
  const waiting = el("input", { type: "checkbox", id: "conversation-needs-reply" });
  const mine = el("input", { type: "checkbox", id: "conversation-mine" });
  const list = el("div", {});
  const load = async () => {
    list.replaceChildren(loading());
    try {
      const sinceIso = since.value ? new Date(since.value).toISOString() : "";
      const page = await api("GET", "/conversations" + qs({ state: state.value, active_since: sinceIso, search: search.value.trim(),
        needs_reply: waiting.checked ? "true" : "", assignee_id: mine.checked && me.user_id ? me.user_id : "", limit: 200 }));
      const rows = page.items.map((c) => el("tr", { "data-conversation": c.id },
        el("td", {}, el("a", { href: "#/conversations/" + c.id }, conversationTitle(c)),
          c.needs_reply ? el("span", { class: "mark needs-reply", title: "the customer's message is unanswered" }, "needs reply") : null),
        el("td", {}, c.contact), el("td", {}, el("span", { class: "badge" }, c.state)),
        el("td", {}, c.assignee_name || "—"),
        el("td", {}, c.message_count), el("td", {}, when(c.last_message_at))));
      list.replaceChildren(table("Conversations, newest activity first", ["Contact", "Address", "State", "Assigned to", "Messages", "Last activity"], rows, "No conversations match."));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  search.addEventListener("input", debounced(load, 250));
  state.addEventListener("change", load);
  since.addEventListener("change", load);
  waiting.addEventListener("change", load);
  mine.addEventListener("change", load);
  onLive = debounced(load, 300);
  show(el("h1", {}, "Conversations"), el("div", { class: "bar" }, field("Search", search), field("State", state), field("Active since", since),
    el("label", { class: "check" }, waiting, "Needs a reply"), el("label", { class: "check" }, mine, "Assigned to me")), list);
  await load();
}

// Who wrote an inbound message: in a group, the participant it names; else the contact.
function senderName(m, c) {
  if (m.sender) return m.sender.name ? `${m.sender.name} (${m.sender.phone || m.sender.user_id || "?"})` : (m.sender.phone || m.sender.user_id || "a participant");
  return c.contact_name || c.contact;
}

const AUTHORS = { agent: "agent", business_app: "business phone", api: "another system" };

// Who wrote a message: the customer (a group's participant), the agent, an operator by name,
// the business phone's WhatsApp Business app, or another system.
function authorName(m, c) {
  if (m.direction === "inbound") return senderName(m, c);
  if (m.author === "operator") return m.author_name ? `${m.author_name} (operator)` : "operator";
  return AUTHORS[m.author] || "sent by us";
}

function conversationTitle(c) {
  return c.group_id ? `Group ${c.contact_name || c.group_id}` : (c.contact_name || c.contact);
}

// What the agent did here: turns, skips, failures, tokens, latency, its last error.
function agentPanel(data) {
  const panels = data.agents || [];
  if (!panels.length) return null;
  return el("details", { class: "agent-panel", id: "agent-panel" },
    el("summary", {}, panels.map((a) => `${a.agent}: ${a.turns} turn(s), ${a.skips} kept quiet, ${a.failures} failed`).join(" · ")),
    ...panels.map((a) => el("dl", { "data-agent": a.agent },
      el("dt", {}, "Tokens"), el("dd", {}, `${a.prompt_tokens} in, ${a.completion_tokens} out`),
      el("dt", {}, "Mean latency"), el("dd", {}, a.mean_latency_ms === null ? "—" : `${a.mean_latency_ms} ms`),
      el("dt", {}, "Last turn"), el("dd", {}, when(a.last_turn_at)),
      el("dt", {}, "Last error"), el("dd", { class: a.last_error ? "error" : "" }, a.last_error || "none"))));
}

// A conversation's messages and the agent's silent turns, in time order.
function timelineOf(data) {
  const c = data.conversation;
  const thread = data.messages.map((m) => {
    const tick = TICKS[m.status] || null;
    const edits = m.edits || [];
    return el("article", { class: "msg " + m.direction + (m.revoked ? " revoked" : ""), "data-wamid": m.wamid, "aria-label": `${m.direction} message` },
      el("div", {}, m.revoked ? "This message was deleted" : (m.content ?? (m.media ? "" : `[${m.message_type}]`))),
      m.revoked ? null : mediaView(m),
      m.revoked ? null : locationView(m),
      el("div", { class: "meta" },
        el("span", { class: m.sender ? "sender" : "author " + (m.author || m.direction), "data-author": m.author || "" }, authorName(m, c)),
        m.edited && !m.revoked ? el("span", { class: "mark edited", title: edits.map((e) => `${when(e.at)}: ${e.content ?? ""}`).join("\n") }, "edited") : null,
        m.revoked ? el("span", { class: "mark deleted" }, "deleted") : null,
        el("time", { datetime: m.timestamp }, when(m.timestamp)),
        tick ? el("span", { class: "tick " + m.status, title: tick[1], "aria-label": tick[1], "data-status": m.status }, tick[0]) : null),
      (m.reactions || []).length ? el("div", { class: "reactions", "aria-label": "reactions" },
        ...m.reactions.map((r) => el("span", { class: "reaction", title: r.side === "outbound" ? "our reaction" : "their reaction" }, r.emoji))) : null,
      m.status_error ? el("div", { class: "error" }, m.status_error) : null);
  });
  // The agent's turns that sent nothing, where they happened, with why.
  const turns = (data.turns || []).map((t) => ({ at: t.created_at, node: el("div", { class: "turn " + t.state, role: "note", "data-turn": t.state, "data-reason": t.error || "" },
    `${t.agent} ${t.state === "skipped" ? "kept quiet" : t.state}: ${TURN_REASONS[t.error] || t.error || "—"}`, el("time", { datetime: t.created_at }, " · " + when(t.created_at))) }));
  // Hand-offs announced to the number's notify_url, and how that went.
  const handoffs = (data.handoffs || []).filter((h) => h.status !== "skipped").map((h) => ({ at: h.created_at,
    node: el("div", { class: "turn handoff " + h.status, role: "note", "data-handoff": h.status },
      `Hand-off announced to ${h.url || "the notify URL"}: ${h.status === "pending" ? `trying (${h.attempts} attempt(s) so far)` : h.status}`
        + (h.last_status ? ` (${h.last_status})` : "") + (h.status !== "delivered" && h.error ? ` — ${h.error}` : ""),
      el("time", { datetime: h.created_at }, " · " + when(h.created_at))) }));
  const timeline = thread.map((node, i) => ({ at: data.messages[i].timestamp, node }))
    .concat(turns, handoffs).sort((a, b) => new Date(a.at) - new Date(b.at)).map((x) => x.node);
  return timeline.length ? el("div", { class: "thread", id: "thread" }, timeline) : el("p", { class: "muted", id: "thread" }, "No messages yet.");
}

async function renderConversation(id) {
  const here = () => location.hash === "#/conversations/" + id;
  const data = await api("GET", "/conversations/" + id);
  // The operator went elsewhere meanwhile: nothing to show.
  if (!here()) return;
  const c = data.conversation;
  // Live: a change to this conversation (or a reset) redraws its timeline in place (the
  // reply box, its draft and its focus untouched); a new state or window redraws the screen.
  const refresh = debounced(async () => {
    if (!here()) return;
    try {
      const now = await api("GET", "/conversations/" + id);
      if (!here()) return;
      // Compared with what the screen shows now (another render may have come in between).
      const badge = document.getElementById("conversation-state-badge");
      const shownOpen = !document.getElementById("window-closed");
      if (!badge || now.conversation.state !== badge.textContent || now.service_window_open !== shownOpen) return renderConversation(id);
      const old = document.getElementById("thread");
      if (!old) return;
      const panel = agentPanel(now);
      const oldPanel = document.getElementById("agent-panel");
      if (panel && oldPanel) { panel.open = oldPanel.open; oldPanel.replaceWith(panel); } else if (panel) old.before(panel);
      old.replaceWith(timelineOf(now));
    } catch (_) { /* the next change tries again */ }
  }, 150);
  onLive = (event, d) => { if (event === "reset" || d.conversation_id === Number(id)) refresh(); };
  const setState = async (to, label) => {
    try {
      await api("POST", `/conversations/${id}/state`, { state: to, reason: "from the console" });
      toast(label);
      renderConversation(id);
    } catch (e) { toast(e.message, true); }
  };
  const actions = can("operator") ? [
    c.state !== "human" ? el("button", { type: "button", onclick: () => setState("human", "Handed to a person: the agent is silent") }, "Hand to a person") : null,
    c.state === "human" || c.state === "closed" ? el("button", { type: "button", class: "secondary", onclick: () => setState("open", "Given back to the agent") }, "Give back to the agent") : null,
    c.state !== "closed" ? el("button", { type: "button", class: "secondary", onclick: () => setState("closed", "Conversation closed") }, "Close") : null,
  ] : [];
  // Who has it: operators assign it (to themselves or another user), everyone sees it.
  let assignee = el("span", { class: "muted", id: "conversation-assignee" }, c.assignee_name ? `Assigned to ${c.assignee_name}` : "Unassigned");
  if (can("operator")) {
    const users = await api("GET", "/users" + qs({ limit: 200 })).catch(() => ({ items: [] }));
    const pick = el("select", { id: "conversation-assign", "aria-label": "Assigned to" },
      el("option", { value: "" }, "Unassigned"),
      users.items.filter((u) => u.is_active).map((u) => el("option", { value: String(u.id) }, u.name + (u.id === me.user_id ? " (me)" : ""))));
    pick.value = c.assignee_id ? String(c.assignee_id) : "";
    pick.addEventListener("change", async () => {
      try {
        const after = await api("PUT", `/conversations/${id}/assignee`, { user_id: pick.value ? Number(pick.value) : null });
        toast(after.assignee_name ? `Assigned to ${after.assignee_name}` : "Unassigned");
      } catch (e) { toast(e.message, true); }
    });
    assignee = field("Assigned to", pick);
  }
  const composer = !data.service_window_open && can("operator") ? await templateComposer(c, () => renderConversation(id))
    : data.service_window_open && can("operator") ? await replyComposer(c, () => renderConversation(id)) : null;
  if (!here()) return;
  show(
    el("p", {}, el("a", { href: "#/conversations" }, "← Conversations")),
    el("div", { class: "bar" },
      el("h1", { class: "grow" }, `${conversationTitle(c)} · `, el("span", { class: "badge", id: "conversation-state-badge" }, c.state)),
      assignee, actions),
    data.service_window_open ? null : el("div", { class: "banner", role: "note", id: "window-closed" },
      "The 24-hour window is closed: the customer has not written since " +
      (data.service_window_closes_at ? when(new Date(new Date(data.service_window_closes_at) - 864e5)) : "— (never)") +
      ". Only a template message may be sent."),
    agentPanel(data),
    timelineOf(data),
    composer);
}

const TURN_REASONS = {
  human_replied: "a person replied lately",
  handed_to_person: "a person has the conversation",
  handoff_keyword: "the customer asked for a person",
  service_window_closed: "the 24-hour window is closed",
  no_sendable_address: "no address to send to",
};

const UPLOAD_KINDS = { "image/jpeg": "image", "image/png": "image", "image/webp": "sticker", "video/mp4": "video", "video/3gpp": "video" };

function kindOf(type) {
  if (UPLOAD_KINDS[type]) return UPLOAD_KINDS[type];
  return type.startsWith("audio/") ? "audio" : "document";
}

/// Inside the window: a text, or a file with a caption, sent once per draft.
async function replyComposer(c, done) {
  const accounts = await api("GET", "/accounts");
  const numbers = accounts.items;
  if (!numbers.length) return el("p", { class: "muted", id: "reply-composer" }, "This workspace has no number to reply from.");
  const draft = drafts[c.id] || (drafts[c.id] = { text: "", key: draftKey() });
  const text = el("textarea", { id: "reply-text", name: "text", rows: 3, maxlength: 4096, placeholder: "Write a reply…", "aria-label": "Reply" });
  text.value = draft.text;
  text.addEventListener("input", () => { draft.text = text.value; });
  const file = el("input", { type: "file", id: "reply-file", accept: "image/jpeg,image/png,image/webp,audio/aac,audio/amr,audio/mpeg,audio/mp4,audio/ogg,video/mp4,video/3gpp,application/pdf,text/plain" });
  const from = el("select", { id: "reply-from", name: "from" },
    numbers.map((a) => el("option", { value: a.phone_number_id }, a.display_phone_number || a.phone_number_id)));
  const send = el("button", { type: "submit", id: "reply-send" }, icon("send"), "Send");
  const form = el("form", { class: "composer reply", id: "reply-composer", "aria-label": "Reply" },
    text, el("div", { class: "bar" }, field("Attach", file), numbers.length > 1 ? field("From", from) : null, send));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (send.disabled) return;
    const f = file.files[0];
    const body = text.value.trim();
    if (!f && !body) { toast("Write something or attach a file", true); return; }
    send.disabled = true;
    const pnid = from.value || numbers[0].phone_number_id;
    try {
      let message;
      if (f) {
        const up = await uploadFile(pnid, f);
        const media = { type: up.type || kindOf(f.type), id: up.id };
        if (body && ["image", "video", "document"].includes(media.type)) media.caption = body;
        if (media.type === "document") media.filename = f.name;
        message = { media };
      } else message = { text: body };
      const r = await api("POST", "/messages", { conversation_id: c.id, phone_number_id: pnid, ...message, idempotency_key: draft.key });
      toast(r.state === "already_recorded" ? "Already sent" : r.state === "unknown" ? "Sent, outcome unknown: not retried" : "Sent");
      delete drafts[c.id];
      done();
    } catch (e) {
      toast(e.message, true);
      send.disabled = false;
    }
  });
  return form;
}

// ---------- templates ----------

/// A key per draft: a double click, a retry after a lost answer, sends once.
function draftKey() {
  return "console-" + (crypto.randomUUID ? crypto.randomUUID() : Date.now() + "-" + Math.random().toString(36).slice(2));
}

/// The text a template renders to with these values (as the server renders it).
function renderTemplateText(t, values) {
  let text = t.body || "";
  for (const [k, v] of Object.entries(values)) text = text.split(`{{${k}}}`).join(v || `{{${k}}}`);
  return text;
}

/// Outside the window: pick an approved template, fill its placeholders, send it once.
async function templateComposer(c, done) {
  const [templates, accounts] = await Promise.all([api("GET", "/templates"), api("GET", "/accounts")]);
  const approved = templates.items.filter((t) => t.status === "APPROVED");
  const numbers = accounts.items.filter((a) => a.waba_id);
  if (!approved.length || !numbers.length) {
    return el("p", { class: "muted", id: "template-composer" },
      numbers.length ? "No approved template: sync the catalog on the Templates screen." : "No number of this workspace has a WhatsApp Business Account (waba_id): templates cannot be sent.");
  }
  const key = draftKey();
  const pick = el("select", { id: "template-pick", name: "template" },
    approved.map((t) => el("option", { value: String(t.id) }, `${t.name} (${t.language}) · ${t.category.toLowerCase()}`)));
  const from = el("select", { id: "template-from", name: "from" },
    numbers.map((a) => el("option", { value: a.phone_number_id }, a.display_phone_number || a.phone_number_id)));
  const fields = el("div", { class: "template-fields" });
  const preview = el("p", { class: "preview", id: "template-preview", "aria-live": "polite" });
  const send = el("button", { type: "submit", id: "template-send" }, "Send template");
  const chosen = () => approved.find((t) => String(t.id) === pick.value);
  const values = () => {
    const out = {};
    for (const i of fields.querySelectorAll("input[data-ph]")) out[i.dataset.ph] = i.value;
    return out;
  };
  const refresh = () => { preview.textContent = renderTemplateText(chosen(), values()); };
  const build = () => {
    const t = chosen();
    const inputs = t.placeholders.body.map((ph) => field(t.parameter_format === "NAMED" ? ph : `{{${ph}}}`,
      el("input", { type: "text", required: true, maxlength: 1024, "data-ph": ph, oninput: refresh })));
    if (t.placeholders.header_media) inputs.push(field(`Header ${t.placeholders.header_media.toLowerCase()} (media id or https link)`, el("input", { type: "text", required: true, name: "header" })));
    for (const i of t.placeholders.url_buttons) inputs.push(field(`Button ${i + 1} link text`, el("input", { type: "text", required: true, "data-button": String(i) })));
    fields.replaceChildren(...inputs);
    refresh();
  };
  pick.addEventListener("change", build);
  build();
  const form = el("form", { class: "composer", id: "template-composer", "aria-label": "Send a template" },
    el("h2", {}, "Send a template"),
    el("div", { class: "bar" }, field("Template", pick), numbers.length > 1 ? field("From", from) : null),
    fields, preview, el("div", {}, send));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!form.reportValidity() || send.disabled) return;
    const t = chosen();
    const v = values();
    const template = { name: t.name, language: t.language };
    if (t.placeholders.body.length) template.parameters = t.parameter_format === "NAMED" ? v : t.placeholders.body.map((ph) => v[ph]);
    const header = form.querySelector("input[name=header]");
    if (header) template.header = header.value.startsWith("https://") ? { link: header.value } : { id: header.value };
    const buttons = [...form.querySelectorAll("input[data-button]")].map((b) => ({ index: Number(b.dataset.button), text: b.value }));
    if (buttons.length) template.buttons = buttons;
    send.disabled = true;
    try {
      const r = await api("POST", "/messages", { conversation_id: c.id, phone_number_id: from.value || numbers[0].phone_number_id, template, idempotency_key: key });
      toast(r.state === "already_recorded" ? "Already sent" : r.state === "unknown" ? "Sent, outcome unknown: not retried" : "Template sent");
      done();
    } catch (e) {
      toast(e.message, true);
      send.disabled = false;
    }
  });
  return form;
}

async function renderTemplates() {
  const list = el("div", {});
  const load = async () => {
    list.replaceChildren(loading());
    try {
      const data = await api("GET", "/templates");
      const rows = data.items.map((t) => el("tr", { "data-template": t.name + ":" + t.language },
        el("td", {}, t.name), el("td", {}, t.language),
        el("td", {}, t.category.toLowerCase()),
        el("td", {}, el("span", { class: "badge status-" + t.status, title: t.reason || "" }, t.status.toLowerCase())),
        el("td", {}, t.quality ? el("span", { class: "badge quality-" + t.quality }, t.quality.toLowerCase()) : "—"),
        el("td", {}, [...t.placeholders.body.map((p) => t.parameter_format === "NAMED" ? p : `{{${p}}}`),
          ...(t.placeholders.header_media ? ["header " + t.placeholders.header_media.toLowerCase()] : [])].join(", ") || "—"),
        el("td", {}, t.body || "")));
      list.replaceChildren(table("Templates", ["Name", "Language", "Category", "Status", "Quality", "Placeholders", "Body"], rows,
        "No templates yet: an admin can sync them from Meta."));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  const sync = can("admin") ? el("button", { type: "button", id: "templates-sync", onclick: async () => {
    try {
      const r = await api("POST", "/templates/sync");
      toast(r.errors.length ? `Synced with errors: ${r.errors.join("; ")}` : `${r.templates} templates synced`, r.errors.length > 0);
      load();
    } catch (e) { toast(e.message, true); }
  } }, "Sync from Meta") : null;
  show(el("div", { class: "bar" }, el("h1", { class: "grow" }, "Templates"), sync), list);
  await load();
}

// ---------- leads ----------

async function renderLeads() {
  const filter = el("select", { id: "lead-filter" },
    el("option", { value: "not_contacted" }, "Not contacted in N days"),
    el("option", { value: "needs_follow_up" }, "Needs follow-up"),
    el("option", { value: "recently_active" }, "Recently active"));
  const days = el("input", { type: "number", id: "lead-days", min: 0, max: 3650, value: 7 });
  const since = el("input", { type: "datetime-local", id: "lead-since" });
  const daysField = field("Days", days), sinceField = field("Active since", since);
  const list = el("div", {});
  const load = async () => {
    daysField.hidden = filter.value !== "not_contacted";
    sinceField.hidden = filter.value !== "recently_active";
    list.replaceChildren(loading());
    try {
      const params = { filter: filter.value };
      if (filter.value === "not_contacted") params.days = days.value || 0;
      if (filter.value === "recently_active") params.since = new Date(since.value || Date.now() - 864e5).toISOString();
      const page = await api("GET", "/leads" + qs(params));
      const rows = page.items.map((c) => el("tr", { "data-contact": c.id },
        el("td", {}, c.name || "—",
          c.marketing_opt_out ? el("span", { class: "badge opt-out", title: "Asked to stop marketing messages" + (c.marketing_opt_out_at ? " on " + when(c.marketing_opt_out_at) : "") }, "no marketing") : null),
        el("td", {}, c.phone),
        el("td", {}, c.lead_status), el("td", {}, c.lead_score),
        el("td", {}, when(c.last_activity_at)), el("td", {}, when(c.last_contact_at)),
        el("td", { class: "actions" }, can("operator") ? el("button", {
          type: "button", class: "icon", "aria-label": "Edit lead " + (c.name || c.phone), title: "Edit", onclick: () => leadDialog(c, load),
        }, icon("edit")) : null)));
      list.replaceChildren(table("Leads", ["Name", "Phone", "Status", "Score", "Last activity", "Last contact", ""], rows, "No leads match."));
    } catch (e) { list.replaceChildren(errorBox(e)); }
  };
  for (const x of [filter, days, since]) x.addEventListener("change", load);
  show(el("h1", {}, "Leads"), el("div", { class: "bar" }, field("Filter", filter), daysField, sinceField), list);
  await load();
}

function leadDialog(c, done) {
  dialog("Edit lead", (form) => form.append(
    el("p", { class: "muted" }, `${c.name || "—"} · ${c.phone}`),
    field("Lead status", (() => {
      // The usual stages, and any other the workspace uses (lower-case letters and _).
      const input = el("input", { name: "lead_status", type: "text", required: true, pattern: "[a-z_]{1,50}", value: c.lead_status,
        list: "lead-stages", title: "lower-case letters and _, e.g. new, contacted, qualified, customer, lost" });
      input.addEventListener("input", () => input.setCustomValidity(/^[a-z_]{1,50}$/.test(input.value) ? "" : "Use lower-case letters and _ only, e.g. qualified"));
      return el("span", {}, input, el("datalist", { id: "lead-stages" },
        ["new", "contacted", "qualified", "proposal", "customer", "lost"].map((v) => el("option", { value: v }))));
    })()),
    field("Score (0–100)", el("input", { name: "lead_score", type: "number", min: 0, max: 100, required: true, value: c.lead_score }))),
  async (form) => {
    await api("PATCH", "/contacts/" + c.id, { lead_status: form.elements.lead_status.value, lead_score: Number(form.elements.lead_score.value) });
    toast("Lead saved");
    done();
  });
}

// ---------- start ----------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  // The header's search: phone, name, wamid or correlation id.
  document.getElementById("global-search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = document.getElementById("global-search-input").value.trim();
    if (q) location.hash = "#/search/" + encodeURIComponent(q);
  });
  route();
});
