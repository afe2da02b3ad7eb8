// charlm serve: the training curves, drawn as inline SVG from the run's metrics.jsonl (no chart library).
"use strict";

const $ = (id) => document.getElementById(id);  // shared by every script of the page
const SVG = "http://www.w3.org/2000/svg";

// --- training curves as inline SVG -------------------------------------------------------

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceTicks(lo, hi, log) {
  if (log) {
    const ticks = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
      }
    }
    return ticks.length >= 2 ? ticks : [lo, hi];
  }
  const step0 = (hi - lo) / 6 || 1;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(+v.toPrecision(6));
  return ticks;
}

function drawCurves(metrics, final) {
  const box = $("chart");
  box.replaceChildren();
  const rows = metrics.filter((r) => Number.isFinite(r.epoch));
  const series = [
    { key: "train_ppl", name: "train", cls: "train" },
    { key: "val_ppl", name: "validation", cls: "val" },
  ].map((s) => ({ ...s, pts: rows.filter((r) => Number.isFinite(r[s.key]) && r[s.key] > 0).map((r) => [r.epoch, r[s.key]]) }))
    .filter((s) => s.pts.length);
  if (!series.length) {
    box.textContent = "no metrics.jsonl for this run";
    return;
  }
  const W = 420, H = 190, m = { l: 46, r: 8, t: 8, b: 34 };
  const xs = series.flatMap((s) => s.pts.map((p) => p[0]));
  const ys = series.flatMap((s) => s.pts.map((p) => p[1]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  const log = y1 / y0 > 4;  // perplexities fall over orders of magnitude early in training
  if (y0 === y1) { y0 *= 0.9; y1 *= 1.1; }
  const f = log ? Math.log : (v) => v;
  const X = (v) => m.l + (v - x0) / (x1 - x0) * (W - m.l - m.r);
  const Y = (v) => H - m.b - (f(v) - f(y0)) / (f(y1) - f(y0)) * (H - m.t - m.b);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "curve-svg", preserveAspectRatio: "xMidYMid meet" });
  for (const t of niceTicks(y0, y1, log)) {
    svg.appendChild(el("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
    svg.appendChild(el("text", { x: m.l - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, t >= 1000 ? t.toExponential(0) : String(t)));
  }
  for (const t of niceTicks(x0, x1, false).filter(Number.isInteger)) {
    svg.appendChild(el("text", { x: X(t), y: H - m.b + 16, class: "tick", "text-anchor": "middle" }, String(t)));
  }
  svg.appendChild(el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
  svg.appendChild(el("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "axis" }));
  svg.appendChild(el("text", { x: (m.l + W - m.r) / 2, y: H - 6, class: "label", "text-anchor": "middle" }, "epoch"));
  svg.appendChild(el("text", { x: 14, y: (m.t + H - m.b) / 2, class: "label", "text-anchor": "middle",
    transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` }, "perplexity" + (log ? " (log scale)" : "")));
  series.forEach((s, i) => {
    const d = s.pts.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    svg.appendChild(el("path", { d, class: "line " + s.cls }));
    for (const p of s.pts.length <= 60 ? s.pts : []) {
      const dot = el("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.6, class: "dot " + s.cls });
      dot.appendChild(el("title", {}, `${s.name} epoch ${p[0]}: ${p[1].toFixed(2)}`));
      svg.appendChild(dot);
    }
    const lx = W - m.r - 140, ly = m.t + 12 + i * 16;
    svg.appendChild(el("line", { x1: lx, x2: lx + 22, y1: ly - 4, y2: ly - 4, class: "line " + s.cls }));
    svg.appendChild(el("text", { x: lx + 28, y: ly, class: "legend" }, `${s.name} per epoch`));
  });
  // the run's own figure (the header's): a recount after the last epoch is not a point of the curve
  if (final && Number.isFinite(final.value) && final.value >= y0 * 0.5) {
    const fx = X(Math.min(Math.max(final.epoch || x1, x0), x1)), fy = Math.max(m.t, Math.min(H - m.b, Y(final.value)));
    const mark = el("path", { d: `M${fx},${fy - 5}L${fx + 5},${fy}L${fx},${fy + 5}L${fx - 5},${fy}Z`, class: "final" });
    mark.appendChild(el("title", {}, `${final.label}: ${final.value.toFixed(2)}`));
    svg.appendChild(mark);
    const ly = m.t + 12 + series.length * 16, lx = W - m.r - 140;
    svg.appendChild(el("path", { d: `M${lx + 11},${ly - 9}L${lx + 16},${ly - 4}L${lx + 11},${ly + 1}L${lx + 6},${ly - 4}Z`, class: "final" }));
    svg.appendChild(el("text", { x: lx + 28, y: ly, class: "legend" }, `${final.label.split(" ")[0]} ${final.value.toFixed(2)}`));
  }
  box.appendChild(svg);
}

