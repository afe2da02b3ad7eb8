"""`charlm serve`: a local web page and JSON API over one checkpoint, with generation streamed as it happens.

    browser ──GET /──────────────────────────> static/index.html, app.js, style.css (no CDN)
            ──GET /api/checkpoint────────────> config, vocabulary size, metrics.jsonl
            ──POST /api/generate─────────────> parse_request ─> worker thread: decoding.generate ─> JSON
            ──GET /api/generate/stream?...───> parse_request ─> worker thread ─on_step─> queue ─> SSE events

The model is loaded once (`Engine`). Requests are checked in one place (`parse_request`) and every
CharlmError becomes a 400 with {"error": "<one line>"} in one place (`_charlm_error`). Generation runs
in a bounded pool of worker threads, so the event loop stays free: /api/health answers during a long
generation, and several users are served at once. See docs/serve.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from charlm.generate import decode as dec
from charlm import defaults
from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.generate.copyguard import guard_for_run
from charlm.errors import CharlmError
from charlm.report.evaluate import default_prefixes, training_corpus
from charlm.run.metrics import read_metrics
from charlm.generate.verse import Shape

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that no single request can take the server down."""

    prefix_chars: int = 200
    length: int = 2000
    num_samples: int = 8
    num_beams: int = 8
    body_bytes: int = 16_384
    workers: int = 16  # generations running at once; further requests wait for a free worker
    max_copy: int = 64  # the copy guard's longest allowed span (its index grows with it)


# --- one generation request, checked in one place -------------------------------------------

# name -> (type, default). None as a default means "not given": the strategy rule below decides.
FIELDS = {
    "prefix": (str, None),
    "strategy": (str, None),
    "length": (int, None),  # None: as generate, at most defaults.LENGTH (LINES_LENGTH with lines), ending with the song
    "num_samples": (int, 1),
    "temperature": (float, None),
    "top_k": (int, None),
    "top_p": (float, None),
    "num_beams": (int, None),
    "repetition_penalty": (float, 1.0),
    "seed": (int, None),
    "unknown": (str, "error"),
    "max_copy": (int, defaults.MAX_COPY),  # the copy guard; 0: off
    "lines": (int, 0),  # stop after this many lines, prefix included (0: no limit)
}
STRATEGIES = ("greedy", "sample", "beam")
SAMPLING_FIELDS = ("temperature", "top_k", "top_p")


@dataclass(frozen=True)
class GenerateRequest:
    """A checked request: the prefix to continue (unknown characters already dropped if asked), and how."""

    prefix: str
    length: int
    num_samples: int
    strategy: str
    decoding: dec.Decoding
    seed: int
    dropped: tuple = ()
    max_copy: int = 0
    shape: Shape = Shape()

    def describe(self) -> dict:
        """The settings as the response reports them (the seed included, so a sample can be redone)."""
        d = asdict(self.decoding)
        d.pop("sample", None)
        return {"strategy": self.strategy, "label": self.decoding.label(), **d, "length": self.length,
                "num_samples": self.num_samples, "seed": self.seed, "max_copy": self.max_copy,
                "lines": self.shape.lines, "song_end": self.shape.song_end}


def _number(name: str, value, kind, from_query: bool):
    """`value` as an int or float, or a CharlmError naming the field; text is read only from a query string."""
    if from_query and isinstance(value, str):
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            raise CharlmError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CharlmError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {json.dumps(value)}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise CharlmError(f"{name} must be an integer, got {value}")
        return int(value)
    if not math.isfinite(value):
        raise CharlmError(f"{name} must be a finite number, got {value}")
    return float(value)


