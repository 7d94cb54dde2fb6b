// Cairn console: a single page over the Admin API, signed in with the
// session cookie (every call carries the x-cairn-console header, which a
// cross-site form cannot send). Plain JS, no build step.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

// Form fields per resource page: [field, label, kind]. Everything else is
// edited in the raw JSON beside the form.
const PAGES = {
  routes: { title: "Routes", fields: [["name", "Name", "text"], ["uri", "URI", "text"], ["methods", "Methods (comma-separated)", "list"], ["hosts", "Hosts (comma-separated)", "list"], ["upstream_id", "Upstream ID", "text"], ["service_id", "Service ID", "text"], ["status", "Status", "status"], ["desc", "Description", "text"]], column: (v) => v.uri || (v.uris || []).join(", ") },
  upstreams: { title: "Upstreams", fields: [["name", "Name", "text"], ["type", "Balancer", "balancer"], ["nodes", "Nodes (host:port=weight, comma-separated)", "nodes"], ["desc", "Description", "text"]], column: (v) => nodesText(v.nodes) },
  services: { title: "Services", fields: [["name", "Name", "text"], ["upstream_id", "Upstream ID", "text"], ["desc", "Description", "text"]], column: (v) => v.upstream_id || "" },
  consumers: { title: "Consumers", fields: [["username", "User name", "text"], ["desc", "Description", "text"]], column: (v) => Object.keys(v.plugins || {}).join(", ") },
  ssls: { title: "SSL certificates", fields: [["snis", "SNIs (comma-separated)", "list"], ["cert", "Certificate (PEM)", "area"], ["key", "Private key (PEM)", "area"]], column: (v) => (v.snis || [v.sni]).join(", ") },
};
const TEMPLATES = {
  routes: { uri: "/", methods: ["GET"], upstream: { type: "roundrobin", nodes: { "127.0.0.1:80": 1 } }, status: 1 },
  upstreams: { type: "roundrobin", nodes: { "127.0.0.1:80": 1 } },
  services: { upstream: { type: "roundrobin", nodes: { "127.0.0.1:80": 1 } } },
  consumers: { username: "", plugins: {} },
  ssls: { snis: [], cert: "", key: "" },
};

let timer = null;

async function api(method, path, body, headers = {}) {
  const opts = { method, headers: { "x-cairn-console": "1", ...headers }, credentials: "same-origin" };
  if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["content-type"] = "application/json"; }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401) { showLogin(); }
  if (!r.ok) {
    const msg = (data && (data.error_msg || data.message)) || `HTTP ${r.status}`;
    const err = new Error(msg + (data && data.description ? `: ${data.description}` : ""));
    err.status = r.status;
    throw err;
  }
  return data;
}

function nodesText(nodes) {
  if (!nodes) return "";
  if (Array.isArray(nodes)) return nodes.map((n) => `${n.host}:${n.port}=${n.weight}`).join(", ");
  return Object.entries(nodes).map(([k, w]) => `${k}=${w}`).join(", ");
}
function parseNodes(text) {
  const out = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [addr, w] = part.split("=");
    out[addr.trim()] = w === undefined ? 1 : Number(w);
  }
  return out;
}

function showLogin() {
  clearInterval(timer);
  $("#nav").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  $("#view").innerHTML = ""; $("#login-view").hidden = false;
}

async function boot() {
  try {
    const me = await api("GET", "/api/session");
    $("#who").textContent = `${me.user} (${me.role})`;
    // A viewer sees no write buttons (the API refuses viewer writes anyway).
    document.body.dataset.role = me.role;
    $("#login-view").hidden = true; $("#nav").hidden = false; $("#logout").hidden = false;
    route();
  } catch (_) { showLogin(); }
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("#login-error").textContent = "";
  const key = $("#login-key").value;
  const body = key ? { api_key: key } : { username: $("#login-user").value, password: $("#login-pass").value };
  try { await api("POST", "/login", body); if (!location.hash) location.hash = "#/routes"; boot(); }
  catch (err) { $("#login-error").textContent = err.message; }
});
$("#logout").addEventListener("click", async () => { await api("POST", "/logout"); showLogin(); });
window.addEventListener("hashchange", route);

