"""`kerasport train`'s options, declared once: `kerasport train` and `kerasport run` both take `TrainArgs`.

Each field is one command-line option (see `kerasport.cli_options`); its name is the `TrainConfig` field it sets,
so an option added here reaches the training stage from both commands. No TensorFlow import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated

import typer

from kerasport.cli_options import RunOption

from .config import TrainConfig

_DEFAULT = TrainConfig()


@dataclass
class TrainArgs:
    data: Annotated[str, typer.Option(
        "--data", help="digits | mnist | fashion_mnist | idx:DIR | npz:FILE | images:DIR (one sub-folder per class)."
    )] = _DEFAULT.data
    run: RunOption = _DEFAULT.run
    arch: Annotated[str, typer.Option(
        "--arch", help="seed (the reference CNN) | edge (≤100k params) | package.module:function (your own "
        "builder, called with keyword arguments input_shape, n_outputs, task, activation, kernel_initializer, "
        "bias_initializer, ...; see docs/training.md).")] = _DEFAULT.arch
    task: Annotated[str, typer.Option(
        "--task", help="classification (softmax) | regression (identity).")] = _DEFAULT.task
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = _DEFAULT.epochs
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = _DEFAULT.batch_size
    learning_rate: Annotated[float, typer.Option("--learning-rate")] = _DEFAULT.learning_rate
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam | sgd | rmsprop.")] = _DEFAULT.optimizer
    activation: Annotated[str, typer.Option(
        "--activation", help="relu | leaky_relu | elu | relu6 | swish | selu | sigmoid | tanh.")] = _DEFAULT.activation
    initializer: Annotated[str, typer.Option(
        "--initializer", help="auto (paired with the activation) or any Keras initializer name.")
    ] = _DEFAULT.initializer
    relu_bias: Annotated[float, typer.Option(
        "--relu-bias", help="Constant initial bias for hidden layers, e.g. 0.1 against dead ReLUs.")
    ] = _DEFAULT.relu_bias
    lr_schedule: Annotated[str, typer.Option(
        "--lr-schedule", help="cosine (decays over --epochs) | step | none; composed with --plateau.")
    ] = _DEFAULT.lr_schedule
    lr_step_every: Annotated[int, typer.Option(
        "--lr-step-every", help="step schedule: change the rate every N epochs.")] = _DEFAULT.lr_step_every
    lr_step_factor: Annotated[float, typer.Option(
        "--lr-step-factor", help="step schedule: multiply the rate by F.")] = _DEFAULT.lr_step_factor
    lr_warmup: Annotated[int, typer.Option(
        "--lr-warmup", help="Epochs over which the rate ramps up linearly, step by step, at the start (0 = none).")
    ] = _DEFAULT.lr_warmup
    plateau: Annotated[bool, typer.Option(
        "--plateau/--no-plateau", help="ReduceLROnPlateau on val_loss.")] = _DEFAULT.plateau
    plateau_patience: Annotated[int, typer.Option("--plateau-patience")] = _DEFAULT.plateau_patience
    plateau_factor: Annotated[float, typer.Option("--plateau-factor")] = _DEFAULT.plateau_factor
    early_stopping: Annotated[int, typer.Option(
        "--early-stopping", help="Patience in epochs on val_loss, restoring the best weights (0 = off).")
    ] = _DEFAULT.early_stopping
    restore_best: Annotated[bool, typer.Option(
        "--restore-best/--no-restore-best", help="Ship the weights of the epoch with the lowest val_loss "
        "(else the last epoch's); metrics.json reports both.")] = _DEFAULT.restore_best
    val_split: Annotated[float, typer.Option("--val-split")] = _DEFAULT.val_split
    seed: Annotated[int, typer.Option("--seed")] = _DEFAULT.seed
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="Enable TensorFlow op determinism (slower).")] = _DEFAULT.deterministic
    limit: Annotated[int, typer.Option(
        "--limit", help="Use only the first N training samples (0 = all).")] = _DEFAULT.limit
    image_size: Annotated[str, typer.Option(
        "--image-size", help="HxW the model takes, e.g. 32x32; every source is resized (digits re-framed) to it. "
        "auto: an array source's own size, 28x28 for digits and image folders.")] = _DEFAULT.image_size
    color: Annotated[str, typer.Option(
        "--color", help="grayscale | rgb | auto (RGB for 3-channel arrays, else grayscale).")] = _DEFAULT.color
    width: Annotated[float, typer.Option(
        "--width", help="Multiplies filter/unit counts; 1.0 = reference.")] = _DEFAULT.width
    dropout: Annotated[float, typer.Option(
        "--dropout", help="Dropout before the head (0 = none).")] = _DEFAULT.dropout
    precise_bn: Annotated[bool, typer.Option(
        "--precise-bn/--no-precise-bn", help="Recompute BatchNorm statistics on the training data after fit.")
    ] = _DEFAULT.precise_bn
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="Random shifts and small rotations during training.")] = _DEFAULT.augment
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard", help="Also write TensorBoard logs to <run>/train/logs.")] = _DEFAULT.tensorboard
    eval_samples: Annotated[int, typer.Option(
        "--eval-samples", help="Size of the pinned held-out test slice for parity.")] = _DEFAULT.eval_samples
    calibration_samples: Annotated[int, typer.Option(
        "--calibration-samples", help="Training images kept for int8 calibration in the export stage.")
    ] = _DEFAULT.calibration_samples
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from its last epoch.")] = _DEFAULT.resume
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Data-parallel training on several workers (tf.distribute MultiWorkerMirroredStrategy) "
        "configured by TF_CONFIG or --workers. --batch-size is per worker: the global batch is --batch-size x "
        "workers. Only the chief (worker 0) writes the bundle. `kerasport launch` starts local workers.")
    ] = _DEFAULT.distributed
    workers: Annotated[str, typer.Option(
        "--workers", help="With --distributed, instead of TF_CONFIG: every worker's host:port, comma-separated, "
        "the chief first (the same list on every worker).")] = _DEFAULT.workers
    worker_index: Annotated[int, typer.Option(
        "--worker-index", help="With --workers: this worker's position in the list (0 = the chief).")
    ] = _DEFAULT.worker_index
    collective_timeout: Annotated[float, typer.Option(
        "--collective-timeout", help="With --distributed: seconds a worker waits for its peers (to join at start, "
        "and in each gradient exchange) before the job ends with an error.")] = _DEFAULT.collective_timeout

    def config(self) -> TrainConfig:
        """The validated `TrainConfig` these options ask for (a bad value raises UsageError: exit 2)."""
        return TrainConfig(**dataclasses.asdict(self))
