"""The JSON fields of a generation request and what one request may ask for: turned into the same
GenerationRequest as `charlm generate`'s flags, through the same checks (charlm/generate/request.py).

    {"prefix": "分开", "top_k": 5}  or  ?prefix=分开&top_k=5
        ─> types (_number) ─> RequestLimits ─> make_request(spell=JSON) ─> clean_prefix ─> GenerationRequest

Every message names the page's own control ("randomness (temperature)"): LABELS, and `page_words`
for a message worded with a command-line flag (a form's rules are shared with `charlm generate`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace

from charlm import defaults
from charlm.errors import CharlmError
from charlm.forms.template import DEFAULT_CANDIDATES, FormRequest, parse_lengths
from charlm.generate.request import GenerationRequest, Spelling, clean_prefix, make_request
from charlm.generate.sections import parse_sections


@dataclass(frozen=True)
class RequestLimits:
    """What one web request may ask for, so that no single request can take the server down."""

    prefix_chars: int = 200
    context_chars: int = 4000  # the text above a line being rewritten, or a draft being continued
    length: int = 2000
    num_samples: int = 8
    num_beams: int = 8
    body_bytes: int = 16_384
    workers: int = 16  # the per-request scheduler's threads (benchmarks only): generations at once
    max_copy: int = 64  # the copy guard's longest allowed span (its index grows with it)
    work: int = 16_000  # length x samples (x beams for beam search): the most character-steps of one request
    queue: int = 128  # requests in the server at once, running or waiting; beyond: 503 with Retry-After
    batch_rows: int = 512  # streams stepped together; a request that would exceed it waits for rows to free
    solo_workers: int = 2  # beam searches and song forms running at once (each takes the model one call at a time)
    json_depth: int = 8  # nesting of arrays and objects in a body (a request is one flat object)
    number_digits: int = 40  # digits of one number in a body or query (seed's 19 fit; 5,000 do not)


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
    "context": (str, ""),  # read before the prefix, outside the form and the line count
    "form": (str, None),  # a named form of the run
    "line_lengths": (list, ()),  # [7, 7, 7, 7] or "7,7,7,7"
    "template": (str, None),
    "rhyme_scheme": (str, None),
    "rhyme": (str, None),  # a rhyme class (江阳) or a character or word of it
    "candidates": (int, DEFAULT_CANDIDATES),
    "sections": (str, None),  # "verse:4,chorus:4,verse:4,chorus"
}

# the page's label of each field (index.html), which every message names; the field follows in brackets
LABELS = {
    "prefix": "Prefix", "strategy": "how to choose", "length": "characters", "num_samples": "samples",
    "temperature": "randomness", "top_k": "only the k likeliest", "top_p": "likeliest share",
    "num_beams": "beams", "repetition_penalty": "avoid repeats", "seed": "seed", "unknown": "unknown characters",
    "max_copy": "longest copy", "lines": "lines", "context": "the text above", "form": "form",
    "line_lengths": "line lengths", "template": "template", "rhyme_scheme": "rhyme scheme", "rhyme": "rhyme class",
    "candidates": "candidates", "sections": "song sections",
}
STRATEGY_LABELS = {"sample": "sample", "greedy": "most likely", "beam": "beam search"}


def label(field: str) -> str:
    """How a message names a field: the page's label, then the API's name ("randomness (temperature)")."""
    text = LABELS.get(field, field)
    return text if text == field else f"{text} ({field})"


_FLAG = re.compile(r"--([a-z][a-z-]*)")


def page_words(message: str) -> str:
    """A message worded for the command line (--rhyme, --line-lengths) with the page's controls instead."""
    def swap(m):
        field = m.group(1).replace("-", "_")
        return label(field) if field in LABELS else m.group(0)
    return _FLAG.sub(swap, message)


class JsonSpelling(Spelling):
    """The request's rules worded with the page's labels, the JSON field named after each (see LABELS)."""

    def name(self, field: str) -> str:
        return label(field)

    def arg_max(self) -> str:
        return "how to choose: most likely (strategy 'greedy')"

    def sampling_conflict(self, strategy: str, given: list[str]) -> str:
        return f"{label(given[0])} applies to sampling only, not to {STRATEGY_LABELS[strategy]} (strategy {strategy!r})"

    def beams_conflict(self, strategy: str, num_beams: int) -> str:
        if strategy == "beam":
            return f"beam search needs {label('num_beams')} of 2 or more, got {num_beams}"
        return f"{label('num_beams')} applies to beam search only, not to {STRATEGY_LABELS[strategy]}"

    def too_few_beams(self, num_beams: int, num_samples: int) -> str:
        return (f"beam search returns at most {label('num_beams')} ({num_beams}) samples, "
                f"got {label('num_samples')} {num_samples}")

    def empty_prefix(self) -> str:
        return "the Prefix is empty; type at least one character, e.g. 分开"

    def skip_hint(self) -> str:
        return "set unknown characters to \"drop\" (unknown: skip) to leave them out"

    def greedy_repeats(self, num_samples: int) -> str:
        return (f"most likely (strategy 'greedy') gives the same text every time, so {label('num_samples')} "
                f"{num_samples} would repeat it; choose sample, or beam search for the best N texts")


JSON = JsonSpelling()


