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


def cosine_shape(epochs: int, floor: float = 1e-3):
    """The cosine schedule's rate per epoch as a fraction of the initial rate.

    Half a cosine from 1 towards `floor`, evaluated at each epoch's start: epoch e of E trains at
    floor + (1 - floor) * 0.5 * (1 + cos(pi * e / E)), so the last epoch still learns (0.095x for 5 epochs, 0.011x
    for 15).
    """

    def shape(epoch: int) -> float:
        progress = min(epoch, epochs) / max(epochs, 1)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return shape


def cosine_schedule(epochs: int, floor: float = 1e-3):
    """Cosine decay over `epochs`, applied as a per-epoch ratio of the current rate (so it composes)."""
    shape = cosine_shape(epochs, floor)

    def schedule(epoch: int, learning_rate: float) -> float:
        if epoch == 0:
            return learning_rate
        return learning_rate * shape(epoch) / shape(epoch - 1)

    return schedule


def best_logged(history: Path, key: str = "val_loss") -> float | None:
    """The lowest `key` in a CSVLogger file (None when there is none): a resumed ModelCheckpoint starts from it."""
    if not history.is_file():
        return None
    with open(history, newline="") as handle:
        values = [float(row[key]) for row in csv.DictReader(handle) if row.get(key) not in (None, "")]
    return min(values) if values else None


class LinearWarmup(keras.callbacks.Callback):
    """`--lr-warmup N`: ramp the rate linearly, batch by batch, over the first N epochs' steps.

    Step s of the S warm-up steps trains at (s + 1) / S of the rate the epoch's schedule set; at each epoch's end
    the scheduled rate is put back, so ReduceLROnPlateau, the next epoch's schedule, BackupAndRestore and the
    history's learning_rate column all see the schedule's rate, and a resumed run continues the ramp where the
    epoch it resumes at begins. Runs after the schedulers and before ReduceLROnPlateau.
    """

    def __init__(self, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.epochs, self.steps = epochs, max(steps_per_epoch, 1)
        self._epoch, self._rate = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._rate = (float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                      if epoch < self.epochs else None)

    def on_train_batch_begin(self, batch, logs=None):
        if self._rate is not None:
            step = self._epoch * self.steps + min(batch, self.steps - 1)
            self.model.optimizer.learning_rate.assign(self._rate * (step + 1) / (self.epochs * self.steps))

    def on_epoch_end(self, epoch, logs=None):
        if self._rate is not None:
            self.model.optimizer.learning_rate.assign(self._rate)
            if logs is not None:
                logs["learning_rate"] = self._rate  # LearningRateScheduler logged the ramp's last step
            self._rate = None


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
        callbacks.append(keras.callbacks.LearningRateScheduler(cosine_schedule(config.epochs)))
    if config.lr_warmup:
        callbacks.append(LinearWarmup(config.lr_warmup, steps_per_epoch))
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
