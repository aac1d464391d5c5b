// dt-scheduler dashboard: renders what the JSON endpoints (/api/...) answer. No framework, no build step.
// The token (when the service uses tokens) lives in this tab's sessionStorage only, and goes out as
// "Authorization: Bearer ..." on every JSON request. Every page is a plain URL: filters, paging and the
// task hub are query parameters, so links, reloads and the back button work.
"use strict";

const TOKEN_KEY = "dt-dashboard-token";
const STATUSES = ["PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "FAILED", "TERMINATED", "CONTINUED_AS_NEW", "CANCELED"];
const LIVE = ["PENDING", "RUNNING", "SUSPENDED"];
const ENDED = ["COMPLETED", "FAILED", "TERMINATED", "CANCELED"];
const ACTIONS = [ // [path, method the role must allow, label, what the confirmation says, statuses it applies to]
  ["suspend", "SuspendInstance", "Suspend", "Suspend", ["PENDING", "RUNNING"]],
  ["resume", "ResumeInstance", "Resume", "Resume", ["SUSPENDED"]],
  ["raise-event", "RaiseEvent", "Raise event", "Raise an event to", LIVE],
  ["terminate", "TerminateInstance", "Terminate", "Terminate", LIVE],
  ["rewind", "RewindInstance", "Rewind", "Rewind", ["FAILED"]],
  ["restart", "RestartInstance", "Restart", "Restart", ENDED],
  ["purge", "PurgeInstances", "Purge", "Purge (delete for good)", ENDED],
];
const params = new URLSearchParams(location.search);
let session = null;
let skewMs = 0; // server clock - browser clock, for the countdowns

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(el.style, v); // through the CSSOM: the CSP allows no inline style
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

function hub() { return params.get("hub") || (session ? session.defaultHub : ""); }
// "dapr": the Dapr twin of the hub (instances of Dapr Workflow's SDKs), whose calls are those of the Dapr port
function flavour() { return params.get("flavour") === "dapr" ? "dapr" : ""; }
const DAPR_REFUSES = ["RewindInstance", "RestartInstance"]; // not in Dapr's contract (the server refuses them too)

function link(path, extra) {
  const q = new URLSearchParams(extra || {});
  if (params.get("hub")) q.set("hub", params.get("hub"));
  if (flavour()) q.set("flavour", flavour());
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

class AuthError extends Error {}

// Without tokens the page arrives with the first answers it needs (by kind), so it is whole once loaded.
const PRELOAD = (() => { const el = document.getElementById("preload"); return el ? JSON.parse(el.textContent) : {}; })();

function settle(status, body) {
  if (status === 401) { sessionStorage.removeItem(TOKEN_KEY); throw new AuthError(body.error); }
  if (status >= 400) throw new Error(`${body.code || status}: ${body.error}`);
  return body;
}

async function api(path, options, kind) {
  if (kind && PRELOAD[kind] && !options) {
    const {status, body} = PRELOAD[kind];
    delete PRELOAD[kind];
    return settle(status, body);
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = {"Accept": "application/json"};
  if (token) headers["Authorization"] = `Bearer ${token}`;
  if (options && options.body) headers["Content-Type"] = "application/json";
  const sep = path.includes("?") ? "&" : "?";
  let url = hub() ? `${path}${sep}hub=${encodeURIComponent(hub())}` : path;
  if (flavour()) url += `${url.includes("?") ? "&" : "?"}flavour=${flavour()}`;
  const reply = await fetch(url, {...(options || {}), headers});
  let body = {};
  try { body = await reply.json(); } catch (e) { body = {error: `HTTP ${reply.status}`}; }
  return settle(reply.status, body);
}

function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC") : ""; }

function seconds(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 1000 ? `${ms} ms` : ms < 120000 ? `${(ms / 1000).toFixed(1)} s` : `${(ms / 60000).toFixed(1)} min`;
}

function clock(ms) { // 12.3 s, or h:mm:ss: it moves every second
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function countdown(dueMs) { return h("span", {class: "countdown", "data-due": dueMs}, ""); }

function tick() {
  for (const el of document.querySelectorAll("[data-due]")) {
    const left = Number(el.dataset.due) - (Date.now() + skewMs);
    el.textContent = left > 0 ? `starts in ${clock(left)}` : "due";
  }
}

function statusBadge(status) { return h("span", {class: `status status-${status}`}, status); }

function show(...nodes) {
  document.getElementById("main").replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined));
}

function failed(err) { show(h("p", {class: "error"}, String(err.message || err))); }

function showLogin(message) {
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  const input = h("input", {type: "password", name: "token", autocomplete: "off", required: true});
  const form = h("form", {id: "login", onsubmit: (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    location.reload();
  }}, h("h1", {}, "A token is required"),
    h("p", {class: "muted"}, "This service uses bearer tokens. The token is kept in this tab only (sessionStorage)."),
    message ? h("p", {class: "error"}, message) : null,
    h("label", {}, "Bearer token", input), h("button", {type: "submit"}, "Use token"));
  show(form);
  input.focus();
}

function may(method) {
  if (!session || !session.methods.includes(method) || (flavour() && DAPR_REFUSES.includes(method))) return false;
  return session.hubs.includes("*") || session.hubs.includes(hub());
}

async function header() {
  const here = location.pathname;
  const nav = [["/", "Instances"], ["/entities", "Entities"], ["/schedules", "Schedules"]].map(([path, label]) =>
    h("a", {href: link(path), class: here === path ? "current" : null}, label));
  const picker = h("select", {id: "hub-picker", onchange: (e) => { // an option's value is its query
    location.href = `${here.startsWith("/instances/") ? "/" : here}?${e.target.value}`;
  }});
  const option = (name, kind) => {
    const q = new URLSearchParams({hub: name}); if (kind) q.set("flavour", kind);
    return h("option", {value: q.toString(), selected: name === hub() && kind === flavour()}, hubLabel(name, kind));
  };
  try {
    const hubs = await api("/api/hubs", null, "hubs");
    const entries = [...hubs.hubs.map((n) => [n, ""]), ...(hubs.daprHubs || []).map((n) => [n, "dapr"])];
    if (!entries.some(([n, k]) => n === hub() && k === flavour())) entries.unshift([hub(), flavour()]);
    for (const [name, kind] of entries) picker.append(option(name, kind));
  } catch (e) { picker.append(option(hub(), flavour())); }
  nav.push(h("label", {}, "task hub", picker));
  document.getElementById("nav").replaceChildren(...nav);
  const who = [session.auth ? `${session.name} (${session.role})` : "no authentication (loopback)"];
  if (session.auth) who.push(" ", h("button", {onclick: () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); }},
    "forget token"));
  document.getElementById("who").replaceChildren(...who);
}

