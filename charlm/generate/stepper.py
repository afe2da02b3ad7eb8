"""Step-wise decoding of many requests in one batch: requests join at any step and leave when done.

`decode.generate` runs one request's streams from start to end. A `Batch` holds the streams of many
requests at once (`Streams`, one per request: its own prefix, decoding, copy guard, length and
seed) and advances all of them by one character per `step()`, with one model call per step for
every stream whose state has the same shape (all of them, for the recurrent nets):

    step t:  choose (per lane: requests with the same decoding, shape and guard, in one call)
             -> record each request's characters (on_step) -> done requests leave
             -> one model call for every remaining stream -> new logits

Each request draws its random numbers from its own generator, for its rows only, in the order a lone
`decode.generate` would, so a request's text does not depend on what else is in the batch. The model
call is padded to a multiple of ROW_MULTIPLE rows: CPU matrix kernels for 1-3 (and, with 2 threads,
5-11) rows round differently from larger ones, while every multiple of 4 gave the same bits per row
whatever the batch (measured on nn.RNN, GRU, LSTM; docs/serve.md). Beam search and song forms are
not stepped here (they reorder their streams as they go); they run through `decode.generate`.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.generate.decode import Sample, _batch_dims, _cat, _select, _shape_key
from charlm.generate.prefix import encode_prefix
from charlm.generate.rules import Rules
from charlm.generate.sampling import Sampler, apply_repetition_penalty, greedy, sample_from_logits
from charlm.generate.verse import ShapeState

ROW_MULTIPLE = 4  # model calls get a multiple of this many rows (see the module's docstring)


def steppable(req) -> bool:
    """Whether a request can share a batch: sampling or greedy, no song form (beam search reorders its streams)."""
    return req.decoding.num_beams == 1 and not req.form.active


class _LaneRules(Rules):
    """`Rules` over the rows of several requests: `concat` joins them (same guard and shape), `reorder` keeps rows."""

    @staticmethod
    def concat(parts: list[Rules]) -> "_LaneRules":
        out = _LaneRules.__new__(_LaneRules)
        out.__dict__.update(parts[0].__dict__)
        for name in ("gave_way", "alive", "end") + (("window", "count") if out.guard is not None else ()):
            setattr(out, name, np.concatenate([getattr(p, name) for p in parts]))
        if out.lines is not None:
            out.lines = ShapeState.concat([p.lines for p in parts])
            out.alive, out.end = out.lines.alive, out.lines.end
        return out

    def reorder(self, rows: np.ndarray) -> None:
        # Rules.reorder serves beams, whose rows keep their count and, without a shape, alive and end
        if self.guard is not None:
            self.count = self.count[rows]
        if self.lines is None:
            self.alive, self.end = self.alive[rows], self.end[rows]
        super().reorder(rows)


class Streams:
    """One request's streams, decoded a step at a time: its generator, its history, its samples at the end.

    `on_step(indices)` sees each step's characters, a (streams,) tensor with -1 for a stream that has
    ended (as decode.generate's); an exception it raises ends this request alone (`error`).
    """

    def __init__(self, model, vocab, req, prefix: str, guard=None, device="cpu", on_step=None, dims=None):
        self.req, self.prefix, self.on_step, self.vocab = req, prefix, on_step, vocab
        self.n, self.length, self.device = req.num_samples, req.length, torch.device(device)
        self.key = (req.decoding, req.shape, id(guard) if guard is not None else None)
        self.generator = torch.Generator(device=self.device).manual_seed(req.seed)
        self.t, self.error, self.tokens, self.logprobs = 0, None, [], []
        self.done = self.length == 0
        encoded = encode_prefix(prefix, vocab)
        dims = _batch_dims(model, self.device) if dims is None else dims
        # the prefix is read once, then copied to every stream (as decode.generate primes)
        logits, state = model(torch.tensor([encoded], device=self.device), model.begin_state(1, self.device))
        copies = torch.zeros(self.n, dtype=torch.long, device=self.device)
        self.logits = logits[:, -1].index_select(0, copies)  # (n, vocab)
        self.state = _select(state, dims, copies)
        self.next = None  # (n,): the characters chosen at the last step
        self.seen = None
        if req.decoding.repetition_penalty != 1.0:
            self.seen = torch.zeros(self.n, len(vocab), dtype=torch.bool, device=self.device)
            self.seen[:, encoded] = True
        rules = Rules(guard, req.shape, [prefix] * self.n, [encoded] * self.n, vocab, self.length)
        self.rules = rules if rules.active else None
        self.end = np.full(self.n, self.length)
        self.gave_way = np.zeros(self.n, dtype=np.int64)

    def record(self, nxt: torch.Tensor, logprob: torch.Tensor, keep: np.ndarray | None) -> None:
        """Take this step's characters (n,), their log-probabilities and which streams keep theirs."""
        self.tokens.append(nxt)
        self.logprobs.append(logprob)
        self.next, self.t = nxt, self.t + 1
        if self.on_step is not None:
            try:
                self.on_step(nxt if keep is None else nxt.masked_fill(~torch.from_numpy(keep).to(nxt.device), -1))
            except Exception as e:  # the caller's way to stop this request (a client that left)
                self.error, self.done = e, True
        if self.t >= self.length or (keep is not None and not keep.any()):
            self.done = True

    def samples(self) -> list[Sample]:
        """The request's samples, tidy as decode.generate's."""
        if not self.tokens:
            return [Sample(self.prefix, "", []) for _ in range(self.n)]
        tokens = torch.stack(self.tokens, 1).tolist()  # (n, steps)
        logprobs = torch.stack(self.logprobs, 1).tolist()
        out = []
        for i, (t, lp) in enumerate(zip(tokens, logprobs)):
            end = int(self.end[i])
            text = self.vocab.decode(t[:end])
            if self.req.shape.tidy:  # a sample never ends in blank space
                text = text.rstrip()
            out.append(Sample(self.prefix, text, lp[:len(text) if self.req.shape.tidy else end],
                              int(self.gave_way[i])))
        return out


class _Lane:
    """Requests decoded with the same settings, shape and guard: one penalty, one ban, one draw per step."""

    def __init__(self, key):
        self.key, self.jobs, self.rules, self.seen = key, [], None, None

    def add(self, job: Streams) -> None:
        self.jobs.append(job)
        if job.rules is not None:
            self.rules = _LaneRules.concat([job.rules] if self.rules is None else [self.rules, job.rules])
        if job.seen is not None:
            self.seen = job.seen if self.seen is None else torch.cat([self.seen, job.seen])
        job.rules = job.seen = None  # the lane holds them now

    def remove(self, gone: set) -> None:
        """Drop the requests whose ids are in `gone`, handing each its ends and counts first."""
        rows, offset, kept = [], 0, []
        for job in self.jobs:
            if id(job) in gone:
                if self.rules is not None:
                    job.end = np.array(self.rules.end[offset:offset + job.n])
                    job.gave_way = self.rules.gave_way[offset:offset + job.n].copy()
            else:
                rows.extend(range(offset, offset + job.n))
                kept.append(job)
            offset += job.n
        self.jobs = kept
        index = np.array(rows, dtype=np.int64)
        if self.rules is not None and kept:
            self.rules.reorder(index)
        if self.seen is not None and kept:
            self.seen = self.seen[torch.from_numpy(index).to(self.seen.device)]

    def step(self) -> None:
        """Choose every row's next character and hand each request its own."""
        decoding = self.key[0]
        logits = self.jobs[0].logits if len(self.jobs) == 1 else torch.cat([j.logits for j in self.jobs])
        scores = apply_repetition_penalty(logits, self.seen, decoding.repetition_penalty) \
            if self.seen is not None else logits
        if self.rules is not None:
            scores = self.rules.ban(scores)
        if decoding.sample:
            # each request's rows draw from its own generator, as a lone generate() would
            uniform = torch.cat([torch.rand(j.n, 1, generator=j.generator, device=j.device) for j in self.jobs])
            nxt = sample_from_logits(Sampler(decoding.temperature, decoding.top_k, decoding.top_p).filtered(scores),
                                     uniform=uniform)
        else:
            nxt = greedy(scores)
        logprob = logits.float().log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)  # (rows,)
        if self.seen is not None:
            self.seen.scatter_(1, nxt[:, None], True)
        keep = self.rules.step(nxt) if self.rules is not None else None
        offset = 0
        for job in self.jobs:
            rows = slice(offset, offset + job.n)
            job.record(nxt[rows], logprob[rows], keep[rows] if keep is not None else None)
            offset += job.n


