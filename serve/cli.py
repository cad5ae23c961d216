"""`kerasport serve` and `kerasport predict`: thin typer shells. Never import tensorflow or keras."""

from __future__ import annotations

import json
import sys

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption, takes_options
from kerasport.cli_support import console, user_errors
from kerasport.errors import UsageError

from .settings import ServeSettings


@user_errors
@takes_options
def serve_command(settings: ServeSettings) -> None:
    """Serve the bundle, or a model repository with hot swap, over HTTP (KServe V2 + TF Serving REST), and gRPC with
    --grpc-port, with onnxruntime or LiteRT."""
    from .server import serve

    serve(settings)


@user_errors
def predict_command(
    paths: list[str] = typer.Argument(None, help="Image files (PNG/JPEG) or folders of them, for image models."),
    inputs: str = typer.Option(None, "--inputs",
                               help="npz:FILE with one array per input name (or `x` for a single input), for any "
                                    "model."),
    run: RunOption = DEFAULT_RUN,
    variant: str = typer.Option("auto", "--variant", help="Artifact to run; auto: the server CPU recommendation."),
    output_format: str = typer.Option("table", "--format", help="table | json | csv"),
    top_k: int = typer.Option(3, "--top-k", min=1),
    allow_unverified: bool = typer.Option(False, "--allow-unverified"),
) -> None:
    """Run image files or named input arrays through the bundle's runtime, without TensorFlow."""
    if output_format not in ("table", "json", "csv"):
        raise UsageError(f"--format {output_format!r}; expected table, json or csv")
    if bool(paths) == bool(inputs):
        raise UsageError("give image files or folders, or --inputs npz:FILE; expected exactly one of the two")
    from .model import load_served_model
    from .predict import collect_images, load_input_arrays, predict_arrays, predict_images, render_csv, render_table

    files = collect_images(paths) if paths else []
    model = load_served_model(run, variant=variant, allow_unverified=allow_unverified)
    if model.choice is not None:  # which variant and why, on stderr: stdout stays the predictions
        typer.echo(f"predict: {model.variant} — {model.choice.why}", err=True)
    if files:
        rows = predict_images(model, files, top_k=top_k)
    else:
        rows = predict_arrays(model, load_input_arrays(inputs, model.contract), top_k=top_k)
    if output_format == "json":
        typer.echo(json.dumps({"variant": model.variant, "predictions": rows}))
    elif output_format == "csv":
        sys.stdout.write(render_csv(rows))
    else:
        console().print(render_table(rows, f"kerasport predict ({model.variant})", top_k))
