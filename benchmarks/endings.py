"""How samples end with default settings: at a line end, or mid-line (issue #27's clean endings).

    python benchmarks/endings.py /tmp/lyrics-run /tmp/runs/ci /tmp/runs/sonnets --samples 50

For each run it draws N samples from its default prefix three ways and counts the mid-line endings:
`generate` (the CLI's default: the corpus's own form where it has one), `plain` (the server's batch:
no form, a line end past 100 characters), and `before` (the old default: at most 100 characters,
stopping only at a song's end). A sample ends at a line end when its stream stopped at a line break
(a song's end, the line count, or the first line break past 100 characters), when the length limit
cut it back to one, or when its form was complete.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from charlm import defaults
from charlm.generate.formed import run_forms
from charlm.generate.request import make_request, run_request
from charlm.generate.verse import Shape
from charlm.run.checkpoint import default_prefixes, open_checkpoint


def _mid_line(samples, raw, cap) -> int:
    """Samples whose text stops inside a line: the stream ran to the cap and no line break follows the text."""
    count = 0
    for s, chars in zip(samples, raw):
        if s.form is not None:
            count += not s.form.get("complete")
            continue
        if -1 in chars[:cap] or len(chars) < cap:  # stopped by a line break (reported as -1)
            continue
        rest = "".join(c for c in chars[len(s.text):] if c != -1).lstrip(" ")
        count += not rest.startswith("\n")
    return count


def measure(path: str, n: int, seed: int) -> dict:
    run = open_checkpoint(path, "cpu")
    prefix = default_prefixes(run.payload, run.vocab)[0]
    forms = run_forms(run.payload)
    req = replace(make_request(num_samples=n, seed=seed), prefixes=(prefix,))
    out = {"run": path, "prefix": prefix}
    settings = {"generate": (req, forms), "plain": (req, None),
                "before": (replace(req, length=defaults.LENGTH, shape=Shape(song_end=True, tidy=True)), None)}
    for name, (r, f) in settings.items():
        steps = []
        gen = torch.Generator().manual_seed(seed)
        on_step = None if f is not None else (lambda idx: steps.append(idx.tolist()))
        samples = run_request(run.model, run.vocab, r, prefix, gen, "cpu", forms=f, on_step=on_step)
        raw = [[run.vocab.idx_to_char[t[i]] if t[i] >= 0 else -1 for t in steps] for i in range(len(samples))]
        out[name] = (_mid_line(samples, raw, r.length), len(samples))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | prefix | generate (mid-line / samples) | plain | before |")
    print("|---|---|---:|---:|---:|")
    for path in args.runs:
        m = measure(path, args.samples, args.seed)
        cells = " | ".join(f"{m[k][0]} / {m[k][1]}" for k in ("generate", "plain", "before"))
        print(f"| {m['run']} | {m['prefix']!r} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
