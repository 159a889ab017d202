// Security activity dashboard: vanilla JS module, no build step, no third-party code.
//
// Every value that comes from an audit event is inserted with textContent or setAttribute,
// never parsed as HTML. API URLs are resolved against this module's own URL
// (.../orgs/{org}/dashboard/app.js), so the router works under any mount prefix.

const SVG_NS = "http://www.w3.org/2000/svg";
const OUTCOMES = new Set(["success", "failure", "denied", "error"]);
const FILTERS = ["actor", "action", "outcome", "from", "to", "limit"];
const LIMITS = new Set(["25", "50", "100", "250"]);

const api = (path) => new URL(`../audit-logs${path}`, import.meta.url);

const $ = (id) => document.getElementById(id);

const state = {
  filters: {},
  cursor: null, // the cursor of the page shown (null: the newest page)
  stack: [], // cursors of the pages before it
  next: null, // next_cursor of the page shown
  loads: 0,
  activityLoads: 0,
  token: 0,
  activityToken: 0,
};

// -- helpers ---------------------------------------------------------------------------------

function el(name, text, className) {
  const node = document.createElement(name);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svg(name, attrs) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function str(value) {
  return typeof value === "string" ? value : value === null || value === undefined ? "" : String(value);
}

function nextDay(day) {
  const moment = new Date(`${day}T00:00:00Z`);
  moment.setUTCDate(moment.getUTCDate() + 1);
  return moment.toISOString().replace(".000Z", "Z");
}

/** Query parameters of the reader filters (no paging) from the current filter state. */
function filterParams() {
  const f = state.filters;
  const params = new URLSearchParams();
  if (f.actor) params.set("actor", f.actor);
  if (f.action) params.set("action", f.action);
  if (f.outcome) params.set("outcome", f.outcome);
  if (f.from) params.set("since", `${f.from}T00:00:00Z`);
  if (f.to) params.set("until", nextDay(f.to));
  return params;
}

async function getJSON(url, token, current) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
    cache: "no-store",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (token !== current()) return null; // a newer request superseded this one
  if (!response.ok) {
    const message = body && body.error && typeof body.error.message === "string"
      ? body.error.message
      : `request failed (HTTP ${response.status})`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

// -- the form and the URL --------------------------------------------------------------------

function readForm() {
  const form = $("filters");
  const filters = {};
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (value) filters[name] = value;
  }
  if (filters.limit === "50") delete filters.limit;
  return filters;
}

function writeForm(filters) {
  const form = $("filters");
  for (const name of FILTERS) {
    const field = form.elements[name];
    field.value = filters[name] || (name === "limit" ? "50" : "");
  }
}

function filtersFromURL() {
  const params = new URLSearchParams(window.location.search);
  const filters = {};
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value) filters[name] = value;
  }
  if (filters.limit && !LIMITS.has(filters.limit)) delete filters.limit;
  for (const day of ["from", "to"]) {
    if (filters[day] && !/^\d{4}-\d{2}-\d{2}$/.test(filters[day])) delete filters[day];
  }
  return filters;
}

function remember(filters) {
  const params = new URLSearchParams();
  for (const name of FILTERS) if (filters[name]) params.set(name, filters[name]);
  const query = params.toString();
  const url = new URL(window.location.href);
  url.search = query ? `?${query}` : "";
  window.history.replaceState(null, "", url);
}

function apply(filters) {
  state.filters = filters;
  state.cursor = null;
  state.stack = [];
  state.next = null;
  remember(filters);
  const exportURL = api("/export.csv");
  exportURL.search = filterParams().toString();
  $("export-csv").href = exportURL.href;
  loadEvents();
  loadActivity();
}

// -- the event table -------------------------------------------------------------------------

