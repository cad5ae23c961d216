"""`kerasport launch --workers N [train options]`: a local multi-worker training job (see train/launch.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from kerasport.cli_support import user_errors

LAUNCH_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


@user_errors
def launch_command(
    context: typer.Context,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="How many local worker processes (worker 0 is the chief and writes the bundle). "
        "Every other option is a `kerasport train` option, given to each worker; --batch-size is per worker, so "
        "one step trains on a global batch of --batch-size x N. The chief's progress is shown; when a worker fails "
        "the others are stopped and the command exits non-zero with one line naming it.")],
) -> None:
    """Train on N local worker processes: `kerasport train --distributed` with TF_CONFIG on loopback ports."""
    import sys

    from .launch import launch

    result = launch(workers, list(context.args))
    digest = next(iter(result.digests.values()), "")
    print(f"kerasport launch: {workers} worker(s) finished with identical trained weights (sha256 {digest})",
          file=sys.stderr)
