// steplog's dev UI: vanilla ES module, no build step, no network beyond this server.
// Every value from the log is shown with textContent (through `h`), never parsed as HTML.

const POLL_MS = 1000;
const STATUSES = ["queued", "running", "waiting", "completed", "failed", "cancelled", "skipped"];
const ACTIVE = new Set(["queued", "running", "waiting"]);
const FALLBACK_EVENT = "app/test.event";
const LIST_LIMIT = 50; // the server's default page

const state = {
  position: null,        // the log position the current view was drawn at
  serverOffset: 0,       // engine time minus browser time, in ms
  functions: [],         // from /api/functions, for filters and the send dialog
  view: null,            // {name, params, query}
  generation: 0,         // drops answers to requests a newer refresh replaced
  selected: -1,          // the row j/k selected
  openDetails: new Map(),// details key -> open, as the user left them
  drawn: null,           // the JSON last drawn, to skip redrawing what did not change
};

// -- DOM helpers --------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function link(href, ...children) {
  return h("a", { href, "data-link": true }, ...children);
}

function mono(text, attrs = {}) {
  return h("span", { ...attrs, class: `mono ${attrs.class || ""}`.trim(), text });
}

function badge(status) {
  return h("span", { class: `badge status-${status || "unknown"}`, "data-status": status, text: status || "?" });
}

function shortId(id) {
  return id ? `${id.slice(0, 6)}…${id.slice(-4)}` : "";
}

function idLink(href, id) {
  return link(href, mono(shortId(id), { title: id, class: "id" }));
}

// -- JSON ---------------------------------------------------------------------------------------

function jsonBlock(value) {
  const pre = h("pre", { class: "json" });
  writeJson(pre, value, "");
  return pre;
}

function writeJson(into, value, indent) {
  if (value === null || value === undefined) return into.append(h("span", { class: "j-null", text: "null" }));
  if (typeof value === "string") return into.append(h("span", { class: "j-str", text: JSON.stringify(value) }));
  if (typeof value === "number") return into.append(h("span", { class: "j-num", text: String(value) }));
  if (typeof value === "boolean") return into.append(h("span", { class: "j-bool", text: String(value) }));
  const isArray = Array.isArray(value);
  const items = isArray ? value.map((item, index) => [index, item]) : Object.entries(value);
  const [open, close] = isArray ? ["[", "]"] : ["{", "}"];
  if (!items.length) return into.append(open + close);
  into.append(open + "\n");
  const inner = indent + "  ";
  items.forEach(([key, item], index) => {
    into.append(inner);
    if (!isArray) into.append(h("span", { class: "j-key", text: JSON.stringify(key) }), ": ");
    writeJson(into, item, inner);
    into.append(index < items.length - 1 ? ",\n" : "\n");
  });
  into.append(indent + close);
}

