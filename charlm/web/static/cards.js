// charlm serve: cards are drafts. Every line can be kept (locked), edited in place or rewritten with its
// constraints (its length and punctuation, its rhyme class) kept; "Continue" extends the edited text.
// A rewritten line is one request: the text above it is its context, the line a one-line form.
"use strict";

const Run = { script: null, units: "chars" };  // the run's rhyme script and line units (/api/checkpoint)
const SLOT_CHAR = /[\p{L}\p{N}]/u;  // what a template slot stands for (punctuation and spaces stay as they are)

function hueOf(cls) {
  let h = 0;
  for (const c of cls) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

// [start, end) of the line's rhyming unit: its last Han character, or its last English word.
function rhymeSpan(text) {
  const m = Run.script === "en" ? /[A-Za-z'’-]+(?=[^A-Za-z]*$)/.exec(text) : /\p{Script=Han}(?=\P{Script=Han}*$)/u.exec(text);
  return m ? [m.index, m.index + m[0].length] : null;
}

// The constraint a rewritten line keeps: its template (characters) or word count, and its rhyme.
function lineConstraint(line) {
  const c = {};
  if (Run.units === "words") {
    const words = line.text.split(/\s+/).filter((w) => /\p{L}/u.test(w)).length;
    if (!words) return null;
    c.line_lengths = [words];
  } else {
    const template = Array.from(line.text).map((ch) => (SLOT_CHAR.test(ch) ? "_" : ch)).join("");
    if (!template.includes("_")) return null;
    c.template = template.replace(/\s+$/, "");
  }
  if (line.cls) {
    const span = rhymeSpan(line.text);
    c.rhyme_scheme = "A";
    c.rhyme = Run.script === "en" && span ? line.text.slice(span[0], span[1]) : line.cls;
  }
  return c;
}

function decodingOf(settings) {  // a card's decoding settings, for rewriting or continuing it (a new seed each time)
  const keep = ["strategy", "temperature", "top_k", "top_p", "num_beams", "repetition_penalty", "max_copy", "unknown"];
  return Object.fromEntries(keep.filter((k) => settings[k] !== undefined && settings[k] !== "").map((k) => [k, settings[k]]));
}

const Cards = {
  // Cards for drafts already written (`prepend`: above those shown, else in their place).
  show(drafts, prepend) {
    const box = $("samples");
    if (!prepend) box.replaceChildren();
    for (const d of drafts.slice().reverse()) {
      const old = box.querySelector(`.sample[data-id="${d.id}"]`);
      if (old) old.remove();
      const node = this.blank(drafts.length > 1 ? "" : "draft");
      box.prepend(node);
      this.fill(node, d);
    }
    box.style.setProperty("--cols", Math.min(box.children.length, 4));
  },

  blank(label) {
    const node = $("sample-tpl").content.firstElementChild.cloneNode(true);
    node.querySelector(".label").textContent = label;
    return node;
  },

  // A draft's lines, each editable, with its keep and rewrite buttons and its rhyme marked.
  fill(node, draft) {
    node.dataset.id = draft.id;
    node.classList.remove("busy");
    node.querySelector(".text").hidden = true;
    const box = node.querySelector(".lines");
    box.hidden = false;
    box.replaceChildren();
    const names = (draft.sections || []).map((s) => s.name + (s.repeat ? " (again)" : ""));
    let section = 0;
    if (names.length) box.appendChild(this.sectionName(names[section++]));
    draft.lines.forEach((line, i) => {
      if (names.length && !line.text.trim() && section < names.length) {
        box.appendChild(this.sectionName(names[section++]));
        return;
      }
      box.appendChild(this.lineRow(node, draft, i));
    });
    node.dataset.text = Drafts.text(draft);
    const lp = draft.logprob != null ? `log-prob ${Number(draft.logprob).toFixed(1)}` : "";
    node.querySelector(".meta").textContent = [draft.seed != null ? `seed ${draft.seed}` : "", lp].filter(Boolean).join(" · ");
    node.querySelector(".meta").title = draft.label || "";
    this.refreshStar(draft);
    const tools = node.querySelector(".card-tools");
    tools.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    tools.onclick = (ev) => this.tool(ev, node, draft);
  },

  sectionName(name) {
    const row = document.createElement("div");
    row.className = "section-name";
    row.textContent = name;
    return row;
  },

  lineRow(node, draft, i) {
    const line = draft.lines[i];
    const row = document.createElement("div");
    row.className = "line" + (line.locked ? " locked" : "");
    row.dataset.index = i;
    const lock = document.createElement("button");
    lock.type = "button";
    lock.className = "lock";
    lock.textContent = "keep";
    lock.title = "keep this line: rewriting leaves it as it is";
    lock.setAttribute("aria-pressed", String(!!line.locked));
    lock.addEventListener("click", () => {
      line.locked = !line.locked;
      Drafts.save();
      this.fill(node, draft);
    });
    const txt = document.createElement("span");
    txt.className = "txt";
    txt.contentEditable = "plaintext-only";
    txt.spellcheck = false;
    txt.lang = Run.script === "en" ? "en" : "zh";
    this.markRhyme(txt, line);
    txt.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); txt.blur(); } });
    txt.addEventListener("blur", () => this.edited(node, draft, i, txt.textContent));
    const badge = document.createElement("span");
    badge.className = "rhyme";
    if (line.cls) {
      badge.textContent = line.cls;
      badge.title = `rhyme class ${line.cls}`;
      badge.style.setProperty("--hue", hueOf(line.cls));
    }
    const redo = document.createElement("button");
    redo.type = "button";
    redo.className = "regen";
    redo.textContent = "↻";
    redo.title = "rewrite this line (same length, punctuation and rhyme class)";
    redo.disabled = !!line.locked || !lineConstraint(line);
    redo.addEventListener("click", () => this.run(node, () => this.rewrite(draft, [i])));
    row.append(lock, txt, badge, redo);
    return row;
  },

  markRhyme(txt, line) {
    const span = line.cls ? rhymeSpan(line.text) : null;
    txt.replaceChildren();
    if (!span) { txt.textContent = line.text; return; }
    const mark = document.createElement("mark");
    mark.className = "rh";
    mark.textContent = line.text.slice(span[0], span[1]);
    mark.style.setProperty("--hue", hueOf(line.cls));
    mark.title = `rhyme class ${line.cls}`;
    txt.append(line.text.slice(0, span[0]), mark, line.text.slice(span[1]));
  },

  async edited(node, draft, i, text) {
    const line = draft.lines[i];
    text = text.replace(/\n/g, " ");
    if (text === line.text) return;
    line.text = text;
    line.cls = (await classesOf([text]))[0];
    Drafts.save();
    this.fill(node, draft);
  },

  // Rewrite lines `which` in order, each from the text above it (which includes lines rewritten before it).
  async rewrite(draft, which) {
    for (const i of which) {
      const line = draft.lines[i];
      const c = lineConstraint(line);
      if (line.locked || !c) continue;
      const above = draft.lines.slice(0, i).map((l) => l.text).join("\n");
      const body = { ...decodingOf(draft.settings), ...c, prefix: "", context: i ? above + "\n" : "", candidates: 4 };
      const data = await postGenerate(body);
      const s = data.samples[0];
      line.text = s.text.replace(/\n/g, " ");
      line.cls = (s.classes || [])[0] || null;
    }
  },

  async tool(ev, node, draft) {
    const b = ev.target.closest("button");
    if (!b) return;
    if (b.classList.contains("star")) {
      draft.starred = !draft.starred;
      Drafts.save();
      this.refreshStar(draft);
    } else if (b.classList.contains("copy")) {
      copyText(Drafts.text(draft), b);
    } else if (b.classList.contains("regen-all")) {
      await this.run(node, () => this.rewrite(draft, draft.lines.map((_, i) => i)));
    } else if (b.classList.contains("continue")) {
      await this.run(node, async () => {
        const body = { ...decodingOf(draft.settings), prefix: "", context: Drafts.text(draft) };
        const data = await postGenerate(body);
        const s = data.samples[0];
        const added = s.text.split("\n");
        const last = draft.lines[draft.lines.length - 1];
        last.text += added[0];
        last.cls = (await classesOf([last.text]))[0];
        draft.lines.push(...added.slice(1).map((t, k) => ({ text: t, locked: false, cls: (s.classes || [])[k + 1] || null })));
      });
    } else if (b.classList.contains("reproduce")) {
      startGeneration(new URLSearchParams(draft.settings));
    }
  },

  // Run one change of a draft (busy while it runs), then save and redraw it; errors go to the status line.
  async run(node, change) {
    const draft = Drafts.get(node.dataset.id);
    node.classList.add("busy");
    node.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    setStatus("rewriting…");
    try {
      await change();
      setStatus("done", "ok");
    } catch (e) {
      setStatus(e.message, "error");
    } finally {
      Drafts.save();
      this.fill(node, draft);
    }
  },

  refreshStar(draft) {
    const node = $("samples").querySelector(`.sample[data-id="${draft.id}"]`);
    if (!node) return;
    const star = node.querySelector(".star");
    star.textContent = draft.starred ? "★" : "☆";
    star.setAttribute("aria-pressed", String(!!draft.starred));
  },
};

async function classesOf(lines) {
  if (!Run.script) return lines.map(() => null);
  try {
    const res = await fetch("/api/rhymes", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ lines }) });
    const data = await res.json();
    return res.ok ? data.classes : lines.map(() => null);
  } catch (e) {
    return lines.map(() => null);
  }
}

async function postGenerate(body) {
  const clean = Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined && v !== null));
  for (const k of ["temperature", "top_k", "top_p", "num_beams", "repetition_penalty", "max_copy", "length", "lines",
    "num_samples", "seed", "candidates"]) {
    if (typeof clean[k] === "string") clean[k] = Number(clean[k]);
  }
  const res = await fetch("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(clean) });
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}