def parse_request(raw, vocab, limits: Limits = Limits(), from_query: bool = False) -> GenerateRequest:
    """Check a JSON body (or query parameters) and build a GenerateRequest; any problem is a CharlmError.

    The decoding strategy is `strategy` when given, else beam search when num_beams > 1, else sampling
    (`charlm generate`'s default). Defaults are generate's (charlm/defaults.py); see docs/serve.md.
    """
    if not isinstance(raw, dict):
        raise CharlmError("the request body must be a JSON object, e.g. {\"prefix\": \"分开\"}")
    unknown_fields = sorted(set(raw) - set(FIELDS))
    if unknown_fields:
        raise CharlmError(f"unknown field {unknown_fields[0]!r}; the fields are: {', '.join(FIELDS)}")
    given = {k: v for k, v in raw.items() if v is not None}
    values = {}
    for name, (kind, default) in FIELDS.items():
        if name not in given:
            values[name] = default
        elif kind is str:
            if not isinstance(given[name], str):
                raise CharlmError(f"{name} must be a string, got {json.dumps(given[name], ensure_ascii=False)}")
            values[name] = given[name]
        else:
            values[name] = _number(name, given[name], kind, from_query)

    prefix = values["prefix"]
    if prefix is None:
        raise CharlmError("prefix is missing; give the text to continue, e.g. {\"prefix\": \"分开\"}")
    if len(prefix) > limits.prefix_chars:
        raise CharlmError(f"prefix has {len(prefix)} characters; at most {limits.prefix_chars} are allowed")
    if values["unknown"] not in ("error", "skip"):
        raise CharlmError(f"unknown must be 'error' or 'skip', got {values['unknown']!r}")
    dropped: list[str] = []
    if values["unknown"] == "skip":
        kept, dropped = dec.drop_unknown(prefix, vocab)
        if prefix and not kept:
            raise CharlmError(f"nothing is left of prefix {prefix!r} once its unknown characters are dropped")
        prefix = kept
    if not prefix:
        raise CharlmError("prefix is empty; give at least one character, e.g. {\"prefix\": \"分开\"}")
    unknown_chars = vocab.unknown(prefix)
    if unknown_chars:
        raise CharlmError(f"prefix {prefix!r} has characters not in the model's vocabulary: "
                          f"{' '.join(map(repr, unknown_chars))} (send \"unknown\": \"skip\" to drop them)")
    if values["length"] is not None and not 0 <= values["length"] <= limits.length:
        raise CharlmError(f"length must be between 0 and {limits.length}, got {values['length']}")
    if not 1 <= values["num_samples"] <= limits.num_samples:
        raise CharlmError(f"num_samples must be between 1 and {limits.num_samples}, got {values['num_samples']}")
    max_copy = values["max_copy"]
    if not 0 <= max_copy <= limits.max_copy:
        raise CharlmError(f"max_copy must be 0 (off) or up to {limits.max_copy}, got {max_copy}")
    if not 0 <= values["lines"] <= limits.length:
        raise CharlmError(f"lines must be 0 (no limit) or up to {limits.length}, got {values['lines']}")

    strategy = values["strategy"]
    sampling = [k for k in SAMPLING_FIELDS if values[k] is not None]
    if strategy is None:
        strategy = "beam" if (values["num_beams"] or 1) > 1 else "sample"  # generate samples by default
    if strategy not in STRATEGIES:
        raise CharlmError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "sample" and sampling:
        raise CharlmError(f"{sampling[0]} applies to strategy 'sample' only, not {strategy!r}")
    num_beams = values["num_beams"] if values["num_beams"] is not None else 1
    if strategy == "beam":
        if num_beams < 2:
            raise CharlmError(f"strategy 'beam' needs num_beams of 2 or more, got {num_beams}")
        if num_beams > min(limits.num_beams, len(vocab)):
            raise CharlmError(f"num_beams must be at most {min(limits.num_beams, len(vocab))}, got {num_beams}")
        if values["num_samples"] > num_beams:
            raise CharlmError(f"beam search returns at most num_beams ({num_beams}) samples, "
                              f"got num_samples {values['num_samples']}")
    elif num_beams != 1:
        raise CharlmError(f"num_beams applies to strategy 'beam' only, not {strategy!r}")
    if strategy == "greedy" and values["num_samples"] > 1:  # as generate refuses --greedy --num-samples N
        raise CharlmError(f"strategy 'greedy' gives the same text every time, so num_samples {values['num_samples']} "
                          "would repeat it; use strategy 'sample', or 'beam' for the best N texts")
    if values["temperature"] is not None and not values["temperature"] > 0:
        raise CharlmError(f"temperature must be a positive number, got {values['temperature']}; "
                          "for arg-max use strategy 'greedy'")
    if values["top_k"] is not None and values["top_k"] < 0:
        raise CharlmError(f"top_k must be 0 (off) or more, got {values['top_k']}")
    if values["top_p"] is not None and not 0 < values["top_p"] <= 1:
        raise CharlmError(f"top_p must lie in (0, 1] (1 is off), got {values['top_p']}")
    if not values["repetition_penalty"] > 0:
        raise CharlmError(f"repetition_penalty must be a positive number (1.0 is off), "
                          f"got {values['repetition_penalty']}")
    decoding = dec.Decoding(
        sample=strategy == "sample",
        temperature=values["temperature"] if values["temperature"] is not None else defaults.TEMPERATURE,
        top_k=values["top_k"] if values["top_k"] is not None else 0,
        top_p=values["top_p"] if values["top_p"] is not None else defaults.TOP_P,
        num_beams=num_beams, repetition_penalty=values["repetition_penalty"])
    decoding.validate()  # a backstop: the checks above already name the fields as the API spells them
    if values["seed"] is not None and not 0 <= values["seed"] < 2**63:
        raise CharlmError(f"seed must be between 0 and 2**63 - 1, got {values['seed']}")
    seed = values["seed"] if values["seed"] is not None else secrets.randbelow(2**31)
    # as generate: without a length, stop at the end of a song; tidy blank lines and trailing space always
    length, lines = values["length"], values["lines"]
    shape = Shape(lines=lines, song_end=length is None, tidy=True)
    if length is None:
        length = min(defaults.LINES_LENGTH if lines else defaults.LENGTH, limits.length)
    return GenerateRequest(prefix, length, values["num_samples"], strategy, decoding, seed, tuple(dropped),
                           max_copy, shape)


