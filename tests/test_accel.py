"""Batched validation, precision, compile and the device switch of the nn models (charlm/accel.py, trainer.evaluate).

The CUDA tests skip on a machine without a GPU; everything else runs on the CPU.
"""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from charlm.device import MAX_STREAMS, MIN_CHARS, STREAM_CHARS, Precision, maybe_compile, val_streams
from charlm.cli.app import cli
from charlm.errors import CharlmError
from charlm.run.metrics import perplexity
from charlm.models import GRUModel, LSTMModel, MixtureModel, RNNModel, build_model, upgrade_state_dict
from charlm.config import Config
from charlm.train.validate import perplexity as evaluate
from helpers import assert_one_line_error

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
V, H = 13, 8


def _random_model(cls=GRUModel, **kwargs):
    torch.manual_seed(0)
    model = cls(V, H, **kwargs).double()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


def _stream_ppl(model, data):
    """One stream, batch 1, one step at a time: the reference for a single row."""
    state, total = model.begin_state(1), 0.0
    for t in range(len(data) - 1):
        logits, state = model(torch.tensor([[data[t]]]), state)
        total += F.cross_entropy(logits.reshape(1, -1), torch.tensor([data[t + 1]]), reduction="sum").item()
    return total


@pytest.mark.parametrize("n, streams", [(41, 1), (41, 4), (41, 5), (12, 3), (7, 40)])
def test_streams_match_separate_single_streams(n, streams):
    """S rows read side by side equal S separate one-step-at-a-time passes over the contiguous pieces."""
    model = _random_model().eval()
    data = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    m = n - 1
    length = -(-m // min(streams, m))
    # row s predicts targets s*L+1 .. s*L+L from inputs s*L .. s*L+L-1 (the last row shorter)
    reference = sum(_stream_ppl(model, data[s:s + length + 1]) for s in range(0, m, length))
    got = evaluate(model, data, torch.device("cpu"), chunk=3, streams=streams)
    assert got == pytest.approx(perplexity(reference, m), rel=1e-10)


def test_one_stream_is_the_old_exact_figure():
    """S = 1 is the single stream: chunking does not change it, more streams do."""
    model = _random_model(LSTMModel).eval()
    data = torch.randint(0, V, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    one = evaluate(model, data, chunk=7, streams=1)
    assert one == pytest.approx(perplexity(_stream_ppl(model, data), 199), rel=1e-10)
    assert evaluate(model, data, chunk=64, streams=1) == pytest.approx(one, rel=1e-12)
    assert evaluate(model, data, chunk=7, streams=8) != pytest.approx(one, rel=1e-6)


def test_streams_work_for_the_mixture():
    config = Config(model="mix", mix_neural="gru", order=3, hidden=8)
    model = build_model(config, V)
    data = torch.randint(0, V, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    model.fit_counts(data[:200])
    model.eval()
    one, many = evaluate(model, data[200:], streams=1), evaluate(model, data[200:], streams=4)
    assert 1 < one < V * 3 and 1 < many < V * 3


def test_val_streams_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert val_streams(0, 500, cpu) == 1  # short texts: one stream, the exact figure
    assert val_streams(0, MIN_CHARS["cpu"] - 1, cpu) == 1 and val_streams(0, MIN_CHARS["cpu"], cpu) > 1
    assert val_streams(0, 6_328, cuda) == 6  # on a GPU even the lyrics' held-out text is batched
    assert val_streams(0, 40_001, cpu) == 40_000 // STREAM_CHARS["cpu"]
    assert val_streams(0, 10_000_000, cpu) == MAX_STREAMS["cpu"]
    assert val_streams(0, 111_000, cuda) > val_streams(0, 111_000, cpu)
    assert val_streams(1, 10_000_000, cuda) == 1
    assert val_streams(9, 5, cpu) == 4  # never more rows than predictions


def test_precision_on_the_cpu():
    cpu = torch.device("cpu")
    fp32 = Precision("fp32", cpu)
    assert fp32.scaler is None
    before = torch.get_float32_matmul_precision()
    with fp32.autocast():
        assert not torch.is_autocast_enabled()
        assert torch.get_float32_matmul_precision() == before  # TF32 is for CUDA only
    for name in ("bf16", "fp16"):
        with pytest.raises(CharlmError, match=f"--precision {name} needs a CUDA GPU"):
            Precision(name, cpu)


def test_compile_is_ignored_on_the_cpu():
    lines = []
    model = _random_model()
    assert maybe_compile(model, True, torch.device("cpu"), lines.append) is model
    assert lines and "ignored on the CPU" in lines[0]
    assert maybe_compile(model, False, torch.device("cpu"), lines.append) is model and len(lines) == 1


# --- the models: public modules only, old checkpoints, the device switch --------

@pytest.mark.parametrize("cls", [RNNModel, GRUModel, LSTMModel])
def test_old_state_dicts_with_w_ih_in_the_rnn_module_load(cls):
    model = _random_model(cls, layers=2)
    old = {k: v for k, v in model.state_dict().items() if k != "lookup.weight"}
    old["rnn.weight_ih_l0"] = model.lookup.weight.detach().t().clone()  # how charlm stored it before
    fresh = cls(V, H, layers=2).double()
    fresh.load_state_dict(old)
    X = torch.randint(0, V, (2, 5))
    assert torch.equal(fresh(X, fresh.begin_state(2))[0], model(X, model.begin_state(2))[0])


def test_old_mixture_state_dicts_upgrade():
    mix = build_model(Config(model="mix", mix_neural="lstm", order=2, hidden=8), V)
    state = dict(mix.state_dict())
    state["neural.rnn.weight_ih_l0"] = state.pop("neural.lookup.weight").t()
    upgraded = upgrade_state_dict(mix, state)
    assert "neural.rnn.weight_ih_l0" not in upgraded
    assert torch.equal(upgraded["neural.lookup.weight"], mix.neural.lookup.weight)
    assert upgrade_state_dict(mix, mix.state_dict()).keys() == mix.state_dict().keys()


def test_the_identity_is_a_buffer_not_a_parameter_nor_saved():
    model = LSTMModel(V, H)
    assert "rnn.weight_ih_l0" not in dict(model.named_parameters())
    assert "rnn.weight_ih_l0" not in model.state_dict()
    assert torch.equal(model.rnn.weight_ih_l0, torch.eye(4 * H))


def test_no_private_torch_api_in_charlm():
    from pathlib import Path

    import charlm
    for path in Path(charlm.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "_VF" not in text and "torch._C" not in text, path


def _cuda_copy(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "not part of single contiguous chunk of memory" would fail here
        return model.float().cuda()


@CUDA
@pytest.mark.parametrize("cls, kwargs", [(RNNModel, {}), (GRUModel, {"layers": 2}), (LSTMModel, {"layers": 3}),
                                         (LSTMModel, {"embedding": 6})])
def test_cuda_uses_torch_modules_without_contiguity_warnings_and_matches_the_cpu(cls, kwargs, monkeypatch):
    import charlm.models.recurrent_nn as recurrent_nn

    cpu = _random_model(cls, **kwargs).float()
    gpu = cls(V, H, **kwargs)
    gpu.load_state_dict(cpu.state_dict())
    gpu = _cuda_copy(gpu)

    def refuse(*args, **kwargs):
        raise AssertionError("the hand-written recurrence ran on CUDA")
    monkeypatch.setattr(recurrent_nn, "tanh_recurrence", refuse)
    X = torch.randint(0, V, (4, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits, _ = gpu(X.cuda(), gpu.begin_state(4))
        logits.sum().backward()
    monkeypatch.undo()
    expected, _ = cpu(X, cpu.begin_state(4))
    torch.testing.assert_close(logits.detach().cpu(), expected.detach(), rtol=1e-3, atol=1e-4)  # cuDNN vs CPU float32


@CUDA
def test_tf32_only_inside_the_cuda_training_step():
    precision = Precision("fp32", torch.device("cuda"))
    before = torch.get_float32_matmul_precision()
    with precision.autocast():
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before


@CUDA
def test_bf16_and_fp16_train_a_step_on_cuda():
    device = torch.device("cuda")
    for name in ("bf16", "fp16"):
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        precision = Precision(name, device)
        model = LSTMModel(V, H, layers=2).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        X = torch.randint(0, V, (4, 9), device=device)
        with precision.autocast():
            logits, _ = model(X, model.begin_state(4))
            loss = F.cross_entropy(logits.reshape(-1, V).float(), X.reshape(-1))
        precision.backward(loss)
        precision.unscale(optimizer)
        precision.step(optimizer)
        assert torch.isfinite(loss)


# --- through the CLI -------------------------------------------------------------

def _train(tmp_path, small_corpus, *extra):
    return CliRunner().invoke(cli, ["train", "--corpus", str(small_corpus), "--out", str(tmp_path / "run"),
                                    "--hidden", "8", "--num-steps", "8", "--batch-size", "4", "--epochs", "1",
                                    "--val-fraction", "0.2", "--pred-every", "0", "--device", "cpu",
                                    "--preset", "none", *extra])


def test_cli_reports_streams_and_records_val_seconds(tmp_path, small_corpus):
    result = _train(tmp_path, small_corpus, "--val-streams", "3", "--model", "lstm")
    assert result.exit_code == 0, result.output
    assert "as 3 streams" in result.output
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < record["val_seconds"] and 0 < record["seconds"]


def test_cli_refuses_reduced_precision_on_the_cpu(tmp_path, small_corpus):
    assert_one_line_error(_train(tmp_path, small_corpus, "--precision", "bf16"), "--precision bf16 needs a CUDA GPU")


def test_cli_compile_on_the_cpu_says_it_is_ignored(tmp_path, small_corpus):
    result = _train(tmp_path, small_corpus, "--compile")
    assert result.exit_code == 0, result.output
    assert "--compile is ignored on the CPU" in result.output


def test_precision_compile_and_streams_may_change_on_resume():
    """How a run computes, not what it learns: a GPU run in bf16 resumes on the CPU with --precision fp32."""
    from charlm.train.state import resume_config

    saved = Config(precision="bf16", compile=True, val_streams=0)
    got = resume_config(saved, Config(precision="fp32", compile=False, val_streams=1),
                        {"precision", "compile", "val_streams"})
    assert (got.precision, got.compile, got.val_streams) == ("fp32", False, 1)
