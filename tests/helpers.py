"""Assertions shared by the CLI tests."""


def assert_one_line_error(result, *fragments):
    """A click result that failed with exit status 2 and exactly one `error:` line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def default_sigint():
    """Popen preexec_fn: give the child the default Ctrl-C behaviour.

    A shell that starts the test run in the background (CI scripts, `cmd &`) makes
    SIGINT ignored, children inherit that, and Python then installs no
    KeyboardInterrupt handler, so a test that sends SIGINT would see nothing happen.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- running the CLI in this process (the bad-input and hardening catalogues) ---------------------
TRAIN = ["train", "--hidden", "8", "--batch-size", "4", "--num-steps", "6", "--pred-every", "0",
         "--device", "cpu", "--val-fraction", "0.2", "--lr", "0.01", "--epochs", "1", "--preset", "none"]


def cli(args, capsys) -> tuple[int, str, str]:
    """Run the charlm CLI in this process; return (exit status, stdout, stderr)."""
    import pytest

    from charlm.cli.app import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def fails(args, capsys, *needles, code: int = 2) -> str:
    """Assert the catalogue contract and that the error line mentions every needle; return the line."""
    status, _, err = cli(args, capsys)
    lines = err.strip().splitlines()
    assert status == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def train_args(corpus, out, *extra):
    return TRAIN + ["--corpus", corpus, "--out", out, *extra]
