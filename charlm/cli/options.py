"""The flags shared by several commands: one per Config field (with its preset notes), the
checkpoint and device choices, old spellings, and the progress bar drawn while training."""

from __future__ import annotations

import time
from dataclasses import MISSING, fields

import click
from click.core import ParameterSource

from charlm.config import PRESET_NAMES, Config, field_default
from charlm.errors import CharlmError
from charlm.models import MODELS

EXPLICIT_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


class DeprecatedAlias(click.Option):
    """A hidden old spelling of a flag, kept for a release: its value goes to the new flag, with a one-line notice.

        @click.option("--samples", cls=DeprecatedAlias, replaced_by="num_samples", type=int)
    """

    def __init__(self, *args, replaced_by: str, **kwargs):
        kwargs.update(hidden=True, default=None, show_default=False)
        super().__init__(*args, **kwargs)
        self.replaced_by = replaced_by

    def hand_over(self, ctx: click.Context) -> None:
        value = ctx.params.pop(self.name, None)
        if value is None or value == ():
            return
        new = next(p for p in ctx.command.params if p.name == self.replaced_by)
        if ctx.get_parameter_source(new.name) in EXPLICIT_SOURCES:
            raise CharlmError(f"{self.opts[0]} is the old spelling of {new.opts[0]}; give only {new.opts[0]}")
        click.echo(f"warning: {self.opts[0]} is deprecated and will be removed; use {new.opts[0]}", err=True)
        ctx.params[new.name] = value
        ctx.set_parameter_source(new.name, ParameterSource.COMMANDLINE)


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _click_type(f):
    if "choices" in f.metadata:
        return click.Choice(f.metadata["choices"])
    if f.name == "model":
        return click.Choice(list(MODELS))
    if f.name == "preset":
        return click.Choice(PRESET_NAMES)
    default = field_default(f)
    if isinstance(default, bool):
        return None
    return type(default) if isinstance(default, (int, float)) else str


class NotedOption(click.Option):
    """An option whose help adds `note` to its `[default: ...]`: what a preset or the auto recipe sets instead."""

    def __init__(self, *args, note: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.note = note

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None or not self.note:
            return record
        spec, text = record
        if text.endswith("]") and "  [" in text:
            return spec, f"{text[:-1]}; {self.note}]"
        return spec, f"{text}  [{self.note}]" if text else f"[{self.note}]"


def checkpoint_option(func):
    """--checkpoint: a .pt file or a run directory, by default the newest run (generate, evaluate, serve)."""
    return click.option("--checkpoint", type=click.Path(), default=None,
                        help="A .pt file or a run directory (its best.pt). Default: the newest run under "
                             "checkpoints/.")(func)


def device_option(func):
    """--device: auto, cpu or cuda."""
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="auto uses CUDA when present.")(func)


def config_options(func=None, *, default_preset=MISSING, with_auto=True):
    """Add one click option per Config field, with the field's help and default.

    Each help also says which presets (and the auto recipe) set the field, naming
    first `default_preset`, the preset a run uses when --preset is not given
    (train: the Config default; compare passes its own), and whether --preset auto is offered.
    """
    from charlm.cli.helpnotes import preset_note

    if func is None:
        return lambda f: config_options(f, default_preset=default_preset, with_auto=with_auto)
    if default_preset is MISSING:
        default_preset = field_default(next(f for f in fields(Config) if f.name == "preset"))
    for f in reversed(fields(Config)):
        default = field_default(f)
        help_text = f.metadata["help"]
        if f.name == "model":
            help_text = f"{help_text.rstrip('.')}: {', '.join(MODELS)}."
        if f.name == "preset":
            help_text += f" Presets: {', '.join(PRESET_NAMES)}."
        kwargs = dict(default=default, show_default=default not in (None, "", ()), help=help_text,
                      cls=NotedOption, note=preset_note(f.name, default_preset, with_auto))
        if isinstance(default, bool):
            kwargs["is_flag"] = True
        elif f.metadata.get("multiple"):
            kwargs.update(multiple=True, type=str)
        else:
            kwargs["type"] = _click_type(f)
        func = click.option(_flag(f), f.name, **kwargs)(func)
    return func


def explicit_params(ctx: click.Context, names) -> set[str]:
    """The parameters the user actually gave (so presets and resume know what not to override)."""
    return {n for n in names if ctx.get_parameter_source(n) in EXPLICIT_SOURCES}


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled, self.last = enabled, 0.0

    def __call__(self, done: int, total: int | None):
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done != total):
            return
        self.last = now
        total = total or done
        filled = int(30 * done / max(total, 1))
        click.echo(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} minibatches", err=True, nl=False)
        if done >= total:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)
