"""`charlm serve` under load: one batched loop, the same text alone or in a crowd, back-pressure, abandoned
requests, per-request limits, and a clean stop on SIGTERM and SIGHUP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")
httpx = pytest.importorskip("httpx", reason="the web extra is not installed: pip install -e '.[web]'")

import torch  # noqa: E402

from charlm.generate.request import run_request  # noqa: E402
from charlm.web.app import create_app  # noqa: E402
from charlm.web.batcher import Batcher, Busy  # noqa: E402
from charlm.web.engine import Engine  # noqa: E402
from charlm.web.fields import RequestLimits, parse_request  # noqa: E402
from helpers import default_sigint  # noqa: E402
from serve_helpers import LiveServer  # noqa: E402
from test_serve import Held, wait_for  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*httpx2")


@pytest.fixture(scope="module")
def engine(tiny_run):
    return Engine(tiny_run[0] / "best.pt")


def crowd(engine):
    """Requests of every kind a batch shares: settings, lengths, penalties, shapes, guards and seeds all differ."""
    bodies = [{"prefix": "分开", "length": 60, "num_samples": 3, "seed": 1},
              {"prefix": "不分开", "length": 40, "temperature": 0.9, "top_k": 5, "seed": 2},
              {"prefix": "我", "length": 80, "num_samples": 2, "repetition_penalty": 1.3, "seed": 3},
              {"prefix": "爱", "strategy": "greedy", "length": 30, "max_copy": 0},
              {"prefix": "你", "num_samples": 2, "seed": 4},
              {"prefix": "分开", "length": 300, "num_samples": 5, "lines": 2, "seed": 5, "max_copy": 4},
              {"prefix": "分开", "num_beams": 3, "num_samples": 2, "length": 20}]
    return [parse_request(b, engine.vocab) for b in bodies]


def run_all(engine, reqs, delay_s=0.0):
    """The samples of each request through one Batcher, submitted a little apart so they join a running batch."""
    batcher = Batcher(engine, RequestLimits())
    try:
        jobs = []
        for r in reqs:
            jobs.append(batcher.submit(r, engine.guard(r.max_copy)[0]))
            time.sleep(delay_s)
        return [[(s.text, s.logprobs) for s in j.future.result(60)] for j in jobs]
    finally:
        batcher.close()


def test_a_request_gets_the_same_text_alone_and_in_a_busy_batch(engine):
    reqs = crowd(engine)
    alone = [run_all(engine, [r])[0] for r in reqs]
    together = run_all(engine, reqs * 3, delay_s=0.002)  # three copies of each: joining at different steps
    for i, r in enumerate(reqs * 3):
        assert together[i] == alone[i % len(reqs)], r.describe()  # texts and log-probabilities, to the bit
    for r, got in zip(reqs, alone):  # and the text of decode.generate (run_request) for the same seed
        lone = run_request(engine.model, engine.vocab, r, r.prefixes[0], torch.Generator().manual_seed(r.seed),
                           "cpu", guard=engine.guard(r.max_copy)[0])
        assert [s.text for s in lone] == [text for text, _ in got]
        assert [s.logprob for s in lone] == pytest.approx([sum(lp) for _, lp in got], abs=1e-3)


def test_a_full_queue_is_a_503_with_retry_after_and_health_still_answers(tiny_run):
    engine = Held(tiny_run[0] / "best.pt")
    with LiveServer(create_app(engine, RequestLimits(queue=2))) as server:
        body = {"prefix": "分开", "length": 50, "seed": 1}
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, server.url + "api/generate", json=body, timeout=60) for _ in range(2)]
            wait_for(lambda: server.app.state.scheduler.in_flight == 2)
            refused = httpx.post(server.url + "api/generate", json=body, timeout=10)
            stream = httpx.get(server.url + "api/generate/stream", params={"prefix": "分开"}, timeout=10)
            health = httpx.get(server.url + "api/health", timeout=10)
            engine.release.set()
            answers = [h.result() for h in held]
    assert refused.status_code == 503 and stream.status_code == 503
    assert int(refused.headers["retry-after"]) > 0 and "busy" in refused.json()["error"]
    assert health.json() == {"status": "ok"}
    assert [a.status_code for a in answers] == [200, 200]


def test_the_batcher_refuses_beyond_its_queue(engine):
    batcher = Batcher(engine, RequestLimits(queue=1))
    try:
        first = batcher.submit(parse_request({"prefix": "分开", "length": 2000, "num_samples": 8,
                                              "max_copy": 0}, engine.vocab))
        with pytest.raises(Busy):
            batcher.submit(parse_request({"prefix": "分开"}, engine.vocab))
        first.cancel()
        with pytest.raises(Exception):
            first.future.result(20)  # cancelled: it left the batch
        wait_for(lambda: batcher.in_flight == 0)
    finally:
        batcher.close()


def test_one_request_may_ask_only_so_much_work(engine):
    from charlm.errors import CharlmError

    limits = RequestLimits(work=100)
    parse_request({"prefix": "分开", "length": 50, "num_samples": 2}, engine.vocab, limits)
    with pytest.raises(CharlmError, match=r"\(length\) 60 x samples \(num_samples\) 2 is 120 character-steps; at most 100"):
        parse_request({"prefix": "分开", "length": 60, "num_samples": 2}, engine.vocab, limits)
    with pytest.raises(CharlmError, match=r"\(num_beams\) 4"):
        parse_request({"prefix": "分开", "length": 30, "num_beams": 4}, engine.vocab, limits)


def _abandon(url: str, body: bytes) -> None:
    """Send a POST, wait 0.3 s, and close the socket without reading the answer."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body)
        time.sleep(0.3)


def test_abandoned_requests_leave_the_batch_and_a_small_one_answers_within_a_second(tiny_run):
    engine = Held(tiny_run[0] / "best.pt")
    engine.release.set()
    limits = RequestLimits()
    body = json.dumps({"prefix": "分开", "length": limits.length, "num_samples": limits.num_samples,
                       "max_copy": 0}).encode()
    with LiveServer(create_app(engine, limits)) as server:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda _: _abandon(server.url, body), range(32)))
        t0 = time.perf_counter()
        r = httpx.post(server.url + "api/generate", json={"prefix": "分开", "length": 5}, timeout=30)
        seconds = time.perf_counter() - t0
        wait_for(lambda: server.app.state.scheduler.in_flight == 0, 30)
    assert r.status_code == 200 and seconds < 1.0, seconds
    assert max(engine.rows) >= 16 * limits.num_samples  # the abandoned requests did run, in one batch
    assert len(engine.rows) < limits.length  # and were stopped, not run to their 2,000 characters


def _serve(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "serve", "--checkpoint", str(tiny_run[0]),
                             "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=default_sigint)
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line, line + proc.stderr.read()
    return proc, line.split("on ", 1)[1].split()[0]


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_finish_the_requests_in_flight_then_exit(tiny_run, sig, status):
    proc, url = _serve(tiny_run)
    try:
        with httpx.stream("GET", url + "api/generate/stream", timeout=30,
                          params={"prefix": "分开", "length": 800, "num_samples": 4, "seed": 1}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("event: start")
            proc.send_signal(sig)  # while the generation runs
            rest = list(lines)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "event: end" in rest, rest[-3:]  # the request in flight was finished
    assert proc.returncode == status, err
    assert "Traceback" not in err