function preview(value, width = 80) {
  if (value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > width ? text.slice(0, width - 1) + "…" : text;
}

function errorText(error) {
  if (!error) return "";
  if (typeof error !== "object") return String(error);
  return `${error.name || "Error"}: ${error.message || ""}`;
}

// -- time ---------------------------------------------------------------------------------------

function serverNow() {
  return Date.now() + state.serverOffset;
}

function toMs(iso) {
  return iso ? Date.parse(iso) : NaN;
}

function relative(iso) {
  const ms = toMs(iso);
  if (Number.isNaN(ms)) return "";
  const delta = Math.round((serverNow() - ms) / 1000);
  const span = Math.abs(delta);
  let text;
  if (span < 2) return "just now";
  if (span < 60) text = `${span}s`;
  else if (span < 3600) text = `${Math.floor(span / 60)}m`;
  else if (span < 86400) text = `${Math.floor(span / 3600)}h ${Math.floor((span % 3600) / 60)}m`;
  else text = `${Math.floor(span / 86400)}d ${Math.floor((span % 86400) / 3600)}h`;
  return delta >= 0 ? `${text} ago` : `in ${text}`;
}

function absolute(iso) {
  const ms = toMs(iso);
  return Number.isNaN(ms) ? "" : new Date(ms).toLocaleString();
}

function clockTime(iso) {
  const ms = toMs(iso);
  if (Number.isNaN(ms)) return "";
  const date = new Date(ms);
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

function timeAgo(iso) {
  if (!iso) return h("span", { class: "muted", text: "–" });
  return h("time", { datetime: iso, "data-relative": true, title: `${absolute(iso)} (${iso})`, text: relative(iso) });
}

function tickTimes() {
  for (const element of document.querySelectorAll("time[data-relative]")) {
    element.textContent = relative(element.getAttribute("datetime"));
  }
}

function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1) return "<1 ms";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d ${Math.floor((seconds % 86400) / 3600)}h`;
}

function seconds(value) {
  if (value === null || value === undefined) return "none";
  return duration(value * 1000);
}

// -- the server ---------------------------------------------------------------------------------

async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: { Accept: "application/json" } };
  if (init.method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = options.body === undefined ? "{}" : options.body;
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = { error: text };
  }
  if (!response.ok) {
    const error = new Error((payload && payload.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

// -- routing ------------------------------------------------------------------------------------

function parseLocation() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  const params = Object.fromEntries(new URLSearchParams(location.search));
  if (parts[0] === "events" && parts[1]) return { name: "event", id: parts[1], query: params };
  if (parts[0] === "events") return { name: "events", query: params };
  if (parts[0] === "runs" && parts[1]) return { name: "run", id: parts[1], query: params };
  if (parts[0] === "functions") return { name: "functions", query: params };
  return { name: "runs", query: params };
}

function navigate(href) {
  history.pushState(null, "", href);
  showView();
}

function filterView(href) {
  // a filter changed: same view, new query; the controls stay as they are (and keep the focus)
  history.replaceState(null, "", href);
  state.view = parseLocation();
  state.selected = -1;
  refresh();
}

function showView() {
  state.view = parseLocation();
  state.selected = -1;
  state.drawn = null;
  state.openDetails.clear();
  const section = VIEWS[state.view.name].nav;
  for (const item of document.querySelectorAll("[data-nav]")) {
    item.classList.toggle("active", item.dataset.nav === section);
    if (item.dataset.nav === section) item.setAttribute("aria-current", "page");
    else item.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  const body = h("div", { class: "view-body", id: "view-body" });
  main.replaceChildren(...VIEWS[state.view.name].frame(state.view), body);
  body.append(h("p", { class: "muted loading", text: "Loading…" }));
  refresh();
}

async function refresh() {
  const generation = ++state.generation;
  const view = state.view;
  const spec = VIEWS[view.name];
  try {
    const data = await spec.load(view);
    if (generation !== state.generation) return;
    const drawn = JSON.stringify([location.pathname, location.search, data]);
    if (drawn === state.drawn) return; // the log moved elsewhere: keep the page (and any selection) as it is
    state.drawn = drawn;
    document.title = `${spec.title(view, data)} · steplog`;
    draw(spec.render(view, data));
  } catch (error) {
    if (generation !== state.generation) return;
    state.drawn = null;
    draw(h("div", { class: "notice error", role: "alert" }, h("strong", { text: "Could not load this view. " }),
      error.message));
  }
}

function draw(content) {
  const body = document.getElementById("view-body");
  if (!body) return;
  rememberDetails(body);
  body.replaceChildren(content);
  restoreDetails(body);
  markSelected();
  tickTimes();
}

function rememberDetails(root) {
  for (const details of root.querySelectorAll("details[data-key]")) {
    if (details.dataset.touched) state.openDetails.set(details.dataset.key, details.open);
  }
}

function restoreDetails(root) {
  for (const details of root.querySelectorAll("details[data-key]")) {
    if (state.openDetails.has(details.dataset.key)) details.open = state.openDetails.get(details.dataset.key);
    details.addEventListener("toggle", () => {
      details.dataset.touched = "1";
      state.openDetails.set(details.dataset.key, details.open);
    });
  }
}

// -- refresh when the log moves -----------------------------------------------------------------

async function poll() {
  if (!document.hidden) {
    try {
      const changes = await api("/api/changes");
      state.serverOffset = toMs(changes.now) - Date.now();
      setLive("live", `live · #${changes.position}`);
      if (state.position !== null && changes.position !== state.position) refresh();
      state.position = changes.position;
    } catch (error) {
      setLive("offline", error.status === 401 ? "API token needed: reload" : "server unreachable");
      state.position = -1; // refetch once it answers again
    }
  }
  setTimeout(poll, POLL_MS);
}

function setLive(status, text) {
  const live = document.getElementById("live");
  live.dataset.state = status;
  document.getElementById("live-text").textContent = text;
}

// -- shared pieces of views ---------------------------------------------------------------------

function header(title, ...extra) {
  return h("header", { class: "view-head" }, h("h1", { text: title }), ...extra);
}

function table(columns, rows, empty) {
  if (!rows.length) return h("div", { class: "empty", text: empty });
  return h("table", { class: "table" },
    h("thead", {}, h("tr", {}, columns.map((column) => h("th", { text: column })))),
    h("tbody", {}, rows));
}

function row(href, cells) {
  return h("tr", { class: "row", "data-href": href, onclick: (event) => openRow(event, href) },
    cells.map((cell) => h("td", {}, cell)));
}

function openRow(event, href) {
  if (event.target.closest("a, button, input, select")) return;
  if (window.getSelection && String(window.getSelection()).length) return; // selecting text, not opening
  navigate(href);
}

function moreNote(shown, what) {
  return shown >= LIST_LIMIT ? h("p", { class: "more muted", text: `Showing the newest ${LIST_LIMIT} ${what}; filter to see others.` }) : null;
}

function field(label, ...value) {
  return [h("dt", { text: label }), h("dd", {}, ...value)];
}

function section(title, ...content) {
  return h("section", { class: "panel" }, h("h2", { text: title }), ...content);
}

function toast(message, ...extra) {
  const item = h("div", { class: "toast", role: "status" }, message, ...extra);
  document.getElementById("toasts").append(item);
  setTimeout(() => item.remove(), 6000);
}

