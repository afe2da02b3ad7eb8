"""The model behind `charlm serve`: one checkpoint loaded once and shared by every request (see docs/serve.md).

Generation runs in worker threads (web/app.py); the model is called one step at a time behind a lock,
so requests interleave step by step and the n-gram models' caches are never updated by two at once.
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
from charlm.run.metrics import read_metrics
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
        self.payload_meta.update(vocab=payload["vocab"], config=payload["config"])
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
            model = f"mix of {c.mix_neural} (hidden {c.hidden}) and a {c.order}-gram, weight {c.mix_weight:g}"
        elif c.model == "kn":
            model = f"Kneser-Ney {c.order}-gram"
        else:
            model += f", {c.layers} layers" if c.layers > 1 else ""
            model += f", embedding {c.embedding}" if c.embedding else ""
        corpus = self.payload_meta.get("corpus") or {}
        best = self.payload_meta.get("best_val_ppl")
        return {
            "name": self.name, "path": str(self.path),
            "corpus": {"source": corpus.get("source"), "chars": corpus.get("chars")},
            "model": model, "parameters": self.parameters, "vocab_size": len(self.vocab),
            "epoch": self.payload_meta.get("epoch"), "best_epoch": self.payload_meta.get("best_epoch"),
            "val_ppl": best if isinstance(best, (int, float)) and math.isfinite(best) else None,
            "config": c.to_dict(), "metrics": self.metrics(), "limits": asdict(limits),
            "defaults": {name: default for name, (_, default) in FIELDS.items() if name != "prefix"}
                        | {f.name: getattr(Decoding(), f.name) for f in fields(Decoding) if f.name != "sample"}
                        | {"strategy": "sample", "temperature": defaults.TEMPERATURE, "top_p": defaults.TOP_P,
                           "prefix": self.prefixes[0] if self.prefixes else ""},
            "prefixes": self.prefixes,
        }
