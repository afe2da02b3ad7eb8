// charlm serve: the page. Reads /api/checkpoint, streams /api/generate/stream into cards (cards.js), which
// become drafts (drafts.js); curves.js draws metrics.jsonl. No libraries, no network beyond this server.
"use strict";

const NUMERIC = ["temperature", "top_k", "top_p", "num_beams", "repetition_penalty", "length", "num_samples", "seed",
  "lines", "max_copy"];
const COMMON = ["repetition_penalty", "length", "num_samples", "lines", "max_copy"];
const SONG = ["line_lengths", "rhyme_scheme", "rhyme", "sections"];
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
  document.body.dataset.form = $("form_pick").value === "@lengths" ? "lengths" : "other";
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
  const final = info.val_ppl_recounted ? "final, recounted" : "best";
  $("ck-ppl").textContent = info.val_ppl == null ? "–"
    : `${info.val_ppl.toFixed(2)} (${final}` + (info.best_epoch ? `, epoch ${info.best_epoch})` : ")");
  $("ck-ppl").title = `validation perplexity, from the run's ${info.val_ppl_source || "checkpoint"}`;
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
  loadForms(info.forms || {});
  showStrategy();
  drawCurves(info.metrics || [], info.val_ppl == null ? null
    : { value: info.val_ppl, epoch: info.best_epoch, label: info.val_ppl_recounted ? "final (recounted)" : "best" });
}

function loadForms(forms) {
  Run.script = forms.script || null;
  Run.units = forms.units || "chars";
  const pick = $("form_pick");
  for (const f of forms.named || []) {
    const opt = document.createElement("option");
    opt.value = f.name;
    opt.textContent = `${f.name} · ${f.pattern}`;
    opt.title = `${f.pieces} pieces; rhyme ${f.rhyme}`;
    pick.appendChild(opt);
  }
  const list = $("rhyme-classes");
  list.replaceChildren(...(forms.classes || []).map((name) => Object.assign(document.createElement("option"), { value: name })));
  if (forms.scheme) $("rhyme_scheme").placeholder = `${forms.scheme} (corpus)`;
  if (!Run.script) $("rhyme").placeholder = "no rhyme data";
}

// --- generation --------------------------------------------------------------------------

// The fields of a generation as the page sends them (only those that apply), as text.
function params() {
  const strategy = $("strategy").value;
  const q = new URLSearchParams({ prefix: $("prefix").value, strategy, unknown: $("unknown").value });
  for (const name of FOR[strategy]) {
    const v = $(name).value.trim();
    if (v !== "") q.set(name, v);
  }
  const pick = $("form_pick").value;
  if (pick && pick !== "@lengths") q.set("form", pick);
  for (const name of SONG) {
    const v = $(name).value.trim();
    if (v !== "" && (name !== "line_lengths" || pick === "@lengths")) q.set(name, v);
  }
  return q;
}

function makeCards(n, prefix) {
  const box = $("samples");
  box.replaceChildren();
  box.style.setProperty("--cols", Math.min(n, 4));
  const cards = [];
  for (let i = 0; i < n; i++) {
    const node = Cards.blank(n > 1 ? `sample ${i + 1} of ${n}` : "sample");
    node.querySelector(".pfx").textContent = prefix;
    node.classList.add("busy");
    node.querySelectorAll(".card-tools button").forEach((b) => { b.disabled = true; });
    box.appendChild(node);
    cards.push({ node, gen: node.querySelector(".gen") });
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
  if (d.form && d.form.form) parts.push(`form ${d.form.form}`);
  if (d.sections) parts.push(`sections ${d.sections.join(",")}`);
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

// Stream one generation into new cards; each finished sample becomes a draft.
async function startGeneration(q) {
  if (running) running.abort();
  const controller = new AbortController();
  running = controller;
  const settings = Object.fromEntries(q.entries());
  $("go").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const t0 = performance.now();
  let cards = [], chars = 0;
  try {
    const res = await fetch("/api/generate/stream?" + q.toString(), { signal: controller.signal });
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
          const draft = Drafts.add((s.prefix != null ? s.prefix : data.prefix) + s.text, settings, data.decoding,
            { logprob: s.logprob, classes: s.classes, sections: s.form && s.form.sections });
          Cards.fill(cards[i].node, draft);
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

// --- wiring ------------------------------------------------------------------------------

$("form").addEventListener("submit", (ev) => { ev.preventDefault(); startGeneration(params()); });
$("stop").addEventListener("click", () => { if (running) running.abort(); });
$("strategy").addEventListener("change", showStrategy);
$("form_pick").addEventListener("change", showStrategy);
$("prefix").addEventListener("keydown", (ev) => {  // Ctrl+Enter generates; Enter alone starts a new line
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("form").requestSubmit(); }
});
showStrategy();
wireDrafts();
loadCheckpoint();