def _number(name: str, value, kind, from_query: bool):
    """`value` as an int or float, or a CharlmError naming the field; text is read only from a query string."""
    what = label(name)
    if from_query and isinstance(value, str):
        if len(value) > 40:  # int() of thousands of digits is slow, and no field needs more than 19
            raise CharlmError(f"{what} has {len(value)} characters; a number has at most 40")
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            raise CharlmError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CharlmError(f"{what} must be {'an integer' if kind is int else 'a number'}, got {json.dumps(value)}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise CharlmError(f"{what} must be an integer, got {value}")
        return int(value)
    if not math.isfinite(value):
        raise CharlmError(f"{what} must be a finite number, got {value}")
    return float(value)


def _lengths(value, from_query: bool) -> tuple[int, ...]:
    """line_lengths: a JSON array of whole numbers, or "7,7,7,7" (a query's only way)."""
    if isinstance(value, str):
        return parse_lengths(value, label("line_lengths"))
    if not isinstance(value, list) or len(value) > 64:
        raise CharlmError(f"{label('line_lengths')} must be a list of at most 64 whole numbers, e.g. [7, 7, 7, 7]")
    return tuple(_number("line_lengths", v, int, from_query) for v in value)


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
        raise CharlmError("the Prefix (prefix) is missing; give the text to continue, e.g. {\"prefix\": \"分开\"}")
    if len(prefix) > limits.prefix_chars:
        raise CharlmError(f"the Prefix has {len(prefix)} characters; at most {limits.prefix_chars} are allowed "
                          f"(a longer draft is continued from its card)")
    if len(values["context"]) > limits.context_chars:
        raise CharlmError(f"{label('context')} has {len(values['context'])} characters; "
                          f"at most {limits.context_chars} are allowed")
    bounds = (("num_samples", 1, limits.num_samples), ("max_copy", 0, limits.max_copy),
              ("lines", 0, limits.length), ("seed", 0, 2**63 - 1))
    if values["length"] is not None and not 0 <= values["length"] <= limits.length:
        raise CharlmError(f"{label('length')} must be between 0 and {limits.length}, got {values['length']}")
    for name, low, high in bounds:
        if values[name] is not None and not low <= values[name] <= high:
            zero = " (0: off)" if low == 0 and name in ("max_copy", "lines") else ""
            raise CharlmError(f"{label(name)} must be between {low}{zero} and {high}, got {values[name]}")


def _well_formed(name: str, text: str) -> None:
    """Refuse a lone surrogate (JSON's "\\ud800"): it is not a character, and no answer could be encoded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CharlmError(f"{label(name)} holds a lone surrogate {text[e.start]!r} at position {e.start}, "
                          "which is not a character") from None


def _work(req: GenerationRequest, limits: RequestLimits) -> None:
    """Refuse a request whose character-steps (length x streams) are over the limit: none may hold the server long."""
    streams = req.decoding.num_beams if req.decoding.num_beams > 1 else req.num_samples
    if req.length * streams > limits.work:
        what = f"{label('num_beams')} {streams}" if req.decoding.num_beams > 1 else f"{label('num_samples')} {streams}"
        raise CharlmError(f"{label('length')} {req.length} x {what} is {req.length * streams} character-steps; "
                          f"at most {limits.work} are allowed per request")


def _values(given: dict, from_query: bool) -> dict:
    values = {}
    for name, (kind, default) in FIELDS.items():
        if name not in given:
            values[name] = default
        elif kind is list:
            values[name] = _lengths(given[name], from_query)
        elif kind is str:
            if not isinstance(given[name], str):
                raise CharlmError(f"{label(name)} must be a string, got {json.dumps(given[name], ensure_ascii=False)}")
            _well_formed(name, given[name])
            values[name] = given[name]
        else:
            values[name] = _number(name, given[name], kind, from_query)
    return values


def parse_request(raw, vocab, limits: RequestLimits = RequestLimits(), from_query: bool = False,
                  max_copy: int | None = None) -> GenerationRequest:
    """Check a JSON body (or query parameters) and build the GenerationRequest; any problem is a CharlmError.

    Fields are typed and bounded here; the decoding rules and the defaults are generate's (make_request).
    An empty prefix is allowed after a context or under a form (a line rewritten from its start).
    `max_copy` is the run's default copy-guard span, used when the request gives none.
    """
    values = _values(_typed(raw), from_query)
    if max_copy is not None and isinstance(raw, dict) and raw.get("max_copy") is None:
        values["max_copy"] = max_copy
    _within(values, limits)
    prefix, context = values.pop("prefix"), values.pop("context")
    form = FormRequest(form=values.pop("form"), line_lengths=values.pop("line_lengths"),
                       template=values.pop("template"), rhyme_scheme=(values.pop("rhyme_scheme") or "").upper() or None,
                       rhyme=values.pop("rhyme"), candidates=values.pop("candidates"))
    sections = parse_sections(values.pop("sections"), label("sections"))
    req = make_request(**values, spell=JSON, form=form, sections=sections)
    if req.decoding.num_beams > min(limits.num_beams, len(vocab)):
        raise CharlmError(f"{label('num_beams')} must be at most {min(limits.num_beams, len(vocab))}, "
                          f"got {req.decoding.num_beams}")
    kept, dropped = ("", []) if prefix == "" and (context or form.active) else \
        clean_prefix(prefix, vocab, req.unknown, JSON)
    if context:
        context, lost = clean_prefix(context, vocab, req.unknown, JSON)
        dropped += lost
    length = req.length if values["length"] is not None else min(req.length, limits.length)
    req = replace(req, prefixes=(kept,), dropped=tuple(dropped), length=length, context=context)
    _work(req, limits)
    return req
