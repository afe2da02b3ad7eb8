"""charlm: character-level language models, from the textbook RNN to the real tool."""

__version__ = "0.1.0"
