"""Encoding a 100 MB text into an index array: a dictionary comprehension against charlm's vectorised encoder.

    python benchmarks/encode_speed.py                  # from the repository root
    python benchmarks/encode_speed.py --mb 20 --out /tmp/charlm-bench

The text is the default corpus repeated to `--mb` megabytes of UTF-8 (written
once under --out). Every method runs in a fresh subprocess that first reads
the text (and builds the vocabulary where the method is given one), then
resets the kernel's peak-RSS counter (/proc/self/clear_refs, 5) and records
VmRSS as its baseline; "peak above baseline" is VmHWM after the method minus
that baseline, with the method's result still alive.

    dict comprehension   [char_to_idx[c] for c in text]          (vocabulary given)
    Vocab.encode         charlm.data.vocab, searchsorted, int64 result (vocabulary given)
    encode_indices       charlm.data.encode, lookup table, uint16 result (vocabulary given)
    encode_indices i64   the same with an int64 result
    cache miss           corpus_key + load_encoded on an empty cache: builds the vocabulary,
                         the fingerprint and the .npy file chunk by chunk, then maps it
    cache hit            corpus_key + load_encoded again: hashes the file, maps the .npy
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ["dict comprehension", "Vocab.encode", "encode_indices", "encode_indices i64", "cache miss", "cache hit"]


def _status(field: str) -> int:
    """A /proc/self/status field in bytes."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(method: str, path: Path, cache: Path) -> dict:
    """Run one method in this (fresh) process and report seconds and peak RSS above the baseline."""
    import numpy as np

    from charlm.config import Config
    from charlm.data.cache import corpus_key, load_encoded
    from charlm.data.encode import encode_indices, index_dtype
    from charlm.data.vocab import Vocab

    os.environ["CHARLM_CACHE"] = str(cache)
    text = path.read_text(encoding="utf-8")
    config = Config(corpus=str(path))
    vocab = Vocab.build(text) if not method.startswith("cache") else None
    char_to_idx = vocab.char_to_idx if vocab else None
    reset = _reset_peak()
    baseline = _status("VmRSS")
    began = time.perf_counter()
    if method == "dict comprehension":
        result = [char_to_idx[c] for c in text]
    elif method == "Vocab.encode":
        result = vocab.encode(text)
    elif method == "encode_indices":
        result = encode_indices(text, vocab, index_dtype(len(vocab)))
    elif method == "encode_indices i64":
        result = encode_indices(text, vocab, np.int64)
    else:
        result = load_encoded(corpus_key(path, config), text, min_chars=0)
        if result.reused != (method == "cache hit"):
            raise SystemExit(f"{method}: the cache was {'reused' if result.reused else 'rebuilt'}")
        result = result.indices
    seconds = time.perf_counter() - began
    peak = _status("VmHWM")
    return {"method": method, "seconds": seconds, "peak_mb": (peak - baseline) / 1e6, "reset": reset,
            "chars": len(text), "dtype": str(getattr(result, "dtype", "list of int")),
            "baseline_mb": baseline / 1e6}


def make_text(out: Path, mb: float) -> Path:
    """The default corpus repeated to `mb` megabytes of UTF-8 (reused when already there)."""
    from charlm.data.corpus import read_text, resolve_corpus

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"corpus-{mb:g}MB.txt"
    target = int(mb * 1e6)
    if path.exists() and path.stat().st_size >= target:
        return path
    unit = read_text(resolve_corpus(None)).encode("utf-8")
    with open(path, "wb") as f:
        for _ in range(-(-target // len(unit))):
            f.write(unit)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--out", default="/tmp/charlm-bench")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.file), out / "cache")))
        return

    path = make_text(out, args.mb)
    cache = out / "cache"
    for old in cache.glob("*") if cache.exists() else []:
        old.unlink()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; text: {path}, {path.stat().st_size / 1e6:.1f} MB")
    rows = []
    for method in METHODS:
        done = subprocess.run([sys.executable, __file__, "--worker", method, "--file", str(path), "--out", str(out)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"characters: {rows[0]['chars']:,}; baseline RSS (text + vocabulary loaded) about {rows[0]['baseline_mb']:.0f} MB\n")
    base = rows[0]["seconds"]
    print(f"{'method':<22}{'seconds':>9}{'x dict':>9}{'peak RSS above baseline':>25}  result")
    for r in rows:
        note = "" if r["reset"] else "  (peak not reset: includes loading)"
        print(f"{r['method']:<22}{r['seconds']:>9.3f}{base / r['seconds']:>8.1f}x{r['peak_mb']:>21.0f} MB  {r['dtype']}{note}")


if __name__ == "__main__":
    main()