function runBadges(runs) {
  if (!runs.length) return h("span", { class: "muted", text: "no runs" });
  return h("span", { class: "run-chips" }, runs.map((run) =>
    link(`/runs/${encodeURIComponent(run.run_id)}`,
      h("span", { class: "run-chip", title: `${run.relation} ${run.run_id}` },
        run.relation !== "started" ? h("span", { class: "relation", text: run.relation }) : null,
        h("span", { text: run.function_id || "?" }), badge(run.status)))));
}

// -- events -------------------------------------------------------------------------------------

function eventsFrame(view) {
  const input = h("input", {
    type: "search", id: "event-filter", class: "filter", placeholder: "Event name, e.g. shop/order.paid",
    value: view.query.name || "", list: "event-names", "aria-label": "Filter events by name", "data-filter": true,
  });
  let timer = null;
  const apply = () => filterView(`/events${query({ name: input.value.trim() })}`);
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(apply, 300);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      clearTimeout(timer);
      apply();
    }
  });
  const names = h("datalist", { id: "event-names" }, knownEventNames().map((name) => h("option", { value: name })));
  return [header("Events", h("p", { class: "sub", text: "Newest first, with the runs each event started or resumed." })),
    h("div", { class: "toolbar" }, input, names)];
}

function knownEventNames() {
  const names = new Set();
  for (const fn of state.functions) {
    for (const trigger of fn.triggers || []) if (trigger.event && !trigger.event.includes("*")) names.add(trigger.event);
  }
  return [...names].sort();
}

function renderEvents(view, events) {
  const rows = events.map((event) => row(`/events/${encodeURIComponent(event.internal_id)}`, [
    link(`/events/${encodeURIComponent(event.internal_id)}`, h("span", { class: "event-name", text: event.name })),
    mono(shortId(event.id), { title: event.id, class: "id" }),
    timeAgo(event.received_at),
    event.duplicate ? h("span", { class: "badge status-skipped", text: "duplicate" }) : eventOutcome(event),
    mono(preview(event.data, 60), { class: "preview" }),
  ]));
  return h("div", {}, table(["Name", "ID", "Received", "Runs", "Data"], rows,
    view.query.name ? `No event named ${view.query.name} yet.` : "No events yet. Send one with s."),
  moreNote(events.length, "events"));
}

function eventOutcome(event) {
  // runs it started or resumed, and what flow control did with it for each function that held it
  const held = (event.flow || []).filter((note) => note.outcome && note.outcome !== "skipped");
  if (!held.length) return runBadges(event.runs);
  return h("span", { class: "run-chips" }, event.runs.length ? runBadges(event.runs) : null,
    held.map((note) => h("span", { class: "run-chip held", title: note.outcome },
      h("span", { text: note.function_id }), h("span", { class: "relation", text: note.outcome.split(":")[0] }))));
}

function renderEvent(view, event) {
  const resend = () => openSend({ name: event.name, data: event.data });
  const filter = () => navigate(`/events${query({ name: event.name })}`);
  return h("div", { class: "stack" },
    header(event.name,
      h("div", { class: "actions" },
        h("button", { type: "button", class: "button", onclick: filter, text: "Events with this name" }),
        h("button", { type: "button", class: "button", onclick: resend, text: "Send again…" }))),
    h("dl", { class: "meta" },
      field("ID", mono(event.id)),
      event.internal_id !== event.id ? field("Internal ID", mono(event.internal_id)) : null,
      field("Received", timeAgo(event.received_at)),
      field("ts", mono(String(event.ts)), h("span", { class: "muted", text: ` ${absolute(new Date(event.ts).toISOString())}` })),
      event.duplicate ? field("Duplicate", "yes: its id was seen within 24 hours, it started nothing") : null),
    section("Runs", event.runs.length ? table(["Relation", "Function", "Status", "Run", "Step"],
      event.runs.map((run) => row(`/runs/${encodeURIComponent(run.run_id)}`, [
        run.relation, run.function_id || "?", badge(run.status), idLink(`/runs/${encodeURIComponent(run.run_id)}`, run.run_id),
        run.step ? mono(run.step) : "",
      ])), "") : h("div", { class: "empty", text: "This event started and resumed no run." })),
    event.flow && event.flow.length ? section("Flow control", jsonBlock(event.flow)) : null,
    section("Data", jsonBlock(event.data)));
}

// -- runs ---------------------------------------------------------------------------------------

function runsFrame(view) {
  const fnSelect = h("select", { id: "run-function", class: "filter", "aria-label": "Filter runs by function", "data-filter": true },
    h("option", { value: "", text: "All functions" }),
    state.functions.map((fn) => h("option", { value: fn.id, text: fn.id, selected: fn.id === view.query.function })));
  const statusSelect = h("select", { id: "run-status", class: "filter", "aria-label": "Filter runs by status" },
    h("option", { value: "", text: "Any status" }),
    STATUSES.map((status) => h("option", { value: status, text: status, selected: status === view.query.status })));
  const apply = () => filterView(`/runs${query({ function: fnSelect.value, status: statusSelect.value })}`);
  fnSelect.addEventListener("change", apply);
  statusSelect.addEventListener("change", apply);
  return [header("Runs", h("p", { class: "sub", text: "Newest first." })), h("div", { class: "toolbar" }, fnSelect, statusSelect)];
}

