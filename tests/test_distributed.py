"""Training under torchrun: two gloo processes on the CPU follow the single-process run epoch for epoch.

The two-process runs go through `python -m torch.distributed.run` (torchrun from
the same environment as the tests) in a subprocess; the single-process runs and
`generate` go through the CLI in this process.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from charlm.train import distributed
from charlm.run.checkpoint import load_checkpoint
from charlm.cli.app import cli
from charlm.errors import CharlmError

# batch 32 as in the acceptance command; the text gives 6 minibatches of 32 x 8 per epoch
TRAIN_FLAGS = ["--model", "rnn", "--batch-size", "32", "--num-steps", "8", "--hidden", "32",
               "--lr", "0.03", "--pred-every", "0", "--device", "cpu", "--seed", "3", "--preset", "none"]
REL = 1e-4
TORCHRUN_TIMEOUT = 240




@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """About 2,000 characters of the small text's words in a seeded random order.

    Not a repetition of one block: with a periodic text the two ranks' halves of
    a minibatch could hold the same characters, and a rank training on the wrong
    rows would go unnoticed.
    """
    from tests.conftest import SMALL_TEXT

    rng = random.Random(0)
    words = SMALL_TEXT.split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(60)]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def cli_train(args):
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 0, result.output
    return result


def torchrun(args, cwd, nproc=2, script=None, check=True):
    """`torchrun --standalone --nproc_per_node N -m charlm train ...` (or a script), one thread per process."""
    target = [script] if script else ["-m", "charlm", "train"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def assert_same_curves(a, b):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_ppl", "val_ppl"):
            assert rb[key] == pytest.approx(ra[key], rel=REL), (ra["epoch"], key, ra[key], rb[key])


# Runs `charlm train` under torchrun and saves the minibatches each rank trained on in epoch 1.
RECORD_SHARDS = """
import os, sys, torch
import charlm.train.loop as trainer
from charlm.cli.app import main

real = trainer.train_epoch
def recording(model, batches, optimizer, clip, carry, epoch, *rest, **kwargs):
    if epoch == 1:
        batches = list(batches)
        torch.save([X for X, _ in batches], f"shards-rank{os.environ['RANK']}.pt")
    return real(model, batches, optimizer, clip, carry, epoch, *rest, **kwargs)
trainer.train_epoch = recording
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def consecutive_runs(corpus_file, tmp_path_factory):
    """One process and two processes, 3 epochs each, consecutive sampling."""
    root = tmp_path_factory.mktemp("consecutive")
    flags = [*TRAIN_FLAGS, "--corpus", str(corpus_file), "--sampler", "consecutive", "--epochs", "3"]
    cli_train([*flags, "--out", str(root / "one")])
    (root / "record.py").write_text(RECORD_SHARDS, encoding="utf-8")
    done = torchrun(["train", *flags, "--out", str(root / "two")], cwd=root, script=str(root / "record.py"))
    return root, done


@pytest.mark.parametrize("sampler", ["consecutive", "random"])
def test_two_processes_follow_the_single_process_run(sampler, consecutive_runs, corpus_file, tmp_path):
    if sampler == "consecutive":
        root, _ = consecutive_runs
    else:
        root = tmp_path
        flags = [*TRAIN_FLAGS, "--corpus", str(corpus_file), "--sampler", "random", "--epochs", "3"]
        cli_train([*flags, "--out", str(root / "one")])
        torchrun([*flags, "--out", str(root / "two")], cwd=root)
    one, two = records(root / "one"), records(root / "two")
    assert len(one) == 3
    assert_same_curves(one, two)
    assert one[-1]["train_ppl"] < one[0]["train_ppl"]  # it learnt something, so equality is not trivial


