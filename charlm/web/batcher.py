"""The one decoding loop behind `charlm serve`: every request joins a running batch, continuously.

    submit(req) ─> bounded queue ─> loop thread: admit (read prefix) ─> Batch.step() ─> done: future.set_result
                       │ full: Busy (503)            ^      one model call per step for all rows      │
                       │                             └──── cancelled requests leave at the next step ─┘
                       └─ beam search, song forms, sections ─> a small pool, one model call at a time (engine's lock)

Requests join at the next step and leave when done, each with its own prefix, settings, guard and seed
(charlm/generate/stepper.py), so a request's text is the text it would get alone. `PerRequest` is the
old path, one request per thread, kept for benchmarks/serve_load.py's comparison (`--scheduler`).
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from charlm.errors import CharlmError
from charlm.generate.request import GenerationRequest, read_first, run_request
from charlm.generate.sections import write_songs
from charlm.generate.stepper import Batch, steppable


class Busy(Exception):
    """The queue is full: the client should try again later (503, Retry-After)."""


class Cancelled(Exception):
    """The client went away: its request stopped."""


@dataclass(eq=False)
class Job:
    """One submitted request: its settings, where its steps go, and its result (a Future of samples)."""

    req: GenerationRequest
    guard: object = None
    on_step: object = None
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return self.req.num_samples * self.req.decoding.num_beams

    def cancel(self) -> None:
        """Stop at the next step (safe from any thread; a finished job ignores it)."""
        self.cancelled.set()


class _Cancellable(torch.nn.Module):
    """The model for one request run on its own: each call first checks whether the client has left."""

    def __init__(self, model, job: Job):
        super().__init__()
        self.inner, self.job = model, job

    def forward(self, X, state):
        if self.job.cancelled.is_set():
            raise Cancelled
        return self.inner(X, state)

    def begin_state(self, batch_size, device=None):
        return self.inner.begin_state(batch_size, device)


class _Scheduler:
    """What both schedulers share: the bounded count of requests in the server, the one-request runner."""

    def __init__(self, engine, limits):
        self.engine, self.limits = engine, limits
        self._count_lock = threading.Lock()
        self.in_flight = 0

    def _reserve(self) -> None:
        with self._count_lock:
            if self.in_flight >= self.limits.queue:
                raise Busy(f"the server is busy ({self.in_flight} requests in progress); try again shortly")
            self.in_flight += 1

    def _release(self, _future=None) -> None:
        with self._count_lock:
            self.in_flight -= 1

    def _new_job(self, req, guard, on_step) -> Job:
        self._reserve()
        job = Job(req, guard, on_step)
        job.future.add_done_callback(self._release)
        return job

    def _run_alone(self, job: Job) -> None:
        """One request from start to end through decode.generate (under the engine's one-call lock)."""
        if job.cancelled.is_set():
            job.future.set_exception(Cancelled())
            return
        try:
            generator = torch.Generator(device=self.engine.device).manual_seed(job.req.seed)
            model, req = _Cancellable(self.engine.model, job), job.req
            forms = self.engine.forms() if (req.form.active or req.sections) else None
            if req.sections:
                samples = write_songs(model, self.engine.vocab, req, req.prefixes[0], generator, self.engine.device,
                                      guard=job.guard, forms=forms)
            else:
                samples = run_request(model, self.engine.vocab, req, req.prefixes[0], generator,
                                      self.engine.device, guard=job.guard, on_step=job.on_step, forms=forms)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting request, whatever it is
            job.future.set_exception(e)
        else:
            job.future.set_result(samples)


class PerRequest(_Scheduler):
    """Today's path before the batch: each request in its own worker thread, interleaved step by step."""

    def __init__(self, engine, limits):
        super().__init__(engine, limits)
        self.pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="charlm-generate")

    def submit(self, req: GenerationRequest, guard=None, on_step=None) -> Job:
        job = self._new_job(req, guard, on_step)
        self.pool.submit(self._run_alone, job)
        return job

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Batcher(_Scheduler):
    """The loop thread that steps every sampling and greedy request in one batch (see the module docstring)."""

    def __init__(self, engine, limits):
        super().__init__(engine, limits)
        self.batch = Batch(engine.model, engine.device)
        self.pending: deque[Job] = deque()
        self.wake = threading.Condition()
        self.running: dict[int, tuple[Job, object]] = {}  # id(streams) -> (job, streams)
        self.stopping = False
        self.solo = ThreadPoolExecutor(max_workers=limits.solo_workers, thread_name_prefix="charlm-alone")
        self.thread = threading.Thread(target=self._loop, name="charlm-batch", daemon=True)
        self.thread.start()

    def submit(self, req: GenerationRequest, guard=None, on_step=None) -> Job:
        """Queue a request (Busy when the server holds limits.queue already); its future gives the samples."""
        job = self._new_job(req, guard, on_step)
        if not steppable(req) or req.sections:
            self.solo.submit(self._run_alone, job)
            return job
        with self.wake:
            self.pending.append(job)
            self.wake.notify()
        return job

    def close(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.solo.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wake:
                    while not self.pending and not self.running and not self.stopping:
                        self.wake.wait()
                    if self.stopping:
                        break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self.running:
                        self._finish(self.batch.step())
                except Exception as e:  # a bug of ours: fail every request in the batch, keep serving
                    self._fail_all(e)
        self._fail_all(Cancelled())

    def _admit(self) -> None:
        """Start the queued requests that fit in the batch's rows (first come, first served)."""
        while True:
            with self.wake:
                if not self.pending:
                    return
                job = self.pending[0]
                if self.running and self.batch.rows() + job.rows > self.limits.batch_rows:
                    return
                self.pending.popleft()
            if job.cancelled.is_set():
                job.future.set_exception(Cancelled())
                continue
            try:
                text, req = read_first(job.req)  # a context is read before the prefix
                streams = self.batch.start(self.engine.vocab, req, text, job.guard, job.on_step)
            except CharlmError as e:
                job.future.set_exception(e)
                continue
            if streams.done:  # length 0: nothing to step
                job.future.set_result(streams.samples())
                continue
            self.batch.add(streams)
            self.running[id(streams)] = (job, streams)

    def _drop_cancelled(self) -> None:
        gone = [s for job, s in self.running.values() if job.cancelled.is_set()]
        if gone:
            self.batch.remove(gone)
            for s in gone:
                job, _ = self.running.pop(id(s))
                job.future.set_exception(Cancelled())

    def _finish(self, done) -> None:
        for s in done:
            job, _ = self.running.pop(id(s))
            if s.error is not None:
                job.future.set_exception(s.error)
            else:
                job.future.set_result(s.samples())

    def _fail_all(self, error: Exception) -> None:
        self.batch.remove([s for _, s in self.running.values()])
        jobs = [job for job, _ in self.running.values()]
        self.running.clear()
        with self.wake:
            jobs += list(self.pending)
            self.pending.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)


SCHEDULERS = {"batch": Batcher, "per-request": PerRequest}