function renderRuns(view, runs) {
  const rows = runs.map((run) => {
    const href = `/runs/${encodeURIComponent(run.run_id)}`;
    const outcome = run.error ? h("span", { class: "error-text", text: preview(errorText(run.error), 70) })
      : run.status === "completed" ? mono(preview(run.output, 60), { class: "preview" }) : "";
    return row(href, [
      badge(run.status), h("span", { class: "fn-name", text: run.function_id }), idLink(href, run.run_id),
      run.event_name ? h("span", { class: "event-name", text: run.event_name }) : h("span", { class: "muted", text: "–" }),
      timeAgo(run.scheduled_at), h("span", { class: "num", text: duration(run.duration_ms) }), outcome,
    ]);
  });
  return h("div", {}, table(["Status", "Function", "Run", "Event", "Scheduled", "Duration", "Output"], rows,
    view.query.function || view.query.status ? "No run matches these filters." : "No runs yet. Send an event with s."),
  moreNote(runs.length, "runs"));
}

function renderRun(view, detail) {
  const run = detail.run;
  return h("div", { class: "stack" },
    header(run.function_id, badge(run.status), h("div", { class: "actions" }, runActions(detail))),
    h("dl", { class: "meta" },
      field("Run", mono(run.run_id, { class: "copyable" })),
      field("Function", link(`/runs${query({ function: run.function_id })}`, run.function_id)),
      field("Triggered by", detail.events.length ? detail.events.map((event) =>
        link(`/events/${encodeURIComponent(event.internal_id)}`, h("span", { class: "event-name", text: event.name }), " ")) : "–"),
      detail.rerun_of ? field("Rerun of", idLink(`/runs/${encodeURIComponent(detail.rerun_of)}`, detail.rerun_of)) : null,
      detail.invoked_by ? field("Invoked by", idLink(`/runs/${encodeURIComponent(detail.invoked_by.run_id)}`, detail.invoked_by.run_id),
        " step ", mono(detail.invoked_by.step)) : null,
      field("Scheduled", timeAgo(run.scheduled_at)),
      field("Started", timeAgo(run.started_at)),
      field("Ended", timeAgo(run.ended_at)),
      field("Duration", run.duration_ms !== null ? duration(run.duration_ms) : ACTIVE.has(run.status) ? "still going" : "–")),
    outcomePanel(detail),
    section("Timeline", timeline(detail)),
    section("Log", runLog(detail.log)),
    detail.events.length ? section(detail.events.length > 1 ? "Events" : "Event",
      detail.events.map((event) => jsonBlock({ name: event.name, data: event.data, id: event.id, ts: event.ts }))) : null);
}