def test_each_rank_trains_on_its_own_half_of_every_minibatch(consecutive_runs, corpus_file):
    from charlm.data.batches import epoch_batches
    from charlm.config import Config
    from charlm.data.corpus import load_corpus

    root, _ = consecutive_runs
    config = Config(corpus=str(corpus_file), sampler="consecutive", batch_size=32, num_steps=8, seed=3)
    whole = [X for X, _ in epoch_batches(load_corpus(config).train, config, 1)]  # (32, 8) each
    rank0, rank1 = (torch.load(root / f"shards-rank{r}.pt") for r in (0, 1))
    assert len(rank0) == len(rank1) == len(whole) == 6
    for X, a, b in zip(whole, rank0, rank1):
        assert a.shape == b.shape == (16, 8)
        assert torch.equal(torch.cat([a, b]), X)  # rows 0-15 on rank 0, 16-31 on rank 1: disjoint, all covered


def test_only_rank_zero_prints_and_writes(consecutive_runs):
    root, done = consecutive_runs
    assert done.stdout.count("epoch    3 |") == 1
    assert done.stdout.count("best validation perplexity") == 1
    assert {"best.pt", "last.pt", "metrics.jsonl"} <= {p.name for p in (root / "two").iterdir()}
    assert [r["epoch"] for r in records(root / "two")] == [1, 2, 3]  # one line per epoch, not one per rank


