"""The one rule for a prefix a model is asked to continue: what happens to characters it has never seen.

    prefix ──(unknown "skip": drop them)──> not empty? ──> all in the vocabulary? ──> indices
                                                 │ no                │ no
                                                 └─ CharlmError ─────┘  (saying how to skip them)

`generate` and `evaluate` on the command line, and the web page, all come through `check_prefix`;
only the wording of the hints differs per surface (a flag on the command line, a field in JSON).
"""

from __future__ import annotations

from charlm.errors import CharlmError

EMPTY_PREFIX = "the prefix is empty; give at least one character, e.g. --prefix 分开"
SKIP_HINT = "drop them with --unknown skip"


def drop_unknown(prefix: str, vocab) -> tuple[str, list[str]]:
    """The prefix without the characters the model has never seen, and those characters (first appearance order)."""
    unknown = vocab.unknown(prefix)
    return "".join(c for c in prefix if c in vocab.char_to_idx), unknown


def check_prefix(prefix: str, vocab, unknown: str = "error", *, empty: str = EMPTY_PREFIX,
                 skip_hint: str = SKIP_HINT) -> tuple[str, list[str]]:
    """(the prefix to continue, the characters dropped from it), or a CharlmError.

    With unknown "skip" the characters outside the vocabulary are dropped, with "error" they are
    refused (the message ends with `skip_hint`); an empty prefix is refused either way (`empty`).
    """
    if unknown not in ("error", "skip"):
        raise CharlmError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    dropped: list[str] = []
    if unknown == "skip":
        kept, dropped = drop_unknown(prefix, vocab)
        if prefix and not kept:
            raise CharlmError(f"nothing is left of prefix {prefix!r} once its unknown characters are dropped")
        prefix = kept
    if not prefix:
        raise CharlmError(empty)
    missing = vocab.unknown(prefix)
    if missing:
        raise CharlmError(f"prefix {prefix!r} has characters not in the model's vocabulary: "
                          f"{' '.join(map(repr, missing))} ({skip_hint})")
    return prefix, dropped


def dropped_note(prefix: str, dropped: list[str]) -> str:
    """The warning line for characters dropped from a prefix under unknown "skip"."""
    return f"dropped {' '.join(map(repr, dropped))} from prefix {prefix!r}: not in the model's vocabulary"


def encode_prefix(prefix: str, vocab) -> list[int]:
    """Indices of a prefix, or a CharlmError listing the characters the model has never seen."""
    prefix, _ = check_prefix(prefix, vocab)
    return [vocab.char_to_idx[c] for c in prefix]
