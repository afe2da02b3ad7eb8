"""`charlm generate`: continue prefixes with a trained model, from the flags or one line of stdin at a time.

The flags become one GenerationRequest (charlm/generate/request.py, the same rules as the web page's);
this module only opens the checkpoint, prints the samples and says what was dropped or drawn.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import click

from charlm import defaults
from charlm.cli.command import Command, warn
from charlm.cli.options import checkpoint_option, device_option, explicit_params
from charlm.errors import CharlmError
from charlm.forms.template import DEFAULT_CANDIDATES
from charlm.models.limits import MAX_LENGTH

# `generate --interactive` in a terminal: said once at the start
INTERACTIVE_HINT = ("type a prefix and press Enter; an empty line repeats the last prefix; "
                    "Ctrl-D (or quit) leaves")
LEAVE_WORDS = ("quit", "exit")


def _is_terminal(stream) -> bool:
    """Whether `stream` is a terminal (a person typing), not a pipe or a file."""
    return stream.isatty()


@click.command("generate", cls=Command)
@checkpoint_option
@click.option("--prefix", "prefixes", multiple=True, default=(),
              help="Text to continue (repeat the flag for several). Default: the run's own first prefix "
                   "(分开 for the lyrics; for a corpus without it, a common opening of its lines).")
@click.option("--length", type=click.IntRange(min=0), default=None,
              help=f"Characters to generate. Default: about {defaults.LENGTH}, ending at the end of a song or at the "
                   f"first line end past {defaults.LENGTH} characters, never mid-line (up to {defaults.LINES_LENGTH} "
                   "with --lines); given, exactly that many (fewer only with --lines), running on through the ends "
                   "of songs.")
@click.option("--lines", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop once the text (prefix included) has this many lines (0 = no limit).")
@click.option("--form", "form_name", default=None, metavar="NAME",
              help="A named form of the run (list them with charlm forms): its line lengths, punctuation and "
                   "rhyme, exactly; for a corpus of titled pieces (Song ci) the title line comes first.")
@click.option("--line-lengths", default=None, metavar="7,7,7,7",
              help="One line per number: characters per line (Chinese and other character scripts) or words "
                   "per line (English).")
@click.option("--template", default=None, metavar="TEXT",
              help="Fill the _ slots, keep every other character (punctuation included); / or \\n between "
                   "lines, e.g. '春风_____，_______。'.")
@click.option("--rhyme-scheme", default=None, metavar="AABB",
              help="One letter per line, repeated over the piece: lines with the same letter rhyme, X is free "
                   "(with --form: replaces the form's own rhyme).")
@click.option("--rhyme", default=None, metavar="CLASS",
              help="The first rhyme's class: a 十三辙 group (江阳), a character of it (光) or an English word "
                   "(day); default: the model's most probable.")
@click.option("--sections", default=None, metavar="verse:4,chorus:4,verse:4,chorus",
              help="A song in sections, one blank line apart: name:lines writes a new section, a name alone "
                   "repeats the section of that name verbatim (a chorus).")
@click.option("--candidates", type=click.IntRange(1, 32), default=DEFAULT_CANDIDATES, show_default=True,
              help="Under a form: samples drawn per requested one, in the same batch; the most probable "
                   "(log-probability per character) is kept.")
@click.option("--max-copy", type=click.IntRange(min=0), default=None,
              help="Copy guard: no span of more than N characters of the corpus in the text, a span begun in "
                   f"the prefix included (0 = off). Default: {defaults.MAX_COPY} for Chinese and other character "
                   "scripts, 16 (about three words) for alphabetic ones.")
@click.option("--greedy", is_flag=True,
              help="Arg-max decoding, as in the textbook (the default is sampling: "
                   f"--temperature {defaults.TEMPERATURE} --top-p {defaults.TOP_P}).")
@click.option("--temperature", type=float, default=defaults.TEMPERATURE, show_default=True,
              help="Sample, dividing the logits by this first: below 1 is safer, above 1 wilder.")
@click.option("--top-k", type=int, default=0, show_default=True,
              help="Sample from the K most probable characters only (0 = off).")
@click.option("--top-p", type=float, default=defaults.TOP_P, show_default=True,
              help="Sample from the smallest set of characters whose probability reaches P (1.0 = off).")
@click.option("--num-beams", type=int, default=1, show_default=True,
              help="Beam search with this many beams: the most probable text, not a sample (1 = off).")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True,
              help="Make characters already in the text less likely (1.0 = off; 1.2 is a common choice).")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Samples per prefix, generated as one batch (with --num-beams: the best N beams).")
@click.option("--seed", type=int, default=None,
              help="Random seed of the sampling; without it each run draws one and prints it on stderr.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="text: the sample alone (several get '==> ... <==' headers); jsonl: one JSON object per sample "
                   "with prefix, text and per-character log-probabilities.")
@click.option("--stream", is_flag=True, help="Print characters as they are produced (samples one after another).")
@click.option("--interactive", is_flag=True,
              help="Read one prefix per line from stdin and answer each until end of input (Ctrl-D); in a "
                   "terminal an empty line repeats the last prefix and quit or exit leaves.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Prefix characters outside the vocabulary: stop with an error, or drop them with a warning.")
@device_option
@click.pass_context
def generate_command(ctx, checkpoint, prefixes, length, lines, form_name, line_lengths, template, rhyme_scheme, rhyme,
                     sections, candidates, max_copy, greedy, temperature, top_k, top_p, num_beams,
                     repetition_penalty, num_samples, seed, fmt, stream, interactive, unknown, device):
    """Continue a prefix with a trained model: sampling with a copy guard (default), arg-max or beam search.

    \b
      charlm generate --prefix 分开                          # sampled, never reciting more than --max-copy
      charlm generate --prefix 分开 --greedy --max-copy 0     # the textbook's arg-max, unguarded
      charlm generate --prefix 分开 --temperature 0.8 --top-k 5 --num-samples 4 --lines 4
      charlm generate --num-beams 4 --prefix 不分开
      echo 分开 | charlm generate --interactive --top-p 0.9 --format jsonl
      charlm generate --rhyme-scheme AABB --lines 8 --prefix 分开   # rhymed lines of the corpus's lengths
      charlm generate --form 浣溪沙 --num-samples 3                # a Song ci run: the tune's exact form
    """
    from charlm.forms.template import FormRequest, parse_lengths, read_template
    from charlm.generate.request import make_request
    from charlm.generate.sections import parse_sections

    form = FormRequest(form=form_name, line_lengths=parse_lengths(line_lengths),
                       template=read_template(template) if template is not None else None,
                       rhyme_scheme=rhyme_scheme.upper() if rhyme_scheme else None, rhyme=rhyme, candidates=candidates)

    given = explicit_params(ctx, ["temperature", "top_k", "top_p", "prefixes"])
    req = make_request(strategy="greedy" if greedy else None, num_beams=num_beams,
                       temperature=temperature if "temperature" in given else None,
                       top_k=top_k if "top_k" in given else None, top_p=top_p if "top_p" in given else None,
                       repetition_penalty=repetition_penalty, num_samples=num_samples, length=length, lines=lines,
                       seed=seed, max_copy=max_copy, unknown=unknown, form=form, sections=parse_sections(sections))
    if interactive and "prefixes" in given:
        raise CharlmError("--interactive reads the prefixes from stdin; drop --prefix")
    if stream and fmt == "jsonl":
        raise CharlmError("--stream prints text as it comes; it cannot be combined with --format jsonl")
    if stream and req.sections:
        raise CharlmError("--stream cannot show --sections as they come: a chorus is written once, then repeated")
    if stream and req.strategy == "beam":
        raise CharlmError("--stream cannot follow beam search: the best beam is known only at the end")
    printer = Printer(checkpoint, device, req, fmt, stream, interactive, prefixes)
    if not interactive:
        batch = [printer.clean(p) for p in printer.prefixes]  # every bad prefix fails before any print
        printer.check_form(batch)
        printer.answer(batch, len(batch) * num_samples)
        printer.tell_gave_way()
    elif not _answer_lines(printer, sys.stdin):
        sys.exit(2)


class Printer:
    """One opened checkpoint and one request: generates for a batch of prefixes and prints the samples."""

    def __init__(self, checkpoint, device: str, req, fmt: str, stream: bool, interactive: bool, prefixes=()):
        import torch

        from charlm.device import pick_device
        from charlm.generate.copyguard import guard_for_run, run_max_copy
        from charlm.generate.formed import run_forms
        from charlm.run.checkpoint import default_prefixes, open_checkpoint, training_corpus

        self.dev = pick_device(device)
        run = open_checkpoint(checkpoint, self.dev)
        self.model, self.vocab, self.req = run.model, run.vocab, req
        self.fmt, self.stream, self.interactive = fmt, stream, interactive
        self.forms = run_forms(run.payload, self._training_text(run) if req.form.active else None)
        titled = req.form.form and self.forms is not None and self.forms.forms.titled
        self.title = f"{req.form.form}\n" if titled else ""  # what --stream shows before the body
        # the run's own prefix if none given; a titled form starts with its title alone
        self.prefixes = list(prefixes) or ([""] if titled else default_prefixes(run.payload, run.vocab)[:1])
        if req.max_copy is None:  # the default suits the run's script
            req = self.req = replace(req, max_copy=run_max_copy(run.payload))
        self.guard = guard_for_run(run.path, run.payload, req.max_copy,
                                   corpus_loader=lambda: training_corpus(run.payload, log=warn),
                                   log=lambda line: click.echo(line, err=True))
        self.generator = torch.Generator(device=self.dev).manual_seed(req.seed)  # one stream of draws for the run
        self.tell_seed = req.seed_drawn and req.decoding.sample  # said once, when the first sample is made
        self.gave_way = self.done = 0

    @staticmethod
    def _training_text(run):
        """A reader of the run's training text, for an older checkpoint that does not store its forms."""
        from charlm.run.checkpoint import training_corpus

        def read():
            try:
                return training_corpus(run.payload, log=warn).text
            except CharlmError:
                return None
        return read

    def clean(self, prefix: str) -> str:
        """The prefix to continue (unknown characters dropped with a warning under --unknown skip), or an error."""
        from charlm.generate.prefix import dropped_note
        from charlm.generate.request import clean_prefix

        if prefix == "" and self.req.form.form:  # a titled form's own start: its title
            return prefix

        kept, dropped = clean_prefix(prefix, self.vocab, self.req.unknown)
        if dropped:
            warn(dropped_note(prefix, dropped))
        return kept

    def check_form(self, batch: list[str]) -> None:
        """Refuse a form that cannot be made (unknown name, rhyme without data, a prefix that does not fit)."""
        import torch

        from charlm.generate.formed import plan_forms

        if self.req.form.active:
            job, primed = plan_forms(self.req, self.forms, batch, self.vocab, torch.Generator().manual_seed(0))
            job.check(primed, self.vocab)

    def header(self, prefix: str, i: int, n: int, total: int) -> None:
        if total > 1 or self.interactive:  # several samples: a line to split them by (they hold line breaks)
            click.echo(("\n" if self.done else "") + f"==> prefix {prefix!r}, sample {i} of {n} <==")
        self.done += 1

    def answer(self, batch: list[str], total: int) -> None:
        """Generate and print the samples of `batch` (the prefixes of one run or of one stdin line)."""
        from charlm.generate.request import run_request

        if self.tell_seed:
            click.echo(f"seed {self.req.seed} (reproduce with --seed {self.req.seed})", err=True)
            self.tell_seed = False
        if self.stream:
            for prefix in batch:
                for i in range(self.req.num_samples):
                    self.header(prefix, i + 1, self.req.num_samples, total)
                    self.stream_one(prefix)
            return
        if self.req.sections:
            from charlm.generate.sections import write_songs

            samples = write_songs(self.model, self.vocab, self.req, batch, self.generator, self.dev, guard=self.guard,
                                  forms=self.forms)
        else:
            samples = run_request(self.model, self.vocab, self.req, batch, self.generator, self.dev,
                                  guard=self.guard, forms=self.forms)
        self.gave_way += sum(s.gave_way for s in samples)
        n = self.req.num_samples
        for k, s in enumerate(samples):
            if self.fmt == "jsonl":
                click.echo(json.dumps({"prefix": s.prefix, "sample": k % n + 1, "decoding": self.req.decoding.label(),
                                       "text": s.text, "logprob": round(s.logprob, 4),
                                       "logprobs": [round(x, 4) for x in s.logprobs],
                                       **({"form": s.form} if s.form else {})}, ensure_ascii=False))
            else:
                self.header(s.prefix, k % n + 1, n, total)
                click.echo(s.prefix + s.text)

    def stream_one(self, prefix: str) -> None:
        """One sample, printed character by character as it is made."""
        from charlm.generate.request import run_request

        click.echo(self.title + prefix, nl=False)
        held = []  # blank space is printed only once something visible follows it (samples end visibly)

        def show(idx):
            if int(idx[0]) < 0:  # the stream has ended
                return
            held.append(self.vocab.idx_to_char[int(idx[0])])
            if not held[-1].isspace():
                click.echo("".join(held), nl=False)
                held.clear()
        one = replace(self.req, num_samples=1)  # streamed samples come one after another
        samples = run_request(self.model, self.vocab, one, prefix, self.generator, self.dev, guard=self.guard,
                              on_step=show, forms=self.forms)
        self.gave_way += samples[0].gave_way
        click.echo()

    def tell_gave_way(self) -> None:
        if self.gave_way:
            warn(f"at {self.gave_way} steps the copy guard and the line rules left no character "
                 f"of the {len(self.vocab)} to choose, so those steps chose without them")