function route() {
  clearInterval(timer);
  const [page, action, ...rest] = (location.hash.replace(/^#\/?/, "") || "routes").split("/");
  const id = rest.join("/");
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${page}`);
  if (page === "cluster") return clusterPage();
  if (page === "audit") return auditPage();
  if (!PAGES[page]) return listPage("routes");
  if (action === "edit") return editPage(page, id);
  if (action === "new") return editPage(page, null);
  if (action === "history") return historyPage(page, id);
  return listPage(page);
}

async function listPage(res, query = "") {
  const p = PAGES[res];
  const v = $("#view");
  v.innerHTML = `<h1>${p.title}</h1>
    <div class="toolbar"><input id="search" placeholder="Search by name or URI" value="${esc(query)}">
    <button id="new" class="write">Create</button><span id="list-error" class="error"></span></div>
    <table id="list"><thead><tr><th>ID</th><th>Name</th><th>${res === "upstreams" ? "Nodes" : res === "routes" ? "URI" : "Details"}</th>${res === "routes" ? "<th>Status</th>" : ""}<th>Updated</th><th></th></tr></thead><tbody></tbody></table>`;
  $("#new").onclick = () => { location.hash = `#/${res}/new`; };
  $("#search").onkeydown = (e) => { if (e.key === "Enter") listPage(res, e.target.value); };
  let data;
  try { data = await api("GET", `/apisix/admin/${res}`); } catch (err) { $("#list-error").textContent = err.message; return; }
  const q = query.toLowerCase();
  const rows = data.list.filter((it) => !q || JSON.stringify([it.value.name, it.value.uri, it.value.uris, it.value.username, it.key]).toLowerCase().includes(q));
  const tbody = $("#list tbody");
  for (const it of rows) {
    const val = it.value, id = it.key.split(`/${res}/`)[1];
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    const online = val.status === undefined || val.status === 1;
    tr.innerHTML = `<td>${esc(id)}</td><td>${esc(val.name || val.username || "")}</td><td>${esc(p.column(val))}</td>` +
      (res === "routes" ? `<td><span class="pill ${online ? "on" : "off"}">${online ? "published" : "offline"}</span></td>` : "") +
      `<td>${val.update_time ? new Date(val.update_time * 1000).toLocaleString() : ""}</td>
      <td class="actions"><button class="secondary edit">Edit</button><button class="secondary history">History</button>` +
      (res === "routes" ? `<button class="secondary toggle write">${online ? "Offline" : "Publish"}</button>` : "") +
      `<button class="danger delete write">Delete</button></td>`;
    $(".edit", tr).onclick = () => { location.hash = `#/${res}/edit/${id}`; };
    $(".history", tr).onclick = () => { location.hash = `#/${res}/history/${id}`; };
    const toggle = $(".toggle", tr);
    if (toggle) toggle.onclick = async () => {
      try { await api("PATCH", `/apisix/admin/${res}/${id}`, { status: online ? 0 : 1 }, { "if-match": String(it.modifiedIndex) }); listPage(res, query); }
      catch (err) { $("#list-error").textContent = err.message; }
    };
    $(".delete", tr).onclick = async () => {
      if (!confirm(`Delete ${res.replace(/s$/, "")} ${id}?`)) return;
      try { await api("DELETE", `/apisix/admin/${res}/${id}`, undefined, { "if-match": String(it.modifiedIndex) }); listPage(res, query); }
      catch (err) { $("#list-error").textContent = err.message; }
    };
    tbody.appendChild(tr);
  }
  if (!rows.length) tbody.innerHTML = `<tr><td colspan="6">Nothing here yet.</td></tr>`;
}

function fieldHtml([name, label, kind]) {
  if (kind === "status") return `<label>${label}<select name="${name}"><option value="1">published</option><option value="0">offline</option></select></label>`;
  if (kind === "balancer") return `<label>${label}<select name="${name}">${["roundrobin", "chash", "ewma", "least_conn"].map((t) => `<option>${t}</option>`).join("")}</select></label>`;
  if (kind === "area") return `<label>${label}<textarea name="${name}" rows="4"></textarea></label>`;
  return `<label>${label}<input name="${name}"></label>`;
}
function readField(kind, el) {
  const s = el.value.trim();
  if (kind === "status") return Number(s);
  if (kind === "list") return s ? s.split(",").map((x) => x.trim()).filter(Boolean) : undefined;
  if (kind === "nodes") return s ? parseNodes(s) : undefined;
  return s === "" ? undefined : s;
}
function writeField(kind, el, v) {
  if (kind === "list") el.value = (v || []).join(", ");
  else if (kind === "nodes") el.value = nodesText(v);
  else if (kind === "status") el.value = String(v === undefined ? 1 : v);
  else el.value = v ?? "";
}

async function editPage(res, id) {
  const p = PAGES[res];
  const v = $("#view");
  let item = null;
  if (id) {
    try { item = await api("GET", `/apisix/admin/${res}/${id}`); }
    catch (err) { v.innerHTML = `<p class="error">${esc(err.message)}</p>`; return; }
  }
  let value = item ? item.value : structuredClone(TEMPLATES[res]);
  v.innerHTML = `<h1>${id ? `Edit ${esc(res.replace(/s$/, ""))} ${esc(id)}` : `Create ${esc(res.replace(/s$/, ""))}`}</h1>
    <div class="grid"><form id="edit-form" class="card">
      ${id || res === "consumers" ? "" : `<label>ID (empty: generated)<input name="__id"></label>`}
      ${p.fields.map(fieldHtml).join("")}
      <button id="save" class="write" type="submit">Save</button> <button type="button" class="secondary" id="cancel">Cancel</button>
      <p id="form-error" class="error" role="alert"></p></form>
    <div class="card"><label>Raw JSON<textarea id="raw" rows="24" spellcheck="false"></textarea></label>
      <p id="raw-error" class="error"></p></div></div>`;
  const form = $("#edit-form"), raw = $("#raw");
  const sync = () => { for (const f of p.fields) writeField(f[2], form.elements[f[0]], value[f[0]]); raw.value = JSON.stringify(value, null, 2); };
  sync();
  for (const [name, , kind] of p.fields) {
    const update = () => {
      const x = readField(kind, form.elements[name]);
      if (x === undefined) delete value[name]; else value[name] = x;
      raw.value = JSON.stringify(value, null, 2);
    };
    // "change" too: clearing a field programmatically fires no "input".
    form.elements[name].addEventListener("input", update);
    form.elements[name].addEventListener("change", update);
  }
  raw.addEventListener("input", () => {
    try { value = JSON.parse(raw.value); $("#raw-error").textContent = ""; for (const f of p.fields) writeField(f[2], form.elements[f[0]], value[f[0]]); }
    catch (err) { $("#raw-error").textContent = `Not valid JSON: ${err.message}`; }
  });
  $("#cancel").onclick = () => { location.hash = `#/${res}`; };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#form-error").textContent = "";
    try { value = JSON.parse(raw.value); } catch (err) { $("#form-error").textContent = `The raw JSON is not valid: ${err.message}`; return; }
    try {
      if (id) await api("PUT", `/apisix/admin/${res}/${id}`, value, { "if-match": String(item.modifiedIndex) });
      else if (res === "consumers") await api("PUT", `/apisix/admin/consumers`, value);
      else if (form.elements.__id.value.trim()) await api("PUT", `/apisix/admin/${res}/${form.elements.__id.value.trim()}`, value, { "if-match": "0" });
      else await api("POST", `/apisix/admin/${res}`, value);
      location.hash = `#/${res}`;
    } catch (err) {
      $("#form-error").textContent = err.status === 409 ? `Someone else changed this since you opened it. Reload to see their version. (${err.message})` : err.message;
    }
  });
}

