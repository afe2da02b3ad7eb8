"""The recurrent model families: scratch against nn, textbook path against fast path, options, training, checkpoints."""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from charlm.run.checkpoint import load_checkpoint, model_from_checkpoint
from charlm.cli.app import cli
from charlm.config import Config
from charlm.data.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.models import (MODELS, GRUModel, GRUScratch, LSTMModel, LSTMScratch, RNNModel, RNNScratch,
                           build_model, count_parameters, detach_state)
from charlm.train.loop import train
from charlm.train.validate import perplexity as evaluate

RECURRENT = ("rnn-scratch", "gru-scratch", "lstm-scratch", "rnn", "gru", "lstm")
V, H, B, T = 7, 5, 3, 4




def rel_err(a, b):
    return ((a - b).norm() / max(a.norm() + b.norm(), 1e-300)).item()


def randomize(model, scale=0.5, seed=0):
    """Weights large enough that every nonlinearity is far from linear (the textbook init is nearly linear)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def random_state(model, batch, seed=1):
    """A nonzero state of the model's own structure (a tensor or a tuple of tensors)."""
    g = torch.Generator().manual_seed(seed)
    state = model.begin_state(batch)

    def fill(s):
        return torch.tanh(torch.randn(s.shape, generator=g, dtype=s.dtype))
    return tuple(fill(s) for s in state) if isinstance(state, tuple) else fill(state)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def batch(seed=2, vocab=V):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)


# --- the interface ---------------------------------------------------------

@pytest.mark.parametrize("name", RECURRENT + ("ffn",))
def test_interface_shapes(name):
    model = build_model(Config(model=name, hidden=H), V)
    X, _ = batch()
    state = model.begin_state(B)
    logits, new_state = model(X, state)
    assert logits.shape == (B, T, V)
    assert [s.shape for s in as_tuple(new_state)] == [s.shape for s in as_tuple(state)]
    assert all(not s.requires_grad for s in as_tuple(detach_state(new_state)))


@pytest.mark.parametrize("name, cls, gates", [("gru-scratch", GRUScratch, 3), ("lstm-scratch", LSTMScratch, 4),
                                              ("rnn-scratch", RNNScratch, 1)])
def test_scratch_parameters_have_the_textbook_names_and_init(name, cls, gates):
    model = build_model(Config(model=name, hidden=32), 50)
    assert isinstance(model, cls)
    names = dict(model.named_parameters())
    expected = {"gru-scratch": "W_xz W_hz b_z W_xr W_hr b_r W_xh W_hh b_h W_hq b_q",
                "lstm-scratch": "W_xi W_hi b_i W_xf W_hf b_f W_xo W_ho b_o W_xc W_hc b_c W_hq b_q",
                "rnn-scratch": "W_xh W_hh b_h W_hq b_q"}[name].split()
    assert list(names) == expected
    assert count_parameters(model) == gates * (50 * 32 + 32 * 32 + 32) + 32 * 50 + 50
    for n, p in names.items():
        if n.startswith("b_"):
            assert not p.any()
        else:
            assert 0.007 < p.std().item() < 0.013  # normal(0, 0.01)


