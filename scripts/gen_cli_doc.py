"""Write docs/cli.md, the table of every flag of every command, from the click commands (see charlm/clidoc.py).

    python scripts/gen_cli_doc.py          # rewrite docs/cli.md
    python scripts/gen_cli_doc.py --check  # exit 1 when docs/cli.md is out of date
"""

import sys
from pathlib import Path

from charlm.cli.clidoc import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv[1:]:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            sys.exit(f"{DOC} is out of date: run python scripts/gen_cli_doc.py")
        sys.exit(0)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
