"""Load on a running `charlm serve`: N concurrent clients x M requests each; p50/p95 latency and characters/s.

    charlm serve --checkpoint checkpoints/RUN --port 8000 &
    python benchmarks/serve_load.py --clients 16 --requests 4 --length 100

Loopback only (the URL must point at 127.0.0.1, ::1 or localhost) and bounded (at most 64 clients x 100
requests), so it cannot be turned on someone else's server. Every request is a POST /api/generate with
its own seed; a request that does not answer 200 counts as failed and is reported.
"""

from __future__ import annotations

import argparse
import statistics
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000/", help="the running server (loopback only)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (1-64)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client (1-100)")
    ap.add_argument("--length", type=int, default=100, help="characters per sample")
    ap.add_argument("--num-samples", type=int, default=1, help="samples per request")
    ap.add_argument("--prefix", default="分开")
    ap.add_argument("--strategy", default="sample", choices=["greedy", "sample", "beam"])
    ap.add_argument("--max-copy", type=int, default=None, help="copy guard (default: the server's default)")
    args = ap.parse_args(argv)
    host = urlparse(args.url).hostname
    if host not in LOOPBACK:
        ap.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}), got {host}")
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 100):
        ap.error("--clients must be 1-64 and --requests 1-100")
    api = args.url.rstrip("/") + "/api/"
    body = {"prefix": args.prefix, "length": args.length, "num_samples": args.num_samples, "strategy": args.strategy}
    if args.strategy == "beam":
        body["num_beams"] = max(2, args.num_samples)
    if args.max_copy is not None:
        body["max_copy"] = args.max_copy
    try:
        info = httpx.get(api + "checkpoint", timeout=10).json()
    except httpx.HTTPError as e:
        print(f"error: no server at {args.url} ({e}); start one with: charlm serve", file=sys.stderr)
        return 2
    httpx.post(api + "generate", json={**body, "seed": 0}, timeout=120)  # warm up (copy-guard index, caches)

    def client(c: int) -> list[tuple[float, int, int]]:
        out = []
        with httpx.Client(timeout=300) as session:
            for r in range(args.requests):
                t0 = time.perf_counter()
                resp = session.post(api + "generate", json={**body, "seed": c * 1000 + r})
                seconds = time.perf_counter() - t0
                answer = resp.json()
                chars = sum(len(s["text"]) for s in answer["samples"]) if resp.status_code == 200 else 0
                out.append((seconds, resp.status_code, chars, answer.get("error", "")))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = [x for per_client in pool.map(client, range(args.clients)) for x in per_client]
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[1] == 200]
    latencies = [r[0] for r in ok]
    chars = sum(r[2] for r in ok)
    print(f"server {args.url} checkpoint {info['name']} ({info['model']}); {args.clients} clients x "
          f"{args.requests} requests, {args.length} chars x {args.num_samples} sample(s), {args.strategy}")
    print(f"ok {len(ok)}/{len(results)}  wall {wall:.2f} s  requests/s {len(ok) / wall:.1f}  "
          f"chars/s {chars / wall:.0f}")
    if latencies:
        print(f"latency s: p50 {percentile(latencies, 50):.3f}  p95 {percentile(latencies, 95):.3f}  "
              f"mean {statistics.fmean(latencies):.3f}  max {max(latencies):.3f}")
    failed = [r for r in results if r[1] != 200]
    if failed:
        print(f"failed {len(failed)}: first {failed[0][1]} {failed[0][3]}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
