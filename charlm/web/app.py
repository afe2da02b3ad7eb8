"""`charlm serve`: a local web page and JSON API over one checkpoint, with generation streamed as it happens.

    browser ──GET /──────────────────────────> static/index.html, app.js, style.css (no CDN)
            ──GET /api/checkpoint────────────> config, vocabulary size, metrics.jsonl
            ──POST /api/generate─────────────> guard ─> parse_request ─> Batcher (one loop, one batch) ─> JSON
            ──GET /api/generate/stream?...───> guard ─> parse_request ─> Batcher ─on_step─> queue ─> SSE events
            ──POST /api/rhymes───────────────> each line's rhyme class (a line edited on the page)

The model is loaded once (`Engine`, web/engine.py). Every request passes `RequestGuard` (web/guard.py:
host, origin, content type, body size, JSON depth) and is checked in one place (`parse_request`,
web/fields.py, through generate's own request rules); every CharlmError becomes a 400 with
{"error": "<one line>"} in one place (`_charlm_error`). Generation runs in one decoding loop that
batches every request (web/batcher.py), never on the event loop, so /api/health answers under any load.
A full queue is a 503 with Retry-After; a client that leaves has its request stopped. See docs/serve.md.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from charlm.errors import CharlmError
from charlm.generate.request import GenerationRequest
from charlm.web.batcher import SCHEDULERS, Busy, Cancelled
from charlm.web.engine import Engine
from charlm.web.fields import RequestLimits, page_words, parse_request
from charlm.web.guard import RequestGuard, allowed_hosts, parse_json, read_body

STATIC = Path(__file__).parent / "static"
RETRY_AFTER_S = 2


# --- the web app ----------------------------------------------------------------------------

def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


async def _charlm_error(request: Request, exc: CharlmError) -> JSONResponse:
    """The one place where a user's mistake becomes an HTTP answer: 400 and one line."""
    return _error(400, page_words(str(exc)))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, exc.detail, exc.headers)


def _finite(value):
    """`value` with every NaN or infinity replaced by None (JSON has neither: one bad log line must not break the page)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _sample(engine: Engine, req: GenerationRequest, s) -> dict:
    """One sample as the API answers it: its start, text, log-probability, each line's rhyme class, form."""
    # the sample's own start: the prefix, after a form's title; never the context (the batch reads both)
    head = s.prefix[len(req.context):] if req.context and s.prefix.startswith(req.context) else s.prefix
    out = {"prefix": head, "text": s.text, "logprob": round(s.logprob, 4),
           "classes": engine.line_classes((head + s.text).split("\n"))}
    return out | ({"form": s.form} if s.form else {})


