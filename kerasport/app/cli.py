"""The `kerasport` command. Stage commands import their heavy dependencies only when they run."""

from __future__ import annotations

import typer

from kerasport import __version__
from kerasport.tfenv import quiet_tensorflow

app = typer.Typer(
    name="kerasport",
    help="Train in Keras, export to ONNX and TFLite, prove parity, serve without TensorFlow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"kerasport {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """kerasport: one run directory (default build/) is one release candidate."""


def _register_stages() -> None:
    # Each stage's cli module is light: it imports its stage's heavy dependencies only when a command runs.
    from kerasport.deploy.cli import package_command
    from kerasport.export.cli import export_command
    from kerasport.ingest.cli import import_command
    from kerasport.parity.cli import parity_command
    from kerasport.parity.report_cli import report_command
    from kerasport.serve.cli import predict_command, serve_command
    from kerasport.train.cli import train_command
    from kerasport.train.launch_cli import LAUNCH_CONTEXT, launch_command

    from .bundle_cli import bundle_app
    from .pipeline import run_command

    app.command("train", help=train_command.__doc__)(train_command)
    app.command("import", help=import_command.__doc__)(import_command)
    app.command("launch", help=launch_command.__doc__, context_settings=LAUNCH_CONTEXT)(launch_command)
    app.command("export", help=export_command.__doc__)(export_command)
    app.command("parity", help=parity_command.__doc__)(parity_command)
    app.command("run", help=run_command.__doc__)(run_command)
    app.command("serve", help=serve_command.__doc__)(serve_command)
    app.command("predict", help=predict_command.__doc__)(predict_command)
    app.command("package", help=package_command.__doc__)(package_command)
    app.add_typer(bundle_app, name="bundle")
    app.command("report", help=report_command.__doc__)(report_command)


_register_stages()


def main() -> None:
    quiet_tensorflow()  # before any stage imports TensorFlow
    app()


if __name__ == "__main__":
    main()
