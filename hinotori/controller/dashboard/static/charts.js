// Line charts drawn as inline SVG, one line per release.
//
// Why our own ~120 lines instead of a chart library: the dashboard must load nothing from the
// internet and have no build step, so a library would be a vendored, minified file of tens of
// kilobytes that nobody here reviews, for what is a handful of polylines, axes and a legend.

import { clock, releaseColour, releaseName, s } from "./dom.js";

// Drawn at about the size it is shown (half of a 1280-pixel page), so 10px labels stay 10px.
const W = 300, H = 120, PAD = { left: 50, right: 8, top: 8, bottom: 18 };

// series: [{release, points: [[t, value], ...]}]; format: value -> label text.
// minTop: the least top of the scale, so a flat zero line sits at the bottom of a sensible
// scale (0..1%) rather than of 0..100%.
export function lineChart({ title, series, format, start, end, id, minTop = 1 }) {
  const plotted = series.map((x) => ({ ...x, points: x.points.filter(([, v]) => Number.isFinite(v)) }))
    .filter((x) => x.points.length);
  const values = plotted.flatMap((x) => x.points.map(([, v]) => v));
  const top = niceCeiling(Math.max(minTop, ...values));
  const rows = Math.round(top / 10 ** Math.floor(Math.log10(top))) === 5 ? 5 : 4;
  const x0 = PAD.left, x1 = W - PAD.right, y0 = H - PAD.bottom, y1 = PAD.top;
  const span = Math.max(end - start, 1);
  const px = (t) => x0 + ((t - start) / span) * (x1 - x0);
  const py = (v) => y0 - (top ? v / top : 0) * (y0 - y1);

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                         "aria-label": title, "data-chart": id });
  for (let i = 0; i <= rows; i += 1) {  // horizontal grid with value labels
    const v = (top * i) / rows, y = py(v);
    svg.append(s("line", { x1: x0, x2: x1, y1: y, y2: y, class: i ? "grid" : "axis" }));
    svg.append(s("text", { x: x0 - 6, y: y + 4, class: "tick", "text-anchor": "end" }, format(v)));
  }
  for (let i = 0; i <= 2; i += 1) {  // time labels: start, middle, end (more would overlap)
    const t = start + (span * i) / 2;
    svg.append(s("text", { x: px(t), y: H - 4, class: "tick",
                           "text-anchor": ["start", "middle", "end"][i] },
                 clock(t, span < 1800)));
  }
  for (const x of plotted) {
    const colour = releaseColour(x.release);
    const d = x.points.map(([t, v], i) => `${i ? "L" : "M"}${px(t).toFixed(1)},${py(v).toFixed(1)}`)
      .join(" ");
    svg.append(s("path", { d, class: "line", stroke: colour,
                           "data-release": releaseName(x.release) }));
    if (x.points.length === 1) {  // a lone point would not show as a line
      const [t, v] = x.points[0];
      svg.append(s("circle", { cx: px(t), cy: py(v), r: 2.5, fill: colour }));
    }
    const [lt, lv] = x.points[x.points.length - 1];
    const last = s("circle", { cx: px(lt), cy: py(lv), r: 6, class: "hover" });
    last.append(s("title", {}, `${releaseName(x.release)} at ${clock(lt)}: ${format(lv)}`));
    svg.append(last);
  }
  if (!plotted.length) {
    svg.append(s("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, class: "empty",
                           "text-anchor": "middle" }, "no data in this window"));
  }
  return svg;
}

// The smallest 1, 2 or 5 times a power of ten at or above v, so the grid has round labels.
export function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * power >= v) return m * power;
  return 10 * power;
}