async def _disconnected(request: Request) -> None:
    """Return once the client has closed its connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, limits: RequestLimits = RequestLimits(), *, scheduler: str = "batch",
               hosts: frozenset[str] | None = None, debug: bool = False) -> Starlette:
    """The Starlette app serving the page and the API for `engine`; `hosts`: the names it answers to."""
    runner = SCHEDULERS[scheduler](engine, limits)

    def result(req: GenerationRequest, samples, warnings) -> dict:
        return {"checkpoint": engine.name, "prefix": req.prefixes[0], "dropped": list(req.dropped),
                "decoding": req.describe(), "warnings": warnings,
                "samples": [_sample(engine, req, s) for s in samples]}

    async def submit(req: GenerationRequest, on_step=None):
        guard, note = await asyncio.get_running_loop().run_in_executor(None, engine.guard, req.max_copy)
        return runner.submit(req, guard, on_step), [note] if note else []

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def checkpoint(request: Request):
        return JSONResponse(_finite(engine.describe(limits)))

    async def generate(request: Request):
        raw = parse_json(await read_body(request, limits.body_bytes), limits.json_depth, limits.number_digits)
        req = parse_request(raw, engine.vocab, limits, max_copy=engine.max_copy)
        job, warnings = await submit(req)
        done = asyncio.wrap_future(job.future)
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when nobody waits
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not done.done():
                job.cancel()  # the client left (or the server stops): the batch drops it at the next step
        if not done.done():
            return Response(status_code=499)  # nobody is listening
        if isinstance(done.exception(), Cancelled):
            return _error(503, "the server is shutting down", {"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse(result(req, done.result(), warnings))

    async def stream(request: Request):
        req = parse_request(_query_dict(request), engine.vocab, limits, from_query=True, max_copy=engine.max_copy)
        events = _Events(engine, req, result)
        job, warnings = await submit(req, events.on_step)
        return StreamingResponse(events.run(job, warnings), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def rhymes(request: Request):
        raw = parse_json(await read_body(request, limits.body_bytes), limits.json_depth, limits.number_digits)
        lines = raw.get("lines") if isinstance(raw, dict) else None
        if not isinstance(lines, list) or len(lines) > 200 or not all(isinstance(x, str) and len(x) <= 400
                                                                        for x in lines):
            raise CharlmError("send {\"lines\": [...]}: at most 200 lines of at most 400 characters each")
        classes = await asyncio.get_running_loop().run_in_executor(None, engine.line_classes, lines)
        return JSONResponse({"classes": classes})

    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})

    routes = [
        Route("/", index),
        Route("/api/health", health),
        Route("/api/checkpoint", checkpoint),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/generate/stream", stream),
        Route("/api/rhymes", rhymes, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {CharlmError: _charlm_error, HTTPException: _http_error, Busy: busy}
    hosts = allowed_hosts("127.0.0.1") if hosts is None else hosts
    app = Starlette(routes=routes, exception_handlers=handlers,
                    middleware=[Middleware(RequestGuard, hosts=hosts, debug=debug)])
    app.state.engine, app.state.scheduler = engine, runner
    return app


def _query_dict(request: Request) -> dict:
    items = request.query_params.multi_items()
    repeated = sorted({k for k, _ in items if sum(1 for kk, _ in items if kk == k) > 1})
    if repeated:
        raise CharlmError(f"query parameter {repeated[0]!r} is given more than once")
    return dict(items)


def _sse(data: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, ensure_ascii=False) + "\n\n").encode("utf-8")


class _Events:
    """Server-sent events of one request: `start`, then one message per step (or a few, when the client reads
    slower than the model writes) holding each sample's new characters, then `end` with the samples (or `error`)."""

    def __init__(self, engine: Engine, req: GenerationRequest, result):
        self.engine, self.req, self.result = engine, req, result
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.live = req.decoding.num_beams == 1 and not req.sections

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    def on_step(self, indices) -> None:
        if self.live:  # beam search and sections know their text only at the end
            itos = self.engine.vocab.idx_to_char
            self.put(("step", [itos[i] if i >= 0 else "" for i in indices.tolist()]))

    def _failure(self, error: BaseException) -> str:
        if isinstance(error, CharlmError):
            return page_words(str(error))
        if isinstance(error, Cancelled):
            return "the server is shutting down"
        return f"internal error: {type(error).__name__}: {error}"  # a bug of ours: still one line to the client

    async def run(self, job, warnings):
        req = self.req
        job.future.add_done_callback(lambda f: self.put(("end", f)))
        try:
            yield _sse({"checkpoint": self.engine.name, "prefix": req.prefixes[0], "dropped": list(req.dropped),
                        "decoding": req.describe()}, "start")
            while True:
                items = [await self.queue.get()]
                while not self.queue.empty() and items[-1][0] == "step":
                    items.append(self.queue.get_nowait())
                steps = [chars for kind, chars in items if kind == "step"]
                if steps:
                    yield _sse({"text": ["".join(col) for col in zip(*steps)]})
                kind, future = items[-1]
                if kind == "end":
                    if future.exception() is not None:
                        yield _sse({"error": self._failure(future.exception())}, "error")
                        return
                    samples = future.result()
                    if not self.live:  # send the text now, a few characters per event
                        for t in range(0, max(len(s.text) for s in samples), 8):
                            yield _sse({"text": [s.text[t:t + 8] for s in samples]})
                    yield _sse(self.result(req, samples, warnings), "end")
                    return
        finally:
            job.cancel()  # the client left early, or we are done: the batch drops it at its next step


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


def run_server(app: Starlette, sock, log_level: str = "warning", grace_s: float = 30) -> None:
    """Serve `app` on the bound socket until SIGINT (Ctrl-C), SIGTERM or SIGHUP: each lets the requests in
    flight finish (at most `grace_s`), then exits (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
    import signal

    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace_s, access_log=False)
    server = uvicorn.Server(config)

    def stop(sig, frame):
        # uvicorn handles SIGINT and SIGTERM while it serves, then raises the signal again once it has
        # shut down: this handler then ends the process. SIGHUP (a closed terminal) it does not handle.
        if sig == signal.SIGHUP and not server.should_exit:
            server.handle_exit(sig, frame)
        else:
            raise SystemExit(128 + sig)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        app.state.scheduler.close()
        sock.close()