// -- the instance list -----------------------------------------------------------------------------------

function toMs(utc) { return utc ? String(new Date(`${utc}Z`).getTime()) : ""; } // the inputs are in UTC, as shown

async function listPage() {
  const q = new URLSearchParams();
  for (const k of ["status", "prefix", "pageSize", "token"]) if (params.get(k)) q.set(k, params.get(k));
  for (const k of ["createdFrom", "createdTo"]) if (params.get(k)) q.set(k, toMs(params.get(k)));
  const [stats, page] = await Promise.all([api("/api/stats", null, "stats").catch((e) => ({error: e})), api(`/api/instances?${q}`, null, "instances")]);
  skewMs = page.nowMs - Date.now();
  const filters = h("form", {class: "filters", method: "get", action: "/"},
    hubInputs(),
    h("label", {}, "status", h("select", {name: "status"}, h("option", {value: ""}, "any"),
      STATUSES.map((s) => h("option", {value: s, selected: params.get("status") === s}, s)))),
    h("label", {}, "instance id prefix", h("input", {name: "prefix", value: params.get("prefix") || ""})),
    h("label", {}, "created from (UTC)", h("input", {type: "datetime-local", name: "createdFrom", value: params.get("createdFrom") || ""})),
    h("label", {}, "created before (UTC)", h("input", {type: "datetime-local", name: "createdTo", value: params.get("createdTo") || ""})),
    h("button", {type: "submit"}, "Filter"), h("a", {href: link("/")}, "clear"));
  const rows = page.instances.map((i) => h("tr", {"data-id": i.id},
    h("td", {class: "id"}, h("a", {href: link(`/instances/${encodeURIComponent(i.id)}`)}, i.id)),
    h("td", {}, i.name), h("td", {}, statusBadge(i.status)), h("td", {}, when(i.createdMs)),
    h("td", {}, when(i.updatedMs)),
    h("td", {}, i.scheduledStartMs ? [when(i.scheduledStartMs), " ", i.status === "PENDING" ? countdown(i.scheduledStartMs) : null] : "")));
  const pager = h("div", {class: "pager"});
  if (params.get("token")) pager.append(h("a", {href: pageLink(null)}, "« first page"));
  if (page.next) pager.append(h("a", {href: pageLink(page.next), id: "next-page"}, "next page »"));
  else if (!page.instances.length && !params.get("token")) pager.append(h("span", {class: "muted"}, "no instances match"));
  show(hubCards(stats), h("h2", {}, "Instances"), filters,
    h("table", {id: "instances"}, h("thead", {}, h("tr", {}, ["id", "name", "status", "created", "last updated", "scheduled start"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)), pager,
    page.next && page.instances.length === 0 ? h("p", {class: "muted"}, "This page examined its share of instances and found none: go on with the next page.") : null);
  tick();
}

function hubLabel(name, kind) { return kind === "dapr" ? `${name} (Dapr)` : name; }

function hubInputs() { // the hub (and flavour) a filter form keeps
  return ["hub", "flavour"].map((k) => params.get(k) ? h("input", {type: "hidden", name: k, value: params.get(k)}) : null);
}

function pageLink(token) {
  const q = new URLSearchParams(params);
  if (token) q.set("token", token); else q.delete("token");
  return `${location.pathname}?${q}`;
}

function hubCards(stats) {
  if (stats.error) return h("p", {class: "error"}, String(stats.error.message));
  const card = (label, value, href) => h("div", {class: "card"}, h("b", {}, href ? h("a", {href}, value) : value), label);
  const statuses = Object.entries(stats.statuses).map(([s, n]) => card(s, n, link("/", {status: s})));
  return h("section", {id: "hub-stats"}, h("h1", {}, `Task hub ${hubLabel(stats.hub, stats.flavour)}`),
    h("div", {class: "cards"}, statuses.length ? statuses : card("instances", 0),
      card("due", stats.due), card("next due", stats.nextDueMs ? when(stats.nextDueMs) : "–"),
      card("ready", stats.ready), card("oldest ready", seconds(stats.oldestReadyAgeMs)),
      card("promotion lag", seconds(stats.promotionLagMs)), card("outbox", stats.outbox)));
}

// -- one instance ----------------------------------------------------------------------------------------

async function instancePage(id) {
  const data = await api(`/api/instances/${encodeURIComponent(id)}`, null, "instance");
  skewMs = data.nowMs - Date.now();
  const i = data.instance, tl = data.timeline;
  const rows = [["name", i.name], ["status", statusBadge(i.status)], ["version", i.version],
    ["execution id", i.executionId], ["created", when(i.createdMs)], ["last updated", when(i.updatedMs)],
    ["completed", when(i.completedMs)],
    ["scheduled start", i.scheduledStartMs ? [when(i.scheduledStartMs), " ", i.status === "PENDING" ? countdown(i.scheduledStartMs) : null] : null],
    ["parent", i.parentInstanceId ? h("a", {href: link(`/instances/${encodeURIComponent(i.parentInstanceId)}`)}, i.parentInstanceId) : null],
    ["children", tl.children.length ? tl.children.map((c) => [h("a", {href: link(`/instances/${encodeURIComponent(c)}`)}, c), " "]) : null],
    ["tags", Object.keys(i.tags).length ? Object.entries(i.tags).map(([k, v]) => `${k}=${v}`).join(", ") : null]]
    .filter(([, v]) => v !== null && v !== "" && v !== undefined);
  show(h("h1", {}, `Instance ${i.id}`), actions(i),
    h("table", {id: "details"}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    ["input", "output", "customStatus", "failure"].filter((w) => i[w]).map((w) => payload(i.id, w, i[w])),
    h("h2", {}, `History (${data.historyEvents} events${data.historyTruncated ? ", the first shown" : ""})`),
    timeline(i, tl, data.nowMs));
  tick();
}

function payload(id, which, p) {
  const pre = h("pre", {id: `payload-${which}`}, p.text);
  const more = p.truncated ? h("button", {onclick: async () => {
    try { pre.textContent = (await api(`/api/instances/${encodeURIComponent(id)}/payload/${which}`)).text; more.remove(); }
    catch (e) { pre.textContent = String(e.message); }
  }}, `show all (${p.size} characters)`) : null;
  return h("section", {}, h("h2", {}, which), pre, more);
}

function actions(i) {
  const buttons = ACTIONS.filter(([, method, , , statuses]) => may(method) && statuses.includes(i.status))
    .map(([path, , label, verb]) =>
    h("button", {"data-action": path, onclick: () => act(i, path, verb)}, label));
  return buttons.length ? h("div", {class: "actions"}, buttons) : null;
}

async function act(i, path, verb) {
  const body = {};
  if (path === "raise-event") {
    body.name = prompt("Event name");
    if (!body.name) return;
    body.data = prompt("Event data (JSON, optional)") || null;
  }
  if (!confirm(`${verb} instance ${i.id}?`)) return;
  try {
    const reply = await api(`/api/instances/${encodeURIComponent(i.id)}/${path}`, {method: "POST", body: JSON.stringify(body)});
    if (path === "purge") location.href = link("/");
    else if (path === "restart" && reply.instanceId) location.href = link(`/instances/${encodeURIComponent(reply.instanceId)}`);
    else location.reload();
  } catch (e) { alert(e.message); }
}

function timeline(i, tl, nowMs) {
  const starts = [i.createdMs, ...tl.bars.map((b) => b.scheduledMs), ...tl.points.map((p) => p.atMs)].filter(Boolean);
  const ends = [i.completedMs || nowMs, ...tl.bars.map((b) => b.endMs || b.due || nowMs)].filter(Boolean);
  const t0 = Math.min(...starts), t1 = Math.max(...ends, t0 + 1);
  const pos = (a, b) => ({left: `${(100 * (a - t0) / (t1 - t0)).toFixed(3)}%`,
    width: `${(100 * (Math.max(b, a) - a) / (t1 - t0)).toFixed(3)}%`});
  const row = (label, bar, duration) => h("div", {class: "tl-row"}, h("div", {class: "tl-label"}, label),
    h("div", {class: "tl-track"}, bar), h("div", {class: "tl-dur"}, duration));
  const rows = [];
  const firstRun = tl.firstRunMs || (i.status === "PENDING" ? nowMs : null);
  if (firstRun) rows.push(row([h("span", {class: "kind"}, "waiting"), "created → first run"],
    h("div", {class: "tl-bar waiting", style: pos(i.createdMs, firstRun), title: `waited ${seconds(firstRun - i.createdMs)} to start`}),
    seconds(firstRun - i.createdMs)));
  for (const b of tl.bars) {
    const end = b.endMs || nowMs;
    const tip = `${b.kind} ${b.name}: scheduled ${when(b.scheduledMs)}, ${b.endMs ? `${b.outcome} ${when(b.endMs)}` : "not finished"}` +
      (b.due ? `, due ${when(b.due)}` : "") + (b.result ? `\n${b.result.text}` : "");
    const label = [h("span", {class: "kind"}, b.kind), b.instance ? h("a", {href: link(`/instances/${encodeURIComponent(b.instance)}`)}, b.name) : b.name];
    rows.push(row(label, h("div", {class: `tl-bar ${b.kind} ${b.outcome}`, style: pos(b.scheduledMs, end), title: tip}),
      b.endMs ? seconds(b.endMs - b.scheduledMs) : b.outcome));
  }
  const points = tl.points.map((p) => h("tr", {}, h("td", {}, when(p.atMs)), h("td", {}, p.kind), h("td", {}, p.name || ""),
    h("td", {}, describe(p.detail))));
  return h("div", {}, h("div", {class: "timeline", id: "timeline"}, rows.length ? rows : h("p", {class: "muted"}, "nothing scheduled yet")),
    h("h2", {}, "Events"), h("table", {id: "events"}, h("tbody", {}, points)));
}

function describe(detail) {
  if (!detail) return "";
  return Object.entries(detail).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}: ${typeof v === "object" ? v.text + (v.truncated ? "…" : "") : v}`).join("; ");
}

// -- entities and schedules ------------------------------------------------------------------------------

async function entityPage(kind) {
  const q = new URLSearchParams();
  for (const k of ["prefix", "token", "pageSize"]) if (params.get(k)) q.set(k, params.get(k));
  const page = await api(`/api/${kind}?${q}`, null, kind);
  skewMs = page.nowMs - Date.now();
  const filters = h("form", {class: "filters", method: "get", action: location.pathname},
    hubInputs(),
    h("label", {}, kind === "entities" ? "entity name prefix (@name@key)" : "schedule id prefix",
      h("input", {name: "prefix", value: params.get("prefix") || ""})), h("button", {type: "submit"}, "Filter"));
  let head, rows;
  if (kind === "entities") {
    head = ["entity", "last modified", "waiting operations", "locked by", "state"];
    rows = page.entities.map((e) => h("tr", {}, h("td", {class: "id"}, e.id), h("td", {}, when(e.lastModifiedMs)),
      h("td", {}, e.backlog), h("td", {class: "id"}, e.lockedBy ? h("a", {href: link(`/instances/${encodeURIComponent(e.lockedBy)}`)}, e.lockedBy) : ""),
      h("td", {}, e.state ? h("code", {}, e.state.text + (e.state.truncated ? "…" : "")) : "")));
  } else {
    head = ["schedule", "orchestration", "interval", "status", "next run", "last run", "last modified"];
    rows = page.entities.map((s) => {
      const next = s.nextRun ? Date.parse(s.nextRun) : null;
      return h("tr", {}, h("td", {class: "id"}, s.id), h("td", {}, s.orchestration || ""), h("td", {}, s.interval || ""),
        h("td", {}, s.status || ""), h("td", {}, next ? [when(next), " ", s.status === "Active" ? countdown(next) : null] : ""),
        h("td", {}, s.lastRun ? when(Date.parse(s.lastRun)) : ""), h("td", {}, when(s.lastModifiedMs)));
    });
  }
  const pager = h("div", {class: "pager"});
  if (params.get("token")) pager.append(h("a", {href: pageLink(null)}, "« first page"));
  if (page.next) pager.append(h("a", {href: pageLink(page.next)}, "next page »"));
  show(h("h1", {}, kind === "entities" ? "Entities" : "Recurring schedules"), filters,
    h("table", {id: kind}, h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
    rows.length ? null : h("p", {class: "muted"}, `no ${kind} on this page`), pager);
  tick();
}

async function main() {
  const tried = sessionStorage.getItem(TOKEN_KEY) !== null;
  try {
    session = await api("/api/session", null, "session");
  } catch (e) {
    if (e instanceof AuthError) return showLogin(tried ? `That token was refused: ${e.message}` : null);
    return failed(e);
  }
  await header();
  const path = location.pathname;
  try {
    if (path.startsWith("/instances/")) await instancePage(decodeURIComponent(path.slice("/instances/".length)));
    else if (path === "/entities") await entityPage("entities");
    else if (path === "/schedules") await entityPage("schedules");
    else await listPage();
  } catch (e) {
    if (e instanceof AuthError) return showLogin(e.message);
    failed(e);
  }
  setInterval(tick, 250);
}

main();
