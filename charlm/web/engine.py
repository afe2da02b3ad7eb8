"""The model behind `charlm serve`: one checkpoint loaded once and shared by every request (see docs/serve.md).

Generation runs in one batched decoding loop (web/batcher.py) and, for beam search, beside it; the model
is called behind a lock held for one call, so the n-gram models' caches are never updated by two at once.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, fields
from pathlib import Path

import torch

from charlm import defaults
from charlm.errors import CharlmError
from charlm.generate.copyguard import guard_for_run
from charlm.generate.decode import Sample
from charlm.generate.request import GenerationRequest, run_request
from charlm.generate.sampling import Decoding
from charlm.run.checkpoint import default_prefixes, open_checkpoint, training_corpus
from charlm.run.metrics import read_metrics, read_summary
from charlm.generate.copyguard import run_max_copy
from charlm.web.fields import FIELDS, RequestLimits


class _OneCallAtATime(torch.nn.Module):
    """The model behind a lock held for one forward call (one step), so requests interleave step by step.

    Needed because the n-gram models keep a Python-side cache that two threads must not update at once;
    the recurrent nets alone would not need it, and the lock costs them nothing measurable (docs/serve.md).
    """

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self._lock = threading.Lock()

    def forward(self, X, state):
        with self._lock:
            return self.inner(X, state)

    def begin_state(self, batch_size, device=None):
        return self.inner.begin_state(batch_size, device)


class Engine:
    """One checkpoint loaded once and shared by every request: generate, and describe the run."""

    def __init__(self, path: str | Path | None, device="cpu"):
        opened = open_checkpoint(path, device)
        self.path, self.vocab, self.config, payload, model = (opened.path, opened.vocab, opened.config,
                                                              opened.payload, opened.model)
        self.model = _OneCallAtATime(model).eval()
        self.device = torch.device(device)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.payload_meta = {k: payload.get(k) for k in ("corpus", "epoch", "best_val_ppl", "best_epoch", "metrics")}
        self.payload_meta["recounted"] = payload.get("recounted_val_ppl")
        self.payload_meta.update(vocab=payload["vocab"], config=payload["config"])
        self._saved_forms, self._forms, self._forms_read = payload.get("forms"), None, False
        self.max_copy = run_max_copy(payload)  # the copy guard's default for the run's script
        try:
            self.prefixes = default_prefixes(payload, self.vocab)
        except CharlmError:
            self.prefixes = []
        self.name = f"{self.path.parent.name}/{self.path.name}" if self.path.parent.name else self.path.name
        self._guards: dict[int, tuple] = {}  # max_copy -> (CopyGuard or None, warning or None)
        self._guard_lock = threading.Lock()

    def _corpus(self):
        """The training text again, for a copy-guard index the run did not store; never downloads."""
        source = (self.payload_meta.get("corpus") or {}).get("source")
        if not source or not Path(source).is_file():
            raise CharlmError(f"the corpus {source} is not readable here")
        return training_corpus(self.payload_meta, corpus_path=source)  # checked against the run's fingerprint

    def guard(self, n: int):
        """(the copy guard for max_copy n or None, a warning line or None); built once per n, then shared."""
        if n <= 0:
            return None, None
        with self._guard_lock:  # two requests must not both index the corpus
            if n not in self._guards:
                notes = []
                found = guard_for_run(self.path, self.payload_meta, n, self._corpus, notes.append)
                self._guards[n] = (found, notes[0].removeprefix("warning: ") if notes else None)
            return self._guards[n]

    def forms(self):
        """The run's song forms (generate.formed.RunForms), stored or learned from its text once; None: unknown."""
        from charlm.generate.formed import run_forms

        with self._guard_lock:
            if not self._forms_read:
                def text():
                    try:
                        return self._corpus().text
                    except CharlmError:
                        return None
                try:
                    self._forms = run_forms({"forms": self._saved_forms}, text)
                except CharlmError:
                    self._forms = None
                self._forms_read = True
            return self._forms

    def line_classes(self, lines: list[str]) -> list[str | None]:
        """Each line's rhyme class (its last rhyming character or word, read in context); None: none or no data."""
        from charlm.forms.rhyme import line_class

        forms = self.forms()
        script = forms.forms.script if forms is not None else None
        if script is None:
            return [None] * len(lines)
        return [line_class(line, script)[0] if line.strip() else None for line in lines]

    def form_choices(self) -> dict:
        """What the page's form picker offers: the run's named forms, its script's rhyme classes, its scheme."""
        from charlm.forms.rhyme import ZH_GROUP_NAMES

        forms = self.forms()
        if forms is None:
            return {"script": None, "units": "chars", "named": [], "classes": [], "scheme": None, "titled": False}
        f = forms.forms
        return {"script": f.script, "units": f.units, "titled": f.titled, "scheme": f.scheme,
                "classes": list(ZH_GROUP_NAMES) if f.script == "zh" else [],
                "named": [{"name": n.name, "pattern": n.pattern, "pieces": n.pieces, "lines": n.lines,
                           "rhyme": n.rhyme} for n in f.named[:60]]}

    def generate(self, req: GenerationRequest, on_step=None) -> tuple[list[Sample], list[str]]:
        """The samples of one request and any warnings; `on_step(indices)` sees every step's characters,
        a (streams,) tensor with -1 for a stream that has ended."""
        guard, note = self.guard(req.max_copy)
        generator = torch.Generator(device=self.device).manual_seed(req.seed)
        samples = run_request(self.model, self.vocab, req, req.prefixes[0], generator, self.device,
                              guard=guard, on_step=on_step)
        return samples, [note] if note else []

    def metrics(self) -> list[dict]:
        """The run's per-epoch records: metrics.jsonl beside the checkpoint (live), else the checkpoint's copy."""
        log = self.path.parent / "metrics.jsonl"
        if log.is_file():
            try:
                return read_metrics(log)
            except (OSError, UnicodeDecodeError):
                pass
        return list(self.payload_meta.get("metrics") or [])

    def describe(self, limits: RequestLimits = RequestLimits()) -> dict:
        """What GET /api/checkpoint answers: name, corpus, model, validation perplexity, config, metrics."""
        c = self.config
        model = f"{c.model}, hidden {c.hidden}"
        if c.model == "mix":
            weight = {"count": "weights fitted per context count", "global": "one weight fitted on held-out text"}
            model = (f"mix of {c.mix_neural} (hidden {c.hidden}) and a {c.order}-gram, "
                     f"{weight.get(c.mix_fit, f'weight {c.mix_weight:g}')}")
        elif c.model == "kn":
            model = f"Kneser-Ney {c.order}-gram"
        else:
            model += f", {c.layers} layers" if c.layers > 1 else ""
            model += f", embedding {c.embedding}" if c.embedding else ""
        corpus = self.payload_meta.get("corpus") or {}
        best = self.payload_meta.get("best_val_ppl")
        recorded = read_summary(self.path.parent, corpus.get("fingerprint"))  # the figure `train` reported
        best = recorded["best_val_ppl"] if recorded is not None else best
        # a mixture's final figure is recounted after the last epoch: it is not a point of the curve
        final = recorded.get("recounted") if recorded is not None else self.payload_meta.get("recounted") is not None
        return {
            "name": self.name, "path": str(self.path),
            "corpus": {"source": corpus.get("source"), "chars": corpus.get("chars")},
            "model": model, "parameters": self.parameters, "vocab_size": len(self.vocab),
            "epoch": self.payload_meta.get("epoch"), "best_epoch": self.payload_meta.get("best_epoch"),
            "val_ppl": best if isinstance(best, (int, float)) and math.isfinite(best) else None,
            "config": c.to_dict(), "metrics": self.metrics(), "limits": asdict(limits),
            "defaults": {name: default for name, (_, default) in FIELDS.items() if name != "prefix"}
                        | {"max_copy": self.max_copy}
                        | {f.name: getattr(Decoding(), f.name) for f in fields(Decoding) if f.name != "sample"}
                        | {"strategy": "sample", "temperature": defaults.TEMPERATURE, "top_p": defaults.TOP_P,
                           "prefix": self.prefixes[0] if self.prefixes else ""},
            "prefixes": self.prefixes,
            "val_ppl_source": "summary.json" if recorded is not None else "checkpoint",
            "val_ppl_recounted": bool(final),  # the final figure is a recount, not a point of the curve
            "forms": self.form_choices(),
        }