@pytest.mark.parametrize("name, gates", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_nn_parameter_counts(name, gates):
    vocab, hidden, emb = 50, 16, 12
    onehot = build_model(Config(model=name, hidden=hidden), vocab)
    assert onehot.lookup.weight.shape == (vocab, gates * hidden)  # the one-hot module's W_ih, as rows
    lstm_bias = 2 * gates * hidden  # nn modules keep two biases per gate
    assert count_parameters(onehot) == gates * hidden * (vocab + hidden) + lstm_bias + hidden * vocab + vocab
    two = build_model(Config(model=name, hidden=hidden, layers=2, embedding=emb), vocab)
    assert count_parameters(two) == (vocab * emb + gates * hidden * (emb + hidden) + lstm_bias
                                     + gates * hidden * 2 * hidden + lstm_bias + hidden * vocab + vocab)
    tied = build_model(Config(model=name, hidden=hidden, embedding=hidden, tie_weights=True), vocab)
    untied = build_model(Config(model=name, hidden=hidden, embedding=hidden), vocab)
    assert tied.dense.weight is tied.embedding.weight
    assert count_parameters(untied) - count_parameters(tied) == vocab * hidden


# --- scratch against nn, same weights ----------------------------------------

def nn_weights_from_scratch(scratch) -> dict:
    """The state_dict of the matching nn model (embedding 0, one layer) holding the scratch model's weights.

    Textbook weights multiply from the right (X W), torch's from the left (W x),
    so each is transposed; torch stacks the gates as (r, z, n) for the GRU and
    (i, f, g, o) for the LSTM and has a second bias per gate, set to zero
    (the GRU's b_hh of the candidate is the one exception: see GRUScratch).
    """
    s = {k: v.detach() for k, v in scratch.named_parameters()}
    if isinstance(scratch, GRUScratch):
        order = [("W_xr", "W_hr", "b_r"), ("W_xz", "W_hz", "b_z"), ("W_xh", "W_hh", "b_h")]
        b_hh = torch.cat([torch.zeros_like(s["b_r"]), torch.zeros_like(s["b_z"]), s["b_hh"]])
    elif isinstance(scratch, LSTMScratch):
        order = [("W_xi", "W_hi", "b_i"), ("W_xf", "W_hf", "b_f"), ("W_xc", "W_hc", "b_c"), ("W_xo", "W_ho", "b_o")]
        b_hh = None
    else:
        order = [("W_xh", "W_hh", "b_h")]
        b_hh = None
    b_ih = torch.cat([s[b] for _, _, b in order])
    return {
        "rnn.weight_ih_l0": torch.cat([s[x].T for x, _, _ in order]),
        "rnn.weight_hh_l0": torch.cat([s[h].T for _, h, _ in order]),
        "rnn.bias_ih_l0": b_ih,
        "rnn.bias_hh_l0": torch.zeros_like(b_ih) if b_hh is None else b_hh,
        "dense.weight": s["W_hq"].T, "dense.bias": s["b_q"],
    }


def nn_state(state):
    """Scratch states are (batch, hidden); nn states carry a leading layer axis."""
    return tuple(s.unsqueeze(0) for s in state) if isinstance(state, tuple) else state.unsqueeze(0)


@pytest.mark.parametrize("scratch_cls, nn_cls, kwargs", [
    (RNNScratch, RNNModel, {}), (GRUScratch, GRUModel, {"reset_after": True}), (LSTMScratch, LSTMModel, {})],
    ids=["rnn", "gru", "lstm"])
@pytest.mark.parametrize("onehot", [False, True], ids=["fast", "textbook"])
def test_scratch_logits_equal_nn_logits(scratch_cls, nn_cls, kwargs, onehot):
    scratch = randomize(scratch_cls(V, H, onehot=onehot, **kwargs).double())
    model = nn_cls(V, H, onehot=onehot).double()
    model.load_state_dict(nn_weights_from_scratch(scratch))
    X, _ = batch()
    state = random_state(scratch, B)
    logits, out = scratch(X, state)
    nn_logits, nn_out = model(X, nn_state(state))
    assert rel_err(logits, nn_logits) < 1e-10
    for a, b in zip(as_tuple(nn_state(out)), as_tuple(nn_out)):
        assert rel_err(a, b) < 1e-10


def textbook_gru(params, X, H):
    """The chapter's gru() transcribed literally, as an independent check of GRUScratch's default variant."""
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params
    outputs = []
    for x in F.one_hot(X.T, W_xz.shape[0]).double():
        Z = torch.sigmoid(torch.matmul(x, W_xz) + torch.matmul(H, W_hz) + b_z)
        R = torch.sigmoid(torch.matmul(x, W_xr) + torch.matmul(H, W_hr) + b_r)
        H_tilda = torch.tanh(torch.matmul(x, W_xh) + torch.matmul(R * H, W_hh) + b_h)
        H = Z * H + (1 - Z) * H_tilda
        outputs.append(torch.matmul(H, W_hq) + b_q)
    return torch.stack(outputs, 1), H


def test_textbook_gru_matches_the_chapter_and_differs_from_nn_gru():
    scratch = randomize(GRUScratch(V, H).double())
    X, _ = batch()
    state = random_state(scratch, B)
    logits, out = scratch(X, state)
    ref_logits, ref_out = textbook_gru([p.detach() for p in scratch.parameters()], X, state)
    assert rel_err(logits, ref_logits) < 1e-12 and rel_err(out, ref_out) < 1e-12
    # the same weights in nn.GRU (b_hh = 0) compute another function: the reset gate sits elsewhere
    variant = GRUScratch(V, H, reset_after=True).double()
    variant.load_state_dict({**scratch.state_dict(), "b_hh": torch.zeros(H, dtype=torch.float64)})
    model = GRUModel(V, H).double()
    model.load_state_dict(nn_weights_from_scratch(variant))
    assert rel_err(logits, model(X, nn_state(state))[0]) > 1e-3


# --- two paths, one result --------------------------------------------------

def loss_and_grads(model, onehot, X, Y, state, seed=3):
    model.onehot = onehot
    model.zero_grad(set_to_none=True)
    state = tuple(s.clone().requires_grad_() for s in as_tuple(state))
    torch.manual_seed(seed)  # the same dropout masks on both paths
    logits, out = model(X, state if len(state) > 1 else state[0])
    loss = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads.update({f"state{i}": s.grad.clone() for i, s in enumerate(state)})
    return loss.item(), grads, as_tuple(out)


PATH_CASES = [(name, {}) for name in RECURRENT] + [
    ("gru-scratch", {"reset_after": True}),
    ("rnn", {"layers": 2}), ("gru", {"layers": 3}), ("lstm", {"layers": 2}),
    # in training mode the nn paths draw the same dropout masks in the same order (the scratch paths do not:
    # one mask per step on the textbook path, one for all steps on the fast path)
    ("gru", {"layers": 2, "dropout": 0.4}), ("lstm", {"layers": 2, "dropout": 0.4}),
]


@pytest.mark.parametrize("name, kwargs", PATH_CASES, ids=[f"{n}-{k}" for n, k in PATH_CASES])
def test_textbook_and_fast_paths_give_the_same_loss_and_gradients(name, kwargs):
    model = randomize(MODELS[name](V, H, **kwargs).double())
    model.train()
    X, Y = batch()
    state = random_state(model, B)
    loss_t, grads_t, out_t = loss_and_grads(model, True, X, Y, state)
    loss_f, grads_f, out_f = loss_and_grads(model, False, X, Y, state)
    assert abs(loss_t - loss_f) / abs(loss_t) < 1e-10
    assert grads_t.keys() == grads_f.keys()
    for key in grads_t:
        assert rel_err(grads_t[key], grads_f[key]) < 1e-10, key
    for a, b in zip(out_t, out_f):
        assert rel_err(a, b) < 1e-10


def test_the_fast_path_builds_no_one_hot(monkeypatch):
    """No one_hot call anywhere on the default path (each would be a vocab-wide tensor)."""
    import charlm.data.vocab

    def refuse(*args, **kwargs):
        raise AssertionError("one-hot built on the fast path")
    monkeypatch.setattr(F, "one_hot", refuse)
    monkeypatch.setattr(charlm.data.vocab, "one_hot", refuse)
    for name in RECURRENT:
        model = build_model(Config(model=name, hidden=H), V)
        model(batch()[0], model.begin_state(B))
        model.onehot = True  # the textbook path does build them, so the check can fail
        with pytest.raises(AssertionError, match="one-hot built"):
            model(batch()[0], model.begin_state(B))


# --- dropout and weight tying ------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [("lstm-scratch", {}), ("gru", {"layers": 2, "embedding": 6}),
                                          ("rnn", {"layers": 2})])
