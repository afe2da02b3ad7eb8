"""The JSON fields of a generation request and what one request may ask for: turned into the same
GenerationRequest as `charlm generate`'s flags, through the same checks (charlm/generate/request.py).

    {"prefix": "分开", "top_k": 5}  or  ?prefix=分开&top_k=5
        ─> types (_number) ─> RequestLimits ─> make_request(spell=JSON) ─> clean_prefix ─> GenerationRequest
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from charlm import defaults
from charlm.errors import CharlmError
from charlm.generate.request import GenerationRequest, Spelling, clean_prefix, make_request


@dataclass(frozen=True)
class RequestLimits:
    """What one web request may ask for, so that no single request can take the server down."""

    prefix_chars: int = 200
    length: int = 2000
    num_samples: int = 8
    num_beams: int = 8
    body_bytes: int = 16_384
    workers: int = 16  # generations running at once; further requests wait for a free worker
    max_copy: int = 64  # the copy guard's longest allowed span (its index grows with it)


# name -> (type, default). None as a default means "not given": make_request's strategy rule decides.
FIELDS = {
    "prefix": (str, None),
    "strategy": (str, None),
    "length": (int, None),  # None: as generate, at most defaults.LENGTH (LINES_LENGTH with lines), ending with the song
    "num_samples": (int, 1),
    "temperature": (float, None),
    "top_k": (int, None),
    "top_p": (float, None),
    "num_beams": (int, None),
    "repetition_penalty": (float, 1.0),
    "seed": (int, None),
    "unknown": (str, "error"),
    "max_copy": (int, defaults.MAX_COPY),  # the copy guard; 0: off
    "lines": (int, 0),  # stop after this many lines, prefix included (0: no limit)
}


class JsonSpelling(Spelling):
    """The request's rules worded with the JSON field names (`top_k`, strategy 'greedy')."""

    def name(self, field: str) -> str:
        return field

    def arg_max(self) -> str:
        return "strategy 'greedy'"

    def sampling_conflict(self, strategy: str, given: list[str]) -> str:
        return f"{given[0]} applies to strategy 'sample' only, not {strategy!r}"

    def beams_conflict(self, strategy: str, num_beams: int) -> str:
        if strategy == "beam":
            return f"strategy 'beam' needs num_beams of 2 or more, got {num_beams}"
        return f"num_beams applies to strategy 'beam' only, not {strategy!r}"

    def too_few_beams(self, num_beams: int, num_samples: int) -> str:
        return f"beam search returns at most num_beams ({num_beams}) samples, got num_samples {num_samples}"

    def empty_prefix(self) -> str:
        return "prefix is empty; give at least one character, e.g. {\"prefix\": \"分开\"}"

    def skip_hint(self) -> str:
        return "send \"unknown\": \"skip\" to drop them"

    def greedy_repeats(self, num_samples: int) -> str:
        return (f"strategy 'greedy' gives the same text every time, so num_samples {num_samples} "
                "would repeat it; use strategy 'sample', or 'beam' for the best N texts")


JSON = JsonSpelling()


def _number(name: str, value, kind, from_query: bool):
    """`value` as an int or float, or a CharlmError naming the field; text is read only from a query string."""
    if from_query and isinstance(value, str):
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            raise CharlmError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CharlmError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {json.dumps(value)}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise CharlmError(f"{name} must be an integer, got {value}")
        return int(value)
    if not math.isfinite(value):
        raise CharlmError(f"{name} must be a finite number, got {value}")
    return float(value)


def _typed(raw) -> dict:
    """Every field of a JSON object (or query), typed, with FIELDS' defaults for those not given."""
    if not isinstance(raw, dict):
        raise CharlmError("the request body must be a JSON object, e.g. {\"prefix\": \"分开\"}")
    unknown_fields = sorted(set(raw) - set(FIELDS))
    if unknown_fields:
        raise CharlmError(f"unknown field {unknown_fields[0]!r}; the fields are: {', '.join(FIELDS)}")
    return {name: raw[name] for name in FIELDS if raw.get(name) is not None}


def _within(values: dict, limits: RequestLimits) -> None:
    """Refuse what is over this server's limits (before the rules, which know no limits)."""
    prefix = values["prefix"]
    if prefix is None:
        raise CharlmError("prefix is missing; give the text to continue, e.g. {\"prefix\": \"分开\"}")
    if len(prefix) > limits.prefix_chars:
        raise CharlmError(f"prefix has {len(prefix)} characters; at most {limits.prefix_chars} are allowed")
    if values["length"] is not None and not 0 <= values["length"] <= limits.length:
        raise CharlmError(f"length must be between 0 and {limits.length}, got {values['length']}")
    if not 1 <= values["num_samples"] <= limits.num_samples:
        raise CharlmError(f"num_samples must be between 1 and {limits.num_samples}, got {values['num_samples']}")
    if not 0 <= values["max_copy"] <= limits.max_copy:
        raise CharlmError(f"max_copy must be 0 (off) or up to {limits.max_copy}, got {values['max_copy']}")
    if not 0 <= values["lines"] <= limits.length:
        raise CharlmError(f"lines must be 0 (no limit) or up to {limits.length}, got {values['lines']}")
    if values["seed"] is not None and not 0 <= values["seed"] < 2**63:
        raise CharlmError(f"seed must be between 0 and 2**63 - 1, got {values['seed']}")


def parse_request(raw, vocab, limits: RequestLimits = RequestLimits(), from_query: bool = False) -> GenerationRequest:
    """Check a JSON body (or query parameters) and build the GenerationRequest; any problem is a CharlmError.

    Fields are typed and bounded here; the decoding rules and the defaults are generate's (make_request).
    """
    given = _typed(raw)
    values = {}
    for name, (kind, default) in FIELDS.items():
        if name not in given:
            values[name] = default
        elif kind is str:
            if not isinstance(given[name], str):
                raise CharlmError(f"{name} must be a string, got {json.dumps(given[name], ensure_ascii=False)}")
            values[name] = given[name]
        else:
            values[name] = _number(name, given[name], kind, from_query)
    _within(values, limits)
    prefix = values.pop("prefix")
    req = make_request(**values, spell=JSON)
    if req.decoding.num_beams > min(limits.num_beams, len(vocab)):
        raise CharlmError(f"num_beams must be at most {min(limits.num_beams, len(vocab))}, got {req.decoding.num_beams}")
    kept, dropped = clean_prefix(prefix, vocab, req.unknown, JSON)
    length = req.length if values["length"] is not None else min(req.length, limits.length)
    return replace(req, prefixes=(kept,), dropped=tuple(dropped), length=length)
