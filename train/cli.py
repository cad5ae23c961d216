"""`kerasport train`: a thin typer shell over `train.fit.train`. Imports no TensorFlow until it runs."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kerasport.cli_options import takes_options
from kerasport.cli_support import console, user_errors

from .config import TrainConfig


@user_errors
@takes_options
def train_command(
    config: TrainConfig,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Train the reference CNN with learning-rate callbacks and write the run's train/ bundle."""
    from .fit import train

    out = console()
    result = train(config, console=out)
    print_train_summary(out, result)
    if json_output:
        typer.echo(json.dumps(result.metrics))


def print_train_summary(out, result) -> None:
    from rich.table import Table

    if result.manifest is None:
        out.print(f"kerasport train: worker done; the chief writes the bundle to {result.run_dir}")
        return
    metrics = result.metrics
    table = Table(title=f"kerasport train → {result.run_dir}/train")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("test_accuracy", "test_accuracy_before_precise_bn", "test_loss",
                "test_mae", "test_mse", "epochs_run", "fit_seconds",
                "train_images_per_second", "final_learning_rate", "parameters", "n_train", "n_val", "n_test"):
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
