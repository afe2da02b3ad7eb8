"""Do generated pieces keep their form, and what does it cost? Prints the table of docs/forms.md.

Not a test: it prints figures for trained runs (train them first, each with no flags):

    python train.py --out runs/lyrics                                   # the lyrics (default corpus)
    python train.py --corpus ../shared/data/songci.txt.gz --out runs/ci
    python train.py --corpus ../shared/data/sonnets.txt.gz --out runs/sonnets
    python benchmarks/forms.py --lyrics runs/lyrics --ci runs/ci --sonnets runs/sonnets

Per run (any of the three may be left out):
  lyrics   50 samples from 分开 and 不分开 with --rhyme-scheme AABB --lines 8, and 50 with no flag at all:
           lines, rhyme accuracy, adjacent rhyme rate (corpus's beside it), 1-3 character lines, fluency cost;
  ci       for each of the 10 commonest tune names, 20 samples with --form NAME: format accuracy, rhyme
           accuracy, characters inside verbatim copies of 8+ characters of the corpus, fluency cost;
  sonnets  20 samples of the 14-line form: rhyme accuracy by the CMU dictionary, fluency cost;
  speed    64 streams of 200 characters, formed (--line-lengths from the corpus) against unformed.
Fluency cost = mean log-prob per character of unconstrained samples (same prefixes, same decoding, same
length in characters) minus that of the formed ones, in nats; the model's own log-probabilities.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import torch

from charlm.forms import metrics
from charlm.forms.template import FormRequest
from charlm.generate.copyguard import guard_for_run
from charlm.generate.formed import run_forms
from charlm.generate.request import make_request, run_request
from charlm.run.checkpoint import open_checkpoint, training_corpus


def load(path):
    run = open_checkpoint(path, "cpu")
    forms = run_forms(run.payload, lambda: training_corpus(run.payload).text)
    return run, forms


def draw(run, forms, prefixes, n, seed, **kw):
    """`n` samples per prefix, decoded as `charlm generate` decodes them (the copy guard included)."""
    form = kw.pop("form", None)
    req = make_request(num_samples=n, seed=seed, form=form, **kw)
    g = torch.Generator().manual_seed(seed)
    guard = guard_for_run(run.path, run.payload, req.max_copy, lambda: training_corpus(run.payload))
    return run_request(run.model, run.vocab, req, prefixes, g, "cpu", forms=forms, guard=guard)


def per_char(samples):
    return statistics.mean(s.logprob / max(1, len(s.logprobs)) for s in samples)


def copied_share(samples, text, n=8):
    """Characters of the samples inside spans of n+ characters that occur verbatim in the corpus."""
    grams = {text[i:i + n] for i in range(len(text) - n + 1)}
    inside = total = 0
    for s in samples:
        body = s.text
        mark = [False] * len(body)
        for i in range(len(body) - n + 1):
            if body[i:i + n] in grams:
                mark[i:i + n] = [True] * n
        inside += sum(mark)
        total += len(body)
    return inside / max(1, total)


def distinct_2(samples):
    """Distinct character bigrams inside lines over all bigrams: how varied the text is."""
    grams = [s.text[i:i + 2] for s in samples for i in range(len(s.text) - 1) if "\n" not in s.text[i:i + 2]]
    return len(set(grams)) / max(1, len(grams))


def lines_of(s):
    return [x for x in (s.prefix + s.text).split("\n")]


def lyrics(path):
    run, forms = load(path)
    f = forms.forms
    prefixes = ["分开", "不分开"]
    rhymed = draw(run, forms, prefixes, 25, 1, lines=8, form=FormRequest(rhyme_scheme="AABB"))
    free = draw(run, forms, prefixes, 25, 1, length=max(len(s.text) for s in rhymed), max_copy=7)
    plain = draw(run, forms, prefixes, 25, 2)  # no flag at all: the corpus's own form when it rhymes
    hits = slots = adj = pairs = short = nlines = exact = 0
    for s in rhymed:
        ls = lines_of(s)
        exact += len(ls) == 8
        h, k = metrics.rhyme_hits(ls, "AABB" * 2, "zh")
        hits, slots = hits + h, slots + k
        a, b = metrics.short_lines(ls, "chars")
        short, nlines = short + a, nlines + b
    for s in plain:
        a, b = metrics.adjacent_rhymes(lines_of(s), "zh")
        adj, pairs = adj + a, pairs + b
    p_short = sum(metrics.short_lines(lines_of(s), "chars")[0] for s in plain)
    p_lines = sum(metrics.short_lines(lines_of(s), "chars")[1] for s in plain)
    print(f"lyrics ({path}): corpus adjacent rhyme {f.adjacent_rate:.1%} (shuffled {f.shuffled_rate:.1%}), "
          f"scheme {f.scheme}")
    print(f"  --rhyme-scheme AABB --lines 8, 50 samples: exactly 8 lines {exact}/50, rhyme accuracy "
          f"{hits / slots:.1%}, 1-3 character lines {short / nlines:.1%}, fluency cost "
          f"{per_char(free) - per_char(rhymed):+.3f} nat/char, distinct-2 {distinct_2(rhymed):.3f} "
          f"(unformed {distinct_2(free):.3f})")
    print(f"  no flag, 50 samples: adjacent rhyme {adj / max(1, pairs):.1%}, 1-3 character lines "
          f"{p_short / max(1, p_lines):.1%}")


def ci(path, names=10, n=20, candidates=None):
    run, forms = load(path)
    text = training_corpus(run.payload).text
    print(f"Song ci ({path}): {len(forms.forms.named)} named forms")
    print(f"  {'form':<8} {'format':>7} {'rhyme':>7} {'copied 8+':>10} {'fluency cost':>13} "
          f"{'distinct-2':>11} {'unformed':>9}")
    for named in forms.forms.named[:names]:
        asked = {"candidates": candidates} if candidates else {}
        formed = draw(run, forms, [""], n, 3, form=FormRequest(form=named.name, **asked))
        free = draw(run, forms, [named.name + "\n"], n, 3, length=len(named.template), max_copy=7)
        fmt = statistics.mean(metrics.format_accuracy(lines_of(s)[1:], named.template.split("\n")) for s in formed)
        hs = [metrics.rhyme_hits(lines_of(s)[1:], named.rhyme, "zh") for s in formed]
        rh = sum(h for h, _ in hs) / max(1, sum(k for _, k in hs))
        print(f"  {named.name:<8} {fmt:>7.1%} {rh:>7.1%} {copied_share(formed, text):>10.1%} "
              f"{per_char(free) - per_char(formed):>+13.3f} {distinct_2(formed):>11.3f} {distinct_2(free):>9.3f}")


def sonnets(path, n=20):
    run, forms = load(path)
    named = forms.forms.named[0]
    formed = draw(run, forms, ["When "], n, 4, form=FormRequest(form=named.name))
    free = draw(run, forms, ["When "], n, 4, length=statistics.mean(len(s.text) for s in formed).__int__(), max_copy=7)
    hs = [metrics.rhyme_hits(lines_of(s), named.rhyme, "en") for s in formed]
    print(f"sonnets ({path}): form {named.name!r} {named.rhyme}, {n} samples: rhyme accuracy "
          f"{sum(h for h, _ in hs) / max(1, sum(k for _, k in hs)):.1%} (CMU; guessed words are misses), "
          f"fluency cost {per_char(free) - per_char(formed):+.3f} nat/char")


def _words(text):
    return re.findall(r"[A-Za-z][A-Za-z'’-]*", text.lower())


def _longest_copy_words(sample_text, corpus_words_text):
    """The longest run of whole words of the sample that occurs verbatim in the corpus (in words)."""
    words = _words(sample_text)
    best = 0
    for i in range(len(words)):
        j = i + best + 1
        while j <= len(words) and " ".join(words[i:j]) in corpus_words_text:
            best, j = j - i, j + 1
    return best


def guard_sweep(path, limits=(7, 12, 16, 20, 24, 28, 0), n=20):
    """The copy guard on an alphabetic corpus: at each character limit, the share of generated words
    that are words of the training text (real-word rate) and the longest copied run of words."""
    run, forms = load(path)
    text = training_corpus(run.payload).text
    vocab_words = set(_words(text))
    joined = " ".join(_words(text))
    prefix = "When " if "W" in run.vocab.char_to_idx else run.vocab.idx_to_char[0]
    print(f"copy guard on {path}: {n} samples of 400 characters from {prefix!r}, default decoding")
    print(f"  {'--max-copy':>10} {'real words':>11} {'longest copy (words)':>21} {'median longest':>15}")
    for limit in limits:
        out = draw(run, forms, [prefix], n, 6, length=400, max_copy=limit)
        words = [w for s in out for w in _words(s.text)]
        real = sum(w in vocab_words for w in words) / max(1, len(words))
        longest = [_longest_copy_words(s.text, joined) for s in out]
        print(f"  {limit if limit else 'off':>10} {real:>11.1%} {max(longest):>21} {statistics.median(longest):>15}")


def speed(path):
    run, forms = load(path)
    for label, kw in (("unformed", dict(length=200)),
                      ("formed", dict(lines=12, form=FormRequest(line_lengths=tuple(
                          forms.forms.sample_lengths(12, __import__("random").Random(0))), candidates=1)))):
        start = time.perf_counter()
        out = draw(run, forms, ["分开" if "分" in run.vocab.char_to_idx else "The "], 64, 5, **kw)
        seconds = time.perf_counter() - start
        chars = sum(len(s.text) for s in out)
        print(f"speed ({label}, 64 streams): {chars / seconds:,.0f} chars/s ({chars} chars in {seconds:.2f} s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lyrics")
    ap.add_argument("--ci")
    ap.add_argument("--sonnets")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--candidates", type=int, default=0,
                    help="candidates per Song ci sample (default: generate's); 1 shows what choosing them buys")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lyrics:
        lyrics(args.lyrics)
        speed(args.lyrics)
    if args.ci:
        ci(args.ci, candidates=args.candidates)
    if args.sonnets:
        sonnets(args.sonnets)
        guard_sweep(args.sonnets)


if __name__ == "__main__":
    main()