def test_dropout_acts_only_in_training(name, kwargs):
    dropped = randomize(MODELS[name](V, H, dropout=0.5, **kwargs))
    plain = MODELS[name](V, H, dropout=0.0, **kwargs)
    plain.load_state_dict(dropped.state_dict())
    X, _ = batch()
    dropped.eval()
    plain.eval()
    state = dropped.begin_state(B)
    assert torch.equal(dropped(X, state)[0], plain(X, state)[0])
    dropped.train()
    first, second = dropped(X, state)[0], dropped(X, state)[0]
    assert not torch.allclose(first, second)


def test_tied_gradient_is_the_sum_of_both_uses():
    tied = randomize(GRUModel(V, H, embedding=H, tie_weights=True).double())
    untied = GRUModel(V, H, embedding=H).double()
    untied.load_state_dict(tied.state_dict())
    X, Y = batch()
    for model in (tied, untied):
        logits, _ = model(X, model.begin_state(B))
        F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1)).backward()
    expected = untied.embedding.weight.grad + untied.dense.weight.grad
    assert rel_err(tied.embedding.weight.grad, expected) < 1e-12


def test_nn_models_refuse_bad_shapes_directly():
    with pytest.raises(CharlmError, match="--tie-weights"):
        LSTMModel(V, H, embedding=H + 1, tie_weights=True)
    with pytest.raises(CharlmError):
        GRUModel(V, H, layers=0)


# --- training and checkpoints -----------------------------------------------

