"""Train one model across processes with PyTorch DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node 2 -m charlm train --batch-size 32 ...

    global minibatch (batch_size = 32 rows, as the sampler cuts it)
      rows  0..15  -> rank 0 ─┐ forward + backward on its own rows;
      rows 16..31  -> rank 1 ─┘ DDP averages the gradients, so every rank takes the same step

For consecutive sampling row i is stream i, so each rank owns a fixed set of
streams and carries their hidden state; for random sampling the rows are the
epoch's shuffled subsequences (the same shuffle on every rank, seeded by
(seed, epoch)), so each rank takes a disjoint slice of that order. With equal
shares, the mean of the ranks' mean losses is the mean over the whole
minibatch, and the run follows the single-process one step for step.

`from_env()` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK). Without
them it returns a single-process `ProcessGroup` whose every method does nothing, so
a run without torchrun creates no process group and behaves as before. The
trainer calls the same methods either way and never asks which one it has.
"""

from __future__ import annotations

import atexit
import inspect
import os
import re
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from charlm.errors import CharlmError

# How long a collective may wait for the other ranks before failing: long enough
# for rank 0 to validate and write a checkpoint while the others wait, short
# enough that a hung rank does not hold the rest for torch's default 30 minutes.
TIMEOUT_ENV = "CHARLM_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600


