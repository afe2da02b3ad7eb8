"""`charlm serve`: the local web page over one checkpoint (charlm/web/), started and stopped from here."""

from __future__ import annotations

import click

from charlm.cli.command import Command, warn
from charlm.cli.options import checkpoint_option, device_option
from charlm.errors import CharlmError


@click.command("serve", cls=Command)
@checkpoint_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the page to the network (there is no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Torch threads per generation; requests run in parallel threads already (docs/serve.md).")
@device_option
def serve_command(checkpoint, host, port, threads, device):
    """A local web page for generating from a checkpoint, streamed as it is written (API: docs/serve.md).

    \b
      charlm serve                                   # the newest run, on http://127.0.0.1:8000/
      charlm serve --checkpoint checkpoints/RUN --port 8080
    """
    import torch

    from charlm.device import pick_device

    try:
        from charlm.web import app as web
        from charlm.web.engine import Engine
        from charlm.web.fields import FIELDS
    except ImportError as e:
        raise CharlmError(f"charlm serve needs the web extra ({e.name} is missing): pip install -e '.[web]'") from None
    engine = Engine(checkpoint, pick_device(device))
    torch.set_num_threads(threads)
    sock = web.bind(host, port)
    _, note = engine.guard(FIELDS["max_copy"][1])  # index the corpus now, not on the first request
    if note:
        warn(note)
    click.echo(f"serving {engine.name} ({engine.describe()['model']}) on {web.url_of(sock)}  (Ctrl-C stops)")
    web.run_server(web.create_app(engine), sock)