function runActions(detail) {
  const runId = detail.run.run_id;
  const cancel = async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    try {
      const answer = await api(`/api/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" });
      toast(answer.cancelled ? "Cancel requested: the run stops before its next step." : "The run had already ended.");
      refresh();
    } catch (error) {
      toast(`Cancel failed: ${error.message}`);
      button.disabled = false;
    }
  };
  const rerun = async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    try {
      const answer = await api(`/api/runs/${encodeURIComponent(runId)}/rerun`, { method: "POST" });
      toast("Rerun started: ", idLink(`/runs/${encodeURIComponent(answer.run_id)}`, answer.run_id));
      navigate(`/runs/${encodeURIComponent(answer.run_id)}`);
    } catch (error) {
      toast(`Rerun failed: ${error.message}`);
      button.disabled = false;
    }
  };
  return [
    detail.active ? h("button", { type: "button", class: "button danger", id: "cancel-run", onclick: cancel, text: "Cancel run" }) : null,
    h("button", { type: "button", class: "button", id: "rerun-run", onclick: rerun, text: "Rerun" }),
  ];
}

function outcomePanel(detail) {
  const run = detail.run;
  if (run.status === "completed") return section("Output", jsonBlock(run.output));
  if (run.status === "skipped" && detail.skipped) {
    return section("Skipped", h("p", { class: "error-text", text: `${detail.skipped.reason}: ${detail.skipped.message}` }));
  }
  if (run.error) return section("Error", errorBox(run.error, "run-error"));
  const cancelled = detail.log.find((note) => note.what === "cancelled");
  if (cancelled) return section("Cancelled", h("p", { text: cancelled.reason || "cancelled" }));
  return null;
}

function errorBox(error, key) {
  return h("div", { class: "error-box" },
    h("div", { class: "error-title" }, h("strong", { text: error.name || "Error" }), ": ", error.message || ""),
    error.stack ? h("details", { "data-key": key }, h("summary", { text: "Stack" }), h("pre", { class: "stack-trace", text: error.stack })) : null);
}

// -- a run's timeline ---------------------------------------------------------------------------

function timeline(detail) {
  if (!detail.steps.length) return h("div", { class: "empty", text: "No steps yet." });
  const run = detail.run;
  const start = toMs(run.started_at || run.scheduled_at);
  const stepEnds = detail.steps.map((step) => toMs(step.ended_at) || toMs(step.started_at));
  const end = run.ended_at ? toMs(run.ended_at) : Math.max(serverNow(), ...stepEnds.filter((ms) => !Number.isNaN(ms)));
  const scale = { start, span: Math.max(end - start, 1), now: serverNow() };
  return h("div", { class: "timeline" }, detail.steps.map((step) => stepRow(step, scale, detail)));
}

function stepRow(step, scale, detail) {
  const open = step.status === "failed" || step.status === "errored";
  return h("details", { class: `step step-${step.status}`, "data-key": `step:${step.key}`, "data-step": step.key, open },
    h("summary", { class: "step-summary" },
      h("span", { class: `kind kind-${step.kind}`, title: step.kind, text: KIND_LABELS[step.kind] || step.kind }),
      h("span", { class: "step-name mono", text: step.key }),
      badge(step.status),
      h("span", { class: "attempts muted", text: step.attempts.length > 1 ? `${step.attempts.length} attempts` : "" }),
      h("span", { class: "num step-duration", text: stepDuration(step) }),
      waterfall(step, scale),
      h("span", { class: "step-preview mono" }, stepPreview(step))),
    h("div", { class: "step-body" }, stepBody(step, detail)));
}

const KIND_LABELS = { run: "step", sleep: "sleep", wait: "wait", invoke: "invoke", send_event: "send", function: "code" };

function stepDuration(step) {
  if (step.duration_ms !== null && step.duration_ms !== undefined) return duration(step.duration_ms);
  if (step.status === "sleeping" || step.status === "waiting") return `${duration(serverNow() - toMs(step.started_at))}…`;
  return "";
}

function stepPreview(step) {
  if (step.status === "sleeping" && step.sleep) return `until ${clockTime(step.sleep.until)} (${relative(step.sleep.until)})`;
  if (step.status === "waiting" && step.wait) return `for ${step.wait.event}`;
  if (step.status === "waiting" && step.invoke) return `run of ${step.invoke.function_id || "?"}`;
  if (step.error) return h("span", { class: "error-text", text: preview(errorText(step.error), 70) });
  if (step.wait && step.wait.timed_out) return "timed out";
  if (step.kind === "sleep") return `woke at ${clockTime(step.ended_at)}`;
  if (step.wait && step.wait.matched) return `matched ${step.wait.matched.name}`;
  return preview(step.output, 70);
}

function waterfall(step, scale) {
  const track = h("span", { class: "bar-track", "aria-hidden": "true" });
  const place = (from, to, kind) => {
    if (Number.isNaN(from)) return;
    const left = Math.min(Math.max((from - scale.start) / scale.span, 0), 1);
    const width = Math.max((Math.min(to, scale.start + scale.span) - from) / scale.span, 0);
    const bar = h("span", { class: `bar bar-${kind}` });
    bar.style.left = `${(left * 100).toFixed(2)}%`;
    bar.style.width = `max(3px, ${(width * 100).toFixed(2)}%)`;
    track.append(bar);
  };
  for (const attempt of step.attempts) {
    if (attempt.started_at) place(toMs(attempt.started_at), toMs(attempt.ended_at), attempt.status);
  }
  if (step.status === "sleeping" || step.status === "waiting") place(toMs(step.started_at), scale.now, "pending");
  return track;
}

function stepBody(step, detail) {
  const parts = [];
  if (step.sleep) {
    parts.push(h("p", { class: "fact" }, "Sleeps until ", h("strong", { text: absolute(step.sleep.until) }), " ", timeAgo(step.sleep.until)));
  }
  if (step.wait) parts.push(waitFacts(step.wait));
  if (step.invoke) parts.push(invokeFacts(step.invoke));
  if (step.attempts.length) parts.push(attemptsTable(step));
  return parts;
}

function waitFacts(wait) {
  const matched = wait.matched;
  return h("div", { class: "facts" },
    h("p", { class: "fact" }, "Waits for ", h("span", { class: "event-name", text: wait.event }),
      wait.if ? [" if ", mono(wait.if, { class: "expr" })] : null,
      matched || wait.timed_out ? null : [", until ", timeAgo(wait.expires_at)]),
    matched ? h("p", { class: "fact matched" }, "Matched by ",
      link(`/events/${encodeURIComponent(matched.id)}`, h("span", { class: "event-name", text: matched.name }), " ", mono(shortId(matched.id), { title: matched.id })))
      : wait.timed_out ? h("p", { class: "fact", text: "Timed out: no matching event arrived." })
        : h("p", { class: "fact muted", text: "No matching event yet." }));
}

function invokeFacts(invoke) {
  return h("p", { class: "fact" }, "Invokes ", h("strong", { text: invoke.function_id || "?" }),
    invoke.run_id ? [": run ", idLink(`/runs/${encodeURIComponent(invoke.run_id)}`, invoke.run_id), " ", badge(invoke.status)]
      : h("span", { class: "muted", text: " (no run started yet)" }));
}

function attemptsTable(step) {
  const rows = step.attempts.map((attempt) => h("tr", { class: `attempt attempt-${attempt.status}` },
    h("td", { class: "num", text: `#${attempt.attempt}` }),
    h("td", {}, badge(attempt.status)),
    h("td", {}, attempt.started_at ? h("span", { title: attempt.started_at, text: clockTime(attempt.started_at) }) : ""),
    h("td", { class: "num", text: duration(attempt.duration_ms) }),
    h("td", { class: "attempt-outcome" }, attemptOutcome(step, attempt))));
  return h("table", { class: "table attempts-table" },
    h("thead", {}, h("tr", {}, ["Attempt", "Status", "Started", "Duration", "Output or error"].map((text) => h("th", { text })))),
    h("tbody", {}, rows));
}

