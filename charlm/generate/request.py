"""One generation request, checked once, whoever asks: `charlm generate`'s flags and the web page's JSON alike.

    flags ─┐                                   ┌─> decode.generate(...)  (run_request)
           ├─> make_request(..., spell) ─> GenerationRequest
    JSON  ─┘   (strategy, decoding rules,      └─> describe()  (what the web answers)
                default length and verse shape, seed)

The rules live here once: greedy refuses sampling settings and repeated samples, beam search needs
beams and returns at most that many, a sampling setting must be usable, no length means
"about defaults.LENGTH, ending with the song or at the end of a line, never mid-line". A `Spelling`
only says how a surface names the fields in its messages (`--top-k` on the command line, `top_k` in JSON); the conditions are the same.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, replace

from charlm import defaults
from charlm.errors import CharlmError
from charlm.forms.template import FormRequest
from charlm.generate.decode import generate
from charlm.generate.formed import plan_forms
from charlm.generate.prefix import EMPTY_PREFIX, SKIP_HINT, check_prefix
from charlm.generate.sampling import Decoding
from charlm.generate.sections import check_sections
from charlm.generate.verse import Shape
from charlm.models.limits import check_length, check_seed

STRATEGIES = ("greedy", "sample", "beam")
SAMPLING_FIELDS = ("temperature", "top_k", "top_p")


class Spelling:
    """How the command line names a request's fields and strategies in its messages (the web's is in web/fields.py)."""

    def name(self, field: str) -> str:
        """The flag of a field: top_k -> --top-k."""
        return "--" + field.replace("_", "-")

    def arg_max(self) -> str:
        """How to ask for arg-max decoding."""
        return "--greedy"

    def sampling_conflict(self, strategy: str, given: list[str]) -> str:
        """Sampling settings given with greedy decoding or beam search."""
        if strategy == "greedy":
            return f"--greedy cannot be combined with {', '.join(self.name(s) for s in sorted(given))}"
        return "beam search does not sample: drop --num-beams, or drop --temperature/--top-k/--top-p"

    def beams_conflict(self, strategy: str, num_beams: int) -> str:
        """num_beams other than 1 without beam search (or beam search with fewer than 2 beams)."""
        if strategy == "greedy" and num_beams > 1:
            return "--greedy cannot be combined with --num-beams; choose one"
        return f"--num-beams must be 1 (off) or more, got {num_beams}"

    def too_few_beams(self, num_beams: int, num_samples: int) -> str:
        """More samples asked of beam search than it has beams."""
        return (f"beam search returns at most --num-beams sequences per prefix: "
                f"--num-samples {num_samples} with --num-beams {num_beams}")

    def empty_prefix(self) -> str:
        """A prefix with no characters."""
        return EMPTY_PREFIX

    def skip_hint(self) -> str:
        """How to have unknown prefix characters dropped instead of refused."""
        return SKIP_HINT

    def greedy_repeats(self, num_samples: int) -> str:
        """Several samples of arg-max decoding, which would all be the same."""
        return (f"--greedy gives the same text every time, so --num-samples {num_samples} would repeat it; "
                "drop --greedy to sample, or use --num-beams K for the K best texts")


CLI_SPELLING = Spelling()


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request: how to decode, how long, how many, under which guard; `prefixes` once cleaned."""

    strategy: str  # greedy, sample or beam
    decoding: Decoding
    length: int  # the most characters per sample (exactly this many unless the shape stops it)
    shape: Shape
    num_samples: int
    seed: int
    seed_drawn: bool  # no seed was given: this one was drawn, and is worth telling the user
    max_copy: int  # the copy guard's longest allowed span; 0: off
    unknown: str = "error"  # prefix characters outside the vocabulary: "error" or "skip"
    prefixes: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()  # characters dropped from the prefixes (unknown "skip")
    form: FormRequest = field(default_factory=FormRequest)  # the song form asked for (inactive: none)
    context: str = ""  # text read before the prefix, outside the form (the lines above a line rewritten)
    sections: tuple = ()  # a song laid out in sections (generate.sections.Section), written one by one

    def describe(self) -> dict:
        """The settings as the web reports them (the seed included, so a sample can be redone)."""
        d = asdict(self.decoding)
        d.pop("sample", None)
        return {"strategy": self.strategy, "label": self.decoding.label(), **d, "length": self.length,
                "num_samples": self.num_samples, "seed": self.seed, "max_copy": self.max_copy,
                "lines": self.shape.lines, "song_end": self.shape.song_end, "stop_after": self.shape.stop_after,
                "form": self.form.to_dict() if self.form.active else None,
                "sections": [s.spec() for s in self.sections] or None}


