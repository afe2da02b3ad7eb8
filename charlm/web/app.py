"""`charlm serve`: a local web page and JSON API over one checkpoint, with generation streamed as it happens.

    browser ──GET /──────────────────────────> static/index.html, app.js, style.css (no CDN)
            ──GET /api/checkpoint────────────> config, vocabulary size, metrics.jsonl
            ──POST /api/generate─────────────> parse_request ─> worker thread: Engine.generate ─> JSON
            ──GET /api/generate/stream?...───> parse_request ─> worker thread ─on_step─> queue ─> SSE events

The model is loaded once (`Engine`, web/engine.py). Requests are checked in one place (`parse_request`,
web/fields.py, through generate's own request rules) and every CharlmError becomes a 400 with
{"error": "<one line>"} in one place (`_charlm_error`). Generation runs in a bounded pool of worker
threads, so the event loop stays free: /api/health answers during a long generation, and several
users are served at once. See docs/serve.md.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from charlm.errors import CharlmError
from charlm.generate.request import GenerationRequest
from charlm.web.engine import Engine
from charlm.web.fields import RequestLimits, parse_request

STATIC = Path(__file__).parent / "static"


class _Cancelled(Exception):
    """The client went away: stop generating."""


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


def create_app(engine: Engine, limits: RequestLimits = RequestLimits()) -> Starlette:
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

    def result(req: GenerationRequest, samples, warnings) -> dict:
        return {"checkpoint": engine.name, "prefix": req.prefixes[0], "dropped": list(req.dropped),
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


async def _events(engine: Engine, req: GenerationRequest, pool, result):
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

    yield _sse({"checkpoint": engine.name, "prefix": req.prefixes[0], "dropped": list(req.dropped),
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
