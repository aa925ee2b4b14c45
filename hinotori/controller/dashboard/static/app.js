// The dashboard: polls the controller's JSON API and redraws each panel from what it returns.
// State lives in the controller; the page keeps only what the user chose (filters, which
// deployments are opened), so a reload or a second tab shows the same truth.

import { canOperate, hostActions, serviceActions, wireDialog } from "./actions.js";
import { get, Missing, signIn, SignedOut } from "./api.js";
import { lineChart } from "./charts.js";
import { collapseChecks, trafficSplit } from "./derive.js";
import {
  ago, clock, h, number, percent, releaseColour, releaseName, releaseTag,
} from "./dom.js";

const FAST_MS = 1000;  // status, hosts, deployments, events
const SLOW_MS = 5000;  // metric history: 10 s points at best, no need to ask more often

const ui = {
  opened: new Set(),     // deployment ids the user opened
  closed: new Set(),     // ... or closed (the newest one opens by itself)
  services: [],
  logNext: 0,
  logQuery: null,
  logAsked: 0,           // bumped by each search: an answer to an older one is dropped
  deployments: [],
  deploymentsShown: "",
  servicesShown: "",
  hostsShown: "",
  chartsAsked: false,
  stopped: false,
};

const $ = (id) => document.getElementById(id);

main();

async function main() {
  try {
    await signIn();
  } catch (e) {
    return showSignIn(e);
  }
  $("board").hidden = false;
  if (canOperate()) {
    document.body.classList.add("operate");
    wireDialog();
  }
  $("log-search").addEventListener("submit", (ev) => { ev.preventDefault(); searchLogs(true); });
  $("log-search").elements.follow.addEventListener("change", (ev) => {
    if (ev.target.checked && !ui.logQuery) searchLogs(true);  // follow what the form says
    else showLogStatus();
  });
  searchLogs(true);  // the newest lines at once, followed (the form's defaults), like tail -f
  $("events-filter").addEventListener("input", () => renderEvents(ui.events));
  for (const id of ["metrics-service", "metrics-since"]) {
    $(id).addEventListener("change", () => refreshMetrics());
  }
  loop(refresh, FAST_MS);
  loop(refreshMetrics, SLOW_MS);
  loop(followLogs, FAST_MS);
}

function showSignIn(error) {
  ui.stopped = true;
  $("board").hidden = true;
  $("signin").hidden = false;
  $("signin-reason").textContent = error instanceof SignedOut ? error.message : String(error);
  $("controller").textContent = "";
  setLive("signed-out", "signed out");
}