def make_request(*, strategy: str | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, num_beams: int | None = None, repetition_penalty: float = 1.0,
                 num_samples: int = 1, length: int | None = None, lines: int = 0, seed: int | None = None,
                 max_copy: int = defaults.MAX_COPY, unknown: str = "error",
                 spell: Spelling = CLI_SPELLING, form: FormRequest | None = None, sections: tuple = (),
                 context: str = "") -> GenerationRequest:
    """Apply the decoding rules to what was given (None: not given) and return the checked request.

    The strategy is `strategy` when given, else beam search when num_beams > 1, else sampling with
    defaults.TEMPERATURE and defaults.TOP_P (generate's default). Any problem is a CharlmError
    naming the fields as `spell` does. `sections` (generate.sections.parse_sections) lay out a song;
    `context` is read before the prefix, outside any form.
    """
    sampling = [k for k, v in zip(SAMPLING_FIELDS, (temperature, top_k, top_p)) if v is not None]
    if strategy is None:
        strategy = "beam" if (num_beams or 1) > 1 else "sample"
    if strategy not in STRATEGIES:
        raise CharlmError(f"{spell.name('strategy')} must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "sample" and sampling:
        raise CharlmError(spell.sampling_conflict(strategy, sampling))
    num_beams = 1 if num_beams is None else num_beams
    if (strategy == "beam") != (num_beams > 1) or num_beams < 1:
        raise CharlmError(spell.beams_conflict(strategy, num_beams))
    if strategy == "beam" and num_samples > num_beams:
        raise CharlmError(spell.too_few_beams(num_beams, num_samples))
    if strategy == "greedy" and num_samples > 1:
        raise CharlmError(spell.greedy_repeats(num_samples))
    decoding = Decoding(sample=strategy == "sample",
                        temperature=defaults.TEMPERATURE if temperature is None else temperature,
                        top_k=0 if top_k is None else top_k, top_p=defaults.TOP_P if top_p is None else top_p,
                        num_beams=num_beams, repetition_penalty=repetition_penalty)
    check_decoding(decoding, spell)
    # without a length: stop at the end of a song, or at the first line end past defaults.LENGTH characters,
    # never mid-line; blank lines and trailing space are tidied always
    clean = length is None
    shape = Shape(lines=lines, song_end=clean, tidy=True, stop_after=defaults.LENGTH if clean and not lines else 0,
                  clean_end=clean)
    if length is None:
        length = defaults.LINES_LENGTH if lines else defaults.LENGTH + defaults.LINE_END_MARGIN
    if unknown not in ("error", "skip"):
        raise CharlmError(f"{spell.name('unknown')} must be 'error' or 'skip', got {unknown!r}")
    check_length(length, num_samples, flag=spell.name("length"))
    check_seed(seed, flag=spell.name("seed"))
    drawn = seed is None
    seed = secrets.randbelow(2**31) if drawn else seed
    form = (form or FormRequest()).check(spell.name)
    check_sections(sections, form, None if clean else length, lines, spell.name)
    return GenerationRequest(strategy, decoding, length, shape, num_samples, seed, drawn, max_copy, unknown,
                             form=form, context=context, sections=tuple(sections))


def check_decoding(decoding: Decoding, spell: Spelling = CLI_SPELLING) -> None:
    """Refuse sampling settings that cannot decode, naming them as `spell` does."""
    decoding.validate(spell.name, spell.arg_max())


def clean_prefix(prefix: str, vocab, unknown: str = "error", spell: Spelling = CLI_SPELLING) -> tuple[str, list[str]]:
    """(the prefix to continue, the characters dropped from it): prefix.check_prefix, hinted as `spell` words it."""
    return check_prefix(prefix, vocab, unknown, empty=spell.empty_prefix(), skip_hint=spell.skip_hint())


def read_first(req: GenerationRequest) -> tuple[str, GenerationRequest]:
    """(the text a batched request reads first: its context and prefix, the request with `lines` counted
    from the context's end): what the server's batch primes with (charlm/web/batcher.py)."""
    if not req.context:
        return req.prefixes[0], req
    shape = replace(req.shape, lines=req.shape.lines + req.context.count("\n")) if req.shape.lines else req.shape
    return req.context + req.prefixes[0], replace(req, shape=shape)


def run_request(model, vocab, req: GenerationRequest, prefixes, generator, device, *, guard=None, on_step=None,
                forms=None, contexts=None):
    """The samples of `req` for `prefixes` (one string or a batch): decode.generate with the request's settings.

    `forms` (generate.formed.RunForms) are the run's learned forms: a form flag of `req` needs them,
    and without any, a corpus that rhymes lends its own scheme and line lengths. `contexts` (one per
    prefix; default: the request's `context`) are read before each prefix: the model sees them, a form
    and `lines` do not count them, and a sample's `prefix` leaves them out.
    """
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    contexts = list(contexts) if contexts is not None else [req.context] * len(prefixes)
    job, primed = plan_forms(req, forms, prefixes, vocab, generator) if (forms is not None or req.form.active) \
        else (None, prefixes)
    shape = req.shape
    if any(contexts):
        if job is not None:  # a form's title and body come after the context ("\n" alone: a bare form's start)
            primed = [c + (p if p != "\n" or not c else "") for c, p in zip(contexts, primed)]
        else:
            primed = [c + p for c, p in zip(contexts, primed)]
            if shape.lines:  # `lines` counts the prefix's lines and the new ones, not the context's
                shape = replace(shape, lines=shape.lines + contexts[0].count("\n"))
    samples = generate(model, vocab, primed, req.length, req.decoding, req.num_samples, generator, device,
                       on_step=on_step, guard=guard, shape=shape, form=job)
    for s, c in zip(samples, [c for c in contexts for _ in range(req.num_samples)]):
        s.prefix = s.prefix[len(c):]
        if job is not None:
            s.prefix = "" if s.prefix == "\n" else s.prefix  # the line break a bare form was primed with
    return samples
