"""What the `--help` of a Config flag says beside its default: which presets (and the auto recipe) set it.

Computed from `config.PRESETS` and `recipe.AUTO_FIELDS`, so a new preset or a new
field is described without anyone editing a help string, e.g.

    --epochs INTEGER   Passes over the training text.  [default: 20; --preset auto
                       (the default) chooses it from the corpus; --preset best sets 12;
                       --preset textbook, textbook-rnn, textbook-scratch set 250]
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from charlm.config import PRESETS, Config, field_default


def auto_fields() -> tuple[str, ...]:
    """The Config fields `--preset auto` may choose (empty when the recipe module is absent)."""
    try:
        from charlm.train.recipe import AUTO_FIELDS
    except ImportError:
        return ()
    return tuple(AUTO_FIELDS)


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def preset_values(name: str, default=MISSING) -> dict[str, str]:
    """preset -> what it sets field `name` to, in words ('250', or '100 for rnn-scratch, 0.001 for rnn').

    Presets that leave the field at `default` (or set it to `default`) are left out.
    """
    said = {}
    for preset, values in PRESETS.items():
        if not isinstance(values, dict):
            continue
        words = []
        if name in values and values[name] != default:
            words.append(_show(values[name]))
        per_model = [(m, v[name]) for m, v in values.get("per_model", {}).items() if name in v]
        if per_model and any(v != default for _, v in per_model):
            words.append(", ".join(f"{_show(v)} for {m}" for m, v in per_model))
        if words:
            said[preset] = "; otherwise ".join(words) if len(words) > 1 else words[0]
    return said


def preset_note(name: str, default_preset: str | None = None, with_auto: bool = True) -> str | None:
    """The note added after `default: X` in a flag's help, or None when no preset or recipe changes field `name`.

    `default_preset` is the preset the command applies when --preset is not given;
    it is named first, so the help says what a run with no flags really uses.
    `with_auto`: whether the command offers `--preset auto`.
    """
    parts = []
    if with_auto and name in auto_fields():
        parts.append(f"--preset auto{' (the default)' if default_preset == 'auto' else ''} chooses it from the corpus")
    said = preset_values(name, field_default(next(f for f in fields(Config) if f.name == name)))
    if default_preset in said:
        parts.append(f"--preset {default_preset} (the default) sets {said.pop(default_preset)}")
    by_words: dict[str, list[str]] = {}
    for preset in sorted(said):
        by_words.setdefault(said[preset], []).append(preset)
    for words, presets in sorted(by_words.items(), key=lambda item: item[1][0]):
        parts.append(f"--preset {', '.join(presets)} set{'s' if len(presets) == 1 else ''} {words}")
    return "; ".join(parts) or None


def preset_summary(preset: str) -> str:
    """Every field a preset sets, in flag words: 'max-chars 10000, newlines space, ..., lr 100 for rnn-scratch, ...'."""
    values = PRESETS[preset]
    parts = [f"{k.replace('_', '-')} {_show(v)}" for k, v in values.items() if k != "per_model"]
    per_model: dict[str, list[str]] = {}
    for model, settings in values.get("per_model", {}).items():
        for k, v in settings.items():
            per_model.setdefault(k, []).append(f"{_show(v)} for {model}")
    parts += [f"{k.replace('_', '-')} {', '.join(words)}" for k, words in per_model.items()]
    return ", ".join(parts)
