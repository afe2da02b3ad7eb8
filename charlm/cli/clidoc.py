"""docs/cli.md from the click commands themselves: one table of every flag of every command.

`python scripts/gen_cli_doc.py` writes the file; tests/test_cli_consistency.py keeps
it equal to `render()`, so a flag added, renamed or given a new default without
regenerating the file fails the tests instead of leaving the page wrong.
"""

from __future__ import annotations

import click

TYPE_NAMES = {"integer": "integer", "float": "number", "text": "text", "path": "path", "boolean": "flag",
              "integer range": "integer", "float range": "number"}


def _cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(param: click.Parameter) -> str:
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        return "flag"
    if isinstance(param.type, click.Choice):
        kind = " \\| ".join(f"`{c}`" for c in param.type.choices)
    else:
        kind = TYPE_NAMES.get(param.type.name, param.type.name)
    return kind + (" (repeatable)" if getattr(param, "multiple", False) else "")


def _extras(param: click.Parameter, ctx: click.Context) -> str:
    """What --help shows in brackets after the help: the default (and what presets set), the range."""
    record = param.get_help_record(ctx)
    text = record[1] if record else ""
    if not text.endswith("]") or "[" not in text:
        return ""
    inner = text[text.rindex("  [") + 3:-1] if "  [" in text else text[1:-1]
    return inner.removeprefix("default: ")


def _flags(param: click.Parameter) -> str:
    return ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])


def option_rows(command: click.Command, ctx: click.Context) -> list[str]:
    """The markdown table of `command`'s visible options (the help option included)."""
    rows = ["| flag | type | default (and what presets set) | help |", "|---|---|---|---|"]
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        rows.append(f"| {_flags(param)} | {_type(param)} | {_cell(_extras(param, ctx))} | {_cell(param.help or '')} |")
    return rows


def deprecated_rows(group: click.Group, ctx: click.Context) -> list[str]:
    """Old spellings still accepted (hidden from --help), with the flag that replaced each."""
    rows = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        for param in command.params:
            new = getattr(param, "replaced_by", None)
            if new:
                target = next(p for p in command.params if p.name == new)
                rows.append(f"| `charlm {name} {param.opts[0]}` | `{target.opts[0]}` |")
    return ["| old spelling | use instead |", "|---|---|", *rows] if rows else []


def render(group: click.Group | None = None) -> str:
    """The whole of docs/cli.md."""
    if group is None:
        from charlm.cli.app import cli as group
    root = click.Context(group, info_name="charlm", **group.context_settings)
    lines = ["# Command-line reference", "",
             "Generated from the commands by `python scripts/gen_cli_doc.py`; do not edit by hand "
             "(tests/test_cli_consistency.py fails until the file is regenerated).", "",
             "`charlm CMD`, `python -m charlm CMD`, and for `train` and `generate` also `python train.py` and "
             "`python generate.py`, run the same commands with the same flags; each takes `-h` or `--help`. "
             "Where a preset (or `--preset auto`) sets a flag, the default column says so.", "",
             "## charlm", "", _cell(group.help.split("\n\n")[0]), ""]
    lines += option_rows(group, root)
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        ctx = click.Context(command, info_name=name, parent=root, **command.context_settings)
        summary = (command.help or "").split("\n\n")[0]
        lines += ["", f"## charlm {name}", "", _cell(summary), ""] + option_rows(command, ctx)
    old = deprecated_rows(group, root)
    if old:
        lines += ["", "## Old spellings", "",
                  "Still accepted for one release, hidden from `--help`; each prints a one-line notice.", ""] + old
    return "\n".join(lines) + "\n"
