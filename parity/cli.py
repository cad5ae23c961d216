"""`kerasport parity`: a thin typer shell over `parity.stage.run_parity` — the release gate."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kerasport.cli_options import takes_options
from kerasport.cli_support import console, fail, user_errors

from .options import ParityArgs


@user_errors
@takes_options
def parity_command(
    args: ParityArgs,
    json_output: Annotated[bool, typer.Option("--json", help="Print report.json on stdout.")] = False,
) -> None:
    """Check every exported artifact against Keras on held-out data; exit 1 if any check fails."""
    from .stage import run_parity

    out = console()
    result = run_parity(args.options(), console=out)
    print_parity_summary(out, result)
    if json_output:
        typer.echo(json.dumps(result.report.to_dict(), default=float))
    if result.exit_code:
        first = result.failures[0] if result.failures else "see the report"
        raise fail(f"parity gate failed ({len(result.failures)} failing checks; first: {first}); "
                   f"report: {result.run_dir}/parity/report.md", result.exit_code)


def print_parity_summary(out, result) -> None:
    from .reports import summary_lines

    for line in summary_lines(result.report, result.run_dir):
        out.print(line)
