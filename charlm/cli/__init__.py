"""The command line: `charlm train | generate | evaluate | compare | serve`, one file per command."""

from charlm.cli.app import cli, generate_command, main, train_command  # noqa: F401  (setup.cfg, train.py, generate.py)
