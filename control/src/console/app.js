// Cairn console: a single page over the Admin API, signed in with the
// session cookie (every call carries the x-cairn-console header, which a
// cross-site form cannot send). Plain JS, no build step.
//
// Map: api() and path helpers; PAGES (one entry per resource: form fields,
// list column, template); listPage (server-side paging and filters, sorting
// of the page); editPage (form + plugin editor + raw JSON); historyPage;
// gatewaysPage, clusterPage, auditPage, pluginsPage; route() dispatches on
// the URL fragment.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const arr = (v) => (Array.isArray(v) ? v : []);
const isSecret = (v) => typeof v === "string" && v.startsWith("<secret fp:");

// Ids come from the URL fragment: they must look like ids (1-64 of
// [a-zA-Z0-9._-] per segment) and are percent-encoded per segment, so no id
// can add a query string (`?ttl=`) or a path segment to an API call.
const ID_SEG = /^[A-Za-z0-9._-]{1,64}$/;
function validId(res, id) {
  const segs = String(id).split("/");
  return segs.length === (res === "secrets" ? 2 : 1) && segs.every((s) => ID_SEG.test(s));
}
const enc = (id) => String(id).split("/").map(encodeURIComponent).join("/");
const itemPath = (res, id, tail = "") => `/apisix/admin/${res}/${enc(id)}${tail}`;

const list = { type: "list" };
// Form fields per resource page: [field, label, kind]. Everything else is
// edited in the plugin editor or the raw JSON beside the form.
const PAGES = {
  routes: { title: "Routes", post: true, plugins: true, column: ["URI", (v) => v.uri || arr(v.uris).join(", ")],
    fields: [["name", "Name", "text"], ["uri", "URI", "text"], ["methods", "Methods (comma-separated)", "list"], ["hosts", "Hosts (comma-separated)", "list"], ["upstream_id", "Upstream ID", "text"], ["service_id", "Service ID", "text"], ["plugin_config_id", "Plugin config ID", "text"], ["priority", "Priority", "number"], ["status", "Status", "status"], ["desc", "Description", "text"]],
    template: { uri: "/", methods: ["GET"], upstream: { type: "roundrobin", nodes: { "127.0.0.1:80": 1 } }, status: 1 } },
  services: { title: "Services", post: true, plugins: true, column: ["Upstream", (v) => v.upstream_id || (v.upstream ? nodesText(v.upstream.nodes) : "")],
    fields: [["name", "Name", "text"], ["upstream_id", "Upstream ID", "text"], ["hosts", "Hosts (comma-separated)", "list"], ["desc", "Description", "text"]],
    template: { upstream: { type: "roundrobin", nodes: { "127.0.0.1:80": 1 } } } },
  upstreams: { title: "Upstreams", post: true, column: ["Nodes", (v) => nodesText(v.nodes)],
    fields: [["name", "Name", "text"], ["type", "Balancer", "balancer"], ["nodes", "Nodes (host:port=weight, comma-separated)", "nodes"], ["scheme", "Scheme", "scheme"], ["desc", "Description", "text"]],
    template: { type: "roundrobin", nodes: { "127.0.0.1:80": 1 } } },
  stream_routes: { title: "Stream routes", post: true, plugins: "stream", column: ["Match", (v) => [v.server_port && `port ${v.server_port}`, v.sni && `sni ${v.sni}`, v.remote_addr].filter(Boolean).join(", ")],
    fields: [["name", "Name", "text"], ["server_port", "Server port", "number"], ["sni", "SNI", "text"], ["remote_addr", "Remote address", "text"], ["upstream_id", "Upstream ID", "text"], ["service_id", "Service ID", "text"]],
    template: { server_port: 9100, upstream: { type: "roundrobin", nodes: { "127.0.0.1:80": 1 } } } },
  global_rules: { title: "Global rules", plugins: true, column: ["Plugins", (v) => Object.keys(v.plugins || {}).join(", ")], fields: [], template: { plugins: {} } },
  plugin_configs: { title: "Plugin configs", plugins: true, column: ["Plugins", (v) => Object.keys(v.plugins || {}).join(", ")], fields: [["desc", "Description", "text"]], template: { plugins: {} } },
  plugin_metadata: { title: "Plugin metadata", idLabel: "Plugin name", column: ["Fields", (v) => Object.keys(v).join(", ")], fields: [], template: {} },
  consumers: { title: "Consumers", idField: "username", plugins: "consumer", column: ["Plugins", (v) => Object.keys(v.plugins || {}).join(", ")],
    fields: [["username", "User name", "text"], ["group_id", "Consumer group ID", "text"], ["desc", "Description", "text"]], template: { username: "", plugins: {} } },
  consumer_groups: { title: "Consumer groups", plugins: true, column: ["Plugins", (v) => Object.keys(v.plugins || {}).join(", ")], fields: [["name", "Name", "text"], ["desc", "Description", "text"]], template: { plugins: {} } },
  ssls: { title: "SSL certificates", post: true, column: ["SNIs and expiry", (v) => (Array.isArray(v.snis) ? v.snis : [v.sni]).filter((x) => typeof x === "string").join(", ") +
      (v.type === "client" ? " (client)" : "") + (v.validity_end ? ` · valid until ${new Date(v.validity_end * 1000).toISOString().slice(0, 10)}` : "")],
    fields: [["type", "Type", "ssltype"], ["snis", "SNIs (comma-separated)", "list"], ["cert", "Certificate (PEM)", "pem"], ["key", "Private key (PEM)", "secretpem"]],
    template: { type: "server", snis: [], cert: "", key: "" } },
  secrets: { title: "Secrets", idLabel: "ID (manager/id, e.g. vault/1)", column: ["URI", (v) => v.uri || v.region || ""],
    fields: [["uri", "URI", "text"], ["prefix", "Prefix", "text"], ["token", "Token", "secret"]], template: { uri: "http://127.0.0.1:8200", prefix: "kv/apisix", token: "" } },
  protos: { title: "Protos", post: true, column: ["Description", (v) => v.desc || ""], fields: [["desc", "Description", "text"], ["content", "Content (.proto)", "area"]], template: { content: "syntax = \"proto3\";\n" } },
};

