"""`python generate.py [flags]`: the same as `charlm generate [flags]` (see `python generate.py --help`)."""

from charlm.cli import generate_command

if __name__ == "__main__":
    generate_command.main(prog_name="generate.py")
