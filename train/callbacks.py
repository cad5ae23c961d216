"""Training callbacks: the learning-rate policies of the reference design plus progress and bookkeeping.

Schedules are written relative to the current rate (they multiply it), so they compose with ReduceLROnPlateau
and survive `--resume`, where BackupAndRestore brings back the optimizer's current rate.
"""

from __future__ import annotations

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


def cosine_schedule(epochs: int, floor: float = 1e-3):
    """Cosine decay from the initial rate to `floor` x initial over `epochs`, applied as a per-epoch ratio."""

    def shape(epoch: int) -> float:
        progress = min(epoch, max(epochs - 1, 1)) / max(epochs - 1, 1)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def schedule(epoch: int, learning_rate: float) -> float:
        if epoch == 0:
            return learning_rate
        return learning_rate * shape(epoch) / shape(epoch - 1)

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
        callbacks.append(keras.callbacks.LearningRateScheduler(cosine_schedule(config.epochs)))
    callbacks.append(keras.callbacks.CSVLogger(str(work_dir / "history.csv"), append=resuming))
    callbacks.append(keras.callbacks.ModelCheckpoint(str(work_dir / "best.weights.h5"), monitor="val_loss",
                                                     save_best_only=True, save_weights_only=True))
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