function eventRow(event) {
  const row = document.createElement("tr");
  row.dataset.eventId = str(event.id);
  const occurred = str(event.occurred_at);
  const time = el("td", occurred.replace(/\.(\d{3})\d*Z$/, ".$1Z"), "time");
  time.title = occurred;
  row.append(time);

  const actor = event.actor || {};
  const who = el("td", null, "actor");
  who.append(el("span", actor.id ?? actor.type ?? "", "actor-id"));
  if (actor.email) who.append(el("span", actor.email, "sub"));
  row.append(who);

  row.append(el("td", event.action, "action"));

  const target = event.target || {};
  const what = el("td", null, "target");
  what.append(el("span", target.type, "target-type"));
  if (target.id !== null && target.id !== undefined) what.append(el("span", target.id, "target-id"));
  row.append(what);

  const outcome = str(event.outcome);
  const cell = el("td", null, "outcome");
  cell.append(el("span", outcome, OUTCOMES.has(outcome) ? `badge outcome-${outcome}` : "badge"));
  row.append(cell);

  const client = event.client || {};
  row.append(el("td", client.ip, "ip"));
  row.append(el("td", client.user_agent, "user-agent"));
  return row;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

async function loadEvents() {
  const token = ++state.token;
  document.body.dataset.events = "loading";
  $("prev").disabled = true;
  $("next").disabled = true;
  const params = filterParams();
  params.set("limit", state.filters.limit || "50");
  if (state.cursor) params.set("cursor", state.cursor);
  const url = api("");
  url.search = params.toString();
  let body;
  try {
    body = await getJSON(url, token, () => state.token);
  } catch (error) {
    if (token !== state.token) return;
    $("rows").replaceChildren();
    setStatus(error.message, true);
    document.body.dataset.events = "error";
    document.body.dataset.eventsLoaded = String(++state.loads);
    return;
  }
  if (body === null) return;
  const events = Array.isArray(body.data) ? body.data : [];
  state.next = typeof body.next_cursor === "string" ? body.next_cursor : null;
  const rows = events.map(eventRow);
  if (rows.length === 0) {
    const empty = document.createElement("tr");
    const cell = el("td", "No events match these filters.", "empty");
    cell.colSpan = 7;
    empty.append(cell);
    rows.push(empty);
  }
  $("rows").replaceChildren(...rows);
  const page = state.stack.length + 1;
  $("page-number").textContent = `Page ${page}`;
  setStatus(`${events.length} event${events.length === 1 ? "" : "s"} on page ${page}, newest first.`);
  $("prev").disabled = state.stack.length === 0;
  $("next").disabled = state.next === null;
  document.body.dataset.events = "ready";
  document.body.dataset.eventsLoaded = String(++state.loads);
}

// -- the activity chart ----------------------------------------------------------------------

function label(start, bucket) {
  return bucket === "day" ? start.slice(0, 10) : `${start.slice(5, 10)} ${start.slice(11, 16)}`;
}

function drawChart(data) {
  const buckets = Array.isArray(data.buckets) ? data.buckets : [];
  const alerts = Array.isArray(data.alerts) ? data.alerts : [];
  const width = 960;
  const height = 240;
  const left = 44;
  const right = 12;
  const top = 22;
  const bottom = 28;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const n = Math.max(1, buckets.length);
  const slot = plotW / n;
  const peak = Math.max(1, ...buckets.map((b) => Math.max(b.failed_logins || 0, b.denied || 0)));
  const y = (value) => top + plotH - (value / peak) * plotH;

  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-labelledby": "chart-title",
    class: "activity-chart",
    preserveAspectRatio: "none",
  });
  const title = svg("title", { id: "chart-title" });
  title.textContent = "Failed logins and denied requests over time, with brute-force alerts";
  chart.append(title);

  // Axes and a grid line at the peak.
  chart.append(svg("line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }));
  chart.append(svg("line", { x1: left, y1: top, x2: left, y2: top + plotH, class: "axis" }));
  chart.append(svg("line", { x1: left, y1: y(peak), x2: left + plotW, y2: y(peak), class: "grid" }));
  for (const value of [0, peak]) {
    const text = svg("text", { x: left - 6, y: y(value) + 4, class: "tick", "text-anchor": "end" });
    text.textContent = String(value);
    chart.append(text);
  }
  const ticks = Math.min(buckets.length, 6);
  for (let t = 0; t < ticks; t += 1) {
    const i = ticks === 1 ? 0 : Math.round((t * (buckets.length - 1)) / (ticks - 1));
    const anchor = t === 0 && ticks > 1 ? "start" : t === ticks - 1 && ticks > 1 ? "end" : "middle";
    const x = anchor === "start" ? left + i * slot : anchor === "end" ? left + (i + 1) * slot : left + (i + 0.5) * slot;
    const text = svg("text", { x, y: height - 8, class: "tick", "text-anchor": anchor });
    text.textContent = label(str(buckets[i].start), data.bucket);
    chart.append(text);
  }

  // Bars: failed logins and denied requests side by side in each bucket.
  const barW = Math.max(1, slot * 0.4);
  buckets.forEach((b, i) => {
    const series = [
      ["failed_logins", "bar bar-failed", "failed logins", 0],
      ["denied", "bar bar-denied", "denied requests", 1],
    ];
    for (const [key, className, noun, offset] of series) {
      const count = Number(b[key]) || 0;
      if (count === 0) continue;
      const bar = svg("rect", {
        x: left + i * slot + slot * 0.1 + offset * barW,
        y: y(count),
        width: barW,
        height: top + plotH - y(count),
        class: className,
        "data-count": count,
        "data-start": str(b.start),
      });
      const tip = svg("title");
      tip.textContent = `${str(b.start)}: ${count} ${noun}`;
      bar.append(tip);
      chart.append(bar);
    }
  });

  // Alerts: a vertical line and a marker at the alert's time.
  const first = Date.parse(str(buckets[0] && buckets[0].start));
  const step = data.bucket === "day" ? 86400000 : 3600000;
  const span = n * step;
  for (const alert of alerts) {
    const at = Date.parse(str(alert.occurred_at));
    if (Number.isNaN(at) || Number.isNaN(first)) continue;
    const x = left + Math.min(Math.max((at - first) / span, 0), 1) * plotW;
    const group = svg("g", { class: "alert-marker", "data-alert-id": str(alert.id) });
    group.append(svg("line", { x1: x, y1: top, x2: x, y2: top + plotH, class: "alert-line" }));
    group.append(svg("path", { d: `M ${x - 7} ${top - 14} L ${x + 7} ${top - 14} L ${x} ${top - 2} Z`, class: "alert-symbol" }));
    const tip = svg("title");
    const key = alert.target ? str(alert.target.id) : "";
    tip.textContent = `Brute-force alert ${str(alert.occurred_at)}: ${key} (${str(alert.failures)} failures)`;
    group.append(tip);
    chart.append(group);
  }
  $("chart").replaceChildren(chart);
}

function drawAlerts(alerts) {
  const table = $("alerts");
  const rows = alerts.map((alert) => {
    const row = document.createElement("tr");
    row.dataset.alertId = str(alert.id);
    const target = alert.target || {};
    const occurred = str(alert.occurred_at);
    const time = el("td", occurred.replace(/\.(\d{3})\d*Z$/, ".$1Z"), "time");
    time.title = occurred;
    row.append(time);
    const key = el("td", null, "key");
    key.append(el("span", alert.dimension || target.type, "badge"));
    key.append(el("span", target.id, "alert-key"));
    row.append(key);
    row.append(el("td", alert.failures, "failures"));
    row.append(el("td", alert.ip, "ip"));
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
  table.hidden = rows.length === 0;
}

async function loadActivity() {
  const token = ++state.activityToken;
  document.body.dataset.activity = "loading";
  const params = new URLSearchParams();
  const f = state.filters;
  if (f.from) params.set("since", `${f.from}T00:00:00Z`);
  if (f.to) params.set("until", nextDay(f.to));
  const url = api("/activity");
  url.search = params.toString();
  const warning = $("activity-warning");
  let data;
  try {
    data = await getJSON(url, token, () => state.activityToken);
  } catch (error) {
    if (token !== state.activityToken) return;
    $("chart").replaceChildren();
    $("activity-summary").textContent = "";
    warning.textContent = error.message;
    warning.hidden = false;
    document.body.dataset.activity = "error";
    document.body.dataset.activityLoaded = String(++state.activityLoads);
    return;
  }
  if (data === null) return;
  drawChart(data);
  const alerts = Array.isArray(data.alerts) ? data.alerts : [];
  drawAlerts(alerts);
  const totals = data.totals || {};
  $("activity-summary").textContent =
    `${totals.failed_logins || 0} failed logins, ${totals.denied || 0} denied requests and ` +
    `${totals.alerts || 0} brute-force alerts from ${str(data.since)} to ${str(data.until)} ` +
    `(per ${str(data.bucket)}).`;
  const scan = data.scan || {};
  if (scan.truncated) {
    warning.textContent =
      `Counts before ${str(scan.complete_from)} are incomplete: the scan stopped after ` +
      `${str(scan.max_events)} events per series. Narrow the date range to see them.`;
    warning.hidden = false;
  } else {
    warning.textContent = "";
    warning.hidden = true;
  }
  document.body.dataset.activity = "ready";
  document.body.dataset.activityLoaded = String(++state.activityLoads);
}

// -- wiring ----------------------------------------------------------------------------------

function start() {
  const form = $("filters");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply(readForm());
  });
  form.addEventListener("reset", () => {
    window.setTimeout(() => apply(readForm()), 0); // after the browser cleared the fields
  });
  $("next").addEventListener("click", () => {
    if (state.next === null) return;
    state.stack.push(state.cursor);
    state.cursor = state.next;
    loadEvents();
  });
  $("prev").addEventListener("click", () => {
    if (state.stack.length === 0) return;
    state.cursor = state.stack.pop();
    loadEvents();
  });
  const initial = filtersFromURL();
  writeForm(initial);
  apply(readForm());
}

start();