// Run `task` now and then every `ms` after it finishes: a slow controller is never asked
// twice at once.
async function loop(task, ms) {
  while (!ui.stopped) {
    try {
      await task();
    } catch (e) {
      if (e instanceof SignedOut) return showSignIn(e);
      setLive("stale", `controller not answering: ${e.message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, ms));
  }
}

function setLive(state, text) {
  $("live").dataset.state = state;
  $("live").querySelector(".text").textContent = text;
}

// -- fast: services, traffic split, hosts, deployments, events ------------------------------

async function refresh() {
  const [status, hosts, deployments, events] = await Promise.all([
    get("/v1/status"), get("/v1/hosts"), get("/v1/deployments", { limit: 8, last_steps: 200 }),
    get("/v1/events", { limit: 200 }).then((answer) => answer.events)
      .catch((e) => (e instanceof Missing ? null : Promise.reject(e))),
  ]);
  const now = Date.now() / 1000;
  $("controller").textContent = `controller ${status.version} · pid ${status.pid} · up `
    + `${ago(status.uptime_s)} · router ${status.router}`;
  ui.services = status.services.map((x) => x.name);
  fillServiceSelects();
  if (!ui.chartsAsked && ui.services.length) {  // the first charts need not wait for SLOW_MS
    ui.chartsAsked = true;
    refreshMetrics().catch(() => {});
  }
  renderServices(status.services, hosts, deployments);
  renderHosts(hosts, now);
  renderDeployments(deployments, now);
  ui.events = events;
  renderEvents(events);
  setLive("live", `live · ${clock(now)}`);
}

function renderServices(services, hosts, deployments) {
  // Redrawn only when something shown changed: buttons redrawn under the pointer every second
  // would swallow clicks.
  const shown = JSON.stringify([services, services.map((svc) => trafficSplit(hosts, svc.name)),
                                deployments.filter((d) => !d.ended_at)]);
  if (shown === ui.servicesShown) return;
  ui.servicesShown = shown;
  const operate = canOperate();
  const cards = services.map((svc) => {
    const split = trafficSplit(hosts, svc.name);
    const running = deployments.find((d) => d.service === svc.name && d.state === "running");
    const active = deployments.find((d) => d.service === svc.name && !d.ended_at);
    const held = deployments.find((d) => d.service === svc.name && d.state === "held");
    const counts = Object.entries(svc.hosts).sort()
      .map(([state, n]) => h("span", { class: `state s-${state}` }, `${state} ${n}`));
    return h("article", { class: "service", "data-service": svc.name },
      h("header", {},
        h("span", { class: "name" }, svc.name),
        running ? h("span", { class: "badge running", "data-deploying": running.id },
          `deploying ${releaseName(running.from_release)} → ${releaseName(running.to_release)}`
          + ` (${running.strategy}${canaryWeight(running)})`) : null,
        svc.maintenance ? h("span", { class: "badge maintenance", "data-maintenance": "on",
                                      title: svc.maintenance.message },
          `maintenance · 503, retry after ${ago(svc.maintenance.retry_after)}`) : null,
        held ? h("span", { class: "badge held", "data-held": held.id },
          `held ${held.hold.release}: preview only`) : null,
        svc.locked_by ? h("span", { class: "muted" }, `lock: ${svc.locked_by}`) : null),
      h("dl", { class: "releases" },
        h("dt", {}, "current"), h("dd", { class: "current" }, releaseTag(svc.current)),
        h("dt", {}, "previous"), h("dd", { class: "previous" }, releaseTag(svc.previous)),
        h("dt", {}, "newest"), h("dd", { class: "latest" }, releaseTag(svc.latest)),
        h("dt", {}, "replicas"), h("dd", {}, String(svc.replicas))),
      h("div", { class: "split", "aria-label": "traffic split" },
        split.length ? split.map((part) => {
          const seg = h("div", { class: "seg", "data-release": releaseName(part.release),
                                 "data-share": Math.round(part.share),
                                 title: `${releaseName(part.release)}: ${number(part.share, 1)}%` },
            `${releaseName(part.release)} ${number(part.share, 1)}%`);
          seg.style.width = `${part.share}%`;
          seg.style.background = releaseColour(part.release);
          return seg;
        }) : h("div", { class: "seg none" }, "no traffic: nothing serves")),
      h("div", { class: "counts" }, counts.length ? counts : h("span", { class: "muted" }, "no hosts")),
      operate ? serviceActions(svc, active) : null);
  });
  $("services").replaceChildren(...(cards.length ? cards : [h("p", { class: "muted" }, "no services")]));
}

function canaryWeight(dep) {
  const step = [...dep.steps].reverse().find((x) => x.step === "step");
  return step ? ` at ${step.weight}%` : "";
}

const STATE_ORDER = ["serving", "ready", "verifying", "booting", "draining", "warm", "failed"];

function renderHosts(hosts, now) {
  // Ages tick, so redraw at most every 5 s unless the hosts themselves changed (clicks).
  const shown = JSON.stringify([hosts, Math.floor(now / 5)]);
  if (shown === ui.hostsShown) return;
  ui.hostsShown = shown;
  const operate = canOperate();
  const rows = [...hosts].sort((a, b) => a.service.localeCompare(b.service)
    || STATE_ORDER.indexOf(a.state) - STATE_ORDER.indexOf(b.state) || a.born_at - b.born_at)
    .map((host) => h("tr", { "data-host": host.id, "data-state": host.state },
      h("td", { class: "mono" }, host.id),
      h("td", {}, host.service),
      h("td", {}, releaseTag(host.release)),
      h("td", {}, h("span", { class: `state s-${host.state}` }, host.state),
        host.state === "warm" && host.warm_until
          ? h("span", { class: "muted" }, ` for ${ago(host.warm_until - now)}`) : null),
      h("td", {}, host.state === "serving" ? String(host.weight) : "—"),
      h("td", { class: "age" }, ago(now - host.born_at)),
      h("td", { class: "mono muted" }, host.address || "—"),
      operate ? hostActions(host) : null));
  $("hosts").tBodies[0].replaceChildren(...(rows.length ? rows
    : [h("tr", {}, h("td", { colspan: operate ? 8 : 7, class: "muted" }, "no live hosts"))]));
}

function renderDeployments(deployments, now) {
  // Redraw only when something shown changed (a running one's clock ticks every second):
  // a list redrawn under the pointer every second would swallow clicks.
  const running = deployments.some((d) => d.state === "running" || d.state === "held");
  const shown = JSON.stringify([deployments, [...ui.opened], [...ui.closed],
                                running ? Math.floor(now) : 0]);
  ui.deployments = deployments;
  if (shown === ui.deploymentsShown) return;
  ui.deploymentsShown = shown;
  const newest = deployments.length ? deployments[deployments.length - 1].id : null;
  const items = [...deployments].reverse().map((dep) => {
    const open = ui.opened.has(dep.id) || (dep.id === newest && !ui.closed.has(dep.id));
    const took = (dep.ended_at || now) - dep.started_at;
    const item = h("li", { class: `deployment ${open ? "open" : ""}`, "data-deployment": dep.id,
                           "data-state": dep.state },
      h("button", { class: "summary", type: "button", "aria-expanded": String(open),
                    onclick: () => toggle(dep.id, open) },
        h("span", { class: "id" }, `#${dep.id}`),
        h("span", { class: "svc" }, dep.service),
        h("span", { class: "kind" }, dep.kind === "deploy" ? dep.strategy : `${dep.kind} (${dep.strategy})`),
        h("span", {}, releaseTag(dep.from_release), " → ", releaseTag(dep.to_release)),
        h("span", { class: `badge ${dep.state}` }, dep.state),
        h("span", { class: "muted when" }, `${clock(dep.started_at)} · ${ago(took)}`)),
      dep.error ? h("div", { class: "error" }, dep.error) : null,
      dep.state === "held" && dep.hold ? holdPanel(dep.hold, now) : null,
      open ? h("ol", { class: "steps" }, collapseChecks(dep.steps).map((step) => renderStep(step, dep)))
        : null);
    return item;
  });
  $("deployments").replaceChildren(...(items.length ? [h("ol", { class: "timeline" }, items)]
    : [h("p", { class: "muted" }, "no deployments yet: `hinotori deploy SERVICE`")]));
}

