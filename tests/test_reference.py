"""Checks for the plain-numpy reference RNN (charlm.reference.numpy_rnn)."""

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# pytest puts only tests/ on sys.path; make the package importable uninstalled.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charlm.reference import init_params, rnn_forward, rnn_loss_and_grads  # noqa: E402

V, H, B, T = 7, 5, 3, 4
PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hq", "b_q")


def rel_err(a, b):
    """Norm-wise relative error; robust to entries that are exactly zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)
    return np.linalg.norm(a - b) / denom


def make_case(seed, scale=0.5):
    """Params large enough that tanh is far from linear, nonzero biases and h0."""
    rng = np.random.default_rng(seed)
    params = {
        "W_xh": rng.normal(0, scale, (V, H)),
        "W_hh": rng.normal(0, scale, (H, H)),
        "b_h": rng.normal(0, scale, (H,)),
        "W_hq": rng.normal(0, scale, (H, V)),
        "b_q": rng.normal(0, scale, (V,)),
    }
    X = rng.integers(0, V, (B, T))
    Y = rng.integers(0, V, (B, T))
    h0 = np.tanh(rng.normal(0, 1.0, (B, H)))
    return params, X, Y, h0


def textbook_case(seed):
    """The textbook init (tiny weights, zero biases) from a zero state."""
    rng = np.random.default_rng(seed + 100)
    params = init_params(V, H, seed)
    return params, rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T)), np.zeros((B, H))


def test_init_params_shapes():
    p = init_params(V, H, seed=0)
    shapes = {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)}
    assert set(p) == set(shapes)
    for k, s in shapes.items():
        assert p[k].shape == s and p[k].dtype == np.float64
    assert not p["b_h"].any() and not p["b_q"].any()
    assert 0.005 < p["W_xh"].std() < 0.02
    q = init_params(V, H, seed=0)
    assert all(np.array_equal(p[k], q[k]) for k in p)


def test_forward_shapes_and_hT():
    params, X, Y, h0 = make_case(0)
    logits, hs = rnn_forward(params, X, h0)
    assert logits.shape == (B, T, V) and hs.shape == (B, T, H)
    _, grads, hT = rnn_loss_and_grads(params, X, Y, h0)
    np.testing.assert_array_equal(hT, hs[:, -1])
    assert set(grads) == set(PARAM_NAMES) | {"h0"}


@pytest.mark.parametrize("seed", [0, 1])
def test_grads_match_finite_differences(seed):
    params, X, Y, h0 = make_case(seed)
    loss, grads, _ = rnn_loss_and_grads(params, X, Y, h0)
    eps = 1e-5
    arrays = dict(params, h0=h0.copy())

    def loss_at(arrs):
        p = {k: arrs[k] for k in PARAM_NAMES}
        return rnn_loss_and_grads(p, X, Y, arrs["h0"])[0]

    for name, arr in arrays.items():
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            plus = loss_at(arrays)
            arr[i] = old - eps
            minus = loss_at(arrays)
            arr[i] = old
            num[i] = (plus - minus) / (2 * eps)
        assert grads[name].shape == arr.shape
        assert rel_err(grads[name], num) < 1e-6, name


def torch_loss_and_grads(params, X, Y, h0):
    """The same equations written directly in torch float64, differentiated by autograd."""
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    th0 = torch.tensor(h0, dtype=torch.float64, requires_grad=True)
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(Y)
    h, outs = th0, []
    for t in range(Xt.shape[1]):
        x = F.one_hot(Xt[:, t], V).double()  # (B, V)
        h = torch.tanh(x @ tp["W_xh"] + h @ tp["W_hh"] + tp["b_h"])  # (B, H)
        outs.append(h @ tp["W_hq"] + tp["b_q"])  # (B, V)
    logits = torch.stack(outs, dim=1)  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, V), Yt.reshape(-1))
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in tp.items()}
    grads["h0"] = th0.grad.numpy()
    return loss.item(), grads, logits.detach().numpy(), h.detach().numpy()


@pytest.mark.parametrize("case", [make_case(2), make_case(3, scale=2.0), textbook_case(4)])
def test_matches_torch_autograd(case):
    params, X, Y, h0 = case
    loss, grads, hT = rnn_loss_and_grads(params, X, Y, h0)
    t_loss, t_grads, t_logits, t_hT = torch_loss_and_grads(params, X, Y, h0)
    assert abs(loss - t_loss) / abs(t_loss) < 1e-10
    assert rel_err(rnn_forward(params, X, h0)[0], t_logits) < 1e-10
    assert rel_err(hT, t_hT) < 1e-10
    for name in PARAM_NAMES + ("h0",):
        assert rel_err(grads[name], t_grads[name]) < 1e-10, name


def test_softmax_is_stable_for_huge_logits():
    params, X, Y, h0 = make_case(5)
    params["W_hq"] = params["W_hq"] * 1e4  # logits ~1e4 would overflow a naive exp
    loss, grads, _ = rnn_loss_and_grads(params, X, Y, h0)
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("nonzero_state", [False, True])
def test_matches_torch_scratch_model(nonzero_state):
    mod = pytest.importorskip("charlm.models.rnn_scratch")
    params, X, Y, h0 = make_case(6)
    model = mod.RNNScratch(V, H).double()
    with torch.no_grad():
        for name in PARAM_NAMES:
            getattr(model, name).copy_(torch.from_numpy(params[name]))
    if nonzero_state:
        state = torch.tensor(h0, dtype=torch.float64)
    else:
        state = model.begin_state(B)
        assert tuple(state.shape) == (B, H) and not state.any()
        state = state.double()  # begin_state's dtype is not part of the interface
        h0 = np.zeros((B, H))
    loss, grads, hT = rnn_loss_and_grads(params, X, Y, h0)

    logits, state_out = model(torch.as_tensor(X, dtype=torch.long), state)
    assert tuple(logits.shape) == (B, T, V)
    t_loss = F.cross_entropy(logits.reshape(-1, V), torch.as_tensor(Y).reshape(-1))
    t_loss.backward()

    assert abs(loss - t_loss.item()) / abs(loss) < 1e-6
    assert rel_err(hT, state_out.detach().numpy()) < 1e-6
    for name in PARAM_NAMES:
        assert rel_err(grads[name], getattr(model, name).grad.numpy()) < 1e-6, name