def _answer_lines(printer: Printer, stdin) -> bool:
    """--interactive: answer one prefix per line of stdin until it ends; False if any line failed."""
    failed = False
    prompt = _is_terminal(stdin)
    last = None  # the last prefix answered: an empty line in a terminal asks for it again
    if prompt:
        click.echo(INTERACTIVE_HINT, err=True)
    while True:
        if prompt:
            click.echo("prefix> ", nl=False, err=True)
        try:
            line = stdin.readline(MAX_LENGTH + 1)  # bounded: stdin may be a file without line breaks (/dev/zero)
        except UnicodeDecodeError as e:  # a strict stdin (PYTHONIOENCODING=utf-8:strict): the rest cannot be read
            raise CharlmError(f"stdin is not valid {e.encoding} (byte 0x{e.object[e.start]:02x}); "
                              f"give the prefixes in {e.encoding}") from None
        if len(line) > MAX_LENGTH and not line.endswith("\n"):
            raise CharlmError(f"a line of stdin is longer than {MAX_LENGTH:,} characters; give one prefix per line")
        if not line:
            if prompt:
                click.echo(err=True)  # end the prompt's line
            break
        line = line.rstrip("\r\n")
        if prompt and line.strip().lower() in LEAVE_WORDS:
            break
        if not line:
            if not prompt or last is None:
                continue
            line = last
        try:
            _check_decoded(line, stdin)
            printer.answer([printer.clean(line)], printer.req.num_samples)
            last = line
        except CharlmError as e:  # one bad line does not end the session
            leave = "; to leave, end the input (Ctrl-D)" if line.strip().lower() in LEAVE_WORDS else ""
            click.echo(f"error: {e}{leave}", err=True)
            failed = True
    printer.tell_gave_way()
    return not failed


def _check_decoded(line: str, stdin) -> None:
    """Refuse a line whose bytes were not valid in stdin's encoding (kept as surrogates \\udc80-\\udcff by
    Python's surrogateescape), rather than calling them characters the model never saw."""
    bad = next((c for c in line if "\udc80" <= c <= "\udcff"), None)
    if bad is not None:
        encoding = getattr(stdin, "encoding", None) or "utf-8"
        raise CharlmError(f"this line of stdin is not valid {encoding} (byte 0x{ord(bad) - 0xdc00:02x}); "
                          f"give the prefixes in {encoding}")