let timer = null;

async function api(method, path, body, headers = {}) {
  const opts = { method, headers: { "x-cairn-console": "1", ...headers }, credentials: "same-origin" };
  if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["content-type"] = "application/json"; }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401 && path !== "/login") { showLogin(); }
  if (!r.ok) {
    const msg = (data && (data.error_msg || data.message)) || `HTTP ${r.status}`;
    const err = new Error(msg + (data && data.description ? `: ${data.description}` : ""));
    err.status = r.status;
    throw err;
  }
  return data;
}

function nodesText(nodes) {
  if (!nodes || typeof nodes !== "object") return "";
  if (Array.isArray(nodes)) return nodes.map((n) => `${n.host}:${n.port}=${n.weight}`).join(", ");
  return Object.entries(nodes).map(([k, w]) => `${k}=${w}`).join(", ");
}
// Parses "host:port=weight, ..."; an array of nodes stays an array and keeps
// each node's priority and metadata.
function parseNodes(text, old) {
  const parts = text.split(",").map((s) => s.trim()).filter(Boolean).map((p) => { const [addr, w] = p.split("="); return [addr.trim(), w === undefined ? 1 : Number(w)]; });
  if (!Array.isArray(old)) return Object.fromEntries(parts);
  return parts.map(([addr, weight]) => {
    const i = addr.lastIndexOf(":"), host = i > 0 ? addr.slice(0, i) : addr, port = i > 0 ? Number(addr.slice(i + 1)) : undefined;
    const prev = old.find((n) => n.host === host && n.port === port) || {};
    const n = { ...prev, host, weight };
    if (port !== undefined) n.port = port;
    return n;
  });
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
$("#logout").addEventListener("click", async () => { try { await api("POST", "/logout"); } finally { showLogin(); } });
window.addEventListener("hashchange", route);

function route() {
  clearInterval(timer);
  const [page, action, ...rest] = (location.hash.replace(/^#\/?/, "").split("?")[0] || "routes").split("/");
  let id = "";
  try { id = rest.map(decodeURIComponent).join("/"); } catch (_) { id = rest.join("/"); }
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${page}`);
  if (page === "cluster") return clusterPage();
  if (page === "gateways") return gatewaysPage();
  if (page === "audit") return auditPage();
  if (page === "plugins") return pluginsPage();
  if (!PAGES[page]) return listPage("routes");
  if ((action === "edit" || action === "history") && !validId(page, id)) {
    $("#view").innerHTML = `<h1>${esc(PAGES[page].title)}</h1><p class="error" id="id-error">Not a valid id: ${esc(id)}</p>`;
    return;
  }
  if (action === "edit") return editPage(page, id);
  if (action === "new") return editPage(page, null);
  if (action === "history") return historyPage(page, id);
  return listPage(page);
}

// Paging and filters are the server's (page, page_size, name, uri, label);
// sorting orders the page shown.
const listState = {};
async function listPage(res) {
  const p = PAGES[res];
  const st = listState[res] || (listState[res] = { page: 1, size: 20, search: "", label: "", sort: null, dir: 1 });
  const v = $("#view");
  v.innerHTML = `<h1>${p.title}</h1><p id="applied" class="ok"></p>
    <div class="toolbar"><input id="search" placeholder="Search by name, or a URI starting with /" value="${esc(st.search)}">
    <input id="label" placeholder="label (k or k:v)" value="${esc(st.label)}" style="min-width:10rem">
    <button id="new" class="write">Create</button><span id="list-error" class="error"></span></div>
    <table id="list"><thead><tr><th class="sortable" data-key="id">ID</th><th class="sortable" data-key="name">Name</th><th class="sortable" data-key="col">${esc(p.column[0])}</th>${res === "routes" ? "<th>Status</th>" : ""}<th class="sortable" data-key="updated">Updated</th><th></th></tr></thead><tbody></tbody></table>
    <div class="pager"><button class="secondary" id="prev">Previous</button><span id="page-info"></span><button class="secondary" id="next">Next</button>
    <select id="page-size">${[10, 20, 50, 100].map((n) => `<option ${n === st.size ? "selected" : ""}>${n}</option>`).join("")}</select> per page</div>`;
  if (lastSave && lastSave.res === res) showApplied();
  $("#new").onclick = () => { location.hash = `#/${res}/new`; };
  const reload = () => listPage(res);
  $("#search").onkeydown = (e) => { if (e.key === "Enter") { st.search = e.target.value.trim(); st.label = $("#label").value.trim(); st.page = 1; reload(); } };
  $("#label").onkeydown = $("#search").onkeydown;
  $("#prev").onclick = () => { if (st.page > 1) { st.page--; reload(); } };
  $("#next").onclick = () => { st.page++; reload(); };
  $("#page-size").onchange = (e) => { st.size = Number(e.target.value); st.page = 1; reload(); };
  const q = new URLSearchParams({ page: st.page, page_size: Math.max(10, st.size) });
  if (st.search) q.set(st.search.startsWith("/") ? "uri" : "name", st.search);
  if (st.label) q.set("label", st.label);
  let data;
  try { data = await api("GET", `/apisix/admin/${res}?${q}`); } catch (err) { $("#list-error").textContent = err.message; return; }
  const pages = Math.max(1, Math.ceil(data.total / st.size));
  $("#page-info").textContent = `Page ${st.page} of ${pages} (${data.total} in all)`;
  $("#prev").disabled = st.page <= 1; $("#next").disabled = st.page >= pages;
  const rows = data.list.map((it) => {
    const val = it.value && typeof it.value === "object" ? it.value : {};
    const id = it.key.split(`/${res}/`).slice(1).join(`/${res}/`);
    let col = "";
    try { col = p.column[1](val); } catch (_) { col = "(unreadable)"; }
    return { it, val, id, name: val.name || val.username || "", col: String(col ?? ""), updated: val.update_time || 0 };
  });
  if (st.sort) rows.sort((a, b) => (a[st.sort] > b[st.sort] ? 1 : a[st.sort] < b[st.sort] ? -1 : 0) * st.dir);
  for (const th of document.querySelectorAll("#list th.sortable")) {
    if (th.dataset.key === st.sort) th.dataset.dir = st.dir > 0 ? "asc" : "desc";
    th.onclick = () => { st.dir = st.sort === th.dataset.key ? -st.dir : 1; st.sort = th.dataset.key; reload(); };
  }
  const tbody = $("#list tbody");
  for (const { it, val, id, name, col } of rows) {
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    const online = val.status === undefined || val.status === 1;
    tr.innerHTML = `<td>${esc(id)}</td><td>${esc(name)}</td><td>${esc(col)}</td>` +
      (res === "routes" ? `<td><span class="pill ${online ? "on" : "off"}">${online ? "published" : "offline"}</span></td>` : "") +
      `<td>${val.update_time ? new Date(val.update_time * 1000).toLocaleString() : ""}</td>
      <td class="actions"><button class="secondary edit">Edit</button><button class="secondary history">History</button>` +
      (res === "routes" ? `<button class="secondary toggle write">${online ? "Offline" : "Publish"}</button>` : "") +
      `<button class="danger delete write">Delete</button></td>`;
    $(".edit", tr).onclick = () => { location.hash = `#/${res}/edit/${enc(id)}`; };
    $(".history", tr).onclick = () => { location.hash = `#/${res}/history/${enc(id)}`; };
    const toggle = $(".toggle", tr);
    if (toggle) toggle.onclick = async () => {
      try { const r = await api("PATCH", itemPath(res, id), { status: online ? 0 : 1 }, { "if-match": String(it.modifiedIndex) }); saved(res, r); reload(); }
      catch (err) { $("#list-error").textContent = err.message; }
    };
    $(".delete", tr).onclick = async () => {
      if (!confirm(`Delete ${res.replace(/s$/, "")} ${id}?`)) return;
      try { await api("DELETE", itemPath(res, id), undefined, { "if-match": String(it.modifiedIndex) }); reload(); }
      catch (err) { $("#list-error").textContent = err.message; }
    };
    tbody.appendChild(tr);
  }
  if (!rows.length) tbody.innerHTML = `<tr><td colspan="6">Nothing here yet.</td></tr>`;
}

// After a save: which gateways have applied its revision.
let lastSave = null;
function saved(res, answer) { lastSave = { res, revision: answer && answer.modifiedIndex, at: Date.now() }; }
async function showApplied() {
  const s = lastSave, el = $("#applied");
  if (!s || !s.revision || !el) return;
  try {
    const g = await api("GET", `/api/gateways?revision=${s.revision}`);
    if (!$("#applied")) return;
    const a = g.applied;
    el.className = a.gateways && a.done === a.gateways ? "ok" : "hint";
    el.textContent = a.gateways === 0 ? `Saved as revision ${s.revision}. No gateway is registered.`
      : `Saved as revision ${s.revision}. Applied by ${a.done} of ${a.gateways} gateways${a.done === a.gateways ? "." : "…"}`;
    if (a.done < a.gateways && Date.now() - s.at < 60000) setTimeout(showApplied, 1000);
  } catch (_) { /* the list still works */ }
}

function fieldHtml([name, label, kind]) {
  if (kind === "status") return `<label>${label}<select name="${name}"><option value="1">published</option><option value="0">offline</option></select></label>`;
  if (kind === "balancer") return `<label>${label}<select name="${name}">${["roundrobin", "chash", "ewma", "least_conn"].map((t) => `<option>${t}</option>`).join("")}</select></label>`;
  if (kind === "scheme") return `<label>${label}<select name="${name}"><option value="">(default: http)</option>${["http", "https", "grpc", "grpcs", "tcp", "tls", "udp", "kafka"].map((t) => `<option>${t}</option>`).join("")}</select></label>`;
  if (kind === "ssltype") return `<label>${label}<select name="${name}"><option>server</option><option>client</option></select></label>`;
  if (kind === "area") return `<label>${label}<textarea name="${name}" rows="6"></textarea></label>`;
  if (kind === "pem") return `<label>${label}<textarea name="${name}" rows="5"></textarea></label><label class="hint">or a PEM file <input type="file" data-for="${name}" accept=".pem,.crt,.cer"></label>`;
  if (kind === "secretpem") return `<label>${label} <span class="pill secret" data-secret="${name}"></span><textarea name="${name}" rows="5" placeholder="Leave empty to keep the stored key; paste a PEM key to replace it"></textarea></label><label class="hint">or a PEM file <input type="file" data-for="${name}" accept=".pem,.key"></label>`;
  if (kind === "secret") return `<label>${label} <span class="pill secret" data-secret="${name}"></span><input name="${name}" type="password" autocomplete="off" placeholder="Leave empty to keep the stored secret"></label>`;
  if (kind === "number") return `<label>${label}<input name="${name}" type="number"></label>`;
  return `<label>${label}<input name="${name}"></label>`;
}
function readField(kind, el, old) {
  const s = el.value.trim();
  if (kind === "status") return Number(s);
  if (kind === "number") return s === "" ? undefined : Number(s);
  if (kind === "list") return s ? s.split(",").map((x) => x.trim()).filter(Boolean) : undefined;
  if (kind === "nodes") return s ? parseNodes(s, old) : undefined;
  // A secret left empty keeps the stored one (its placeholder goes back).
  if (kind === "secret" || kind === "secretpem") return s === "" ? (isSecret(old) ? old : undefined) : el.value;
  if (kind === "pem" || kind === "area") return s === "" ? undefined : el.value;
  return s === "" ? undefined : s;
}
function writeField(kind, el, v) {
  const pill = $(`[data-secret="${el.name}"]`);
  if (pill) pill.textContent = isSecret(v) ? "set" : "empty";
  if (kind === "list") el.value = arr(v).join(", ");
  else if (kind === "nodes") el.value = nodesText(v);
  else if (kind === "status") el.value = String(v === undefined ? 1 : v);
  else if (kind === "secret" || kind === "secretpem") el.value = isSecret(v) || v === undefined ? "" : v;
  else el.value = v ?? "";
}

const schemaCache = {};
async function pluginSchema(name, consumer) {
  const k = `${name}|${consumer}`;
  if (!(k in schemaCache)) {
    try { schemaCache[k] = await api("GET", `/apisix/admin/schema/plugins/${encodeURIComponent(name)}${consumer ? "?schema_type=consumer" : ""}`); }
    catch (_) { schemaCache[k] = { type: "object" }; }
  }
  return schemaCache[k];
}

// The plugin editor: a form from each plugin's JSON Schema (its scalar
// properties) and the plugin's raw JSON, for every plugin.
async function pluginEditor(box, mode, getValue, onChange) {
  let names = [];
  try { names = await api("GET", `/apisix/admin/plugins/list${mode === "stream" ? "?subsystem=stream" : ""}`); } catch (_) { names = []; }
  const render = async () => {
    const plugins = getValue().plugins || {};
    box.innerHTML = `<h2>Plugins</h2><div class="toolbar"><select id="plugin-pick">${names.filter((n) => !(n in plugins)).map((n) => `<option>${esc(n)}</option>`).join("")}</select><button type="button" class="secondary write" id="plugin-add">Add plugin</button></div><div id="plugin-list"></div>
      <p class="hint">Secrets show as <code>&lt;secret fp:…&gt;</code>: leave them to keep the stored secret, or type a new value.</p>`;
    $("#plugin-add", box).onclick = () => { const n = $("#plugin-pick", box).value; if (!n) return; const v = getValue(); v.plugins = { ...(v.plugins || {}), [n]: {} }; onChange(v); render(); };
    for (const [name, conf] of Object.entries(plugins)) {
      const schema = await pluginSchema(name, mode === "consumer");
      const props = Object.entries(schema.properties || {}).filter(([, p]) => ["string", "integer", "number", "boolean"].includes(p.type));
      const req = new Set(schema.required || []);
      const div = document.createElement("div");
      div.className = "plugin"; div.dataset.plugin = name;
      div.innerHTML = `<h3>${esc(name)} <button type="button" class="danger write remove">Remove</button></h3>` +
        props.map(([k, p]) => {
          const cur = conf && typeof conf === "object" ? conf[k] : undefined;
          const label = `${esc(k)}${req.has(k) ? " *" : ""}`;
          if (p.type === "boolean") return `<label><input type="checkbox" data-k="${esc(k)}" ${cur ? "checked" : ""} style="display:inline;width:auto"> ${label}</label>`;
          if (p.enum) return `<label>${label}<select data-k="${esc(k)}" data-t="${p.type}"><option value=""></option>${p.enum.map((e) => `<option ${e === cur ? "selected" : ""}>${esc(e)}</option>`).join("")}</select></label>`;
          const secret = /key|secret|password|token/.test(k) && p.type === "string";
          return `<label>${label}${isSecret(cur) ? ' <span class="pill secret">set</span>' : ""}<input data-k="${esc(k)}" data-t="${p.type}" ${secret ? 'type="password" autocomplete="off"' : ""} value="${esc(isSecret(cur) ? "" : cur ?? "")}" placeholder="${isSecret(cur) ? "Leave empty to keep the stored secret" : ""}"></label>`;
        }).join("") + `<label>JSON<textarea class="plugin-json" rows="4" spellcheck="false">${esc(JSON.stringify(conf, null, 2))}</textarea></label><p class="error plugin-error"></p>`;
      $(".remove", div).onclick = () => { const v = getValue(); delete v.plugins[name]; onChange(v); render(); };
      const set = (c) => { const v = getValue(); v.plugins[name] = c; onChange(v); $(".plugin-json", div).value = JSON.stringify(c, null, 2); };
      for (const el of div.querySelectorAll("[data-k]")) {
        const on = (fn) => { el.addEventListener("change", fn); if (el.tagName === "INPUT" && el.type !== "checkbox") el.addEventListener("input", fn); };
        on(() => {
          const c = { ...(getValue().plugins[name] || {}) }, k = el.dataset.k;
          if (el.type === "checkbox") c[k] = el.checked;
          else if (el.value === "") { if (!isSecret(c[k])) delete c[k]; }
          else c[k] = el.dataset.t === "integer" || el.dataset.t === "number" ? Number(el.value) : el.value;
          set(c);
        });
      }
      $(".plugin-json", div).addEventListener("input", (e) => {
        try { const c = JSON.parse(e.target.value); const v = getValue(); v.plugins[name] = c; onChange(v); $(".plugin-error", div).textContent = ""; }
        catch (err) { $(".plugin-error", div).textContent = `Not valid JSON: ${err.message}`; }
      });
      $("#plugin-list", box).appendChild(div);
    }
  };
  await render();
  return render;
}

async function editPage(res, id) {
  const p = PAGES[res];
  const v = $("#view");
  let item = null;
  if (id) {
    try { item = await api("GET", itemPath(res, id)); }
    catch (err) { v.innerHTML = `<p class="error">${esc(err.message)}</p>`; return; }
  }
  let value = item ? item.value : structuredClone(p.template);
  const needsId = !id && !p.idField;
  v.innerHTML = `<h1>${id ? `Edit ${esc(p.title.replace(/s$/, ""))} ${esc(id)}` : `Create ${esc(p.title.replace(/s$/, ""))}`}</h1>
    <div class="grid"><div><form id="edit-form" class="card">
      ${needsId ? `<label>${esc(p.idLabel || (p.post ? "ID (empty: generated)" : "ID"))}<input name="__id"></label>` : ""}
      ${p.fields.map(fieldHtml).join("")}
      ${res === "ssls" && value.validity_end ? `<p class="hint" id="ssl-validity">Certificate valid from ${new Date(value.validity_start * 1000).toISOString().slice(0, 10)} until ${new Date(value.validity_end * 1000).toISOString().slice(0, 10)}.</p>` : ""}
      <button id="save" class="write" type="submit">Save</button> <button type="button" class="secondary" id="cancel">Cancel</button>
      <p id="form-error" class="error" role="alert"></p></form>
      ${p.plugins ? '<div class="card" id="plugins-box"></div>' : ""}</div>
    <div class="card"><label>Raw JSON<textarea id="raw" rows="24" spellcheck="false"></textarea></label>
      <p id="raw-error" class="error"></p>
      <p class="hint">Secrets show as <code>&lt;secret fp:…&gt;</code> placeholders: sent back unchanged they keep the stored secret.</p></div></div>`;
  const form = $("#edit-form"), raw = $("#raw");
  let renderPlugins = null;
  const sync = () => { for (const f of p.fields) writeField(f[2], form.elements[f[0]], value[f[0]]); raw.value = JSON.stringify(value, null, 2); };
  sync();
  for (const [name, , kind] of p.fields) {
    const update = () => {
      const x = readField(kind, form.elements[name], value[name]);
      if (x === undefined) delete value[name]; else value[name] = x;
      raw.value = JSON.stringify(value, null, 2);
    };
    // "change" too: clearing a field programmatically fires no "input".
    form.elements[name].addEventListener("input", update);
    form.elements[name].addEventListener("change", update);
  }
  for (const file of form.querySelectorAll("input[type=file]")) {
    file.addEventListener("change", async () => {
      const f = file.files[0]; if (!f) return;
      const el = form.elements[file.dataset.for]; el.value = await f.text(); el.dispatchEvent(new Event("change"));
    });
  }
  raw.addEventListener("input", () => {
    try { value = JSON.parse(raw.value); $("#raw-error").textContent = ""; for (const f of p.fields) writeField(f[2], form.elements[f[0]], value[f[0]]); if (renderPlugins) renderPlugins(); }
    catch (err) { $("#raw-error").textContent = `Not valid JSON: ${err.message}`; }
  });
  if (p.plugins) renderPlugins = await pluginEditor($("#plugins-box"), p.plugins, () => value, (nv) => { value = nv; raw.value = JSON.stringify(value, null, 2); });
  $("#cancel").onclick = () => { location.hash = `#/${res}`; };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#form-error").textContent = "";
    try { value = JSON.parse(raw.value); } catch (err) { $("#form-error").textContent = `The raw JSON is not valid: ${err.message}`; return; }
    // The admin layer owns the timestamps (APISIX refuses them in a PUT).
    const body = structuredClone(value);
    delete body.create_time; delete body.update_time;
    if (body.upstream && typeof body.upstream === "object") { delete body.upstream.create_time; delete body.upstream.update_time; }
    try {
      let r;
      if (id) r = await api("PUT", itemPath(res, id), body, { "if-match": String(item.modifiedIndex) });
      else if (p.idField) {
        const uid = String(body[p.idField] || "");
        if (!validId(res, uid)) throw new Error(`${p.idField}: use 1-64 characters of a-z, A-Z, 0-9, -, _ and .`);
        // If-None-Match: create only, never overwrite an existing one.
        r = await api("PUT", itemPath(res, uid), body, { "if-none-match": "*" });
      } else if (form.elements.__id.value.trim()) {
        const nid = form.elements.__id.value.trim();
        if (!validId(res, nid)) throw new Error(res === "secrets" ? "ID: use manager/id, e.g. vault/1" : "ID: use 1-64 characters of a-z, A-Z, 0-9, -, _ and .");
        r = await api("PUT", itemPath(res, nid), body, { "if-none-match": "*" });
      } else if (p.post) r = await api("POST", `/apisix/admin/${res}`, body);
      else throw new Error("Give an ID.");
      saved(res, r);
      location.hash = `#/${res}`;
    } catch (err) {
      $("#form-error").textContent = err.status === 409 ? (id ? `Someone else changed this since you opened it. Reload to see their version. (${err.message})` : `It exists already; open it to edit it. (${err.message})`) : err.message;
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
  try { h = await api("GET", itemPath(res, id, "/history")); } catch (err) { $("#history-msg").className = "error"; $("#history-msg").textContent = err.message; return; }
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
        // Based on the version shown as current: a change since is a 409.
        const r = await api("POST", itemPath(res, id, `/rollback?revision=${ver.revision}`), undefined, current ? { "if-match": String(current.revision) } : {});
        saved(res, r);
        historyPage(res, id).then(() => { $("#history-msg").className = "ok"; $("#history-msg").textContent = `Rolled back to revision ${ver.revision} (now revision ${r.modifiedIndex}).`; });
      } catch (err) { $("#history-msg").className = "error"; $("#history-msg").textContent = err.message; }
    };
    $("#history tbody").appendChild(tr);
  }
}

async function gatewaysPage() {
  const v = $("#view");
  v.innerHTML = `<h1>Gateways</h1><p>Every <code>cairn gateway</code> registered in the store, refreshed every 2 seconds. <span id="gateways-summary"></span></p>
    <table id="gateways-table"><thead><tr><th>ID</th><th>Host</th><th>Address</th><th>Version</th><th>Applied revision</th><th>Status</th><th>Last error</th><th>Updated</th></tr></thead><tbody></tbody></table>
    <p id="gateways-error" class="error"></p>`;
  const load = async () => {
    try {
      const g = await api("GET", "/api/gateways");
      if (!$("#gateways-table")) return;
      const now = Date.now() / 1000;
      $("#gateways-summary").textContent = `Newest configuration change: revision ${g.target_revision} (store at ${g.store_revision}).`;
      $("#gateways-table tbody").innerHTML = g.list.length ? g.list.map((x) => `<tr class="gateway" data-id="${esc(x.id)}" data-status="${esc(x.status)}">
        <td>${esc(x.id)}</td><td>${esc(x.hostname)}</td><td>${esc(x.address)}</td><td>${esc(x.version)}</td>
        <td>${esc(x.config_revision)} / ${esc(g.target_revision)}</td><td><span class="pill ${x.status === "healthy" ? "on" : esc(x.status)}">${esc(x.status)}</span></td>
        <td>${esc(x.last_error || "")}</td><td>${Math.max(0, Math.round(now - x.updated_at))} s ago</td></tr>`).join("")
        : `<tr><td colspan="8">No gateway has registered. Start one with <code>cairn gateway</code>.</td></tr>`;
      $("#gateways-error").textContent = "";
    } catch (err) { if ($("#gateways-error")) $("#gateways-error").textContent = err.message; }
  };
  await load();
  timer = setInterval(load, 2000);
}

async function clusterPage() {
  const v = $("#view");
  v.innerHTML = `<h1>Store cluster</h1><p>Refreshed every 2 seconds. <span id="cluster-time"></span> See also the <a href="#/gateways" id="to-gateways">gateways</a> reading it.</p>
    <table id="cluster-table"><thead><tr><th>Member</th><th>Endpoint</th><th>Role</th><th>Raft term</th><th>Applied index</th><th>DB size</th><th>Health</th></tr></thead><tbody></tbody></table>
    <p id="cluster-error" class="error"></p>`;
  const load = async () => {
    try {
      const c = await api("GET", "/api/cluster");
      if (!$("#cluster-table")) return;
      $("#cluster-table tbody").innerHTML = c.members.map((m) => `<tr class="member" data-healthy="${m.healthy}">
        <td>${esc(m.name || m.id || "?")}</td><td>${esc(m.endpoint)}</td>
        <td><span class="pill ${m.role === "leader" ? "leader" : ""}">${esc(m.role || "unreachable")}</span></td>
        <td>${esc(m.raft_term ?? "")}</td><td>${esc(m.applied_index ?? "")}</td>
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
  v.innerHTML = `<h1>Audit log</h1><p class="hint">Secrets appear as fingerprints only.</p><table id="audit"><thead><tr><th>When</th><th>Who</th><th>Action</th><th>Key</th><th>Revision</th></tr></thead><tbody></tbody></table><p id="audit-error" class="error"></p>`;
  try {
    const a = await api("GET", "/api/audit?limit=500");
    $("#audit tbody").innerHTML = a.list.map((r) => `<tr><td>${new Date(r.when_ms).toLocaleString()}</td><td>${esc(r.who)}</td>
      <td>${esc(r.action)}</td><td>${esc(r.key)}</td><td>${esc(r.old_revision)} → ${esc(r.new_revision)}</td></tr>`).join("");
  } catch (err) { $("#audit-error").textContent = err.message; }
}

async function pluginsPage() {
  const v = $("#view");
  v.innerHTML = `<h1>Plugin catalog</h1><p class="hint">Every plugin a route, service, consumer or global rule may use; select one for its schema.</p>
    <ul class="catalog" id="catalog"></ul><h2 id="schema-title"></h2><pre class="diff" id="schema"></pre><p id="plugins-error" class="error"></p>`;
  try {
    const names = await api("GET", "/apisix/admin/plugins/list");
    $("#catalog").innerHTML = names.map((n) => `<li><a href="#/plugins" data-plugin="${esc(n)}">${esc(n)}</a></li>`).join("");
    for (const a of document.querySelectorAll("#catalog a")) a.onclick = async (e) => {
      e.preventDefault();
      $("#schema-title").textContent = a.dataset.plugin;
      $("#schema").textContent = JSON.stringify(await pluginSchema(a.dataset.plugin, false), null, 2);
    };
  } catch (err) { $("#plugins-error").textContent = err.message; }
}

boot();
