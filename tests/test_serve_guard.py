"""`charlm serve` refuses what its own page would never send: other hosts and origins, non-JSON POSTs, big
or deep bodies, huge numbers, lone surrogates; a NaN in the run's log and a bug of ours stay one line."""

import json
import logging
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")
httpx = pytest.importorskip("httpx", reason="the web extra is not installed: pip install -e '.[web]'")

import warnings  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from charlm.web.app import create_app  # noqa: E402
from charlm.web.engine import Engine  # noqa: E402
from charlm.web.fields import RequestLimits  # noqa: E402
from charlm.web.guard import allowed_hosts, host_allowed  # noqa: E402
from serve_helpers import LiveServer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*httpx2")


@pytest.fixture(scope="module")
def engine(tiny_run):
    return Engine(tiny_run[0] / "best.pt")


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine), base_url="http://127.0.0.1:8000") as c:
        yield c


def one_line(r, status: int, fragment: str):
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and "\n" not in r.json()["error"] and fragment in r.json()["error"]


# --- hosts and origins -----------------------------------------------------------------------

def test_only_the_servers_own_host_names_are_answered(client):
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
        assert client.get("/api/health", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
        one_line(client.get("/api/checkpoint", headers={"host": host}), 400, "is not served here")


def test_bound_names_and_wildcards():
    assert host_allowed("myhost.lan", allowed_hosts("myhost.lan"))
    assert not host_allowed("evil.example", allowed_hosts("myhost.lan"))
    assert not host_allowed("192.168.1.5", allowed_hosts("127.0.0.1"))
    everywhere = allowed_hosts("0.0.0.0")
    assert host_allowed("192.168.1.5", everywhere) and host_allowed(socket.gethostname().lower(), everywhere)
    assert not host_allowed("evil.example", everywhere)  # a rebinding page has a name, never an IP literal


def test_origins_other_than_the_page_are_refused(client):
    ok = client.post("/api/generate", json={"prefix": "分开", "length": 3},
                     headers={"origin": "http://127.0.0.1:8000"})
    assert ok.status_code == 200
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "null", "file://"):
        one_line(client.post("/api/generate", json={"prefix": "分开"}, headers={"origin": origin}), 403,
                 "are not served")
    one_line(client.get("/api/checkpoint", headers={"origin": "http://evil.example"}), 403, "are not served")


def test_a_post_must_say_json(client):
    body = json.dumps({"prefix": "分开", "length": 3})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        one_line(client.post("/api/generate", content=body, headers={"content-type": kind}), 415, "application/json")
    ok = client.post("/api/generate", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


# --- bodies and JSON ---------------------------------------------------------------------------

def test_bad_json_is_a_400_with_one_line(client):
    cases = [("[" * 8000, "nests arrays or objects more than"),
             ('{"prefix": "分开", "length": ' + "1" * 5000 + "}", "has 5000 characters"),
             ('{"prefix": "分开", "seed": ' + "9" * 5000 + "}", "has 5000 characters"),
             ('{"prefix": "分开", "temperature": 1' + "0" * 5000 + ".5}", "characters"),
             ('{"prefix": "分开", "temperature": NaN}', "NaN is not a JSON number"),
             ('{"prefix": "\\ud800分开", "unknown": "skip"}', "lone surrogate"),
             ('{"prefix": "分开", "x": {"a": {"b": 1}}}', "unknown field"),
             (b'{"prefix": "\xff"}', "not UTF-8")]
    for body, fragment in cases:
        one_line(client.post("/api/generate", content=body, headers={"content-type": "application/json"}), 400,
                 fragment)
    one_line(client.get("/api/generate/stream", params={"prefix": "分开", "length": "1" * 5000}), 400,
             "has 5000 characters")


def test_a_declared_length_over_the_limit_is_refused_before_reading(client):
    r = client.post("/api/generate", content=b"{}", headers={"content-type": "application/json",
                                                              "content-length": str(10**9)})
    one_line(r, 413, "over 16384 bytes")
    chunks = (b" " * 4096 for _ in range(64))  # no length given: a chunked body, cut at the limit
    r = client.post("/api/generate", content=chunks, headers={"content-type": "application/json"})
    one_line(r, 413, "over 16384 bytes")
    assert r.headers["connection"] == "close"


def _rss_mb(pid="self") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not shutil.os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("chunked", [True, False])
def test_a_1gb_body_is_refused_in_bounded_memory(engine, chunked):
    peak, stop = [_rss_mb()], threading.Event()

    def watch():
        while not stop.is_set():
            peak.append(_rss_mb())
            time.sleep(0.01)

    with LiveServer(create_app(engine)) as server:
        host, port = server.url.split("//")[1].rstrip("/").split(":")
        base = _rss_mb()
        watcher = threading.Thread(target=watch)
        watcher.start()
        sent, chunk = 0, b"[" + b" " * (1 << 20)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            head = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {1 << 30}"
            s.sendall(f"POST /api/generate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                      f"{head}\r\n\r\n".encode())
            try:
                while sent < 1 << 30:
                    s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the server answered and closed the connection
            try:
                answer = s.recv(4096).decode("latin-1")
            except ConnectionResetError:  # the close may overtake the answer
                answer = "HTTP/1.1 413 (reset)"
        stop.set()
        watcher.join()
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert sent < 1 << 30  # refused long before the whole body
    assert max(peak) - base < 50, (base, max(peak))


# --- the run's log, and bugs -------------------------------------------------------------------

def test_a_nan_in_the_log_leaves_the_curves_without_that_point(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    lines[1] = json.dumps(bad).replace(str(bad["val_ppl"]), "NaN", 1)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with TestClient(create_app(Engine(run / "best.pt")), base_url="http://127.0.0.1") as c:
        r = c.get("/api/checkpoint")
    assert r.status_code == 200
    metrics = r.json()["metrics"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and metrics[1]["val_ppl"] is None
    assert all(isinstance(m["val_ppl"], float) for i, m in enumerate(metrics) if i != 1)


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_is_one_line_in_the_log_unless_debug(tiny_run, caplog, debug):
    class Broken(Engine):
        def describe(self, limits=RequestLimits()):
            raise ValueError("boom")

    app = create_app(Broken(tiny_run[0] / "best.pt"), debug=debug)
    with caplog.at_level(logging.ERROR, logger="charlm.serve"):
        with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as c:
            r = c.get("/api/checkpoint")
    assert r.status_code == 500 and r.json() == {"error": "internal error: ValueError: boom"}
    [record] = [r for r in caplog.records if r.name == "charlm.serve"]
    assert "ValueError: boom" in record.getMessage() and bool(record.exc_info) == debug
