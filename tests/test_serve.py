"""`charlm serve`: every endpoint through Starlette's test client, bad requests, streaming, concurrency, the command."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")
httpx = pytest.importorskip("httpx", reason="the web extra is not installed: pip install -e '.[web]'")

import warnings  # noqa: E402

from click.testing import CliRunner  # noqa: E402

with warnings.catch_warnings():  # starlette >= 1.x suggests httpx2 for its test client; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from charlm.generate import decode as dec  # noqa: E402
from charlm.cli.app import cli  # noqa: E402
from charlm.web.app import bind, create_app  # noqa: E402
from charlm.web.engine import Engine  # noqa: E402
from charlm.web.fields import RequestLimits  # noqa: E402
from helpers import assert_one_line_error, default_sigint  # noqa: E402
from serve_helpers import LiveServer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*httpx2")  # starlette's note about httpx vs httpx2


@pytest.fixture(scope="module")
def engine(tiny_run):
    return Engine(tiny_run[0] / "best.pt")


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine), base_url="http://127.0.0.1") as c:
        yield c


def post(client, **body):
    return client.post("/api/generate", json=body)


def events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event in a text/event-stream body."""
    out = []
    for block in text.strip().split("\n\n"):
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data += line[len("data: "):]
        out.append((name, json.loads(data)))
    return out


# --- endpoints -------------------------------------------------------------------------------

def test_health(client):
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_checkpoint_describes_the_run(client, engine, tiny_run):
    info = client.get("/api/checkpoint").json()
    assert info["name"] == "run/best.pt"
    assert info["vocab_size"] == len(engine.vocab) == len(set(tiny_run[1].read_text(encoding="utf-8")))
    from charlm.run.checkpoint import load_checkpoint

    stored = load_checkpoint(tiny_run[0] / "best.pt")
    assert info["config"] == json.loads(json.dumps(stored["config"])) and info["config"]["hidden"] == 16
    assert info["model"].startswith(stored["config"]["model"]) and info["parameters"] > 0
    assert info["corpus"]["source"] == str(tiny_run[1])
    assert [r["epoch"] for r in info["metrics"]] == [1, 2, 3]
    assert info["val_ppl"] == pytest.approx(min(r["val_ppl"] for r in info["metrics"]))
    from charlm import defaults

    assert info["defaults"]["strategy"] == "sample"  # as charlm generate
    assert info["defaults"]["temperature"] == defaults.TEMPERATURE and info["defaults"]["top_p"] == defaults.TOP_P
    assert info["defaults"]["max_copy"] == defaults.MAX_COPY and info["defaults"]["length"] is None
    assert info["defaults"]["prefix"] == "分开" and info["prefixes"]


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<meta charset="utf-8">' in page.text and "/static/app.js" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "//cdn" not in r.text and "https://" not in r.text  # works offline
    assert "Noto Sans CJK SC" in client.get("/static/style.css").text  # a CJK fallback in the font stack