class _Cohort:
    """Requests whose model states have the same shape: one model call per step for all their rows."""

    def __init__(self, key, jobs, state, dims):
        self.key, self.jobs, self.dims = key, jobs, dims
        self.state = self._padded(state, sum(j.n for j in jobs))

    def _padded(self, state, rows: int):
        pad = -rows % ROW_MULTIPLE
        if not pad:
            return state
        index = torch.cat([torch.arange(rows), torch.zeros(pad, dtype=torch.long)]).to(self.jobs[0].device)
        return _select(state, self.dims, index)

    def rows(self) -> int:
        return sum(j.n for j in self.jobs)

    def real_state(self):
        """The state of the real rows only (without the padding)."""
        return _select(self.state, self.dims, torch.arange(self.rows(), device=self.jobs[0].device))

    def advance(self, model) -> None:
        """One model call: every request's last characters in, every request's next logits out."""
        x = torch.cat([j.next for j in self.jobs]) if len(self.jobs) > 1 else self.jobs[0].next
        pad = -len(x) % ROW_MULTIPLE
        if pad:
            x = torch.cat([x, x.new_zeros(pad)])
        logits, self.state = model(x[:, None], self.state)  # (rows, 1, vocab)
        offset = 0
        for job in self.jobs:
            job.logits = logits[offset:offset + job.n, -1]
            offset += job.n
        self.key = _shape_key(self.state, self.dims)


