"""`kerasport run`: the whole pipeline (train, then export) with train's options plus export's.

The command's signature is assembled from `kerasport train`'s so the two can never drift apart.
"""

from __future__ import annotations

import inspect
import json
import typing

import typer

from kerasport.cli_support import console, fail, user_errors


def build_run_command():
    from kerasport.export.cli import export_command, print_export_table
    from kerasport.train.cli import print_train_summary, train_command

    train_signature = inspect.signature(train_command)
    train_hints = typing.get_type_hints(inspect.unwrap(train_command))
    export_hints = typing.get_type_hints(inspect.unwrap(export_command))
    export_params = inspect.signature(export_command).parameters
    export_only = [name for name in export_params if name not in train_signature.parameters]

    parameters = [param.replace(annotation=train_hints[name]) for name, param in train_signature.parameters.items()]
    parameters += [export_params[name].replace(annotation=export_hints[name]) for name in export_only]

    @user_errors
    def run_command(**options) -> None:
        """Run the pipeline: train, export every variant, then the parity gate (exit 1 if it fails)."""
        from kerasport.export.stage import ExportOptions, export_bundle
        from kerasport.export.variants import parse_formats
        from kerasport.parity.cli import print_parity_summary
        from kerasport.parity.stage import ParityOptions, run_parity
        from kerasport.train.config import TrainConfig
        from kerasport.train.fit import train

        json_output = options.pop("json_output")
        export_options = {name: options.pop(name) for name in export_only}
        config = TrainConfig(**options)
        out = console()
        trained = train(config, console=out)
        print_train_summary(out, trained)
        exported = export_bundle(ExportOptions(run=config.run, formats=parse_formats(export_options["formats"]),
                                               opset=export_options["opset"],
                                               calibration_samples=options["calibration_samples"],
                                               int8_io=export_options["int8_io"],
                                               allow_select_tf_ops=export_options["allow_select_tf_ops"]),
                                 console=out)
        print_export_table(out, exported)
        checked = run_parity(ParityOptions(run=config.run), console=out)
        print_parity_summary(out, checked)
        if json_output:
            typer.echo(json.dumps({"train": trained.metrics, "export": exported.rows,
                                   "parity": {"passed": checked.report["passed"], "failures": checked.failures}}))
        if checked.exit_code:
            raise fail(f"parity gate failed: {checked.failures[0] if checked.failures else 'see the report'}; "
                       f"report: {checked.run_dir}/parity/report.md", checked.exit_code)

    run_command.__signature__ = inspect.Signature(parameters)
    run_command.__annotations__ = {param.name: param.annotation for param in parameters}
    return run_command
