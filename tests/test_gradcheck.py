"""Finite-difference gradient checks (torch.autograd.gradcheck, float64) of the hand-written recurrent models."""

import pytest
import torch
from torch.func import functional_call

from charlm.models import GRUScratch, LSTMScratch, RNNScratch
from charlm.models.ffnn import FeedForwardNGram

V, H, B, T = 5, 3, 2, 3




def _check(model, onehot):
    """gradcheck of logits and final state with respect to every parameter and the initial state."""
    torch.manual_seed(0)
    model = model.double()
    model.onehot = onehot
    names = [n for n, _ in model.named_parameters()]
    params = tuple(torch.randn_like(p).mul_(0.7).requires_grad_() for p in model.parameters())  # far from linear
    X = torch.randint(0, V, (B, T))
    state = model.begin_state(B)
    state = tuple(state) if isinstance(state, tuple) else (state,)
    state = tuple(torch.randn_like(s).tanh_().requires_grad_() for s in state)

    def f(*args):
        weights = dict(zip(names, args[:len(names)]))
        s = args[len(names):]
        logits, out = functional_call(model, weights, (X, s if len(s) > 1 else s[0]))
        out = out if isinstance(out, tuple) else (out,)
        return (logits,) + out

    assert torch.autograd.gradcheck(f, params + state, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("onehot", [False, True], ids=["lookup", "textbook"])
def test_gru_scratch_gradcheck(onehot):
    _check(GRUScratch(V, H), onehot)


@pytest.mark.parametrize("onehot", [False, True], ids=["lookup", "textbook"])
def test_gru_scratch_reset_after_gradcheck(onehot):
    _check(GRUScratch(V, H, reset_after=True), onehot)


@pytest.mark.parametrize("onehot", [False, True], ids=["lookup", "textbook"])
def test_lstm_scratch_gradcheck(onehot):
    _check(LSTMScratch(V, H), onehot)


def test_rnn_scratch_gradcheck():
    _check(RNNScratch(V, H), onehot=False)


@pytest.mark.parametrize("kwargs", [{}, {"onehot": True}, {"embedding": 4}, {"embedding": H, "tie_weights": True}],
                         ids=["lookup", "textbook", "embedding", "tied"])
def test_ffn_gradcheck(kwargs):
    """The feed-forward n-gram network: its state is characters, so the check runs over the weights alone."""
    torch.manual_seed(0)
    model = FeedForwardNGram(V, H, context=2, **kwargs).double()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(torch.randn_like(p).mul_(0.7).requires_grad_() for p in model.parameters())
    X = torch.randint(0, V, (B, T))
    state = torch.cat([model.begin_state(B)[:, :1], torch.randint(0, V, (B, 1))], dim=1)  # padding, then a character

    def f(*args):
        return functional_call(model, dict(zip(names, args)), (X, state))[0]

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_catches_a_wrong_gradient():
    """The check above can fail: a function whose backward is wrong by a factor is refused."""

    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.tanh(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * g * (1 - torch.tanh(x) ** 2)

    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(Doubled.apply, (x,), raise_exception=False)