function attemptOutcome(step, attempt) {
  if (attempt.error) {
    return [errorBox(attempt.error, `stack:${step.key}:${attempt.attempt}`),
      attempt.retry_at ? h("p", { class: "fact" }, "Retry at ", h("strong", { text: clockTime(attempt.retry_at) }), " ", timeAgo(attempt.retry_at)) : null];
  }
  if (step.kind === "sleep") return h("span", { class: "muted", text: "woke up" });
  if (step.kind === "wait" && attempt.output === null) return h("span", { class: "muted", text: "timed out (null)" });
  return jsonBlock(attempt.output);
}

function runLog(notes) {
  return h("ol", { class: "log" }, notes.map((note) => h("li", { class: `log-item log-${note.what.replace(/\s+/g, "-")}` },
    h("span", { class: "mono muted log-time", title: note.at, text: clockTime(note.at) }),
    h("span", { class: "log-what", text: note.what }),
    note.step ? mono(note.step, { class: "log-step" }) : null,
    h("span", { class: "log-detail", text: noteDetail(note) }))));
}

function noteDetail(note) {
  const parts = [];
  if (note.attempt) parts.push(`attempt ${note.attempt}`);
  if (note.event) parts.push(note.event);
  if (note.event_id) parts.push(note.event_id);
  if (note.run_id) parts.push(`run ${note.run_id}`);
  if (note.until) parts.push(`until ${absolute(note.until)}`);
  if (note.retry_at) parts.push(`retry at ${absolute(note.retry_at)}`);
  if (note.reason) parts.push(note.reason);
  if (note.message) parts.push(note.message);
  return parts.join(" · ");
}

// -- functions ----------------------------------------------------------------------------------

const FLOW_KEYS = ["concurrency", "throttle", "rate_limit", "debounce", "batch_events", "priority", "singleton", "idempotency"];

function renderFunctions(view, functions) {
  if (!functions.length) return h("div", { class: "empty", text: "No functions are defined on this client." });
  return h("div", { class: "cards" }, functions.map(functionCard));
}

function functionCard(fn) {
  const eventTrigger = (fn.triggers || []).find((trigger) => trigger.event && !trigger.event.includes("*"));
  const flow = FLOW_KEYS.filter((key) => fn[key] !== undefined && fn[key] !== null);
  const known = new Set(["id", "name", "triggers", "retries", "cancel", "timeouts", ...FLOW_KEYS]);
  const other = Object.keys(fn).filter((key) => !known.has(key));
  return h("article", { class: "card", "data-function": fn.id },
    h("header", { class: "card-head" },
      h("h2", {}, h("span", { text: fn.name }), fn.name !== fn.id ? mono(fn.id, { class: "muted" }) : null),
      h("div", { class: "actions" },
        link(`/runs${query({ function: fn.id })}`, "Runs"),
        eventTrigger ? h("button", { type: "button", class: "button small", text: "Send test event…",
          onclick: () => openSend({ name: eventTrigger.event, data: {} }) }) : null,
        h("button", { type: "button", class: "button small", "data-invoke": fn.id, text: "Invoke…",
          title: "Run it now with the data you give, whatever its triggers", onclick: () => openInvoke(fn) }))),
    h("dl", { class: "meta compact" },
      field("Triggers", h("ul", { class: "triggers" }, (fn.triggers || []).map(triggerItem))),
      field("Retries", `${fn.retries} (${fn.retries + 1} attempts per step)`),
      fn.cancel ? field("Cancel on", h("ul", { class: "triggers" }, fn.cancel.map((rule) => h("li", {},
        h("span", { class: "event-name", text: rule.event }), rule.if ? [" if ", mono(rule.if, { class: "expr" })] : null,
        h("span", { class: "muted", text: ` within ${seconds(rule.timeout_s)}` }))))) : null,
      fn.timeouts ? field("Timeouts", `start ${seconds(fn.timeouts.start)}, finish ${seconds(fn.timeouts.finish)}`) : null,
      field("Flow control", flow.length ? h("dl", { class: "settings" },
        flow.map((key) => [h("dt", { text: key }), h("dd", {}, setting(fn[key]))])) : h("span", { class: "muted", text: "none" })),
      other.map((key) => field(key, setting(fn[key])))));
}

