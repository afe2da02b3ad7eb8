"""What `charlm generate` does when no strategy is named, in one torch-free place (the CLI reads it at import).

Chosen by an `evaluate` grid on a lyrics and a Song ci model; the table is in docs/decoding.md.
"""

TEMPERATURE = 0.8  # sampling temperature of the default decoding
TOP_P = 0.9  # nucleus of the default decoding
MAX_COPY = 7  # the copy guard: no span of more than this many characters of the corpus
LENGTH = 100  # most characters per sample when --length is not given (a song's end stops it sooner)
LINE_END_MARGIN = 200  # without --length: past LENGTH, characters a sample may take to reach its line's end
LINES_LENGTH = 1000  # most characters per sample with --lines K and no --length