# --- the model, loaded once -----------------------------------------------------------------

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


class _Cancelled(Exception):
    """The client went away: stop generating."""


class Engine:
    """One checkpoint loaded once and shared by every request: generate, and describe the run."""

    def __init__(self, path: str | Path, device="cpu"):
        self.path = Path(path)
        payload = load_checkpoint(self.path)
        model, self.vocab, self.config = model_from_checkpoint(payload, device)
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

    def generate(self, req: GenerateRequest, on_step=None) -> tuple[list[dec.Sample], list[str]]:
        """The samples of one request and any warnings; `on_step(indices)` sees every step's characters,
        a (streams,) tensor with -1 for a stream that has ended."""
        guard, note = self.guard(req.max_copy)
        generator = torch.Generator(device=self.device).manual_seed(req.seed)
        samples = dec.generate(self.model, self.vocab, req.prefix, req.length, req.decoding, req.num_samples,
                               generator, self.device, on_step=on_step, guard=guard, shape=req.shape)
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

    def describe(self, limits: Limits = Limits()) -> dict:
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
                        | {f.name: getattr(dec.Decoding(), f.name) for f in fields(dec.Decoding) if f.name != "sample"}
                        | {"strategy": "sample", "temperature": defaults.TEMPERATURE, "top_p": defaults.TOP_P,
                           "prefix": self.prefixes[0] if self.prefixes else ""},
            "prefixes": self.prefixes,
        }


# --- the web app ----------------------------------------------------------------------------

