"""A fast tanh recurrence with a hand-written backward through time.

The textbook loop `H = tanh(XW_t + H W_hh)` left to autograd records four or
five nodes per step, and its backward does two matrix products per step (one
for dH, one for dW_hh) plus a full-size zero-filled gradient for every slice
of XW. `tanh_recurrence` does the same arithmetic with

    forward:   one addmm and an in-place tanh per step, written straight
               into a preallocated (T+1, B, H) buffer (slot 0 holds H_0);
    backward:  one addmm and one multiply per step for dH, then dW_hh for
               all steps in a single (H, T*B) @ (T*B, H) product, because
               dW_hh = sum_t H_{t-1}^T dA_t and the buffer already holds
               H_0 .. H_{T-1} contiguously.

The per-step loops run on one CPU thread (see `_threads`); the large products
(dW_hh here, the input and output layers outside) keep all of torch's threads.
The input projection (`XW = X W_xh + b_h`, a row lookup for indices) and the
output layer are computed for all steps at once by the caller, outside.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def _threads(n: int | None, device: torch.device):
    """Run the per-step loop on at most `n` intra-op threads (CPU only), then restore the setting.

    A step's products are (B, H) @ (H, H): too small to share between threads,
    and when the cores are busy a second thread makes every step wait for it.
    Switching costs well under a microsecond.
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or not n or n >= before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TanhRecurrence(torch.autograd.Function):
    """H_t = tanh(XW_t + H_{t-1} W_hh) for t = 1..T, with backward through time written out."""

    @staticmethod
    def forward(ctx, XW, H0, W_hh, step_threads):
        B, T, H = XW.shape
        buf = XW.new_empty(T + 1, B, H)  # buf[0] = H_0, buf[t] = H_t
        buf[0] = H0
        # On CPU torch's tanh costs ~2.6 ns per element and its sigmoid ~0.5, so use
        # tanh(a) = 2 sigmoid(2a) - 1, with the 2a coming out of the addmm (absolute error ~1 ulp of 1).
        via_sigmoid = XW.device.type == "cpu"
        scale = 2 if via_sigmoid else 1
        with _threads(step_threads, XW.device):
            for t in range(T):
                out = buf[t + 1]  # (B, H), contiguous
                torch.addmm(XW[:, t], buf[t], W_hh, beta=scale, alpha=scale, out=out)  # scale * (XW_t + H_{t-1} W_hh)
                if via_sigmoid:
                    out.sigmoid_().mul_(2).sub_(1)
                else:
                    out.tanh_()
        ctx.save_for_backward(buf, W_hh)
        ctx.step_threads = step_threads
        Hs = buf[1:].transpose(0, 1)  # (B, T, H), a view: the caller's output product copies it once
        return Hs, buf[T].clone()

    @staticmethod
    def backward(ctx, dHs, dHT):
        buf, W_hh = ctx.saved_tensors
        T, B, H = buf.shape[0] - 1, buf.shape[1], buf.shape[2]
        # dA_t = dL/d(pre-activation at t) = dH_t * (1 - H_t^2); start from the derivative factor
        dA = buf[1:].square().neg_().add_(1)  # (T, B, H)
        W_t = W_hh.t()
        dH = dHs[:, T - 1] + dHT  # (B, H): gradient reaching H_T from the output and from the next minibatch
        with _threads(ctx.step_threads, buf.device):
            for t in range(T - 1, 0, -1):
                dA[t].mul_(dH)
                # gradient reaching H_{t-1}: from the output at t-1 and through W_hh from step t
                dH = torch.addmm(dHs[:, t - 1], dA[t], W_t)
            dA[0].mul_(dH)
            dH0 = dA[0] @ W_t if ctx.needs_input_grad[1] else None
        dW = None
        if ctx.needs_input_grad[2]:
            dW = buf[:-1].reshape(T * B, H).t() @ dA.reshape(T * B, H)  # (H, H) = sum_t H_{t-1}^T dA_t, all threads
        dXW = dA.transpose(0, 1) if ctx.needs_input_grad[0] else None  # (B, T, H)
        return dXW, dH0, dW, None


def tanh_recurrence(XW: torch.Tensor, H0: torch.Tensor, W_hh: torch.Tensor, step_threads: int | None = 1):
    """Run the recurrence over all steps: XW (B, T, H), H0 (B, H), W_hh (H, H) -> (Hs (B, T, H), H_T (B, H)).

    XW already holds the input projection and the bias, X_t W_xh + b_h, for every step.
    `step_threads` caps torch's CPU threads inside the per-step loops (None: leave them).
    """
    if XW.dim() != 3 or H0.shape != (XW.shape[0], XW.shape[2]) or W_hh.shape != (XW.shape[2], XW.shape[2]):
        raise ValueError(f"tanh_recurrence expects XW (B, T, H), H0 (B, H), W_hh (H, H); "
                         f"got {tuple(XW.shape)}, {tuple(H0.shape)}, {tuple(W_hh.shape)}")
    if XW.shape[1] == 0:
        return XW, H0
    return TanhRecurrence.apply(XW, H0, W_hh, step_threads)


def tanh_recurrence_reference(XW: torch.Tensor, H0: torch.Tensor, W_hh: torch.Tensor):
    """The plain autograd loop that `tanh_recurrence` must match (used by the tests and the benchmark)."""
    H, hs = H0, []
    for t in range(XW.shape[1]):
        H = torch.tanh(XW[:, t] + H @ W_hh)  # (B, H)
        hs.append(H)
    return torch.stack(hs, 1), H
