"""The hand-written backward of `tanh_recurrence` against autograd on the plain loop."""

import pytest
import torch
import torch.nn.functional as F

from charlm.models.fastrnn import tanh_recurrence, tanh_recurrence_reference

D = torch.float64


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _params(V=11, H=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}
    return {k: (torch.randn(*s, generator=g, dtype=D) * 0.5).requires_grad_() for k, s in shapes.items()}


def _loss(recurrence, p, X, Y, H0):
    """An RNNScratch-shaped loss: lookup input projection, recurrence, output layer for all steps, cross-entropy."""
    XW = F.embedding(X, p["W_xh"]) + p["b_h"]  # (B, T, H)
    Hs, HT = recurrence(XW, H0, p["W_hh"])
    logits = Hs @ p["W_hq"] + p["b_q"]  # (B, T, V)
    # the final state feeds a second term, as the next minibatch would, so dH_T is not zero
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1)) + (HT ** 3).sum() * 0.1, HT


@pytest.mark.parametrize("B,T", [(3, 9), (1, 1), (4, 2)])
def test_loss_and_gradients_equal_autograd_on_the_plain_loop(B, T):
    V, H = 11, 7
    g = torch.Generator().manual_seed(1)
    X = torch.randint(0, V, (B, T), generator=g)
    Y = torch.randint(0, V, (B, T), generator=g)
    results = []
    for recurrence in (tanh_recurrence, tanh_recurrence_reference):
        p = _params(V, H)
        H0 = (torch.randn(B, H, generator=torch.Generator().manual_seed(2), dtype=D) * 0.3).requires_grad_()
        loss, HT = _loss(recurrence, p, X, Y, H0)
        loss.backward()
        results.append((loss.detach(), HT.detach(), {k: v.grad for k, v in p.items()}, H0.grad))
    (l1, h1, g1, h01), (l2, h2, g2, h02) = results
    assert abs(l1.item() - l2.item()) <= 1e-10 * abs(l2.item())
    assert _rel(h1, h2) < 1e-10
    for k in g2:
        assert _rel(g1[k], g2[k]) < 1e-10, k
    assert _rel(h01, h02) < 1e-10


def test_consecutive_minibatches_with_a_detached_state_match():
    """Truncated BPTT as the trainer does it: the second minibatch starts from the first one's detached state."""
    V, H, B, T = 9, 5, 2, 4
    X = torch.randint(0, V, (2, B, T), generator=torch.Generator().manual_seed(3))
    grads = []
    for recurrence in (tanh_recurrence, tanh_recurrence_reference):
        p = _params(V, H, seed=4)
        state = torch.zeros(B, H, dtype=D)
        for k in range(2):
            loss, state = _loss(recurrence, p, X[k], X[k].roll(-1, 1), state)
            loss.backward()
            state = state.detach()
        grads.append([p[k].grad.clone() for k in sorted(p)])
    for a, b in zip(*grads):
        assert _rel(a, b) < 1e-10


def test_gradcheck():
    B, T, H = 2, 4, 3
    g = torch.Generator().manual_seed(5)
    XW = torch.randn(B, T, H, generator=g, dtype=D, requires_grad=True)
    H0 = torch.randn(B, H, generator=g, dtype=D, requires_grad=True)
    W = (torch.randn(H, H, generator=g, dtype=D) * 0.6).requires_grad_()
    assert torch.autograd.gradcheck(tanh_recurrence, (XW, H0, W))
    # second output only, and a non-contiguous input (a transposed view)
    XWt = torch.randn(T, B, H, generator=g, dtype=D).transpose(0, 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: tanh_recurrence(a, b, c)[1], (XWt, H0, W))


def test_only_the_weights_need_gradients():
    B, T, H = 2, 3, 4
    XW = torch.randn(B, T, H, dtype=D)
    H0 = torch.zeros(B, H, dtype=D)
    W1 = torch.randn(H, H, dtype=D, requires_grad=True)
    W2 = W1.detach().clone().requires_grad_()
    tanh_recurrence(XW, H0, W1)[0].sum().backward()
    tanh_recurrence_reference(XW, H0, W2)[0].sum().backward()
    assert _rel(W1.grad, W2.grad) < 1e-10


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="expects XW"):
        tanh_recurrence(torch.zeros(2, 3, 4), torch.zeros(2, 5), torch.zeros(4, 4))


def test_step_threads_leave_the_thread_setting_and_the_result_alone():
    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(6)
    XW = torch.randn(3, 5, 4, generator=g, dtype=D, requires_grad=True)
    H0 = torch.randn(3, 4, generator=g, dtype=D)
    W = torch.randn(4, 4, generator=g, dtype=D, requires_grad=True)
    grads = []
    for threads in (1, None, before + 1):
        Hs, HT = tanh_recurrence(XW, H0, W, step_threads=threads)
        assert torch.get_num_threads() == before
        grads.append(torch.autograd.grad((Hs.sum() + HT.sum()), (XW, W)))
        assert torch.get_num_threads() == before
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