function triggerItem(trigger) {
  if (trigger.cron) {
    return h("li", { class: "trigger" }, h("span", { class: "tag", text: "cron" }), mono(trigger.cron, { class: "expr" }),
      trigger.jitter_s ? h("span", { class: "muted", text: ` jitter ${seconds(trigger.jitter_s)}` }) : null,
      trigger.missed ? h("span", { class: "muted", text: ` · missed ticks: ${trigger.missed}` }) : null,
      trigger.next_at ? h("span", { class: "muted" }, " · next ", timeAgo(trigger.next_at)) : null);
  }
  if (trigger.event) {
    return h("li", { class: "trigger" }, h("span", { class: "tag", text: "event" }), h("span", { class: "event-name", text: trigger.event }),
      trigger.expression ? [" if ", mono(trigger.expression, { class: "expr" })] : null);
  }
  return h("li", { class: "trigger" }, mono(JSON.stringify(trigger)));
}

function setting(value) {
  if (Array.isArray(value)) return h("div", { class: "setting-list" }, value.map((item) => h("div", {}, setting(item))));
  if (value && typeof value === "object") {
    const parts = Object.entries(value).filter(([, item]) => item !== null && item !== undefined)
      .map(([key, item]) => `${key}=${typeof item === "object" ? JSON.stringify(item) : item}`);
    return mono(parts.join("  "), { class: "setting" });
  }
  return mono(String(value), { class: "setting" });
}

// -- the send dialog ----------------------------------------------------------------------------

function exampleEvent() {
  // the first plain event trigger, in the order the functions were defined
  const names = state.functions.flatMap((fn) => (fn.triggers || []).map((trigger) => trigger.event));
  const name = names.find((candidate) => candidate && !candidate.includes("*") && !candidate.startsWith("inngest/"));
  return { name: name || FALLBACK_EVENT, data: {} };
}

function openSend(event) {
  const dialog = document.getElementById("send-dialog");
  const body = document.getElementById("send-body");
  body.value = JSON.stringify(event || exampleEvent(), null, 2);
  document.getElementById("send-error").textContent = "";
  document.getElementById("send-submit").disabled = false;
  if (!dialog.open) dialog.showModal();
  body.focus();
}

async function submitSend(event) {
  await submitJsonDialog(event, "send", "/api/events", (answer) => {
    const started = answer.runs.length;
    toast(`Sent ${answer.ids.length === 1 ? "1 event" : `${answer.ids.length} events`}; ${started === 1 ? "1 run" : `${started} runs`} started. `,
      answer.runs.slice(0, 3).map((runId) => [idLink(`/runs/${encodeURIComponent(runId)}`, runId), " "]));
    refresh();
  });
}

// Posts a dialog's JSON (elements `<prefix>-body`, `-error`, `-submit`, `-dialog`); closes it and calls
// `done` with the answer, or shows what went wrong in the dialog, which stays open.
async function submitJsonDialog(event, prefix, path, done) {
  event.preventDefault();
  const error = document.getElementById(`${prefix}-error`);
  const submit = document.getElementById(`${prefix}-submit`);
  const text = document.getElementById(`${prefix}-body`).value;
  try {
    JSON.parse(text);
  } catch (problem) {
    error.textContent = `Not JSON: ${problem.message}`;
    return;
  }
  submit.disabled = true;
  error.textContent = "";
  try {
    const answer = await api(path, { method: "POST", body: text });
    document.getElementById(`${prefix}-dialog`).close();
    done(answer);
  } catch (problem) {
    error.textContent = problem.message;
  } finally {
    submit.disabled = false;
  }
}

function setUpSendDialog() {
  document.getElementById("send-open").addEventListener("click", () => openSend());
  document.getElementById("send-form").addEventListener("submit", submitSend);
  document.getElementById("send-cancel").addEventListener("click", () => document.getElementById("send-dialog").close());
  document.getElementById("send-body").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) submitSend(event);
  });
}

// -- the invoke dialog (built here: index.html has only the send dialog) ------------------------

function invokeDialog() {
  let dialog = document.getElementById("invoke-dialog");
  if (dialog) return dialog;
  const close = () => dialog.close();
  const body = h("textarea", { id: "invoke-body", class: "code-input", rows: 10, spellcheck: "false", autocomplete: "off",
    "aria-label": "Invoke JSON" });
  body.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) submitInvoke(event);
  });
  dialog = h("dialog", { id: "invoke-dialog", class: "dialog", "aria-labelledby": "invoke-title" },
    h("form", { id: "invoke-form", method: "dialog", onsubmit: submitInvoke },
      h("h2", { id: "invoke-title" }, "Invoke ", h("span", { id: "invoke-function", class: "mono" })),
      h("p", { class: "hint" }, "Runs the function now, whatever its triggers, with an ",
        h("code", { text: "inngest/function.invoked" }), " event whose ", h("code", { text: "data" }),
        " is the object you give."),
      body,
      h("p", { id: "invoke-error", class: "form-error", role: "alert" }),
      h("div", { class: "dialog-buttons" },
        h("span", { class: "hint" }, h("kbd", { text: "Ctrl" }), "+", h("kbd", { text: "Enter" }), " invokes, ",
          h("kbd", { text: "Esc" }), " closes"),
        h("button", { type: "button", class: "button", id: "invoke-cancel", text: "Cancel", onclick: close }),
        h("button", { type: "submit", class: "button primary", id: "invoke-submit", text: "Invoke" }))));
  document.body.append(dialog);
  return dialog;
}

