"""Training callbacks: the learning-rate policies of the reference design plus progress and bookkeeping.

Schedules are written relative to the current rate (they multiply it), so they compose with ReduceLROnPlateau
and survive `--resume`, where BackupAndRestore brings back the optimizer's current rate.

The default (issue 9, measured in README-training.md) is a cosine decay over `--epochs` composed with
ReduceLROnPlateau, and ModelCheckpoint keeps the best val_loss epoch's weights for `--restore-best`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import keras

from .config import TrainConfig


def step_schedule(every: int, factor: float):
    """The reference's LearningRateScheduler: multiply the rate by `factor` every `every` epochs (from 0)."""

    def schedule(epoch: int, learning_rate: float) -> float:
        if epoch > 0 and epoch % every == 0:
            return learning_rate * factor
        return learning_rate

    return schedule


def cosine_shape(epochs: int, warmup: int = 0, floor: float = 1e-3):
    """The cosine schedule's rate per epoch as a fraction of the initial rate.

    `warmup` epochs ramp linearly (1/(w+1), 2/(w+1), ...), then the rate follows half a cosine from 1 towards
    `floor` over the remaining epochs, evaluated at each epoch's start: epoch e of E (after warm-up) trains at
    0.5 * (1 + cos(pi * e / E)), so the last epoch still learns (at 0.095x for 5 epochs, 0.011x for 15).
    """
    span = max(epochs - warmup, 1)

    def shape(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = min(epoch - warmup, span) / span
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return shape


def cosine_schedule(epochs: int, floor: float = 1e-3, warmup: int = 0):
    """Cosine decay over `epochs` (after `warmup` linear epochs), applied as a per-epoch ratio of the current rate."""
    shape = cosine_shape(epochs, warmup, floor)

    def schedule(epoch: int, learning_rate: float) -> float:
        if epoch == 0:
            return learning_rate * shape(0)
        return learning_rate * shape(epoch) / shape(epoch - 1)

    return schedule


def best_logged(history: Path, key: str = "val_loss") -> float | None:
    """The lowest `key` in a CSVLogger file (None when there is none): a resumed ModelCheckpoint starts from it."""
    if not history.is_file():
        return None
    with open(history, newline="") as handle:
        values = [float(row[key]) for row in csv.DictReader(handle) if row.get(key) not in (None, "")]
    return min(values) if values else None


def warmup_schedule(warmup: int):
    """`--lr-warmup` without cosine (step/none): ramp linearly over `warmup` epochs, then leave the rate alone."""
    shape = cosine_shape(warmup + 1, warmup, floor=1.0)

    def schedule(epoch: int, learning_rate: float) -> float:
        if epoch > warmup:
            return learning_rate
        return learning_rate * shape(epoch) / (shape(epoch - 1) if epoch else 1.0)

    return schedule


class LearningRateRecorder(keras.callbacks.Callback):
    """Put the rate each epoch actually trained with into the logs (and so into history.csv).

    It must run before callbacks that change the rate at epoch end (ReduceLROnPlateau), so it reads the rate at
    epoch begin, after any scheduler has set it.
    """

    def __init__(self):
        super().__init__()
        self._rate = None

    def on_epoch_begin(self, epoch, logs=None):
        self._rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._rate is not None:
            logs["learning_rate"] = self._rate


class RichProgress(keras.callbacks.Callback):
    """One progress bar per epoch (advanced per batch) and a line of metrics when the epoch ends."""

    def __init__(self, console, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.console, self.epochs, self.steps = console, epochs, steps_per_epoch
        self._progress = None
        self._task = None

    def on_epoch_begin(self, epoch, logs=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn(f"epoch {epoch + 1}/{self.epochs}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.steps)

    def on_train_batch_end(self, batch, logs=None):
        self._progress.update(self._task, completed=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._progress.stop()
        shown = ", ".join(f"{key} {value:.4g}" for key, value in (logs or {}).items()
                          if isinstance(value, (int, float)))
        self.console.print(f"epoch {epoch + 1}/{self.epochs}: {shown}")

    def on_train_end(self, logs=None):
        if self._progress is not None:
            self._progress.stop()


def build_callbacks(config: TrainConfig, work_dir: Path, *, console, steps_per_epoch: int,
                    resuming: bool) -> list:
    """The callback stack, in the order Keras must run it (the recorder before anything that changes rates)."""
    callbacks: list = [LearningRateRecorder()]
    if config.lr_schedule == "step":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            step_schedule(config.lr_step_every, config.lr_step_factor)))
    elif config.lr_schedule == "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            cosine_schedule(config.epochs, warmup=config.lr_warmup)))
    if config.lr_warmup and config.lr_schedule != "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(warmup_schedule(config.lr_warmup)))
    # A resumed run's checkpoint must beat the best epoch before the interruption, so that best.weights.h5 holds
    # the weights of the best epoch in the whole history.csv (the one metrics.json reports and --restore-best ships).
    best_so_far = best_logged(work_dir / "history.csv") if resuming else None
    callbacks.append(keras.callbacks.CSVLogger(str(work_dir / "history.csv"), append=resuming))
    callbacks.append(keras.callbacks.ModelCheckpoint(str(work_dir / "best.weights.h5"), monitor="val_loss",
                                                     save_best_only=True, save_weights_only=True,
                                                     initial_value_threshold=best_so_far))
    if config.plateau:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.plateau_factor,
                                                           patience=config.plateau_patience, mode="auto",
                                                           min_delta=1e-4, cooldown=0, min_lr=0.0))
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping,
                                                       restore_best_weights=True))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(work_dir / "logs")))
    # Last, so a resumed run restores weights, optimizer state and the epoch counter after the others are set.
    callbacks.append(keras.callbacks.BackupAndRestore(str(work_dir / "backup"), delete_checkpoint=False))
    if console is not None:
        callbacks.append(RichProgress(console, config.epochs, steps_per_epoch))
    return callbacks
