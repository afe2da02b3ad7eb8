"""`python train.py [flags]`: the same as `charlm train [flags]` (see `python train.py --help`)."""

from charlm.cli import train_command

if __name__ == "__main__":
    train_command.main(prog_name="train.py")
