// charlm serve: drafts kept in this browser (localStorage): a history of cards with their settings and seed,
// starred ones kept, exported as text or JSON and imported again.
"use strict";

const DRAFTS_KEY = "charlm.drafts.v1";
const MAX_DRAFTS = 200;  // unstarred drafts beyond this are forgotten, oldest first

const Drafts = {
  list: [],

  load() {
    try {
      const saved = JSON.parse(localStorage.getItem(DRAFTS_KEY) || "[]");
      this.list = Array.isArray(saved) ? saved.filter((d) => d && Array.isArray(d.lines)) : [];
    } catch (e) {
      this.list = [];  // a damaged store must not break the page
    }
  },

  save() {
    let kept = this.list;
    while (kept.length > MAX_DRAFTS) {
      const i = kept.map((d) => !!d.starred).lastIndexOf(false);
      if (i < 0) break;
      kept.splice(i, 1);
    }
    try {
      localStorage.setItem(DRAFTS_KEY, JSON.stringify(kept));
    } catch (e) {
      setStatus("drafts could not be saved in this browser: " + e.message, "error");
    }
    renderHistory();
  },

  // A new draft from a finished sample: its lines, the settings that wrote it and its seed.
  add(text, settings, decoding, extra) {
    const draft = {
      id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 7)}`,
      created: new Date().toISOString(),
      settings: { ...settings, seed: decoding.seed != null ? String(decoding.seed) : settings.seed },
      label: decoding.label || "",
      seed: decoding.seed,
      starred: false,
      logprob: extra.logprob,
      sections: extra.sections || null,
      lines: text.split("\n").map((t, i) => ({ text: t, locked: false, cls: (extra.classes || [])[i] || null })),
    };
    this.list.unshift(draft);
    this.save();
    return draft;
  },

  get(id) { return this.list.find((d) => d.id === id); },

  text(draft) { return draft.lines.map((l) => l.text).join("\n"); },

  chosen() { return $("only-starred").checked ? this.list.filter((d) => d.starred) : this.list; },

  exportText() {
    return this.chosen().map((d) => `# ${d.created} · ${d.label}${d.seed != null ? ", seed " + d.seed : ""}\n` +
      this.text(d)).join("\n\n\n");
  },

  exportJson() {
    return JSON.stringify({ format: "charlm-drafts", version: 1, drafts: this.chosen() }, null, 1);
  },

  // Drafts from an export (a draft already here, by id, is replaced); returns how many were read.
  importJson(text) {
    const data = JSON.parse(text);
    const incoming = Array.isArray(data) ? data : data && data.drafts;
    if (!Array.isArray(incoming)) throw new Error("not a drafts export (no \"drafts\" list)");
    const good = incoming.filter((d) => d && typeof d.id === "string" && Array.isArray(d.lines) &&
      d.lines.every((l) => l && typeof l.text === "string"));
    if (!good.length) throw new Error("the export holds no drafts");
    for (const d of good.reverse()) {
      this.list = this.list.filter((x) => x.id !== d.id);
      this.list.unshift({ ...d, lines: d.lines.map((l) => ({ text: l.text, locked: !!l.locked, cls: l.cls || null })) });
    }
    this.save();
    return good.length;
  },
};

function renderHistory() {
  const box = $("history-list");
  box.replaceChildren();
  for (const d of Drafts.list) {
    const li = document.createElement("li");
    li.dataset.id = d.id;
    if (d.starred) li.classList.add("starred");
    const star = document.createElement("button");
    star.type = "button";
    star.className = "star";
    star.textContent = d.starred ? "★" : "☆";
    star.title = "star: keep this draft";
    star.setAttribute("aria-pressed", String(!!d.starred));
    star.addEventListener("click", () => { d.starred = !d.starred; Drafts.save(); Cards.refreshStar(d); });
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = (d.lines.find((l) => l.text.trim()) || { text: "(empty)" }).text.slice(0, 40);
    open.title = "open this draft";
    open.addEventListener("click", () => Cards.show([d], true));
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${d.created.slice(5, 16).replace("T", " ")} · ${d.label}` + (d.seed != null ? ` · seed ${d.seed}` : "");
    li.append(star, open, meta);
    box.appendChild(li);
  }
}

function showPort(text, kind) {
  $("port").hidden = false;
  $("port-text").value = text;
  const type = kind === "json" ? "application/json" : "text/plain";
  const link = $("port-download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([text], { type: type + ";charset=utf-8" }));
  link.download = kind === "json" ? "charlm-drafts.json" : "charlm-drafts.txt";
  link.hidden = !text;
}

function wireDrafts() {
  $("export-text").addEventListener("click", () => showPort(Drafts.exportText(), "text"));
  $("export-json").addEventListener("click", () => showPort(Drafts.exportJson(), "json"));
  $("import-open").addEventListener("click", () => showPort("", "json"));
  $("port-close").addEventListener("click", () => { $("port").hidden = true; });
  $("only-starred").addEventListener("change", renderHistory);
  $("import-go").addEventListener("click", () => {
    try {
      const n = Drafts.importJson($("port-text").value);
      setStatus(`imported ${n} draft${n === 1 ? "" : "s"}`, "ok");
    } catch (e) {
      setStatus("cannot import: " + e.message, "error");
    }
  });
  $("import-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    if (file) $("port-text").value = await file.text();
  });
  Drafts.load();
  renderHistory();
}
