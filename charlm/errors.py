"""The one exception type the CLI turns into a single line on stderr and exit status 2."""


class CharlmError(Exception):
    """A problem with the user's input, worded so that the user knows what to do."""
