"""The training configuration, declared once: each field is a `kerasport train` option (an option group, see
`kerasport.cli_options`), so `kerasport train` and `kerasport run` take `TrainConfig` itself and an option added here
reaches the training stage from both commands. Validated when built. No TensorFlow import, so the CLI can build and
validate it cheaply.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Annotated

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.errors import UsageError

INPUT_NAME = "image"
ARCHS = ("seed", "edge")
TASKS = ("classification", "regression")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "relu6", "swish", "selu", "sigmoid", "tanh")
LR_SCHEDULES = ("none", "step", "cosine")
COLORS = ("auto", "grayscale", "rgb")
# --arch package.module:function, a user's model builder (train/builders.py)
BUILDER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
IMAGE_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
MIN_IMAGE_SIDE = 8


@dataclass
class TrainConfig:
    """What `kerasport train` trains; a bad value raises UsageError (exit 2) when the config is built."""

    data: Annotated[str, typer.Option(
        "--data", help="digits | mnist | fashion_mnist | idx:DIR | npz:FILE | images:DIR (one sub-folder per class)."
    )] = "digits"
    run: RunOption = DEFAULT_RUN
    arch: Annotated[str, typer.Option(
        "--arch", help="seed (the reference CNN) | edge (≤100k params) | package.module:function (your own "
        "builder, called with keyword arguments input_shape, n_outputs, task, activation, kernel_initializer, "
        "bias_initializer, ...; see docs/training.md).")] = "seed"
    task: Annotated[str, typer.Option(
        "--task", help="classification (softmax) | regression (identity).")] = "classification"
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 15
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32
    learning_rate: Annotated[float, typer.Option("--learning-rate")] = 1e-3
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam | sgd | rmsprop.")] = "adam"
    activation: Annotated[str, typer.Option(
        "--activation", help="relu | leaky_relu | elu | relu6 | swish | selu | sigmoid | tanh.")] = "relu"
    initializer: Annotated[str, typer.Option(
        "--initializer", help="auto (paired with the activation) or any Keras initializer name.")
    ] = "auto"
    relu_bias: Annotated[float, typer.Option(
        "--relu-bias", help="Constant initial bias for hidden layers, e.g. 0.1 against dead ReLUs.")
    ] = 0.0
    lr_schedule: Annotated[str, typer.Option(
        "--lr-schedule", help="cosine (decays over --epochs) | step | none; composed with --plateau.")
    ] = "cosine"
    lr_step_every: Annotated[int, typer.Option(
        "--lr-step-every", help="step schedule: change the rate every N epochs.")] = 100
    lr_step_factor: Annotated[float, typer.Option(
        "--lr-step-factor", help="step schedule: multiply the rate by F.")] = 0.1
    lr_warmup: Annotated[int, typer.Option(
        "--lr-warmup", help="Epochs over which the rate ramps up linearly, step by step, at the start (0 = none).")
    ] = 1
    plateau: Annotated[bool, typer.Option(
        "--plateau/--no-plateau", help="ReduceLROnPlateau on val_loss.")] = True
    plateau_patience: Annotated[int, typer.Option("--plateau-patience")] = 10
    plateau_factor: Annotated[float, typer.Option("--plateau-factor")] = 0.1
    early_stopping: Annotated[int, typer.Option(
        "--early-stopping", help="Patience in epochs on val_loss, restoring the best weights (0 = off).")
    ] = 0
    restore_best: Annotated[bool, typer.Option(
        "--restore-best/--no-restore-best", help="Ship the weights of the epoch with the lowest val_loss "
        "(else the last epoch's); metrics.json reports both.")] = True
    val_split: Annotated[float, typer.Option("--val-split")] = 0.1
    seed: Annotated[int, typer.Option("--seed")] = 42
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="Enable TensorFlow op determinism (slower).")] = False
    limit: Annotated[int, typer.Option(
        "--limit", help="Use only the first N training samples (0 = all).")] = 0
    image_size: Annotated[str, typer.Option(
        "--image-size", help="HxW the model takes, e.g. 32x32; every source is resized (digits re-framed) to it. "
        "auto: an array source's own size, 28x28 for digits and image folders.")] = "auto"
    color: Annotated[str, typer.Option(
        "--color", help="grayscale | rgb | auto (RGB for 3-channel arrays, else grayscale).")] = "auto"
    width: Annotated[float, typer.Option(
        "--width", help="Multiplies filter/unit counts; 1.0 = reference.")] = 1.0
    dropout: Annotated[float, typer.Option(
        "--dropout", help="Dropout before the head (0 = none).")] = 0.0
    precise_bn: Annotated[bool, typer.Option(
        "--precise-bn/--no-precise-bn", help="Recompute BatchNorm statistics on the training data after fit.")
    ] = True
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="Random shifts and small rotations during training.")] = False
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard", help="Also write TensorBoard logs to <run>/train/logs.")] = False
    eval_samples: Annotated[int, typer.Option(
        "--eval-samples", help="Size of the pinned held-out test slice for parity.")] = 1000
    calibration_samples: Annotated[int, typer.Option(
        "--calibration-samples", help="Training images kept for int8 calibration in the export stage.")
    ] = 200
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from its last epoch.")] = False
    # Multi-worker data parallelism (train/distributed.py): the cluster comes from TF_CONFIG, or from `workers`
    # ("host:port,host:port", the chief first) and `worker_index` for a hand-started or `kerasport launch` job.
    distributed: Annotated[bool, typer.Option(
        "--distributed", help="Data-parallel training on several workers (tf.distribute MultiWorkerMirroredStrategy) "
        "configured by TF_CONFIG or --workers. --batch-size is per worker: the global batch is --batch-size x "
        "workers. Only the chief (worker 0) writes the bundle. `kerasport launch` starts local workers.")
    ] = False
    workers: Annotated[str, typer.Option(
        "--workers", help="With --distributed, instead of TF_CONFIG: every worker's host:port, comma-separated, "
        "the chief first (the same list on every worker).")] = ""
    worker_index: Annotated[int, typer.Option(
        "--worker-index", help="With --workers: this worker's position in the list (0 = the chief).")
    ] = 0
    collective_timeout: Annotated[float, typer.Option(
        "--collective-timeout", help="With --distributed: seconds a worker waits for its peers (to join at start, "
        "and in each gradient exchange) before the job ends with an error.")] = 300.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        choices = {"color": COLORS, "task": TASKS, "optimizer": OPTIMIZERS, "activation": ACTIVATIONS,
                   "lr_schedule": LR_SCHEDULES}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise UsageError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(allowed)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr_step_every": self.lr_step_every,
                    "plateau_patience": self.plateau_patience, "eval_samples": self.eval_samples,
                    "calibration_samples": self.calibration_samples}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value} must be >= 1")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning-rate {self.learning_rate} must be > 0")
        if not 0 < self.lr_step_factor <= 1:
            raise UsageError(f"--lr-step-factor {self.lr_step_factor} must be in (0, 1]")
        if not 0 < self.plateau_factor < 1:
            raise UsageError(f"--plateau-factor {self.plateau_factor} must be in (0, 1)")
        if not 0 < self.val_split < 1:
            raise UsageError(f"--val-split {self.val_split} must be in (0, 1)")
        if not 0 < self.width <= 4:
            raise UsageError(f"--width {self.width} must be in (0, 4]")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout {self.dropout} must be in [0, 1)")
        if self.early_stopping < 0 or self.limit < 0:
            raise UsageError(f"--early-stopping {self.early_stopping} and --limit {self.limit} must be >= 0")
        if self.relu_bias < 0:
            raise UsageError(f"--relu-bias {self.relu_bias} must be >= 0")
        self._validate_cluster()
        self._validate_model_input()

    def _validate_model_input(self) -> None:
        """--arch, --image-size, --lr-warmup (issue 9: any image size and colour, the user's own builder)."""
        if self.arch not in ARCHS and not BUILDER_PATTERN.match(self.arch):
            raise UsageError(f"--arch {self.arch!r} is not one of {', '.join(ARCHS)} or package.module:function "
                             f"(a model builder, e.g. mymodels.cnn:build)")
        if self.image_size != "auto":
            self.image_shape()
        if self.lr_warmup < 0:
            raise UsageError(f"--lr-warmup {self.lr_warmup} must be >= 0 epochs (0 = no warm-up)")

    def image_shape(self) -> tuple[int, int] | None:
        """`--image-size HxW` as (height, width); None for auto (the data source's own size)."""
        if self.image_size == "auto":
            return None
        found = IMAGE_SIZE_PATTERN.match(self.image_size.strip().lower())
        if not found:
            raise UsageError(f"--image-size {self.image_size!r} is not HxW; expected e.g. 28x28, 32x48 or auto")
        height, width = int(found.group(1)), int(found.group(2))
        if min(height, width) < MIN_IMAGE_SIDE:
            raise UsageError(f"--image-size {self.image_size}: expected at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
        return height, width

    @property
    def builtin_arch(self) -> bool:
        """True for the built-in `seed`/`edge`, False for a user's package.module:function builder."""
        return self.arch in ARCHS

    def _validate_cluster(self) -> None:
        if not self.collective_timeout > 0:
            raise UsageError(f"--collective-timeout {self.collective_timeout} must be > 0 seconds")
        if self.worker_index < 0:
            raise UsageError(f"--worker-index {self.worker_index} must be >= 0")
        if not self.distributed:
            if self.workers or self.worker_index:
                raise UsageError("--workers/--worker-index were given without --distributed; expected "
                                 "--distributed with them (or neither, for single-process training)")
            return
        if not self.workers:
            return  # the cluster comes from TF_CONFIG, read when training starts
        addresses = worker_addresses(self.workers)
        if self.worker_index >= len(addresses):
            raise UsageError(f"--worker-index {self.worker_index} is out of range for {len(addresses)} "
                             f"--workers; expected 0..{len(addresses) - 1}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def worker_addresses(workers: str) -> list[str]:
    """Parse `--workers host:port,host:port`; raises UsageError with the first bad entry."""
    addresses = [item.strip() for item in workers.split(",")]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--workers entry {address!r} is not host:port; expected e.g. "
                             f"--workers 10.0.0.1:2222,10.0.0.2:2222")
    if len(set(addresses)) != len(addresses):
        raise UsageError(f"--workers {workers!r} names an address twice; expected one host:port per worker")
    return addresses
