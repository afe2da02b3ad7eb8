"""What the device does with a run: which one (`pick_device`), validation streams, precision, TF32, torch.compile.

Each rule sits beside its reason; the measurements behind them are in docs/gpu.md.

    --val-streams 0     chosen here from the held-out length and the device (`val_streams`)
    --precision         fp32 everywhere (TF32 matrix products on CUDA); bf16 / fp16 autocast on CUDA only,
                        with a loss scaler
    --compile           torch.compile of the forward on CUDA; ignored with a line on the CPU
"""

from __future__ import annotations

import contextlib

import torch

from charlm.errors import CharlmError

# Characters per validation stream that `--val-streams 0` aims at, and the most streams, per device.
# Each stream starts from a zero state, so fewer, longer streams keep the figure closer to the single
# stream's; a couple of thousand characters each leave it within a quarter of a percent (docs/gpu.md).
# A GPU runs a step of 256 rows in the time of one, so it takes more, shorter streams. On the CPU a
# held-out text under MIN_CHARS costs little as one stream, so it keeps the exact figure (the lyrics'
# 6,328 characters: one stream, as before batched validation existed).
STREAM_CHARS = {"cpu": 2048, "cuda": 1024}
MAX_STREAMS = {"cpu": 32, "cuda": 256}
MIN_CHARS = {"cpu": 16384, "cuda": 0}


def pick_device(name: str) -> torch.device:
    """The torch device for --device: "auto" takes CUDA when there is a GPU; asking for a missing one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharlmError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def val_streams(requested: int, n_chars: int, device: torch.device) -> int:
    """How many streams `evaluate` reads the held-out text as: `requested`, or the device's rule when it is 0."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    if requested:
        return max(1, min(requested, n_chars - 1))
    if n_chars < MIN_CHARS[kind]:
        return 1
    return max(1, min(MAX_STREAMS[kind], (n_chars - 1) // STREAM_CHARS[kind]))


class Precision:
    """The arithmetic of the training step: an autocast context and, for fp16, a gradient scaler.

    fp32 on CUDA allows TF32 for float32 matrix products (10 mantissa bits in
    the products, float32 sums: torch's "high" matmul precision) inside the
    training step only, forward and backward; the process-wide setting is
    restored after each, so validation and everything else stay exact float32.
    cuDNN's recurrent kernels follow torch.backends.cudnn.allow_tf32 (torch's default: on).
    The CPU trains in fp32 only: torch's CPU recurrent kernels and charlm's
    hand-written recurrence have no reduced-precision fast path worth taking.

    Under autocast torch runs cuDNN's recurrent kernels in float16 whatever
    the autocast dtype (aten/src/ATen/autocast: `_cudnn_rnn_cast_reflatten`
    casts to half), so with bf16 the recurrent layers are fp16 too: both
    reduced precisions keep a loss scaler, which keeps small fp16 gradients
    from flushing to zero. The weights and the optimizer stay float32.
    """

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        self.scaler = None
        if device.type != "cuda":
            if self.dtype is not None:
                raise CharlmError(f"--precision {name} needs a CUDA GPU; the CPU trains in fp32 (use --precision fp32 "
                                  f"or --device cuda)")
            return
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise CharlmError("--precision bf16 needs a GPU with bfloat16 support (compute capability 8.0 or later); "
                              "use --precision fp16 or fp32")
        if self.dtype is not None:
            self.scaler = _grad_scaler()

    def autocast(self):
        """The context the forward pass and the loss run in."""
        if self.dtype is None:
            return self._tf32()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        with self._tf32():
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    @contextlib.contextmanager
    def _tf32(self):
        """TF32 tensor cores for float32 matrix products (CUDA fp32 only), then the setting as it was."""
        if self.device.type != "cuda" or self.dtype is not None:
            yield
            return
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)

    def unscale(self, optimizer) -> None:
        """Bring the gradients back to their true size before clipping reads their norm (reduced precision only)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> None:
        """optimizer.step(); with a scaler, steps whose gradients overflowed are skipped and the scale adapts."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def _grad_scaler():
    """torch.amp.GradScaler("cuda") (torch >= 2.3), else the older torch.cuda.amp.GradScaler."""
    amp_scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler("cuda")
    return torch.cuda.amp.GradScaler()


def maybe_compile(model: torch.nn.Module, enabled: bool, device: torch.device, log=lambda line: None):
    """The callable to train with: `model` itself, or on CUDA with --compile its torch.compile'd forward.

    The returned object is only used for training steps; evaluation, checkpoints
    and generation keep using `model` (its parameters are the same tensors).
    On the CPU the recurrences are loops of small products that compilation
    does not fuse, and compiling costs tens of seconds: measured no faster
    (docs/gpu.md), so it is ignored there with a line.
    """
    if not enabled:
        return model
    if device.type != "cuda":
        log("--compile is ignored on the CPU (measured no faster there; see docs/gpu.md)")
        return model
    log("compiling the model's forward with torch.compile (the first minibatches are slower)")
    return torch.compile(model)
