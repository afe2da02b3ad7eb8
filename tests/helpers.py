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