def test_generate_matches_the_decoders(client, engine):
    r = post(client, prefix="分开", length=40, num_samples=3, temperature=0.8, top_k=5, seed=11, max_copy=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checkpoint"] == "run/best.pt" and body["prefix"] == "分开"
    assert body["decoding"]["strategy"] == "sample" and body["decoding"]["seed"] == 11
    import torch

    from charlm.generate.verse import Shape

    want = dec.generate(engine.model, engine.vocab, "分开", 40, dec.Decoding(True, 0.8, 5), 3,
                        torch.Generator().manual_seed(11), shape=Shape(tidy=True))
    assert [s["text"] for s in body["samples"]] == [s.text for s in want]
    assert [s["logprob"] for s in body["samples"]] == [round(s.logprob, 4) for s in want]
    assert all(0 < len(s["text"]) <= 40 for s in body["samples"])


def test_defaults_follow_generate(client):
    from charlm import defaults

    d = post(client, prefix="分开").json()["decoding"]
    assert d["strategy"] == "sample" and d["temperature"] == defaults.TEMPERATURE and d["top_p"] == defaults.TOP_P
    assert d["max_copy"] == defaults.MAX_COPY and d["song_end"]
    assert d["stop_after"] == defaults.LENGTH and d["length"] == defaults.LENGTH + defaults.LINE_END_MARGIN
    assert not post(client, prefix="分开", length=50).json()["decoding"]["song_end"]  # a length given runs on


def test_seed_repeats_and_is_reported_when_random(client):
    a = post(client, prefix="分开", length=30, strategy="sample", seed=3).json()
    b = post(client, prefix="分开", length=30, strategy="sample", seed=3).json()
    assert a["samples"] == b["samples"]
    c = post(client, prefix="分开", length=30, strategy="sample").json()
    again = post(client, prefix="分开", length=30, strategy="sample", seed=c["decoding"]["seed"]).json()
    assert again["samples"] == c["samples"]


def test_greedy_and_beam_search(client):
    g = post(client, prefix="不分开", length=20, strategy="greedy", max_copy=0).json()
    assert g["decoding"]["label"] == "greedy"
    assert post(client, prefix="不分开", length=20, strategy="greedy", max_copy=0).json()["samples"] == g["samples"]
    b = post(client, prefix="不分开", length=20, num_beams=3, num_samples=3).json()
    assert b["decoding"]["strategy"] == "beam"
    logprobs = [s["logprob"] for s in b["samples"]]
    assert logprobs == sorted(logprobs, reverse=True)


def test_unknown_characters_can_be_skipped(client):
    body = post(client, prefix="分€开", length=5, unknown="skip").json()
    assert body["prefix"] == "分开" and body["dropped"] == ["€"]


def test_lines_stop_the_sample(client):
    body = post(client, prefix="分开", length=300, lines=2, strategy="sample", seed=1, num_samples=4).json()
    assert all(("分开" + s["text"]).count("\n") <= 1 for s in body["samples"])


# --- bad requests: always a 4xx with one line, never a 500 -----------------------------------

BAD_BODIES = [
    ({"prefix": "分开", "length": -1}, "length"),
    ({"prefix": "分开", "length": 10**9}, "length"),
    ({"prefix": "分开", "top_p": 7}, "top_p"),
    ({"prefix": 5}, "Prefix (prefix) must be a string"),
    ({"prefix": "分开", "temperature": "hot"}, "(temperature) must be a number"),
    ({}, "(prefix) is missing"),
    ({"prefix": None}, "(prefix) is missing"),
    ({"prefix": ""}, "Prefix is empty"),
    ({"prefix": "分" * 201}, "at most 200"),
    ({"prefix": "分€开"}, "'€'"),
    ({"prefix": "€", "unknown": "skip"}, "nothing is left"),
    ({"prefix": "分开", "unknown": "ignore"}, "unknown characters (unknown) must be"),
    ({"prefix": "分开", "num_samples": 0}, "num_samples"),
    ({"prefix": "分开", "num_samples": 1000}, "num_samples"),
    ({"prefix": "分开", "top_p": 0}, "top_p"),
    ({"prefix": "分开", "top_k": -1}, "top_k"),
    ({"prefix": "分开", "top_k": 2.5}, "only the k likeliest (top_k) must be an integer"),
    ({"prefix": "分开", "length": True}, "characters (length) must be an integer"),
    ({"prefix": "分开", "length": "100"}, "characters (length) must be an integer"),
    ({"prefix": "分开", "temperature": 0}, "temperature"),
    ({"prefix": "分开", "repetition_penalty": -1}, "repetition_penalty"),
    ({"prefix": "分开", "strategy": "wild"}, "strategy"),
    ({"prefix": "分开", "strategy": "greedy", "temperature": 0.5}, "randomness (temperature) applies to sampling only"),
    ({"prefix": "分开", "strategy": "beam"}, "num_beams"),
    ({"prefix": "分开", "strategy": "greedy", "num_samples": 2}, "would repeat it"),
    ({"prefix": "分开", "num_beams": 2, "num_samples": 3}, "at most beams (num_beams)"),
    ({"prefix": "分开", "num_beams": 99}, "beams (num_beams) must be at most"),
    ({"prefix": "分开", "num_beams": 2, "top_k": 3}, "(top_k) applies"),
    ({"prefix": "分开", "max_copy": -1}, "max_copy"),
    ({"prefix": "分开", "lines": -2}, "lines"),
    ({"prefix": "分开", "seed": -1}, "seed"),
    ({"prefix": "分开", "seed": 2**64}, "seed"),
    ({"prefix": "分开", "colour": "red"}, "unknown field 'colour'"),
    (["分开"], "JSON object"),
]


@pytest.mark.parametrize("body,fragment", BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_request_is_a_400_with_one_line(client, body, fragment):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and isinstance(error, str) and "\n" not in error
    assert fragment in error and "Traceback" not in error


def test_malformed_body_and_wrong_routes(client):
    r = client.post("/api/generate", content=b"{prefix: ", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/api/generate", content=b"x" * (RequestLimits().body_bytes + 1),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()
    assert client.get("/api/nowhere").json() == {"error": "Not Found"}
    assert client.get("/api/generate").status_code == 405


@pytest.mark.parametrize("query,fragment", [
    ({"prefix": "分开", "length": "-1"}, "length"),
    ({"prefix": "分开", "temperature": "hot"}, "(temperature) must be a number"),
    ({"prefix": "分开", "top_p": "7"}, "top_p"),
    ({"length": "10"}, "(prefix) is missing"),
    ({"prefix": "分开", "colour": "red"}, "unknown field"),
])
def test_bad_stream_request_is_a_400_before_streaming(client, query, fragment):
    r = client.get("/api/generate/stream", params=query)
    assert r.status_code == 400 and fragment in r.json()["error"]
    r = client.get("/api/generate/stream?prefix=a&prefix=b")
    assert r.status_code == 400 and "more than once" in r.json()["error"]


# --- streaming -------------------------------------------------------------------------------

def test_stream_sends_start_characters_in_order_then_end(client):
    query = {"prefix": "分开", "length": 50, "num_samples": 3, "strategy": "sample", "seed": 7, "top_k": 4}
    r = client.get("/api/generate/stream", params=query)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    assert evs[0][0] == "start" and evs[-1][0] == "end"
    assert {name for name, _ in evs[1:-1]} == {"message"} and len(evs) > 10  # many events, not one at the end
    streamed = ["".join(parts) for parts in zip(*(data["text"] for _, data in evs[1:-1]))]
    final = [s["text"] for s in evs[-1][1]["samples"]]
    assert all(0 < len(t) <= 50 for t in final)
    for s, f in zip(streamed, final):  # the final text is the streamed one without trailing blanks (tidy)
        assert s.startswith(f) and not s[len(f):].strip()
    body = {k: (int(v) if k in ("length", "num_samples", "seed", "top_k") else v) for k, v in query.items()}
    assert post(client, **body).json()["samples"] == evs[-1][1]["samples"]  # the same text as the JSON endpoint


def test_stream_of_beam_search_sends_the_beams(client):
    evs = events(client.get("/api/generate/stream", params={"prefix": "分开", "length": 20, "num_beams": 2,
                                                               "num_samples": 2}).text)
    streamed = ["".join(parts) for parts in zip(*(data["text"] for name, data in evs if name == "message"))]
    assert evs[-1][0] == "end" and streamed == [s["text"] for s in evs[-1][1]["samples"]] and streamed[0]


# --- concurrency, on a real server -----------------------------------------------------------

class Held(Engine):
    """An engine whose model waits at a gate (`release`) and records the rows of every call."""

    def __init__(self, path):
        super().__init__(path)
        self.release, self.rows = threading.Event(), []
        self.model.inner = _Gate(self.model.inner, self)


class _Gate(torch.nn.Module):
    def __init__(self, inner, engine):
        super().__init__()
        self.inner, self.engine = inner, engine

    def forward(self, X, state):
        self.engine.release.wait(30)
        self.engine.rows.append(X.shape[0])
        return self.inner(X, state)

    def begin_state(self, batch_size, device=None):
        return self.inner.begin_state(batch_size, device)


def wait_for(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_16_concurrent_generations_all_succeed_in_one_batch(tiny_run):
    engine = Held(tiny_run[0] / "best.pt")
    with LiveServer(create_app(engine)) as server:
        def one(i):
            return httpx.post(server.url + "api/generate", json={"prefix": "分开", "length": 100,
                                                                 "strategy": "sample", "seed": i}, timeout=60)
        with ThreadPoolExecutor(16) as pool:
            answers = [pool.submit(one, i) for i in range(16)]
            wait_for(lambda: server.app.state.scheduler.in_flight == 16)  # all queued while the model is held
            engine.release.set()
            answers = [a.result() for a in answers]
    assert [r.status_code for r in answers] == [200] * 16, [r.text for r in answers if r.status_code != 200][:1]
    assert all(0 < len(r.json()["samples"][0]["text"]) <= 100 for r in answers)
    assert len({r.json()["samples"][0]["text"] for r in answers}) > 1  # 16 seeds, not one answer copied
    assert max(engine.rows) >= 16  # one model call stepped all of them


def test_health_answers_during_a_long_generation(tiny_run):
    engine = Held(tiny_run[0] / "best.pt")
    with LiveServer(create_app(engine)) as server:
        result = {}
        worker = threading.Thread(target=lambda: result.update(r=httpx.post(
            server.url + "api/generate", json={"prefix": "分开", "length": 300}, timeout=60)))
        worker.start()
        try:
            wait_for(lambda: server.app.state.scheduler.in_flight == 1)
            health = httpx.get(server.url + "api/health", timeout=10)
            assert health.json() == {"status": "ok"}
            assert worker.is_alive() and not engine.release.is_set()  # answered while the generation was held
        finally:
            engine.release.set()
            worker.join(60)
    assert result["r"].status_code == 200 and result["r"].json()["samples"][0]["text"]


def test_a_client_leaving_stops_its_generation(tiny_run):
    engine = Held(tiny_run[0] / "best.pt")
    engine.release.set()
    with LiveServer(create_app(engine)) as server:
        with httpx.stream("GET", server.url + "api/generate/stream", timeout=30,
                          params={"prefix": "分开", "length": 2000, "num_samples": 8, "max_copy": 0}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 6:
                    break  # leave after a few events
        wait_for(lambda: server.app.state.scheduler.in_flight == 0)
    assert 0 < len(engine.rows) < 2000


def test_a_bug_is_a_500_with_one_line_not_a_traceback(tiny_run):
    class Broken(Engine):
        def describe(self, limits=RequestLimits()):
            raise ValueError("boom")

    with TestClient(create_app(Broken(tiny_run[0] / "best.pt")), raise_server_exceptions=False,
                    base_url="http://127.0.0.1") as c:
        r = c.get("/api/checkpoint")
    assert r.status_code == 500 and r.json() == {"error": "internal error: ValueError: boom"}


# --- the command -----------------------------------------------------------------------------

def test_serve_without_a_checkpoint_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--checkpoint", str(tmp_path / "none.pt")])
    assert_one_line_error(result, "does not exist")


def test_serve_on_a_busy_port_is_one_line(tiny_run):
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--checkpoint", str(tiny_run[0]), "--port", str(port),
                                          "--device", "cpu"])
    finally:
        sock.close()
    assert_one_line_error(result, f"port {port}", "in use")


def test_serve_prints_the_url_answers_and_stops_on_ctrl_c(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "serve", "--checkpoint", str(tiny_run[0]), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=default_sigint)
    try:
        line = proc.stdout.readline()
        assert "run/best.pt" in line and "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("on ", 1)[1].split()[0]
        assert httpx.get(url + "api/health", timeout=10).json() == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip() == "interrupted", err
