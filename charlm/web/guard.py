"""What a request must be before the app reads it: from this server's own page, small, and plain JSON.

    request ─> Host one of ours? (400) ─> Origin, when sent, ours? (403) ─> POST as application/json? (415)
            ─> Content-Length over the limit? (413, nothing read) ─> body read in chunks, cut at the limit (413)
            ─> JSON nested at most `json_depth`, numbers at most `number_digits` digits (400) ─> the route

Only the host names the server is bound to are accepted (127.0.0.1, localhost, [::1], and what --host
names), so a page elsewhere that rebinds its own name to 127.0.0.1 (DNS rebinding) is refused; a POST
must say application/json, which a browser cannot send cross-site without asking first (a preflight
this server never grants). A bug of ours is still one JSON line (500), logged in one line unless --debug.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from charlm.errors import CharlmError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
CLOSE = {"Connection": "close"}  # after a refused body: the server reads no more of it
log = logging.getLogger("charlm.serve")


def allowed_hosts(bound: str) -> frozenset[str]:
    """The host names a request may use: the loopback names and `bound` (for 0.0.0.0 or ::, this machine's)."""
    names = {n.lower() for n in LOOPBACK_NAMES} | {bound.strip("[]").lower()}
    if bound in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        names.add("*ip")  # any address of this machine, as an IP literal (a rebinding page has a name, not an IP)
    return frozenset(names)


def _host_name(value: str) -> str:
    """'Example.org:8000' -> 'example.org', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(name: str, hosts: frozenset[str]) -> bool:
    return name in hosts or ("*ip" in hosts and _is_ip(name))


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def check_request(scope, hosts: frozenset[str]) -> JSONResponse | None:
    """The refusal for a request from elsewhere (wrong Host or Origin, a POST not as JSON), or None."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    host = _host_name(headers.get("host", ""))
    if not host_allowed(host, hosts):
        return _refusal(400, f"host {host or '(none)'!r} is not served here; open the page by the address "
                             "the server printed")
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not host_allowed((parts.hostname or "").lower(), hosts) \
                or parts.netloc.lower() != headers.get("host", "").strip().lower():
            return _refusal(403, f"requests from {origin!r} are not served; use the page this server serves")
    if scope.get("method") == "POST":
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return _refusal(415, f"a POST must be sent as application/json, got {kind or 'no content type'!r}")
    return None


class RequestGuard:
    """ASGI middleware: refuse requests from elsewhere (`check_request`), and turn a bug into one JSON line."""

    def __init__(self, app, hosts: frozenset[str], debug: bool = False):
        self.app, self.hosts, self.debug = app, hosts, debug

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = check_request(scope, self.hosts)
        if refusal is not None:
            return await refusal(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # a bug of ours: one line to the client and to the log (the traceback with --debug)
            log.error("internal error on %s %s: %s: %s", scope.get("method"), scope.get("path"), type(e).__name__, e,
                      exc_info=self.debug)
            if not started:
                await _refusal(500, f"internal error: {type(e).__name__}: {e}")(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) by its Content-Length before reading, or as soon as the bytes read pass `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise CharlmError(f"Content-Length must be a number of bytes, got {declared[:40]!r}")
        if int(declared[:40]) > limit:
            raise HTTPException(413, f"request body over {limit} bytes", headers=CLOSE)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body says no length: stop reading here, and close the connection
            raise HTTPException(413, f"request body over {limit} bytes", headers=CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


def _depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings (a linear scan, so no recursion on any input)."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def parse_json(body: bytes, max_depth: int, max_digits: int):
    """The JSON value of a body, or a CharlmError: not UTF-8, not JSON, nested too deep, a number too long."""
    def number(kind):
        def parse(text: str):
            if len(text) > max_digits:
                raise CharlmError(f"a number in the request has {len(text)} characters; at most {max_digits} "
                                  "are allowed")
            return kind(text)
        return parse

    def constant(name: str):
        raise CharlmError(f"the request body is not valid JSON ({name} is not a JSON number)")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharlmError(f"the request body is not valid JSON (not UTF-8: {e.reason} at byte {e.start})") from None
    if _depth(text) > max_depth:
        raise CharlmError(f"the request body nests arrays or objects more than {max_depth} deep; "
                          "a request is one flat object")
    try:
        return json.loads(text or "null", parse_int=number(int), parse_float=number(float),
                          parse_constant=constant)
    except json.JSONDecodeError as e:
        raise CharlmError(f"the request body is not valid JSON ({e})") from None
