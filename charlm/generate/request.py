"""One generation request, checked once, whoever asks: `charlm generate`'s flags and the web page's JSON alike.

    flags ─┐                                   ┌─> decode.generate(...)  (run_request)
           ├─> make_request(..., spell) ─> GenerationRequest
    JSON  ─┘   (strategy, decoding rules,      └─> describe()  (what the web answers)
                default length and verse shape, seed)

The rules live here once: greedy refuses sampling settings and repeated samples, beam search needs
beams and returns at most that many, a sampling setting must be usable, no length means "at most
defaults.LENGTH, ending with the song". A `Spelling` only says how a surface names the fields in its
messages (`--top-k` on the command line, `top_k` in JSON); the conditions are the same.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field

from charlm import defaults
from charlm.errors import CharlmError
from charlm.forms.template import FormRequest
from charlm.generate.decode import generate
from charlm.generate.formed import plan_forms
from charlm.generate.prefix import EMPTY_PREFIX, SKIP_HINT, check_prefix
from charlm.generate.sampling import Decoding
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

    def describe(self) -> dict:
        """The settings as the web reports them (the seed included, so a sample can be redone)."""
        d = asdict(self.decoding)
        d.pop("sample", None)
        return {"strategy": self.strategy, "label": self.decoding.label(), **d, "length": self.length,
                "num_samples": self.num_samples, "seed": self.seed, "max_copy": self.max_copy,
                "lines": self.shape.lines, "song_end": self.shape.song_end,
                "form": self.form.to_dict() if self.form.active else None}


def make_request(*, strategy: str | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, num_beams: int | None = None, repetition_penalty: float = 1.0,
                 num_samples: int = 1, length: int | None = None, lines: int = 0, seed: int | None = None,
                 max_copy: int = defaults.MAX_COPY, unknown: str = "error",
                 spell: Spelling = CLI_SPELLING, form: FormRequest | None = None) -> GenerationRequest:
    """Apply the decoding rules to what was given (None: not given) and return the checked request.

    The strategy is `strategy` when given, else beam search when num_beams > 1, else sampling with
    defaults.TEMPERATURE and defaults.TOP_P (generate's default). Any problem is a CharlmError
    naming the fields as `spell` does.
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
    # without a length: stop at the end of a song; blank lines and trailing space are tidied always
    shape = Shape(lines=lines, song_end=length is None, tidy=True)
    if length is None:
        length = defaults.LINES_LENGTH if lines else defaults.LENGTH
    if unknown not in ("error", "skip"):
        raise CharlmError(f"{spell.name('unknown')} must be 'error' or 'skip', got {unknown!r}")
    check_length(length, num_samples, flag=spell.name("length"))
    check_seed(seed, flag=spell.name("seed"))
    drawn = seed is None
    seed = secrets.randbelow(2**31) if drawn else seed
    form = (form or FormRequest()).check(spell.name)
    return GenerationRequest(strategy, decoding, length, shape, num_samples, seed, drawn, max_copy, unknown,
                             form=form)


def check_decoding(decoding: Decoding, spell: Spelling = CLI_SPELLING) -> None:
    """Refuse sampling settings that cannot decode, naming them as `spell` does."""
    decoding.validate(spell.name, spell.arg_max())


def clean_prefix(prefix: str, vocab, unknown: str = "error", spell: Spelling = CLI_SPELLING) -> tuple[str, list[str]]:
    """(the prefix to continue, the characters dropped from it): prefix.check_prefix, hinted as `spell` words it."""
    return check_prefix(prefix, vocab, unknown, empty=spell.empty_prefix(), skip_hint=spell.skip_hint())


def run_request(model, vocab, req: GenerationRequest, prefixes, generator, device, *, guard=None, on_step=None,
                forms=None):
    """The samples of `req` for `prefixes` (one string or a batch): decode.generate with the request's settings.

    `forms` (generate.formed.RunForms) are the run's learned forms: a form flag of `req` needs them,
    and without any, a corpus that rhymes lends its own scheme and line lengths.
    """
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    job, primed = plan_forms(req, forms, prefixes, vocab, generator) if (forms is not None or req.form.active) \
        else (None, prefixes)
    samples = generate(model, vocab, primed, req.length, req.decoding, req.num_samples, generator, device,
                       on_step=on_step, guard=guard, shape=req.shape, form=job)
    if job is not None:
        for s in samples:
            s.prefix = "" if s.prefix == "\n" else s.prefix  # the line break a bare form was primed with
    return samples
