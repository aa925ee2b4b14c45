// Small DOM and formatting helpers. Every piece of data reaches the page as a text node or an
// attribute value, never as HTML: log lines and event details come from hosts and users.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Release colours: one per release number, the same in the traffic bar, the charts and the
// tables, so "v7" has one colour everywhere on the page.
const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04",
                 "#4b5563"];

export function releaseName(r) {
  if (r === null || r === undefined || r === "") return "—";
  return typeof r === "number" || /^\d+$/.test(String(r)) ? `v${r}` : String(r);
}

export function releaseColour(r) {
  const n = parseInt(String(r).replace(/^v/, ""), 10);
  return Number.isFinite(n) ? PALETTE[(n - 1 + PALETTE.length) % PALETTE.length] : "#6b7280";
}

export function releaseTag(r) {
  const name = releaseName(r);
  const tag = h("span", { class: "rel", "data-release": name }, name);
  if (name !== "—") tag.style.setProperty("--c", releaseColour(name));
  return tag;
}

export function ago(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  const t = Math.max(0, Math.round(seconds));
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m ${String(t % 60).padStart(2, "0")}s`;
  if (t < 86400) return `${Math.floor(t / 3600)}h ${String(Math.floor(t / 60) % 60).padStart(2, "0")}m`;
  return `${Math.floor(t / 86400)}d ${Math.floor(t / 3600) % 24}h`;
}

export function clock(epochSeconds, withSeconds = true) {
  const d = new Date(epochSeconds * 1000);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}${withSeconds ? ":" + two(d.getSeconds()) : ""}`;
}

export function number(n, digits = 2) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "—";
  const v = Number(n);
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
  return String(Number(v.toFixed(digits)));
}

export function percent(fraction, digits = 2) {
  return fraction === null || fraction === undefined ? "—" : `${number(fraction * 100, digits)}%`;
}
