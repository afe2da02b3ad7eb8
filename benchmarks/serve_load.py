"""Load on `charlm serve`: N concurrent clients x M requests each; throughput and p50/p95 latency.

    python benchmarks/serve_load.py --checkpoint checkpoints/RUN            # both schedulers, 1/4/16/64 clients
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/ --clients 16   # one running server

With --checkpoint it starts two servers on the same checkpoint, the batched loop (`--scheduler batch`,
the default) and the old one-thread-per-request path (`--scheduler per-request`), and prints one table
row per scheduler and client count, then the acceptance ratios at 16 clients. Loopback only and bounded
(at most 64 clients x 100 requests), so it cannot be turned on someone else's server. Every request is a
POST /api/generate with its own seed; a request that does not answer 200 counts as failed and is reported.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest ranks."""
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load(url: str, body: dict, clients: int, requests: int) -> dict:
    """Run `clients` x `requests` POSTs against `url`; returns throughput, latencies and failures."""
    api = url.rstrip("/") + "/api/"

    def client(c: int) -> list[tuple]:
        out = []
        with httpx.Client(timeout=600) as session:
            for r in range(requests):
                t0 = time.perf_counter()
                resp = session.post(api + "generate", json={**body, "seed": c * 1000 + r})
                seconds = time.perf_counter() - t0
                answer = resp.json()
                chars = sum(len(s["text"]) for s in answer["samples"]) if resp.status_code == 200 else 0
                out.append((seconds, resp.status_code, chars, answer.get("error", "")))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for per_client in pool.map(client, range(clients)) for x in per_client]
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[1] == 200]
    latencies = [r[0] for r in ok] or [float("nan")]
    failed = [r for r in results if r[1] != 200]
    return {"clients": clients, "ok": len(ok), "total": len(results), "wall": wall,
            "chars_per_s": sum(r[2] for r in ok) / wall, "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "failed": failed}


def start_server(checkpoint: str, scheduler: str, threads: int, device: str):
    """A `charlm serve` subprocess on a free port; returns (process, url)."""
    cmd = [sys.executable, "-m", "charlm", "serve", "--checkpoint", checkpoint, "--port", "0",
           "--scheduler", scheduler, "--threads", str(threads), "--device", device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"error: the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" on ", 1)[1].split()[0]


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['clients']} | {r['ok']}/{r['total']} | {r['chars_per_s']:,.0f} | "
            f"{r['p50']:.3f} | {r['p95']:.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="one running server (loopback only) instead of --checkpoint")
    ap.add_argument("--checkpoint", help="start both schedulers on this checkpoint and compare them")
    ap.add_argument("--clients", default="1,4,16,64", help="concurrent clients, comma-separated (each 1-64)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client (1-100)")
    ap.add_argument("--length", type=int, default=100, help="characters per sample")
    ap.add_argument("--num-samples", type=int, default=1, help="samples per request")
    ap.add_argument("--prefix", default="分开")
    ap.add_argument("--max-copy", type=int, default=None, help="copy guard (default: the server's default)")
    ap.add_argument("--threads", default="1,1", help="torch threads of the batch, per-request servers")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    if not all(1 <= c <= 64 for c in counts) or not 1 <= args.requests <= 100:
        ap.error("--clients must be 1-64 and --requests 1-100")
    if bool(args.url) == bool(args.checkpoint):
        ap.error("give --url or --checkpoint")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        ap.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))})")
    body = {"prefix": args.prefix, "length": args.length, "num_samples": args.num_samples, "strategy": "sample"}
    if args.max_copy is not None:
        body["max_copy"] = args.max_copy
    servers, procs = ([("server", args.url)] if args.url else []), []
    try:
        if args.checkpoint:
            for name, threads in zip(("batch", "per-request"), args.threads.split(",")):
                proc, url = start_server(args.checkpoint, name, int(threads), args.device)
                procs.append(proc)
                servers.append((name, url))
        results = {}
        for name, url in servers:
            info = httpx.get(url + "api/checkpoint", timeout=30).json()
            httpx.post(url + "api/generate", json={**body, "seed": 0}, timeout=300)  # warm up (guard index, caches)
            for c in counts:
                results[name, c] = load(url, body, c, args.requests)
        return report(info, args, servers, counts, results)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(60)


def report(info, args, servers, counts, results) -> int:
    print(f"checkpoint {info['name']} ({info['model']}); {args.requests} requests per client, "
          f"{args.length} chars x {args.num_samples} sample(s), sampling; {os.cpu_count()} CPUs")
    print("| scheduler | clients | ok | chars/s | p50 s | p95 s |\n|---|---:|---:|---:|---:|---:|")
    for name, _ in servers:
        for c in counts:
            print(row(name, results[name, c]))
    if ("batch", 16) in results and ("per-request", 16) in results:
        speedup = results["batch", 16]["chars_per_s"] / results["per-request", 16]["chars_per_s"]
        print(f"16 clients: batch/per-request throughput {speedup:.1f}x (goal >= 10x)", end="")
        if ("batch", 1) in results:
            print(f"; batch p95 / lone p95 {results['batch', 16]['p95'] / results['batch', 1]['p95']:.2f}x "
                  "(goal <= 1.5x)", end="")
        print()
    failed = [(k, r["failed"][0]) for k, r in results.items() if r["failed"]]
    for k, f in failed:
        print(f"failed at {k}: first {f[1]} {f[3]}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