// Line diff (longest common subsequence) of two JSON documents.
function diff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const n = x.length, m = y.length, L = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push(`  ${esc(x[i])}`); i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) { out.push(`<span class="del">- ${esc(x[i++])}</span>`); }
    else { out.push(`<span class="add">+ ${esc(y[j++])}</span>`); }
  }
  while (i < n) out.push(`<span class="del">- ${esc(x[i++])}</span>`);
  while (j < m) out.push(`<span class="add">+ ${esc(y[j++])}</span>`);
  return out.join("\n");
}

async function historyPage(res, id) {
  const v = $("#view");
  v.innerHTML = `<h1>History of ${esc(res.replace(/s$/, ""))} ${esc(id)}</h1><p id="history-msg"></p>
    <table id="history"><thead><tr><th>Revision</th><th>When</th><th>Who</th><th>Action</th><th>Source</th><th></th></tr></thead><tbody></tbody></table>
    <h2>Changes from this version to the current one</h2><pre class="diff" id="diff">Select a version.</pre>`;
  let h;
  try { h = await api("GET", `/apisix/admin/${res}/${id}/history`); } catch (err) { $("#history-msg").className = "error"; $("#history-msg").textContent = err.message; return; }
  const current = h.list.find((x) => x.current);
  const shown = (val) => { const c = structuredClone(val || {}); delete c.update_time; return JSON.stringify(c, null, 2); };
  if (h.compacted) $("#history-msg").textContent = "Older store revisions were compacted; earlier versions come from the audit log.";
  for (const ver of h.list) {
    const tr = document.createElement("tr");
    tr.dataset.rev = ver.revision;
    tr.innerHTML = `<td>${ver.revision}${ver.current ? ' <span class="pill on">current</span>' : ""}</td>
      <td>${ver.when_ms ? new Date(ver.when_ms).toLocaleString() : ""}</td><td>${esc(ver.who || "")}</td>
      <td>${esc(ver.action || "")}</td><td>${esc(ver.source)}</td>
      <td class="actions"><button class="secondary show">Diff</button>${ver.current || !ver.value ? "" : `<button class="rollback write" data-rev="${ver.revision}">Roll back to this</button>`}</td>`;
    $(".show", tr).onclick = () => {
      for (const r of document.querySelectorAll("#history tr")) r.classList.remove("selected");
      tr.classList.add("selected");
      $("#diff").innerHTML = ver.value ? diff(shown(ver.value), shown(current && current.value)) : "(deleted)";
    };
    const rb = $(".rollback", tr);
    if (rb) rb.onclick = async () => {
      try {
        const r = await api("POST", `/apisix/admin/${res}/${id}/rollback?revision=${ver.revision}`);
        $("#history-msg").className = "ok";
        historyPage(res, id).then(() => { $("#history-msg").className = "ok"; $("#history-msg").textContent = `Rolled back to revision ${ver.revision} (now revision ${r.modifiedIndex}).`; });
      } catch (err) { $("#history-msg").className = "error"; $("#history-msg").textContent = err.message; }
    };
    $("#history tbody").appendChild(tr);
  }
}