class Batch:
    """The streams of many requests, stepped together; `add` a request at any step, `step()` returns those done."""

    def __init__(self, model, device="cpu"):
        self.model, self.device = model, torch.device(device)
        self.dims = _batch_dims(model, self.device)
        self.lanes: dict = {}
        self.cohorts: list[_Cohort] = []

    @property
    def jobs(self) -> list[Streams]:
        return [j for c in self.cohorts for j in c.jobs]

    def rows(self) -> int:
        return sum(c.rows() for c in self.cohorts)

    def start(self, vocab, req, prefix: str, guard=None, on_step=None) -> Streams:
        """Read the request's prefix (one model call) and return its streams, ready to `add`."""
        return Streams(self.model, vocab, req, prefix, guard, self.device, on_step, self.dims)

    def add(self, job: Streams) -> None:
        self.lanes.setdefault(job.key, _Lane(job.key)).add(job)
        self._join(job.state, [job])
        job.state = None

    def _join(self, state, jobs: list[Streams]) -> None:
        key = _shape_key(state, self.dims)
        same = next((c for c in self.cohorts if c.key == key), None)
        if same is None:
            self.cohorts.append(_Cohort(key, jobs, state, self.dims))
            return
        self.cohorts.remove(same)
        merged = _cat([same.real_state(), state], self.dims)
        self.cohorts.append(_Cohort(key, same.jobs + jobs, merged, self.dims))

    def remove(self, jobs: list[Streams]) -> None:
        """Take requests out of the batch (done, or given up); their rows leave at once."""
        gone = {id(j) for j in jobs}
        if not gone:
            return
        for key, lane in list(self.lanes.items()):
            if any(id(j) in gone for j in lane.jobs):
                lane.remove(gone)
                if not lane.jobs:
                    del self.lanes[key]
        cohorts, self.cohorts = self.cohorts, []
        for c in cohorts:
            kept = [i for i, j in enumerate(c.jobs) if id(j) not in gone]
            if len(kept) == len(c.jobs):
                self.cohorts.append(c)
            elif kept:
                starts = np.cumsum([0] + [j.n for j in c.jobs])
                rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in kept]).to(self.device)
                self.cohorts.append(_Cohort(c.key, [c.jobs[i] for i in kept], _select(c.state, self.dims, rows),
                                            self.dims))

    def step(self) -> list[Streams]:
        """Advance every request by one character; returns the requests that are done (already removed)."""
        for lane in list(self.lanes.values()):
            lane.step()
        done = [j for j in self.jobs if j.done]
        self.remove(done)
        for c in self.cohorts:
            c.advance(self.model)
        self._merge_cohorts()
        return done

    def _merge_cohorts(self) -> None:
        """States that have come to the same shape (an n-gram context that has filled up) share one call."""
        keys = [c.key for c in self.cohorts]
        if len(set(keys)) == len(keys):
            return
        cohorts, self.cohorts = self.cohorts, []
        for c in cohorts:
            self._join(c.real_state(), c.jobs)