def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def _charlm_error(request: Request, exc: CharlmError) -> JSONResponse:
    """The one place where a user's mistake becomes an HTTP answer: 400 and one line."""
    return _error(400, str(exc))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, exc.detail)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # a bug of ours: still one JSON line, no traceback in the answer
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(engine: Engine, limits: Limits = Limits()) -> Starlette:
    """The Starlette app serving the page and the API for `engine`."""
    pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="charlm-generate")

    async def read_body(request: Request):
        body = await request.body()
        if len(body) > limits.body_bytes:
            raise HTTPException(413, f"request body over {limits.body_bytes} bytes")
        try:
            return json.loads(body.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CharlmError(f"the request body is not valid JSON ({e})") from None

    def query_dict(request: Request) -> dict:
        items = request.query_params.multi_items()
        repeated = sorted({k for k, _ in items if sum(1 for kk, _ in items if kk == k) > 1})
        if repeated:
            raise CharlmError(f"query parameter {repeated[0]!r} is given more than once")
        return dict(items)

    def result(req: GenerateRequest, samples, warnings) -> dict:
        return {"checkpoint": engine.name, "prefix": req.prefix, "dropped": list(req.dropped),
                "decoding": req.describe(), "warnings": warnings,
                "samples": [{"text": s.text, "logprob": round(s.logprob, 4)} for s in samples]}

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def checkpoint(request: Request):
        return JSONResponse(engine.describe(limits))

    async def generate(request: Request):
        req = parse_request(await read_body(request), engine.vocab, limits)
        samples, warnings = await asyncio.get_running_loop().run_in_executor(pool, engine.generate, req)
        return JSONResponse(result(req, samples, warnings))

    async def stream(request: Request):
        req = parse_request(query_dict(request), engine.vocab, limits, from_query=True)
        return StreamingResponse(_events(engine, req, pool, result), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", index),
        Route("/api/health", health),
        Route("/api/checkpoint", checkpoint),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/generate/stream", stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {CharlmError: _charlm_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.engine, app.state.pool = engine, pool
    return app


def _sse(data: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, ensure_ascii=False) + "\n\n").encode("utf-8")


async def _events(engine: Engine, req: GenerateRequest, pool, result):
    """Server-sent events: `start`, then one message per step (or a few, when the client reads slower than
    the model writes) holding each sample's new characters, then `end` with the samples (or `error`)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    itos = engine.vocab.idx_to_char

    def put(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            stop.set()

    def on_step(indices):
        if stop.is_set():
            raise _Cancelled
        if req.decoding.num_beams == 1:  # beam search knows its text only at the end
            put(("step", [itos[i] if i >= 0 else "" for i in indices.tolist()]))

    def work():
        try:
            put(("end", engine.generate(req, on_step)))
        except _Cancelled:
            pass
        except CharlmError as e:
            put(("error", str(e)))
        except Exception as e:  # a bug of ours: still one line to the client
            put(("error", f"internal error: {type(e).__name__}: {e}"))

    yield _sse({"checkpoint": engine.name, "prefix": req.prefix, "dropped": list(req.dropped),
                "decoding": req.describe()}, "start")
    loop.run_in_executor(pool, work)
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty() and items[-1][0] == "step":
                items.append(queue.get_nowait())
            steps = [chars for kind, chars in items if kind == "step"]
            if steps:
                yield _sse({"text": ["".join(col) for col in zip(*steps)]})
            kind, payload = items[-1]
            if kind == "end":
                samples, warnings = payload
                if req.decoding.num_beams > 1:  # send the beams' text now, a few characters per event
                    for t in range(0, req.length, 8):
                        yield _sse({"text": [s.text[t:t + 8] for s in samples]})
                yield _sse(result(req, samples, warnings), "end")
                return
            if kind == "error":
                yield _sse({"error": payload}, "error")
                return
    finally:
        stop.set()  # the client left early, or we are done: the worker stops at its next step


# --- running it -----------------------------------------------------------------------------

def bind(host: str, port: int):
    """A listening socket on host:port, or a CharlmError in one line (port in use, unknown host)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CharlmError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise CharlmError(f"port {port} on {host} is already in use; "
                              "stop the other server or pass --port N") from None
        raise CharlmError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock) -> str:
    """The address to open in a browser for a bound socket."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{host}:{port}/"


def run_server(app: Starlette, sock, log_level: str = "warning") -> None:
    """Serve `app` on the bound socket until Ctrl-C or SIGTERM (uvicorn finishes open requests first)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        app.state.pool.shutdown(wait=False, cancel_futures=True)
        sock.close()
