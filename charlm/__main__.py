"""`python -m charlm ...` runs the same commands as the `charlm` console script."""

from charlm.cli import main

if __name__ == "__main__":
    main()
