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
@click.option("--threads", type=click.IntRange(1, 1024), default=1, show_default=True,  # torch takes a C int
              help="Torch threads of the decoding loop, which steps every request in one batch (docs/serve.md).")
@device_option
@click.option("--debug", is_flag=True, help="Log the traceback of a server error (a bug), not one line.")
@click.option("--scheduler", type=click.Choice(["batch", "per-request"]), default="batch", show_default=True,
              help="batch: one decoding loop for every request; per-request: one thread each, the old path "
                   "(benchmarks/serve_load.py compares them).")
def serve_command(checkpoint, host, port, threads, device, debug, scheduler):
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
    except ImportError as e:
        raise CharlmError(f"charlm serve needs the web extra ({e.name} is missing): pip install -e '.[web]'") from None
    engine = Engine(checkpoint, pick_device(device))
    torch.set_num_threads(threads)
    sock = web.bind(host, port)
    _, note = engine.guard(engine.max_copy)  # index the corpus now, not on the first request
    if note:
        warn(note)
    click.echo(f"serving {engine.name} ({engine.describe()['model']}) on {web.url_of(sock)}  (Ctrl-C stops)")
    from charlm.web.guard import allowed_hosts

    app = web.create_app(engine, scheduler=scheduler, hosts=allowed_hosts(host), debug=debug)
    web.run_server(app, sock)
