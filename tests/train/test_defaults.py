"""The training defaults (issue 9): the rate decays over the run, the best validation epoch's weights ship.

These check what kerasport configures and does (the history's rates, which weights went into model.keras, what
metrics.json reports), not what Keras' callbacks do.
"""

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_OK
from kerasport.train.callbacks import LinearWarmup, build_callbacks, cosine_shape
from kerasport.train.config import TrainConfig
from kerasport.train.fit import train

runner = CliRunner()


def history(run) -> list[dict]:
    with open(Path(run) / "train" / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def rates(run) -> list[float]:
    return [float(row["learning_rate"]) for row in history(run)]


class Diverge(keras.callbacks.Callback):
    """Blow the rate up from `epoch` on, so the last epochs are worse than an earlier one."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.epoch:
            self.model.optimizer.learning_rate.assign(5.0)


def trainable(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(weight) for weight in model.trainable_weights]


def test_default_cli_run_decays_the_rate_and_reports_best_and_final(tiny):
    run = tiny["run"]
    result = runner.invoke(app, ["train", "--data", tiny["data"], "--run", run, "--width", "0.125", "--epochs", "3",
                                 "--batch-size", "16", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    learning_rate = TrainConfig().learning_rate
    # cosine over --epochs by default, composed with ReduceLROnPlateau (still in the stack, patience 10); the
    # history logs each epoch's scheduled rate (the warm-up ramps within the first epoch)
    shape = cosine_shape(3)
    assert rates(run) == pytest.approx([learning_rate * shape(epoch) for epoch in range(3)], rel=1e-5)
    metrics = json.loads((Path(run) / "train" / "metrics.json").read_text())
    assert metrics["restore_best"] is True and metrics["final_epoch"] == 2
    assert metrics["shipped_epoch"] == metrics["best_epoch"]
    for side in ("final", "best"):
        assert 0 <= metrics[f"{side}_epoch_test_accuracy"] <= 1 and metrics[f"{side}_epoch_test_loss"] > 0
    assert metrics["best_epoch_test_accuracy"] == metrics["test_accuracy"]


def test_the_default_stack_warms_up_then_follows_the_schedule_and_the_plateau(tmp_path):
    stack = build_callbacks(TrainConfig(), tmp_path, console=None, steps_per_epoch=4, resuming=False)
    kinds = [type(callback) for callback in stack]
    # the warm-up scales the rate the schedule set, and puts it back before ReduceLROnPlateau reads it
    assert kinds.index(keras.callbacks.LearningRateScheduler) < kinds.index(LinearWarmup) \
        < kinds.index(keras.callbacks.ReduceLROnPlateau) < kinds.index(keras.callbacks.BackupAndRestore)
    (warmup,) = [callback for callback in stack if isinstance(callback, LinearWarmup)]
    assert (warmup.epochs, warmup.steps) == (TrainConfig().lr_warmup, 4)
    no_warmup = build_callbacks(TrainConfig(lr_warmup=0), tmp_path, console=None, steps_per_epoch=4, resuming=False)
    assert LinearWarmup not in {type(callback) for callback in no_warmup}


def test_restore_best_ships_the_best_epoch_and_reports_the_last(tiny):
    result = train(TrainConfig(**{**tiny, "epochs": 4}), extra_callbacks=[Diverge(epoch=2)])
    metrics, stage = result.metrics, Path(tiny["run"]) / "train"
    rows = history(tiny["run"])
    best = min(range(len(rows)), key=lambda index: float(rows[index]["val_loss"]))
    assert best < 2 and (metrics["best_epoch"], metrics["shipped_epoch"], metrics["final_epoch"]) == (best, best, 3)
    shipped = keras.saving.load_model(stage / "model.keras")
    best_model = keras.saving.load_model(stage / "model.keras")
    best_model.load_weights(stage / "best.weights.h5")
    # what shipped is the best epoch's model (BatchNorm statistics aside: precise BN recomputes them)
    for a, b in zip(trainable(shipped), trainable(best_model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert metrics["test_accuracy"] == metrics["best_epoch_test_accuracy"]
    assert metrics["final_epoch_test_loss"] > metrics["best_epoch_test_loss"]


def test_no_restore_best_ships_the_last_epoch_and_still_measures_the_best(tiny):
    result = train(TrainConfig(**{**tiny, "epochs": 4, "restore_best": False}), extra_callbacks=[Diverge(epoch=2)])
    metrics, stage = result.metrics, Path(tiny["run"]) / "train"
    assert metrics["shipped_epoch"] == metrics["final_epoch"] == 3 and metrics["best_epoch"] < 2
    shipped = keras.saving.load_model(stage / "model.keras")
    best_model = keras.saving.load_model(stage / "model.keras")
    best_model.load_weights(stage / "best.weights.h5")
    assert any(not np.array_equal(a, b) for a, b in zip(trainable(shipped), trainable(best_model), strict=True))
    assert metrics["test_accuracy"] == metrics["final_epoch_test_accuracy"]
    assert metrics["final_epoch_test_loss"] > metrics["best_epoch_test_loss"]


class RecordRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_warmup_ramps_per_step_then_follows_the_schedule(tiny):
    recorder = RecordRates()
    config = TrainConfig(**{**tiny, "epochs": 3, "lr_warmup": 1, "plateau": False})
    train(config, extra_callbacks=[recorder])
    steps = int(np.ceil(108 / config.batch_size))  # 120 training images, 10% held out for validation
    ramp = [config.learning_rate * (step + 1) / steps for step in range(steps)]
    assert recorder.seen[:steps] == pytest.approx(ramp, rel=1e-5)
    shape = cosine_shape(3)
    # after the warm-up, each step trains at the epoch's scheduled rate; the history logs the scheduled rates
    assert recorder.seen[steps:] == pytest.approx([config.learning_rate * shape(1)] * steps
                                                  + [config.learning_rate * shape(2)] * steps, rel=1e-5)
    assert rates(tiny["run"]) == pytest.approx([config.learning_rate * shape(epoch) for epoch in range(3)], rel=1e-5)


def test_a_resumed_checkpoint_must_beat_the_best_epoch_before_the_interruption(tmp_path):
    with open(tmp_path / "history.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["epoch", "loss", "val_loss"], [0, 1.0, 0.7], [1, 0.5, 0.3], [2, 0.4, 0.45]])
    stack = build_callbacks(TrainConfig(), tmp_path, console=None, steps_per_epoch=1, resuming=True)
    (checkpoint,) = [callback for callback in stack if isinstance(callback, keras.callbacks.ModelCheckpoint)]
    assert checkpoint.best == pytest.approx(0.3)
    fresh = build_callbacks(TrainConfig(), tmp_path, console=None, steps_per_epoch=1, resuming=False)
    (checkpoint,) = [callback for callback in fresh if isinstance(callback, keras.callbacks.ModelCheckpoint)]
    assert checkpoint.best is None  # no threshold: the first epoch is saved


def test_bad_warmup_is_a_usage_error():
    from kerasport.errors import UsageError

    with pytest.raises(UsageError, match="--lr-warmup -1 must be >= 0"):
        TrainConfig(lr_warmup=-1)
