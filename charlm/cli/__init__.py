"""The command line: `charlm train | generate | evaluate | compare | serve`, one file per command."""

from charlm.cli.app import cli, main  # noqa: F401  (setup.cfg)
from charlm.cli.generate import generate_command  # noqa: F401  (generate.py)
from charlm.cli.train import train_command  # noqa: F401  (train.py)