// A held deployment (`deploy --hold`): where its preview answers and until when.
function holdPanel(hold, now) {
  const until = hold.expires_at == null ? "until promoted or aborted"
    : `until ${clock(hold.expires_at)} (${ago(Math.max(0, hold.expires_at - now))} left)`;
  return h("div", { class: "hold", "data-hold": hold.release },
    h("div", {}, "preview: ", hold.preview ? h("span", { class: "mono preview" }, hold.preview) : null,
      hold.preview ? " or " : "", h("span", { class: "mono" }, `${hold.header}`),
      ` on ${hold.router}`),
    h("div", { class: "expiry" }, `held ${until}: hinotori promote | abort`));
}

function toggle(id, open) {
  (open ? ui.closed : ui.opened).add(id);
  (open ? ui.opened : ui.closed).delete(id);
  renderDeployments(ui.deployments, Date.now() / 1000);
}

function renderStep(step, dep) {
  const at = `+${number(step.ts - dep.started_at, 1)}s`;
  let what;
  let verdict = null;
  switch (step.step) {
    case "boot": what = `boot ${step.replicas} × ${step.release}`; break;
    case "host.booted": what = `host ${step.host} booted at ${step.address}`; break;
    case "host.ready": what = `host ${step.host} healthy`; break;
    case "host.failed": what = `host ${step.host} failed: ${step.detail}`; break;
    case "step": what = `canary gets ${step.weight}% of traffic (switch ${number(step.switch_ms)} ms)`; break;
    case "analysis":
      verdict = step.outcome;
      what = `analysis at ${step.weight}% after ${number(step.elapsed_s, 1)}s`
        + `${step.checks ? ` (${step.checks} checks)` : ""}`
        + `${step.paused ? " (paused)" : ""}: ${(step.reasons || []).join("; ") || "within thresholds"}`;
      break;
    case "switched": what = `all traffic to ${step.release} (switch ${number(step.switch_ms)} ms)`; break;
    case "promoted": what = `${step.release} promoted to 100% (switch ${number(step.switch_ms)} ms)`; break;
    case "rolled-back": what = `rolled back to stable in ${number(step.back_ms)} ms`; break;
    case "drained": what = `drained ${(step.hosts || []).length} host(s) in ${number(step.drain_s)} s`; break;
    case "note": what = step.text; break;
    case "preview": what = `${step.release} routed for preview only (switch ${number(step.switch_ms)} ms)`; break;
    case "held": what = `held: preview ${step.preview || step.header}`; break;
    case "hook": what = `hook ${step.hook} exited ${step.rc}`; break;
    default: what = `${step.step} ${describe(step)}`;
  }
  return h("li", { class: `step k-${step.step}`, "data-step": step.step },
    h("span", { class: "at muted" }, at),
    verdict ? h("span", { class: `verdict v-${verdict}`, "data-verdict": verdict }, verdict) : null,
    h("span", { class: "what" }, what),
    step.step === "analysis" && step.metrics ? analysisMetrics(step.metrics) : null);
}