class Replicated(DistributedDataParallel):
    """DDP whose forward synchronises the gradients and which passes the model's other calls
    (`begin_state`, ...) to the wrapped model, so the trainer uses it like the model itself."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


class ProcessGroup:
    """This process's place in a run: rank, world size and the collectives the trainer needs.

    `ProcessGroup()` is the single process (rank 0 of 1, no process group); `from_env()`
    gives the torchrun one. Start it with `start(device)` before the first collective.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, launched: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.launched = launched  # started by torchrun: a process group is (or will be) created
        self.backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that prints, writes metrics.jsonl and checkpoints."""
        return self.rank == 0

    @property
    def started(self) -> bool:
        return self.backend is not None

    def __repr__(self) -> str:
        return (f"ProcessGroup(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
                f"backend={self.backend})")

    # --- before training ----------------------------------------------------
    def check_rendezvous(self, environ=None) -> None:
        """Under RANK / WORLD_SIZE the ranks meet at $MASTER_ADDR:$MASTER_PORT (torchrun sets both); refuse
        before anything is written when they are missing, rather than fail inside init_process_group."""
        environ = os.environ if environ is None else environ
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
        if self.launched and missing:
            raise CharlmError(f"$RANK and $WORLD_SIZE are set but ${' and $'.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not: launch distributed runs with torchrun, "
                              "or unset RANK and WORLD_SIZE to train in one process")

    def check_batch_size(self, batch_size: int) -> None:
        """The global --batch-size must split into equal shares, one per rank."""
        if batch_size % self.world_size:
            lower = batch_size - batch_size % self.world_size
            options = " or ".join(f"--batch-size {b}" for b in (lower, lower + self.world_size) if b > 0)
            raise CharlmError(f"--batch-size {batch_size} is the global batch size and must divide by the "
                              f"{self.world_size} processes torchrun started; use {options}")

    def silence_others(self) -> None:
        """Send stdout of every rank but 0 to /dev/null, so each line is printed once (errors still reach stderr)."""
        if self.launched and not self.is_main:
            sys.stdout = open(os.devnull, "w", encoding="utf-8")

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on the CPU, nccl on CUDA) and return this rank's device.

        On CUDA each rank takes the GPU of its local rank. The single process
        returns `device` unchanged and creates nothing.
        """
        if not self.launched:
            return device
        if device.type == "cuda":
            device = self._gpu()
            backend = "nccl"
        elif device.type == "cpu":
            backend = "gloo"
        else:
            raise CharlmError(f"distributed training runs on the CPU (gloo) or on CUDA GPUs (nccl), not on {device.type}")
        if not self.started:
            self.check_rendezvous()
            if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()):
                raise CharlmError("this PyTorch build has no torch.distributed gloo backend; run without torchrun")
            dist.init_process_group(backend, timeout=timedelta(seconds=collective_timeout()),
                                    device_id=device if backend == "nccl" else None)
            self.backend = backend
            atexit.register(self.close, together=False)
        return device

    def _gpu(self) -> torch.device:
        if not torch.cuda.is_available():
            raise CharlmError(f"rank {self.rank}: nccl (the backend for --device cuda) needs CUDA GPUs and this "
                              "machine has none visible; use --device cpu, which trains over gloo")
        if not dist.is_nccl_available():
            raise CharlmError("this PyTorch build has no nccl backend for CUDA training; use --device cpu (gloo)")
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise CharlmError(f"local rank {self.local_rank} has no GPU of its own: this machine has {count}; "
                              f"start at most --nproc_per_node {count} processes on it")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def close(self, together: bool = True) -> None:
        """Leave the process group; safe to call twice, and it runs at exit by itself.

        `together` first waits for every rank at a barrier, so that no rank tears
        its side down while rank 0 is still writing its last checkpoint. After
        a failure (the exit path) nobody waits: the others may be gone.
        """
        if self.started and dist.is_initialized():
            if together:
                try:
                    dist.barrier()
                except RuntimeError:
                    pass  # a rank already gone: leave anyway
            dist.destroy_process_group()
        self.backend = None

    def exit_now(self, status: int = 0) -> None:
        """End a torchrun rank at once with `status`, once everything is saved (a single process just returns).

        DDP keeps gloo's worker threads alive past destroy_process_group, and
        the interpreter's own teardown then aborts now and then (SIGABRT,
        "terminate called without an active exception"), which torchrun reports
        as a failed run although every epoch was saved. A rank that is done has
        nothing left to clean up, so it skips that teardown.
        """
        if not self.launched:
            return
        self.close(together=status == 0)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)

    # --- during training ------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train: wrapped in DDP when launched, so backward averages gradients across ranks.

        Keep the bare model for state_dict, evaluation and generation. Buffers are
        synchronised once at the start, not at every forward: nothing in our models
        changes them while training, and n-gram count tables would be costly to resend.
        """
        if not self.launched:
            return model
        if not any(p.requires_grad for p in model.parameters()):
            return model  # nothing learnt by gradient: nothing to synchronise
        device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
        # torch >= 2.13 names the switch forward_sync_buffers (broadcast_buffers is deprecated there);
        # older releases only know broadcast_buffers, whose False also skips the start-up copy: the
        # ranks build identical buffers from the same corpus and seed, so nothing is lost
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            return Replicated(model, device_ids=device_ids, forward_sync_buffers=False)
        return Replicated(model, device_ids=device_ids, broadcast_buffers=False)

    def shard(self, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global minibatch: rows [rank * B/R, (rank + 1) * B/R)."""
        share = X.shape[0] // self.world_size
        rows = slice(self.rank * share, (self.rank + 1) * share)
        return X[rows], Y[rows]  # (batch / world_size, num_steps) each

    def all_reduce_sum(self, *values):
        """The sums over all ranks of a few numbers (ints stay ints), e.g. (summed loss, characters)."""
        if not self.launched:
            return values
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._collective_device())
        self._collective(dist.all_reduce, t, op=dist.ReduceOp.SUM)
        return tuple(round(s) if isinstance(v, int) else s for v, s in zip(values, t.tolist()))

    def check_same(self, what: str, value) -> None:
        """Refuse to train when the ranks disagree about `value` (the corpus, the settings): on several
        machines each reads its own copy of the text and its own command line."""
        if not self.launched:
            return
        values = [None] * self.world_size
        try:
            dist.all_gather_object(values, value)
        except RuntimeError as e:
            raise explain(self, e) from None
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise CharlmError(f"rank{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))} of "
                              f"{self.world_size} {'have' if len(differ) > 1 else 'has'} another {what} than "
                              f"rank 0; give every machine the same text and the same charlm train flags")

    def run_once(self, fn):
        """Run `fn()` on rank 0 only and give its float result to every rank (the others wait for it)."""
        if not self.launched:
            return fn()
        t = torch.tensor([float(fn()) if self.is_main else 0.0], dtype=torch.float64, device=self._collective_device())
        self._collective(dist.broadcast, t, src=0)
        return t.item()

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def _collective(self, collective, *args, **kwargs) -> None:
        try:
            collective(*args, **kwargs)
        except RuntimeError as e:
            raise explain(self, e) from None


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def collective_timeout() -> float:
    """Seconds a collective waits for the other ranks ($CHARLM_DIST_TIMEOUT, default 600)."""
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**9:  # nan, inf and beyond-timedelta values too
        raise CharlmError(f"${TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return seconds


def lost_contact(group: ProcessGroup, error: BaseException) -> CharlmError:
    """The one-line error for a rank whose collective failed because another rank died or hung."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    reason = re.sub(r"^\[[^\]]*\]\s*", "", reason).split(". ")[0][:120]  # drop gloo's "[file.cc:537] " prefix
    return CharlmError(f"rank {group.rank} of {group.world_size} lost contact with the other processes ({reason}): "
                       f"another rank died or did not answer within ${TIMEOUT_ENV}={collective_timeout():g} s; "
                       "torchrun's report names the rank that failed")


# gloo reports a vanished peer as a plain RuntimeError; these words tell it from our own bugs
_LOST_PEER_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "connection refused",
                    "broken pipe", "timed out", "timeout")


def explain(group: ProcessGroup, error: BaseException) -> BaseException:
    """A failure inside a collective (for example DDP's gradient all-reduce in backward) as a CharlmError;
    any other exception is returned unchanged."""
    if not group.launched or not isinstance(error, RuntimeError):
        return error
    if isinstance(error, dist.DistError) or any(w in str(error).lower() for w in _LOST_PEER_WORDS):
        return lost_contact(group, error)
    return error


def _env_int(environ, name: str) -> int:
    raw = environ[name]
    try:
        return int(raw)
    except ValueError:
        raise CharlmError(f"${name} is {raw!r}, not a whole number; launch distributed runs with torchrun") from None


def from_env(environ=None) -> ProcessGroup:
    """The ProcessGroup torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, or the single process without them."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return ProcessGroup()
    rank, world = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
    local = _env_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
    if world < 1 or not 0 <= rank < world:
        raise CharlmError(f"$RANK {rank} and $WORLD_SIZE {world} do not describe a process of the run; "
                          "launch distributed runs with torchrun")
    return ProcessGroup(rank, world, local, launched=True)