RUN_CASES = [(name, {}) for name in RECURRENT] + [
    ("gru", {"layers": 2, "dropout": 0.2, "embedding": 16, "tie_weights": True}),
    ("lstm", {"embedding": 8, "dropout": 0.1}),
    ("gru-scratch", {"onehot": True, "dropout": 0.1}),
    ("ffn", {}),  # the feed-forward n-gram network (charlm/models/ffnn.py)
    ("ffn", {"embedding": 16, "tie_weights": True, "dropout": 0.1, "context": 3}),
    ("mix", {"mix_neural": "ffn", "order": 3}),
]
RUN_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in RUN_CASES]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train each case once (2 epochs, tiny text) and share the result between the tests below."""
    from conftest import SMALL_TEXT

    root = tmp_path_factory.mktemp("runs")
    corpus_path = root / "small.txt"
    corpus_path.write_text(SMALL_TEXT, encoding="utf-8")
    done = {}

    def get(case):
        name, kwargs = case
        key = (name, tuple(sorted(kwargs.items())))
        if key not in done:
            config = Config(corpus=str(corpus_path), model=name, hidden=16, num_steps=8, batch_size=8, epochs=2,
                            lr=0.01, pred_every=0, **kwargs).validate()
            run_dir = root / f"run{len(done)}"
            corpus = load_corpus(config)
            done[key] = (config, corpus, run_dir, train(config, corpus, run_dir))
        return done[key]
    return get


@pytest.mark.parametrize("case", RUN_CASES, ids=RUN_IDS)
def test_each_model_learns(runs, case):
    config, corpus, _, result = runs(case)
    first, last = result.metrics[0], result.metrics[-1]
    assert last["train_ppl"] < first["train_ppl"]
    assert last["val_ppl"] < first["val_ppl"]
    assert last["val_ppl"] < len(corpus.vocab)  # better than guessing uniformly


@pytest.mark.parametrize("case", RUN_CASES, ids=RUN_IDS)
def test_checkpoint_round_trip(runs, case):
    config, corpus, run_dir, result = runs(case)
    payload = load_checkpoint(run_dir / "last.pt")
    model, vocab, saved = model_from_checkpoint(payload)
    assert type(model) is MODELS[config.model] and saved == config
    assert not model.training
    # the loaded weights reproduce the perplexity the live model measured after its last epoch (on a GPU, when
    # there is one: the reload runs on the CPU, so float32 on two devices: 46.080251 against 46.080197 on an H200)
    assert evaluate(model, corpus.val) == pytest.approx(result.metrics[-1]["val_ppl"], rel=1e-5)
    if config.tie_weights:
        assert model.dense.weight is model.embedding.weight
    # generate needs no model flags: everything comes from the checkpoint
    out = CliRunner().invoke(cli, ["generate", "--checkpoint", str(run_dir), "--prefix", "分开", "--length", "8",
                                   "--format", "jsonl", "--seed", "1"])
    assert out.exit_code == 0, out.output
    sample = json.loads(out.stdout)
    # 8 characters drawn; trailing blank space is trimmed from a sample, so its text may be shorter
    assert sample["prefix"] == "分开" and sample["text"] and len(sample["text"]) <= 8
    assert len(sample["logprobs"]) == len(sample["text"])


# --- bad input through the CLI ------------------------------------------------

BAD = [
    (["--dropout", "1"], "--dropout must lie in [0, 1)"),
    (["--dropout", "-0.1"], "--dropout must lie in [0, 1)"),
    (["--layers", "0"], "--layers must be 1 or more"),
    (["--embedding", "-4"], "--embedding must be 0"),
    (["--model", "gru-scratch", "--embedding", "8"], "gru-scratch is the textbook's one-layer model"),
    (["--model", "lstm-scratch", "--layers", "2"], "cannot use --layers 2; use --model lstm"),
    (["--model", "rnn-scratch", "--embedding", "16", "--tie-weights"], "cannot use --embedding 16 --tie-weights"),
    (["--model", "gru", "--embedding", "8", "--tie-weights"], "--tie-weights shares the output layer (16 wide"),
    (["--model", "lstm", "--tie-weights"], "give --embedding 16"),
    (["--model", "gru", "--onehot", "--embedding", "8"], "give only one"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_model_options_give_one_line(small_corpus, tmp_path, args, message):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--corpus", str(small_corpus), "--out", str(run_dir), "--hidden", "16",
                                      "--epochs", "1", "--num-steps", "8", "--batch-size", "4", "--preset", "none", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (run_dir / "last.pt").exists()


def test_new_flags_are_listed_in_train_help():
    out = CliRunner().invoke(cli, ["train", "--help"]).output
    for flag in ("--layers", "--dropout", "--embedding", "--tie-weights", "--onehot"):
        assert flag in out
    for name in RECURRENT:
        assert name in out


def test_old_config_without_the_new_fields_loads_with_defaults():
    data = Config(model="gru").to_dict()
    for key in ("layers", "dropout", "embedding", "tie_weights"):
        del data[key]
    config = Config.from_dict(data)
    assert (config.layers, config.dropout, config.embedding, config.tie_weights) == (1, 0.0, 0, False)
    assert replace(config, hidden=8).validate().hidden == 8
