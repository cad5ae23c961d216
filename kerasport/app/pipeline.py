"""`kerasport run`: the whole pipeline (train, export, then the parity gate) in one command.

It takes exactly `kerasport train`'s options (`TrainConfig`) and `kerasport export`'s (`ExportArgs`), declared once
in each stage's option group, and hands each stage the group it declared: an option added to either stage is
accepted here and forwarded, with no list of option names in this file. Shared names (`--run`,
`--calibration-samples`) are one option that both stages receive.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kerasport.cli_options import takes_options
from kerasport.cli_support import console, fail, user_errors
from kerasport.export.options import ExportArgs
from kerasport.train.config import TrainConfig


@user_errors
@takes_options
def run_command(
    config: TrainConfig,
    export_args: ExportArgs,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the train metrics, export rows and parity verdict as JSON on stdout.")] = False,
) -> None:
    """Run the pipeline: train, export every variant, then the parity gate (exit 1 if it fails)."""
    from kerasport.export.cli import print_export_table
    from kerasport.export.stage import export_bundle
    from kerasport.parity.cli import print_parity_summary
    from kerasport.parity.stage import ParityOptions, run_parity
    from kerasport.train.cli import print_train_summary
    from kerasport.train.fit import train

    export_options = export_args.options()  # checks --formats before the (long) training starts
    out = console()
    trained = train(config, console=out)
    print_train_summary(out, trained)
    if trained.manifest is None:
        # A non-chief worker of a distributed run: the chief alone writes the bundle, so it alone exports and
        # runs the gate; this worker's job ends with training.
        return
    exported = export_bundle(export_options, console=out)
    print_export_table(out, exported)
    checked = run_parity(ParityOptions(run=config.run), console=out)
    print_parity_summary(out, checked)
    if json_output:
        typer.echo(json.dumps({"train": trained.metrics, "export": exported.rows,
                               "parity": {"passed": checked.report.passed, "failures": checked.failures}}))
    if checked.exit_code:
        raise fail(f"parity gate failed: {checked.failures[0] if checked.failures else 'see the report'}; "
                   f"report: {checked.run_dir}/parity/report.md", checked.exit_code)
