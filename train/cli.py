"""`kerasport train`: a thin typer shell over `train.fit.train`. Imports no TensorFlow until it runs."""

from __future__ import annotations

import json

import typer

from kerasport.cli_support import console, user_errors

from .config import TrainConfig

_DEFAULTS = TrainConfig.__dataclass_fields__


def _default(name: str):
    return _DEFAULTS[name].default


@user_errors
def train_command(
    data: str = typer.Option(_default("data"), "--data", help="digits | mnist | fashion_mnist | idx:DIR | "
                             "npz:FILE | images:DIR (one sub-folder per class)."),
    run: str = typer.Option(_default("run"), "--run", help="Run directory (the release bundle)."),
    arch: str = typer.Option(_default("arch"), "--arch", help="seed (the reference CNN) | edge (≤100k params)."),
    task: str = typer.Option(_default("task"), "--task", help="classification (softmax) | regression (identity)."),
    epochs: int = typer.Option(_default("epochs"), "--epochs", min=1),
    batch_size: int = typer.Option(_default("batch_size"), "--batch-size", min=1),
    learning_rate: float = typer.Option(_default("learning_rate"), "--learning-rate"),
    optimizer: str = typer.Option(_default("optimizer"), "--optimizer", help="adam | sgd | rmsprop."),
    activation: str = typer.Option(_default("activation"), "--activation",
                                   help="relu | leaky_relu | elu | relu6 | swish | selu | sigmoid | tanh."),
    initializer: str = typer.Option(_default("initializer"), "--initializer",
                                    help="auto (paired with the activation) or any Keras initializer name."),
    relu_bias: float = typer.Option(_default("relu_bias"), "--relu-bias",
                                    help="Constant initial bias for hidden layers, e.g. 0.1 against dead ReLUs."),
    lr_schedule: str = typer.Option(_default("lr_schedule"), "--lr-schedule", help="none | step | cosine."),
    lr_step_every: int = typer.Option(_default("lr_step_every"), "--lr-step-every",
                                      help="step schedule: change the rate every N epochs."),
    lr_step_factor: float = typer.Option(_default("lr_step_factor"), "--lr-step-factor",
                                         help="step schedule: multiply the rate by F."),
    plateau: bool = typer.Option(_default("plateau"), "--plateau/--no-plateau",
                                 help="ReduceLROnPlateau on val_loss."),
    plateau_patience: int = typer.Option(_default("plateau_patience"), "--plateau-patience"),
    plateau_factor: float = typer.Option(_default("plateau_factor"), "--plateau-factor"),
    early_stopping: int = typer.Option(_default("early_stopping"), "--early-stopping",
                                       help="Patience in epochs on val_loss, restoring the best weights (0 = off)."),
    val_split: float = typer.Option(_default("val_split"), "--val-split"),
    seed: int = typer.Option(_default("seed"), "--seed"),
    deterministic: bool = typer.Option(_default("deterministic"), "--deterministic",
                                       help="Enable TensorFlow op determinism (slower)."),
    limit: int = typer.Option(_default("limit"), "--limit", help="Use only the first N training samples (0 = all)."),
    width: float = typer.Option(_default("width"), "--width", help="Multiplies filter/unit counts; 1.0 = reference."),
    dropout: float = typer.Option(_default("dropout"), "--dropout", help="Dropout before the head (0 = none)."),
    precise_bn: bool = typer.Option(_default("precise_bn"), "--precise-bn/--no-precise-bn",
                                    help="Recompute BatchNorm statistics on the training data after fit."),
    augment: bool = typer.Option(_default("augment"), "--augment/--no-augment",
                                 help="Random shifts and small rotations during training."),
    tensorboard: bool = typer.Option(_default("tensorboard"), "--tensorboard",
                                     help="Also write TensorBoard logs to <run>/train/logs."),
    eval_samples: int = typer.Option(_default("eval_samples"), "--eval-samples",
                                     help="Size of the pinned held-out test slice for parity."),
    calibration_samples: int = typer.Option(_default("calibration_samples"), "--calibration-samples",
                                            help="Training images kept for int8 calibration in the export stage."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last epoch."),
    json_output: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
) -> None:
    """Train the reference CNN with learning-rate callbacks and write the run's train/ bundle."""
    options = dict(locals())
    json_output = options.pop("json_output")
    config = TrainConfig(**options)

    from .fit import train

    out = console()
    result = train(config, console=out)
    print_train_summary(out, result)
    if json_output:
        typer.echo(json.dumps(result.metrics))


def print_train_summary(out, result) -> None:
    from rich.table import Table

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