async function clusterPage() {
  const v = $("#view");
  v.innerHTML = `<h1>Store cluster</h1><p>Refreshed every 2 seconds. <span id="cluster-time"></span></p>
    <table id="cluster-table"><thead><tr><th>Member</th><th>Endpoint</th><th>Role</th><th>Raft term</th><th>Applied index</th><th>DB size</th><th>Health</th></tr></thead><tbody></tbody></table>
    <p id="cluster-error" class="error"></p>`;
  const load = async () => {
    try {
      const c = await api("GET", "/api/cluster");
      if (!$("#cluster-table")) return;
      $("#cluster-table tbody").innerHTML = c.members.map((m) => `<tr class="member" data-healthy="${m.healthy}">
        <td>${esc(m.name || m.id || "?")}</td><td>${esc(m.endpoint)}</td>
        <td><span class="pill ${m.role === "leader" ? "leader" : ""}">${esc(m.role || "unreachable")}</span></td>
        <td>${m.raft_term ?? ""}</td><td>${m.applied_index ?? ""}</td>
        <td>${m.db_size !== undefined ? (m.db_size / 1024).toFixed(0) + " KiB" : ""}</td>
        <td><span class="pill ${m.healthy ? "on" : "down"}">${m.healthy ? "healthy" : "down"}</span> ${esc(m.error || "")}</td></tr>`).join("");
      $("#cluster-time").textContent = `Last update ${new Date().toLocaleTimeString()}.`;
      $("#cluster-error").textContent = "";
    } catch (err) { if ($("#cluster-error")) $("#cluster-error").textContent = err.message; }
  };
  await load();
  timer = setInterval(load, 2000);
}

async function auditPage() {
  const v = $("#view");
  v.innerHTML = `<h1>Audit log</h1><table id="audit"><thead><tr><th>When</th><th>Who</th><th>Action</th><th>Key</th><th>Revision</th></tr></thead><tbody></tbody></table><p id="audit-error" class="error"></p>`;
  try {
    const a = await api("GET", "/api/audit?limit=500");
    $("#audit tbody").innerHTML = a.list.map((r) => `<tr><td>${new Date(r.when_ms).toLocaleString()}</td><td>${esc(r.who)}</td>
      <td>${esc(r.action)}</td><td>${esc(r.key)}</td><td>${r.old_revision} → ${r.new_revision}</td></tr>`).join("");
  } catch (err) { $("#audit-error").textContent = err.message; }
}

boot();