function openInvoke(fn) {
  const dialog = invokeDialog();
  dialog.dataset.function = fn.id;
  document.getElementById("invoke-function").textContent = fn.name || fn.id;
  const body = document.getElementById("invoke-body");
  body.value = JSON.stringify({ data: {} }, null, 2);
  document.getElementById("invoke-error").textContent = "";
  document.getElementById("invoke-submit").disabled = false;
  if (!dialog.open) dialog.showModal();
  body.focus();
}

async function submitInvoke(event) {
  const fnId = document.getElementById("invoke-dialog").dataset.function;
  await submitJsonDialog(event, "invoke", `/api/functions/${encodeURIComponent(fnId)}/invoke`, (answer) => {
    if (answer.runs.length) {
      navigate(`/runs/${encodeURIComponent(answer.runs[0])}`);
    } else {
      toast(`Invoked ${fnId}; no run started (flow control held or skipped it).`);
      refresh();
    }
  });
}

// -- keyboard -----------------------------------------------------------------------------------

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (document.querySelector("dialog[open]")) return;
  const target = event.target;
  if (target.closest && target.closest("input, textarea, select, [contenteditable]")) {
    if (event.key === "Escape") target.blur();
    return;
  }
  if (event.key === "Enter" && target.closest && target.closest("a, button, summary")) return;
  const action = KEYS[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

const KEYS = {
  e: () => navigate("/events"),
  r: () => navigate("/runs"),
  f: () => navigate("/functions"),
  s: () => openSend(),
  "/": () => { const filter = document.querySelector("[data-filter]"); if (filter) filter.focus(); },
  j: () => moveSelection(1),
  k: () => moveSelection(-1),
  Enter: () => { const selected = document.querySelector("tr.selected"); if (selected) navigate(selected.dataset.href); },
  Backspace: () => { if (history.length > 1) history.back(); },
  "?": () => document.getElementById("help-dialog").showModal(),
};

function moveSelection(step) {
  const rows = document.querySelectorAll("#view-body tr.row");
  if (!rows.length) return;
  state.selected = Math.min(Math.max(state.selected + step, 0), rows.length - 1);
  markSelected();
  rows[state.selected].scrollIntoView({ block: "nearest" });
}

function markSelected() {
  document.querySelectorAll("#view-body tr.row").forEach((item, index) => item.classList.toggle("selected", index === state.selected));
}

// -- views --------------------------------------------------------------------------------------

const VIEWS = {
  events: {
    nav: "events", frame: eventsFrame, render: renderEvents, title: () => "Events",
    load: (view) => api(`/api/events${query({ name: view.query.name })}`),
  },
  event: {
    nav: "events", frame: () => [backLink("/events", "Events")], render: renderEvent, title: (view, event) => event.name,
    load: (view) => api(`/api/events/${encodeURIComponent(view.id)}`),
  },
  runs: {
    nav: "runs", frame: runsFrame, render: renderRuns, title: () => "Runs",
    load: (view) => api(`/api/runs${query({ function: view.query.function, status: view.query.status })}`),
  },
  run: {
    nav: "runs", frame: () => [backLink("/runs", "Runs")], render: renderRun, title: (view, detail) => `${detail.run.function_id} run`,
    load: (view) => api(`/api/runs/${encodeURIComponent(view.id)}`),
  },
  functions: {
    nav: "functions", frame: () => [header("Functions", h("p", { class: "sub", text: "Triggers, retries and flow control, as defined." }))],
    render: renderFunctions, title: () => "Functions", load: () => loadFunctions(),
  },
};

function backLink(href, label) {
  return h("div", { class: "crumbs" }, link(href, `← ${label}`));
}

async function loadFunctions() {
  state.functions = await api("/api/functions");
  return state.functions;
}

// -- start --------------------------------------------------------------------------------------

function onClick(event) {
  const anchor = event.target.closest && event.target.closest("a[data-link]");
  if (!anchor || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  const href = anchor.getAttribute("href");
  if (href !== location.pathname + location.search) navigate(href);
}

async function start() {
  document.addEventListener("click", onClick);
  document.addEventListener("keydown", onKey);
  window.addEventListener("popstate", showView);
  document.getElementById("help-open").addEventListener("click", () => document.getElementById("help-dialog").showModal());
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  setUpSendDialog();
  try {
    await loadFunctions();
  } catch {
    state.functions = [];
  }
  showView();
  setInterval(tickTimes, 5000);
  poll();
}

start();
