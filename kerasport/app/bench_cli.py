"""`kerasport bench`: a thin typer shell over `kerasport.perf.remeasure_bundle` (TensorFlow-free: it runs where
`pip install kerasport[serve]` put only the runtimes)."""

from __future__ import annotations

import json

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.cli_support import console, user_errors
from kerasport.perf import DEFAULT_BUDGET_S


@user_errors
def bench_command(
    run: RunOption = DEFAULT_RUN,
    seconds: float = typer.Option(DEFAULT_BUDGET_S, "--seconds", help="Time cap of the measurement."),
    max_accuracy_drop: float = typer.Option(None, "--max-accuracy-drop",
                                            help="Recommend for server CPU only candidates within this accuracy "
                                                 "drop of the reference (0.01 = 1 pp)."),
    json_output: bool = typer.Option(False, "--json", help="Print the performance block and recommendation."),
) -> None:
    """Measure each candidate that passed parity on this machine (each in its own process) and recommend again."""
    from kerasport.perf import remeasure_bundle

    out = console()
    result = remeasure_bundle(run, budget_seconds=seconds, max_accuracy_drop=max_accuracy_drop, console=out)
    for target, choice in result["recommendation"].items():
        out.print(f"recommend {target:<16} {choice['variant'] or '–'}: {choice['why']}")
    if json_output:
        typer.echo(json.dumps(result))
