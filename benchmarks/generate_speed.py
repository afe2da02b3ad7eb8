"""How fast is generation? The textbook's one-hot predictor against ours, and batched against sequential sampling.

Not a test: it prints figures. The models have hidden 256 and the default corpus's
vocabulary (2,583 characters) but UNTRAINED weights (seed 0): speed does not depend on
what the weights have learnt (arg-max and sampling cost the same whatever the
distribution; only top-p would, and it is not measured here).

    python benchmarks/generate_speed.py                 # torch's default thread count
    python benchmarks/generate_speed.py --threads 1     # steadier on a shared machine

(a) greedy, one stream: the chapter's `predict_rnn` (re-build the one-hot input of the
    last character, one model step, arg-max, append), on the scratch RNN's one-hot path,
    against our `predict` and `generate` on the same weights;
(b) sampling throughput of 64 streams in one batch;
(c) 64 samples of 200 characters as one batch against 64 generations one after another
    (both model families: the one-hot nn.RNN input costs a second vocabulary-sized product);
(d) the copy guard: 64 streams of the default decoding with the guard (an index of the whole
    corpus, --max-copy N) against without it, on the untrained nn.RNN and, with --checkpoint RUN,
    on a trained model (whose samples run into the corpus often, so the guard bans often).
Each figure is the best of --repeats runs (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from charlm.run.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint
from charlm.config import Config
from charlm.generate.copyguard import DEFAULT_MAX_COPY, CopyGuard
from charlm.data.corpus import load_corpus
from charlm.generate.decode import Rules, generate, predict
from charlm.generate.sampling import DEFAULT_DECODING, Decoding
from charlm.run.checkpoint import training_corpus
from charlm.models import build_model
from charlm.generate.verse import Shape

PREFIX = "分开"


def predict_rnn(prefix: str, num_chars: int, model, vocab) -> str:
    """The textbook's predictor, as the chapter writes it: one character per model call, the prefix included."""
    state = model.begin_state(1)
    output = [vocab.char_to_idx[prefix[0]]]
    for t in range(num_chars + len(prefix) - 1):
        X = torch.tensor([[output[-1]]])  # (1, 1): the model one-hot encodes it (onehot=True path)
        Y, state = model(X, state)  # Y: (1, 1, vocab)
        if t < len(prefix) - 1:
            output.append(vocab.char_to_idx[prefix[t + 1]])
        else:
            output.append(int(Y[0, -1].argmax()))
    return "".join(vocab.idx_to_char[i] for i in output)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy initialisation)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def output_layer_time(model, batch: int, steps: int, repeats: int) -> float:
    """Seconds for `steps` output-layer products of `batch` hidden rows: a bound no exact decoder can beat."""
    H = torch.randn(batch, model.W_hq.shape[0])  # (batch, hidden)
    return best_time(lambda: [H @ model.W_hq + model.b_q for _ in range(steps)], repeats)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--length", type=int, default=200, help="characters per sample")
    parser.add_argument("--streams", type=int, default=64, help="samples generated as one batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-copy", type=int, default=DEFAULT_MAX_COPY, help="the copy guard's N for (d)")
    parser.add_argument("--checkpoint", default=None, help="also time (d) on this trained run")
    parser.add_argument("--guard-only", action="store_true", help="time only (d)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = load_corpus(Config())
    vocab = corpus.vocab
    torch.manual_seed(0)
    textbook = build_model(Config(model="rnn-scratch", hidden=args.hidden, onehot=True), len(vocab)).eval()
    scratch = build_model(Config(model="rnn-scratch", hidden=args.hidden), len(vocab)).eval()
    scratch.load_state_dict(textbook.state_dict())  # same weights, row-lookup path
    rnn = build_model(Config(model="rnn", hidden=args.hidden), len(vocab)).eval()  # charlm's default family

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {platform.platform()}; {cpu_name()}; "
          f"{os.cpu_count()} CPUs, load average {load:.2f} at start")
    print(f"models: hidden {args.hidden}, vocabulary {len(vocab):,}, untrained weights (seed 0); "
          f"best of {args.repeats} runs; {args.length} characters per sample\n")
    L, N, R = args.length, args.streams, args.repeats

    with torch.inference_mode():
        if not args.guard_only:
            assert predict_rnn(PREFIX, L, textbook, vocab) == predict(PREFIX, L, scratch, vocab)  # same text, faster path
            t_book = best_time(lambda: predict_rnn(PREFIX, L, textbook, vocab), R)
            t_predict = best_time(lambda: predict(PREFIX, L, scratch, vocab), R)
            t_generate = best_time(lambda: generate(scratch, vocab, PREFIX, L), R)
            t_generate_rnn = best_time(lambda: generate(rnn, vocab, PREFIX, L), R)
            print("(a) greedy, one stream (characters/second)")
            print(f"    textbook predict_rnn, one-hot rnn-scratch : {L / t_book:10,.0f}")
            print(f"    charlm predict, rnn-scratch               : {L / t_predict:10,.0f}   ({t_book / t_predict:.1f}x)")
            print(f"    charlm generate, rnn-scratch              : {L / t_generate:10,.0f}   ({t_book / t_generate:.1f}x)")
            print(f"    charlm generate, rnn (nn.RNN)             : {L / t_generate_rnn:10,.0f}   ({t_book / t_generate_rnn:.1f}x)")
            print(f"    floor: the output layer alone             : {L / output_layer_time(scratch, 1, L, R):10,.0f}   "
                  "(H @ W_hq + b_q, which every exact decoder computes each step)")

            sampling = Decoding(sample=True)
            g = torch.Generator().manual_seed(0)
            print(f"\n(b) sampling (temperature 1), {N} streams in one batch (characters/second)")
            for name, model in (("rnn-scratch", scratch), ("rnn (nn.RNN)", rnn)):
                t = best_time(lambda: generate(model, vocab, PREFIX, L, sampling, N, g), R)
                print(f"    {name:<14}: {N * L / t:10,.0f}")
            print(f"    floor: the output layer alone: {N * L / output_layer_time(scratch, N, L, R):10,.0f}")

            print(f"\n(c) {N} samples of {L} characters, sampling: one batch against one at a time")
            for name, model in (("rnn-scratch", scratch), ("rnn (nn.RNN)", rnn)):
                t_batch = best_time(lambda: generate(model, vocab, PREFIX, L, sampling, N, g), R)
                t_seq = best_time(lambda: [generate(model, vocab, PREFIX, L, sampling, 1, g) for _ in range(N)], R)
                print(f"    {name:<14}: one batch {t_batch:7.3f} s, {N} one at a time {t_seq:7.3f} s: "
                      f"batched is {t_seq / t_batch:.1f}x faster")

        print(f"\n(d) copy guard --max-copy {args.max_copy}: {N} streams of {L} characters, {DEFAULT_DECODING.label()}")
        began = time.perf_counter()
        guard = CopyGuard.build(vocab.encode(corpus.text), args.max_copy, len(vocab))
        print(f"    index of the {len(corpus.text):,}-character corpus: {len(guard.keys):,} keys, "
              f"{guard.nbytes / 2**20:.2f} MiB, built in {time.perf_counter() - began:.3f} s")
        # the guard's own cost per step, in the worst case: every stream sits inside the corpus, so it bans at every step
        encoded = vocab.encode(corpus.text)
        starts = np.random.default_rng(0).integers(0, len(encoded) - 8 - 6 * L, N)
        for name, g, shape in (("guard", guard, Shape()), ("line rules", None, Shape(tidy=True)),
                               ("guard and line rules", guard, Shape(tidy=True))):
            rules = Rules(g, shape, [corpus.text[i: i + 8] for i in starts], [list(encoded[i: i + 8]) for i in starts],
                          vocab, 10 * L)
            logits = torch.randn(N, len(vocab))
            per_step = float("inf")
            for r in range(R):
                began = time.perf_counter()
                for k in range(L):
                    rules.ban(logits)
                    rules.step(torch.from_numpy(encoded[starts + 8 + r * L + k]))
                per_step = min(per_step, (time.perf_counter() - began) / L)
            print(f"    {name:<21}: {per_step * 1e6:6.0f} us per step for {N} streams (every stream inside the corpus)")
        cases = [("rnn, untrained", rnn, vocab, guard)]
        if args.checkpoint:
            payload = load_checkpoint(find_checkpoint(args.checkpoint))
            trained, tvocab, _ = model_from_checkpoint(payload)
            tcorpus = training_corpus(payload)
            cases.append((f"{payload['config']['model']}, trained", trained, tvocab,
                          CopyGuard.build(tvocab.encode(tcorpus.text), args.max_copy, len(tvocab))))
        shape = Shape(tidy=True)
        for name, model, v, g in cases:
            prefix = "分开" if not v.unknown("分开") else v.idx_to_char[0]
            runs = {"plain": {}, "tidy": {"shape": shape}, "guard": {"shape": shape, "guard": g}}
            best = {k: float("inf") for k in runs}
            for i in range(R + 1):  # interleaved, so a change of load hits the three alike; the first is a warm-up
                for k, extra in runs.items():
                    began = time.perf_counter()
                    generate(model, v, prefix, L, DEFAULT_DECODING, N, torch.Generator().manual_seed(0), **extra)
                    if i:
                        best[k] = min(best[k], time.perf_counter() - began)
            plain, off, on = best["plain"], best["tidy"], best["guard"]
            print(f"    {name:<16}: plain {N * L / plain:9,.0f} chars/s, tidy lines {N * L / off:9,.0f}, "
                  f"tidy lines + guard {N * L / on:9,.0f}: the guard adds {100 * (on / off - 1):+.1f}% time, "
                  f"guard and line rules {100 * (on / plain - 1):+.1f}%")


if __name__ == "__main__":
    main()