function describe(step) {
  return Object.entries(step).filter(([k]) => !["ts", "step"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
}

function analysisMetrics(m) {
  const row = (side) => h("tr", {},
    h("th", {}, side),
    h("td", {}, number(m[`${side}_requests`], 0)),
    h("td", {}, percent(m[`${side}_error_rate`])),
    h("td", {}, m[`${side}_p95_ms`] == null ? "—" : `${number(m[`${side}_p95_ms`])} ms`),
    h("td", {}, m[`${side}_p99_ms`] == null ? "—" : `${number(m[`${side}_p99_ms`])} ms`));
  return h("table", { class: "judged" },
    h("thead", {}, h("tr", {}, ["", "requests", "errors", "p95", "p99"].map((x) => h("th", {}, x)))),
    h("tbody", {}, row("canary"), row("stable")));
}

function renderEvents(events) {
  if (events === null) {
    $("events").replaceChildren(h("li", { class: "muted" }, "this controller serves no /v1/events"));
    return;
  }
  if (!events) return;
  const filter = $("events-filter").value.trim().toLowerCase();
  const shown = [...events].reverse().filter((e) => !filter
    || `${e.subject} ${e.action} ${e.actor}`.toLowerCase().includes(filter)).slice(0, 100);
  $("events").replaceChildren(...shown.map((e) => h("li", { "data-action": e.action },
    h("span", { class: "at muted" }, clock(e.ts)),
    h("span", { class: "actor" }, e.actor),
    h("span", { class: "action" }, e.action),
    h("span", { class: "subject" }, e.subject),
    h("span", { class: "detail muted" }, eventDetail(e.detail)))));
}

function eventDetail(detail) {
  if (!detail || typeof detail !== "object") return "";
  const why = detail.why || detail.reason;
  const rest = Object.entries(detail).filter(([k]) => k !== "why" && k !== "reason")
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  return why ? `${why}${rest ? ` · ${rest}` : ""}` : rest;
}

function fillServiceSelects() {
  for (const select of [$("metrics-service"), document.querySelector("#log-search [name=service]")]) {
    const keep = select.value;
    const have = [...select.options].map((o) => o.value).filter(Boolean);
    if (have.join() === ui.services.join()) continue;
    const anyOption = select.id === "metrics-service" ? [] : [h("option", { value: "" }, "any service")];
    select.replaceChildren(...anyOption, ...ui.services.map((name) => h("option", { value: name }, name)));
    if (keep && ui.services.includes(keep)) select.value = keep;
  }
}

// -- slow: metric history -------------------------------------------------------------------

const CHARTS = [
  { id: "rps", title: "requests / s", value: (p) => p.rps, format: (v) => number(v, 1) },
  { id: "error_rate", title: "error rate", value: (p) => p.error_rate, format: (v) => percent(v, 2),
    minTop: 0.01 },
  { id: "p99_ms", title: "p99 latency", value: (p) => p.p99_ms, format: (v) => `${number(v, 1)} ms` },
  { id: "cpu", title: "CPU (% of one core)", value: (p) => p.cpu ?? p.cpu_percent,
    format: (v) => `${number(v, 1)}%` },
  // In MiB, so the grid's round numbers are round to a reader too.
  { id: "memory_bytes", title: "memory", value: (p) => p.memory_bytes / 2 ** 20,
    format: (v) => `${number(v, 1)} MiB` },
];

async function refreshMetrics() {
  const service = $("metrics-service").value || ui.services[0];
  if (!service) return;
  const since = $("metrics-since").value;
  let history;
  try {
    history = await get("/v1/metrics/history", { service, since });
  } catch (e) {
    if (!(e instanceof Missing)) throw e;
    $("metrics-note").hidden = false;
    $("metrics-note").textContent = "This controller serves no metric history (/v1/metrics/history).";
    $("charts").replaceChildren();
    return;
  }
  $("metrics-note").hidden = true;
  const byRelease = new Map();
  for (const point of history.points) {
    const key = releaseName(point.release);
    if (!byRelease.has(key)) byRelease.set(key, []);
    byRelease.get(key).push(point);
  }
  // The window asked for, or less when the history is younger: a project started a minute
  // ago gets a minute wide chart, not a line squeezed against the right edge.
  const end = Date.now() / 1000;
  const first = Math.min(end, ...history.points.map((p) => p.t));
  const start = Math.min(Math.max(end - windowSeconds(since), first), end - 60);
  const figures = CHARTS.map((chart) => {
    const series = [...byRelease.entries()].map(([release, points]) => ({
      release, points: points.map((p) => [p.t, numeric(chart.value(p))]) }));
    return h("figure", { class: "chart-box" },
      h("figcaption", {}, chart.title,
        history.resolution ? h("span", { class: "muted" }, ` · ${history.resolution} points`) : null),
      lineChart({ title: chart.title, series, format: chart.format, start, end, id: chart.id,
                  minTop: chart.minTop }));
  });
  const legend = h("div", { class: "legend" }, [...byRelease.keys()].map((r) => releaseTag(r)));
  $("charts").replaceChildren(legend, ...figures);
}

function numeric(v) {
  return v === null || v === undefined ? NaN : Number(v);
}

function windowSeconds(text) {
  const m = /^(\d+)([smhd])$/.exec(text || "1h");
  return m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] : 3600;
}

// -- logs -----------------------------------------------------------------------------------

async function searchLogs(fresh) {
  const form = new FormData($("log-search"));
  const query = {
    service: form.get("service"), release: form.get("release").trim(),
    host: form.get("host").trim(), grep: form.get("grep").trim(), since: form.get("since"),
  };
  ui.logQuery = query;
  const asked = ++ui.logAsked;
  $("log-status").textContent = "searching…";
  try {
    const found = await get("/v1/logs", { ...query, limit: LOG_LIMIT });
    if (asked !== ui.logAsked) return;  // a newer search was sent meanwhile
    ui.logNext = found.next;
    showLogLines(found.lines, fresh);
  } catch (e) {
    if (e instanceof SignedOut) return showSignIn(e);
    $("log-status").textContent = e instanceof Missing
      ? "This controller serves no log search (/v1/logs)." : `search failed: ${e.message}`;
  }
}

async function followLogs() {
  const form = $("log-search");
  if (!ui.logQuery || !form.elements.follow.checked) return;
  const asked = ui.logAsked, after = ui.logNext;
  const found = await get("/v1/logs", { ...ui.logQuery, after, limit: LOG_LIMIT });
  // A search sent or answered while this was on its way owns the panel (and the cursor).
  if (asked !== ui.logAsked || after !== ui.logNext) return;
  ui.logNext = found.next;
  if (found.lines.length) showLogLines(found.lines, false);
}

const LOG_LIMIT = 500;  // lines per answer: the newest ones on open and per search
const MAX_LINES = 2000;

function showLogLines(lines, fresh) {
  const box = $("log-lines");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 20;
  const rows = lines.map((ln) => h("div", { class: "logline", "data-id": ln.id },
    h("span", { class: "at muted" }, clock(ln.ts)),
    releaseTag(ln.release),
    h("span", { class: "host mono muted", title: `${ln.service} · ${ln.source}` }, ln.host),
    h("span", { class: "text" }, ln.line)));
  if (fresh) box.replaceChildren(...rows);
  else box.append(...rows.filter((row) =>  // a line is shown once, however answers overlap
    !box.querySelector(`.logline[data-id="${row.dataset.id}"]`)));
  while (box.childElementCount > MAX_LINES) box.firstElementChild.remove();
  showLogStatus();
  if (fresh || atBottom) box.scrollTop = box.scrollHeight;
}

function showLogStatus() {
  if (!ui.logQuery) return;
  const count = $("log-lines").childElementCount;
  const following = $("log-search").elements.follow.checked ? " · following" : "";
  $("log-status").textContent = (count ? `${count} line${count === 1 ? "" : "s"}, newest last`
    : "no matching lines yet") + following;
}
