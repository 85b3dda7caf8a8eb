"use strict";
// The admin console: everything it shows or changes goes through the admin
// API with the token typed in above, kept in this tab's sessionStorage only
// and sent as `Authorization: Bearer`. Data is written with textContent,
// never as HTML.

const TOKEN_KEY = "protogate-admin-token";
const TRAFFIC_EVERY_MS = 3000;
const $ = (id) => document.getElementById(id);

/** An admin API answer that was not a 2xx, with its google.rpc.Status. */
class ApiError extends Error {
  constructor(status, body, text) {
    super((body && body.message) || `${status} ${text}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body, contentType) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (contentType) headers["Content-Type"] = contentType;
  const response = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok) throw new ApiError(response.status, json, text);
  return json;
}

// === rendering ===

function cell(content, className) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content); else td.textContent = content == null ? "" : String(content);
  if (className) td.className = className;
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function row(cells, attributes) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  for (const [key, value] of Object.entries(attributes || {})) tr.dataset[key] = value;
  return tr;
}

function emptyRow(columns, text) {
  const td = cell(text, "muted");
  td.colSpan = columns;
  return row([td]);
}

function say(element, text, className) {
  element.textContent = text;
  element.className = className || "";
}

/** Every problem an error carries: its message and each BadRequest violation. */
function problemsOf(error) {
  const lines = [error.message];
  for (const detail of (error.body && error.body.details) || []) {
    for (const v of detail.fieldViolations || []) lines.push(`${v.field}: ${v.description}`);
  }
  return lines;
}

function policyText(route) {
  const p = route.policy;
  if (p.auth === "off") return "open (no auth configured)";
  const parts = [p.allowAnonymous ? "anonymous allowed" : "token required"];
  if (p.roles.length) parts.push(`roles: ${p.roles.join(", ")}`);
  if (p.scopes.length) parts.push(`scopes: ${p.scopes.join(", ")}`);
  if (p.clientCertificate) parts.push("client certificate");
  return parts.join("; ");
}

function quotaText(route) {
  const q = route.policy.quota || {};
  const parts = [];
  if (q.perUser) parts.push(`${q.perUser.requests} per ${q.perUser.per} per user`);
  if (q.perIp) parts.push(`${q.perIp.requests} per ${q.perIp.per} per IP`);
  return parts.length ? parts.join("; ") : "none";
}

function deprecationText(route) {
  const d = route.deprecation;
  if (!d) return "";
  return Object.entries(d).map(([name, value]) => `${name}: ${value}`).join("\n");
}

function upstreamText(route) {
  return route.upstream ? `${route.upstream.pattern} → ${route.upstream.url}` : "none";
}

function renderSets(listing) {
  $("generation").textContent = listing.generation;
  const rows = listing.descriptorSets.map((set) => {
    const actions = document.createElement("span");
    if (set.managed) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete danger";
      remove.textContent = "Delete";
      remove.addEventListener("click", () => confirmDelete(set));
      actions.append(remove);
    } else {
      actions.textContent = "from the config";
      actions.className = "muted";
    }
    const digest = cell(set.digest.slice(0, 19) + "…", "mono nowrap");
    digest.title = set.digest;
    return row([
      cell(set.name, "mono nowrap"), digest, cell(set.routeCount, "number"), cell(set.services.join(", "), "mono wrap"),
      cell(set.loadedAt), cell(set.upstream || ""), cell(actions),
    ], { set: set.name });
  });
  fill($("sets").tBodies[0], rows.length ? rows : [emptyRow(7, "no descriptor sets")]);
}

function renderRoutes(listing) {
  const rows = listing.routes.map((route) => row([
    cell(route.httpMethod, "mono nowrap"), cell(route.path, "mono wrap"), cell(route.rpc, "mono wrap"),
    cell(policyText(route)), cell(quotaText(route)), cell(upstreamText(route), "wrap"),
    cell(deprecationText(route), "deprecation"),
  ], { route: route.route }));
  fill($("route-table").tBodies[0], rows.length ? rows : [emptyRow(7, "no routes")]);
}

function renderUpstreams(listing, health) {
  const rows = listing.upstreams.map((u) => {
    const state = health[u.pattern] || "not probed";
    const source = u.source === "set" ? `uploaded with ${u.set}` : u.source;
    return row([
      cell(u.pattern, "mono"), cell(u.url, "mono"), cell(u.timeout), cell(source), cell(state, state.replace(" ", "-")),
    ], { upstream: u.pattern });
  });
  fill($("upstream-table").tBodies[0], rows.length ? rows : [emptyRow(5, "no upstreams")]);
}

// === live traffic ===

/** The previous poll's figures by route, and when it was taken. */
let previous = { at: 0, routes: new Map() };

/** A quantile of the requests between two polls, from the histogram's bucket deltas. */
function quantile(q, now, before) {
  const total = now.latencyCount - (before ? before.latencyCount : 0);
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [bound, cumulative] of now.latencyBuckets) {
    const was = before ? (before.latencyBuckets.find((b) => b[0] === bound) || [bound, 0])[1] : 0;
    const count = cumulative - was;
    if (count >= rank) {
      const inBucket = count - below;
      return inBucket > 0 ? lower + (bound - lower) * ((rank - below) / inBucket) : bound;
    }
    lower = bound;
    below = count;
  }
  // Beyond the last finite bucket: its bound is all that is known.
  return lower;
}

function millis(seconds) {
  return seconds == null ? "–" : `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms`;
}

function percent(part, whole) {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)} %` : "–";
}

async function pollTraffic() {
  let figures;
  try {
    figures = await api("GET", "/admin/v1/traffic");
  } catch (error) {
    if (error.status === 401) locked();
    return;
  }
  const at = performance.now();
  const seconds = previous.at ? (at - previous.at) / 1000 : 0;
  const rows = figures.routes.map((now) => {
    const before = previous.routes.get(now.route);
    const requests = now.requests - (before ? before.requests : 0);
    const clientErrors = now.clientErrors - (before ? before.clientErrors : 0);
    const serverErrors = now.serverErrors - (before ? before.serverErrors : 0);
    // Until a second poll, the figures since start.
    return row([
      cell(now.route, "mono"), cell(now.requests, "number"),
      cell(seconds ? (requests / seconds).toFixed(2) : "–", "number"),
      cell(percent(clientErrors, requests), "number"), cell(percent(serverErrors, requests), "number"),
      cell(millis(quantile(0.5, now, before)), "number"), cell(millis(quantile(0.99, now, before)), "number"),
    ], { route: now.route });
  });
  fill($("traffic-routes").tBodies[0], rows.length ? rows : [emptyRow(7, "no requests yet")]);
  previous = { at, routes: new Map(figures.routes.map((r) => [r.route, r])) };
}

// === loading ===

let trafficTimer = null;

function locked() {
  say($("auth-status"), "The admin API refused the token: enter the admin token above.", "error");
  document.body.classList.add("locked");
  clearInterval(trafficTimer);
  trafficTimer = null;
}

async function readyz() {
  // 503 while not ready, with the same body.
  const response = await fetch("/readyz", { cache: "no-store", credentials: "omit" });
  try { return (await response.json()).upstreams || {}; } catch (_) { return {}; }
}

async function refresh() {
  try {
    const [sets, routes, upstreams, health] = await Promise.all([
      api("GET", "/admin/v1/descriptor-sets"),
      api("GET", "/admin/v1/routes"),
      api("GET", "/admin/v1/upstreams"),
      readyz(),
    ]);
    renderSets(sets);
    renderRoutes(routes);
    renderUpstreams(upstreams, health);
    document.body.classList.remove("locked");
    const open = !sessionStorage.getItem(TOKEN_KEY);
    say($("auth-status"), open
      ? "This admin listener has no token: it answers loopback requests only."
      : "Signed in with the admin token (kept in this tab only).", "valid");
    if (!trafficTimer) {
      pollTraffic();
      trafficTimer = setInterval(pollTraffic, TRAFFIC_EVERY_MS);
    }
  } catch (error) {
    if (error.status === 401) locked();
    else say($("auth-status"), `The admin API failed: ${error.message}`, "error");
  }
}

// === changes ===

/** What the last dry run checked; Apply sends exactly that. */
let checked = null;

function selection() {
  const files = Array.from($("upload-files").files);
  return { files, name: $("upload-name").value.trim(), upstream: $("upload-upstream").value.trim() };
}

/** One descriptor set or archive as it is (the gateway tells which by its bytes), else a form of `.proto` files. */
function uploadBody(files) {
  if (files.length === 1 && !files[0].name.endsWith(".proto")) {
    return { body: files[0], type: "application/octet-stream" };
  }
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  return { body: form, type: null };
}

function query(name, upstream) {
  const params = new URLSearchParams();
  if (name) params.set("name", name);
  if (upstream) params.set("upstream", upstream);
  return params;
}

function diffRow(kind, route) {
  return row([
    cell(kind, kind), cell(route.httpMethod, "mono nowrap"), cell(route.path, "mono wrap"), cell(route.rpc, "mono wrap"),
    cell(upstreamText(route), "wrap"),
  ], { route: route.route, change: kind });
}

function showProblems(lines) {
  $("problems").replaceChildren(...lines.map((line) => {
    const li = document.createElement("li");
    li.textContent = line;
    return li;
  }));
}

async function dryRun(event) {
  event.preventDefault();
  checked = null;
  $("apply").disabled = true;
  const current = selection();
  if (!current.files.length) return say($("change-status"), "Choose a file first.", "error");
  if (!current.name) return say($("change-status"), "Give the set a name.", "error");
  say($("change-status"), "Checking…");
  $("diff").hidden = false;
  const { body, type } = uploadBody(current.files);
  try {
    const path = `/admin/v1/descriptor-sets:validate?${query(current.name, current.upstream)}`;
    const diff = await api("POST", path, body, type);
    const rows = [
      ...diff.added.map((r) => diffRow("added", r)),
      ...diff.changed.map((r) => diffRow("changed", r)),
      ...diff.removed.map((r) => diffRow("removed", r)),
    ];
    fill($("diff-routes").tBodies[0], rows.length ? rows : [emptyRow(5, "no route changes")]);
    showProblems(diff.problems.map((p) => p.message));
    say($("diff-summary"),
      `${diff.added.length} added, ${diff.changed.length} changed, ${diff.removed.length} removed, ${diff.problems.length} problems`,
      diff.valid ? "valid" : "invalid");
    if (diff.valid) {
      checked = current;
      $("apply").disabled = false;
      say($("change-status"), `Dry run of ${current.name} passed: Apply to serve it.`, "valid");
    } else {
      say($("change-status"), `${current.name} would be refused.`, "invalid");
    }
  } catch (error) {
    if (error.status === 401) locked();
    fill($("diff-routes").tBodies[0], []);
    showProblems(problemsOf(error));
    say($("diff-summary"), "refused", "invalid");
    say($("change-status"), `${current.name} would be refused.`, "invalid");
  }
}

async function apply() {
  if (!checked) return;
  const { files, name, upstream } = checked;
  $("apply").disabled = true;
  const { body, type } = uploadBody(files);
  const params = query(null, upstream).toString();
  const path = `/admin/v1/descriptor-sets/${encodeURIComponent(name)}${params ? `?${params}` : ""}`;
  try {
    const applied = await api("PUT", path, body, type);
    say($("change-status"),
      `Applied ${name}: ${applied.routeCount} routes, generation ${applied.generation}${applied.changed ? "" : " (unchanged)"}.`, "valid");
    checked = null;
    $("diff").hidden = true;
    await refresh();
  } catch (error) {
    if (error.status === 401) locked();
    showProblems(problemsOf(error));
    say($("change-status"), `Refused: ${error.message}`, "invalid");
  }
}

function confirmDelete(set) {
  const dialog = $("confirm-delete");
  say($("confirm-text"), `Delete descriptor set ${set.name}? Its ${set.routeCount} routes stop being served at once.`);
  dialog.dataset.set = set.name;
  dialog.showModal();
}

async function deleteConfirmed() {
  const dialog = $("confirm-delete");
  const name = dialog.dataset.set;
  dialog.close();
  try {
    const deleted = await api("DELETE", `/admin/v1/descriptor-sets/${encodeURIComponent(name)}`);
    say($("change-status"), `Deleted ${name}: generation ${deleted.generation}.`, "valid");
    await refresh();
  } catch (error) {
    if (error.status === 401) locked();
    say($("change-status"), `Delete refused: ${error.message}`, "invalid");
  }
}

// === wiring ===

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  previous = { at: 0, routes: new Map() };
  refresh();
});
$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(trafficTimer);
  trafficTimer = null;
  location.reload();
});
$("upload-form").addEventListener("submit", dryRun);
$("apply").addEventListener("click", apply);
$("upload-files").addEventListener("change", () => {
  const [first] = $("upload-files").files;
  if (first && !$("upload-name").value) $("upload-name").value = first.name.replace(/\.[^.]*$/, "").replace(/\.tar$/, "");
});
for (const id of ["upload-files", "upload-name", "upload-upstream"]) {
  $(id).addEventListener("input", () => { checked = null; $("apply").disabled = true; });
}
$("confirm-cancel").addEventListener("click", () => $("confirm-delete").close());
$("confirm-yes").addEventListener("click", deleteConfirmed);
refresh();
