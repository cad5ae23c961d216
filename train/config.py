"""The resolved training configuration. No TensorFlow import, so the CLI can build and validate it cheaply."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

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
    data: str = "digits"
    run: str = "build"
    arch: str = "seed"
    task: str = "classification"
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    activation: str = "relu"
    initializer: str = "auto"
    relu_bias: float = 0.0
    lr_schedule: str = "cosine"
    lr_step_every: int = 100
    lr_step_factor: float = 0.1
    lr_warmup: int = 1
    plateau: bool = True
    plateau_patience: int = 10
    plateau_factor: float = 0.1
    early_stopping: int = 0
    restore_best: bool = True
    val_split: float = 0.1
    seed: int = 42
    deterministic: bool = False
    limit: int = 0
    image_size: str = "auto"
    color: str = "auto"
    width: float = 1.0
    dropout: float = 0.0
    precise_bn: bool = True
    augment: bool = False
    tensorboard: bool = False
    eval_samples: int = 1000
    calibration_samples: int = 200
    resume: bool = False
    # Multi-worker data parallelism (train/distributed.py): the cluster comes from TF_CONFIG, or from `workers`
    # ("host:port,host:port", the chief first) and `worker_index` for a hand-started or `kerasport launch` job.
    distributed: bool = False
    workers: str = ""
    worker_index: int = 0
    collective_timeout: float = 300.0

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
