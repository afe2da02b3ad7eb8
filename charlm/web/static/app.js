// charlm serve: the page. Reads /api/checkpoint, streams /api/generate/stream, draws metrics.jsonl as SVG.
// No libraries and no network beyond this server, so the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const NUMERIC = ["temperature", "top_k", "top_p", "num_beams", "repetition_penalty", "length", "num_samples", "seed",
  "lines", "max_copy"];
const COMMON = ["repetition_penalty", "length", "num_samples", "lines", "max_copy"];
const FOR = {  // which fields each strategy sends (the API refuses sampling fields with greedy, and so on)
  greedy: COMMON,
  sample: ["temperature", "top_k", "top_p", "seed", ...COMMON],
  beam: ["num_beams", ...COMMON],
};
let running = null;  // the AbortController of the generation in progress

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text || "";
  s.className = "status" + (kind ? " " + kind : "");
}

function showStrategy() {
  document.body.dataset.strategy = $("strategy").value;
}

// --- checkpoint panel and defaults -------------------------------------------------------

async function loadCheckpoint() {
  let info;
  try {
    const res = await fetch("/api/checkpoint");
    info = await res.json();
    if (!res.ok) throw new Error(info.error || res.statusText);
  } catch (e) {
    setStatus("cannot read the checkpoint: " + e.message, "error");
    return;
  }
  $("ck-name").textContent = info.name;
  const c = info.corpus || {};
  const src = c.source ? String(c.source).split("/").pop() : "?";
  $("ck-corpus").textContent = src + (c.chars ? ` (${c.chars.toLocaleString("en")} chars)` : "");
  $("ck-corpus").title = c.source || "";
  $("ck-model").textContent = `${info.model}; ${info.parameters.toLocaleString("en")} parameters, vocabulary ${info.vocab_size.toLocaleString("en")}`;
  $("ck-ppl").textContent = info.val_ppl == null ? "–"
    : `${info.val_ppl.toFixed(2)}` + (info.best_epoch ? ` (epoch ${info.best_epoch})` : "");
  const d = info.defaults || {};
  for (const name of NUMERIC) {
    if (d[name] !== undefined && d[name] !== null) $(name).value = d[name];
  }
  if (d.prefix && $("prefix").value === $("prefix").defaultValue) $("prefix").value = d.prefix;
  if (d.num_beams <= 1) $("num_beams").value = 4;  // the beam control shows a useful width when chosen
  if (d.strategy) $("strategy").value = d.strategy;
  const lim = info.limits || {};
  if (lim.length) $("length").max = lim.length;
  if (lim.num_samples) $("num_samples").max = lim.num_samples;
  if (lim.num_beams) $("num_beams").max = lim.num_beams;
  if (lim.prefix_chars) $("prefix").maxLength = lim.prefix_chars;
  if (lim.max_copy) $("max_copy").max = lim.max_copy;
  showStrategy();
  drawCurves(info.metrics || []);
}

// --- generation --------------------------------------------------------------------------

function params() {
  const strategy = $("strategy").value;
  const q = new URLSearchParams({ prefix: $("prefix").value, strategy, unknown: $("unknown").value });
  for (const name of FOR[strategy]) {
    const v = $(name).value.trim();
    if (v !== "") q.set(name, v);
  }
  return q;
}

function makeCards(n, prefix) {
  const box = $("samples");
  box.replaceChildren();
  box.style.setProperty("--cols", Math.min(n, 4));
  const cards = [];
  for (let i = 0; i < n; i++) {
    const node = $("sample-tpl").content.firstElementChild.cloneNode(true);
    node.querySelector(".label").textContent = n > 1 ? `sample ${i + 1} of ${n}` : "sample";
    node.querySelector(".pfx").textContent = prefix;
    node.classList.add("busy");
    const gen = node.querySelector(".gen");
    node.querySelector(".copy").addEventListener("click", (ev) => copyText(prefix + gen.textContent, ev.target));
    box.appendChild(node);
    cards.push({ node, gen, meta: node.querySelector(".meta") });
  }
  return cards;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // no clipboard API (e.g. plain http on another host): the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1200);
}

// The settings in words, e.g. "temperature=0.8+top-k=5, seed 7, copy guard 7".
function describe(d) {
  const parts = [d.label];
  if (d.strategy === "sample") parts.push(`seed ${d.seed}`);
  if (d.max_copy) parts.push(`copy guard ${d.max_copy}`);
  if (d.lines) parts.push(`${d.lines} lines`);
  return parts.join(", ");
}

// Read a text/event-stream body with fetch (EventSource cannot show a 400's error message).
async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
      }
      if (data) yield { event, data: JSON.parse(data) };
    }
  }
}

async function generate(ev) {
  ev.preventDefault();
  if (running) running.abort();
  const controller = new AbortController();
  running = controller;
  $("go").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const t0 = performance.now();
  let cards = [], chars = 0;
  try {
    const res = await fetch("/api/generate/stream?" + params().toString(), { signal: controller.signal });
    if (!res.ok) {
      const body = await res.json().catch(() => ({ error: res.statusText }));
      throw new Error(body.error || res.statusText);
    }
    for await (const { event, data } of readEvents(res)) {
      if (event === "start") {
        cards = makeCards(data.decoding.num_samples, data.prefix);
        const note = data.dropped && data.dropped.length ? ` (dropped unknown: ${data.dropped.join(" ")})` : "";
        setStatus(`generating with ${describe(data.decoding)}…${note}`);
      } else if (event === "message") {
        data.text.forEach((t, i) => { cards[i].gen.textContent += t; chars += t.length; });
      } else if (event === "end") {
        data.samples.forEach((s, i) => {
          cards[i].gen.textContent = s.text;  // the final text, whatever the stream showed
          cards[i].meta.textContent = `log-prob ${s.logprob.toFixed(1)}`;
          cards[i].node.classList.remove("busy");
        });
        const secs = (performance.now() - t0) / 1000;
        const warn = data.warnings && data.warnings.length ? ` (${data.warnings.join("; ")})` : "";
        setStatus(`${describe(data.decoding)}: ${chars} characters in ${secs.toFixed(2)} s${warn}`, "ok");
      } else if (event === "error") {
        throw new Error(data.error);
      }
    }
  } catch (e) {
    if (e.name === "AbortError") setStatus("stopped");
    else setStatus(e.message, "error");
  } finally {
    cards.forEach((c) => c.node.classList.remove("busy"));
    if (running === controller) running = null;
    $("go").disabled = false;
    $("stop").disabled = true;
  }
}

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

function drawCurves(metrics) {
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
    svg.appendChild(el("text", { x: lx + 28, y: ly, class: "legend" }, `${s.name} (last ${s.pts[s.pts.length - 1][1].toFixed(1)})`));
  });
  box.appendChild(svg);
}

// --- wiring ------------------------------------------------------------------------------

$("form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => { if (running) running.abort(); });
$("strategy").addEventListener("change", showStrategy);
showStrategy();
loadCheckpoint();