def test_checkpoint_of_two_processes_generates_in_one(consecutive_runs):
    root, _ = consecutive_runs
    one, two = load_checkpoint(root / "one" / "last.pt"), load_checkpoint(root / "two" / "last.pt")
    assert one["model"].keys() == two["model"].keys()  # no "module." prefixes from DDP
    for name in one["model"]:
        torch.testing.assert_close(two["model"][name], one["model"][name], rtol=1e-4, atol=1e-5)
    texts = []
    for run in ("one", "two"):
        result = CliRunner().invoke(cli, ["generate", "--checkpoint", str(root / run), "--prefix", "分开",
                                          "--length", "30", "--greedy", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        texts.append(result.stdout)
    assert texts[0] == texts[1]
    assert texts[0].startswith("分开") and 2 < len(texts[0].rstrip("\n")) <= 32  # blank space at the end is dropped


def test_resume_with_another_number_of_processes(consecutive_runs, corpus_file, tmp_path):
    """Two epochs in one process, the third under torchrun with two: the same curve as three in one."""
    root, _ = consecutive_runs
    flags = [*TRAIN_FLAGS, "--corpus", str(corpus_file), "--sampler", "consecutive"]
    cli_train([*flags, "--epochs", "2", "--out", str(tmp_path / "run")])
    torchrun(["--resume", str(tmp_path / "run"), "--epochs", "3"], cwd=tmp_path)
    assert_same_curves(records(root / "one"), records(tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3


def test_batch_size_must_divide_by_the_processes(corpus_file, tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}  # what torchrun --nproc_per_node 3 sets
    result = CliRunner().invoke(cli, ["train", *TRAIN_FLAGS, "--corpus", str(corpus_file),
                                      "--out", str(tmp_path / "run")], env=env)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --batch-size 32 ")
    assert "3 processes" in lines[0] and "--batch-size 30 or --batch-size 33" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_rank_that_dies_stops_the_others(corpus_file, tmp_path):
    """Rank 1 exits in epoch 2; rank 0 must not wait for it, and torchrun names rank 1 as the cause."""
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        import charlm.train.loop as trainer
        from charlm.cli.app import main

        real = trainer.train_epoch
        def dying(model, batches, optimizer, clip, carry, epoch, *rest, **kwargs):
            if os.environ["RANK"] == "1" and epoch == 2:
                os._exit(3)
            return real(model, batches, optimizer, clip, carry, epoch, *rest, **kwargs)
        trainer.train_epoch = dying
        main(sys.argv[1:])
    """), encoding="utf-8")
    done = torchrun(["train", *TRAIN_FLAGS, "--corpus", str(corpus_file), "--epochs", "3",
                     "--out", str(tmp_path / "run")], cwd=tmp_path, script=str(script), check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert re.search(r"exitcode\s*:\s*3\b", output), output  # torchrun's report: the root cause
    assert len(records(tmp_path / "run")) == 1  # epoch 1 finished and was kept
    # rank 0 either noticed the lost peer itself (our one line) or was stopped by torchrun first
    assert "lost contact with the other processes" in output or "SIGTERM" in output, output


def test_ranks_reading_different_texts_refuse_to_train(corpus_file, tmp_path):
    """On several machines each rank reads its own copy: rank 1 here reads another text."""
    other = tmp_path / "other.txt"
    other.write_text(corpus_file.read_text(encoding="utf-8").replace("fox", "cat"), encoding="utf-8")
    script = tmp_path / "other_text.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from charlm.cli.app import main
        argv = sys.argv[1:]
        if os.environ["RANK"] == "1":
            argv[argv.index("--corpus") + 1] = {str(other)!r}
        main(argv)
    """), encoding="utf-8")
    done = torchrun(["train", *TRAIN_FLAGS, "--corpus", str(corpus_file), "--epochs", "1",
                     "--out", str(tmp_path / "run")], cwd=tmp_path, script=str(script), check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("rank 1 of 2 has another corpus than rank 0" in line for line in errors), done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --- the Group object, without processes ------------------------------------------------


def test_without_torchrun_there_is_one_process_and_no_group():
    group = distributed.from_env({})
    assert (group.rank, group.world_size, group.launched, group.is_main) == (0, 1, False, True)
    model = torch.nn.Linear(2, 2)
    assert group.wrap(model) is model
    assert group.start(torch.device("cpu")) == torch.device("cpu") and not group.started
    assert group.all_reduce_sum(1.5, 7) == (1.5, 7)
    assert group.run_once(lambda: 2.5) == 2.5
    X = torch.arange(12).view(4, 3)
    x, y = group.shard(X, X + 1)
    assert torch.equal(x, X) and torch.equal(y, X + 1)


def test_torchrun_variables_give_rank_and_world_size():
    group = distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (group.rank, group.world_size, group.local_rank, group.launched, group.is_main) == (3, 4, 1, True, False)
    with pytest.raises(CharlmError, match="RANK"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(CharlmError, match="whole number"):
        distributed.from_env({"RANK": "x", "WORLD_SIZE": "4"})


def test_shards_are_disjoint_equal_and_cover_the_minibatch():
    X = torch.arange(8 * 5).view(8, 5)  # (batch, num_steps)
    shards = [distributed.ProcessGroup(r, 4, r, launched=True).shard(X, X + 1) for r in range(4)]
    assert all(x.shape == (2, 5) for x, _ in shards)
    assert torch.equal(torch.cat([x for x, _ in shards]), X)
    assert torch.equal(torch.cat([y for _, y in shards]), X + 1)


def test_batch_size_check():
    distributed.ProcessGroup(0, 4, 0, launched=True).check_batch_size(32)
    with pytest.raises(CharlmError, match=r"--batch-size 30 or --batch-size 35"):
        distributed.ProcessGroup(0, 5, 0, launched=True).check_batch_size(32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_nccl_without_gpus_is_a_clear_error():
    with pytest.raises(CharlmError, match="nccl.*needs CUDA GPUs.*--device cpu"):
        distributed.ProcessGroup(0, 2, 0, launched=True).start(torch.device("cuda"))


def test_lost_peer_errors_become_one_line(monkeypatch):
    group = distributed.ProcessGroup(1, 2, 1, launched=True)
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging")
    err = distributed.explain(group, gloo)
    assert isinstance(err, CharlmError)
    assert str(err).startswith("rank 1 of 2 lost contact") and "Connection reset by peer" in str(err)
    assert "pair.cc" not in str(err)
    ours = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert distributed.explain(group, ours) is ours  # a bug of ours stays a bug
    assert distributed.explain(distributed.ProcessGroup(), gloo) is gloo  # no torchrun, no translation
    monkeypatch.setenv("CHARLM_DIST_TIMEOUT", "0")
    with pytest.raises(CharlmError, match="CHARLM_DIST_TIMEOUT"):
        distributed.collective_timeout()
