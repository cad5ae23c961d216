"""The training stage end to end through its library API: outputs, callbacks, resume, reproducibility."""

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from kerasport.manifest import verify_bundle
from kerasport.samples import load_samples
from kerasport.train.callbacks import cosine_shape
from kerasport.train.config import INPUT_NAME, TrainConfig
from kerasport.train.fit import WORK_DIR_NAME, train


def make(tiny: dict, **overrides) -> TrainConfig:
    return TrainConfig(**{**tiny, **overrides})


def history(run: str) -> list[dict]:
    with open(Path(run) / "train" / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_bundle_outputs_metrics_and_manifest(tiny):
    result = train(make(tiny, epochs=3))
    stage = Path(tiny["run"]) / "train"
    for name in ("model.keras", "saved_model/saved_model.pb", "history.csv", "metrics.json", "curves.png",
                 "confusion.png", "config.json", "eval_sample.npz", "calibration_sample.npz", "best.weights.h5"):
        assert (stage / name).is_file(), name
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics == result.metrics
    assert metrics["test_loss"] > 0
    assert set(metrics["per_class_accuracy"]) == {"0", "1", "2"}
    assert metrics["epochs_run"] == 3 and metrics["fit_seconds"] > 0
    rows = history(tiny["run"])
    best = min(rows, key=lambda row: float(row["val_loss"]))
    assert (metrics["best_epoch"], metrics["best_val_loss"]) == (int(best["epoch"]), pytest.approx(
        float(best["val_loss"])))
    # the default schedule: cosine over the run's epochs
    shape = cosine_shape(3)
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx([1e-3 * shape(e) for e in range(3)],
                                                                          rel=1e-5)

    config = json.loads((stage / "config.json").read_text())
    assert config["config"]["seed"] == 42 and config["config"]["resolved_initializer"] == "he_normal"
    assert len(config["data"]["fingerprint"]) == 64
    assert {"tensorflow", "keras", "numpy", "TF_ENABLE_ONEDNN_OPTS"} <= set(config["environment"])

    manifest = verify_bundle(tiny["run"])  # every recorded hash matches the files
    (image,) = manifest.contract.inputs
    assert (image.name, image.dtype, image.shape, image.kind, image.value_range) == (
        INPUT_NAME, "float32", (-1, 28, 28, 1), "image", (0, 255))
    assert (image.image.color_mode, image.image.layout) == ("grayscale", "NHWC")
    (output,) = manifest.contract.outputs
    assert output.shape == (-1, 3) and output.labels == ("0", "1", "2") and output.kind == "probabilities"
    assert {"keras", "saved_model", "eval_sample", "calibration_sample"} <= set(manifest.artifact_names())
    assert not (Path(tiny["run"]) / WORK_DIR_NAME).exists()

    sample = load_samples(stage / "eval_sample.npz", manifest.contract)
    x_eval, y_eval = sample.inputs[INPUT_NAME], sample.targets[output.name]
    assert x_eval.shape == (30, 28, 28, 1) and y_eval.shape == (30,)

    # the SavedModel serves a dynamic batch of raw pixels under the contract's names, equal to Keras
    import tensorflow as tf

    loaded = tf.saved_model.load(str(stage / "saved_model"))
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image"]
    model = keras.saving.load_model(stage / "model.keras")
    # the reported accuracy is the shipped model's on the held-out images (all 30 are in the eval sample)
    predicted = keras.ops.convert_to_numpy(model(x_eval, training=False)).argmax(axis=1)
    assert metrics["test_accuracy"] == pytest.approx((predicted == y_eval).mean())
    for batch in (1, 7):
        x = x_eval[:batch]
        served = signature(image=tf.constant(x))["probabilities"].numpy()
        np.testing.assert_allclose(served, model(x, training=False), atol=1e-6)


def test_step_schedule_changes_the_rate_at_the_right_epochs(tiny):
    train(make(tiny, epochs=5, lr_schedule="step", lr_step_every=2, lr_step_factor=0.5, plateau=False))
    rates = [float(row["learning_rate"]) for row in history(tiny["run"])]
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_cosine_schedule_decays_over_the_epochs(tiny):
    train(make(tiny, epochs=4, lr_schedule="cosine", plateau=False))
    rates = [float(row["learning_rate"]) for row in history(tiny["run"])]
    assert rates[0] == pytest.approx(1e-3)
    assert all(later < earlier for earlier, later in zip(rates, rates[1:], strict=False))
    # epoch e of E trains at 0.5 * (1 + cos(pi * e / E)) of the rate: the last one still learns
    assert rates[-1] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 3 / 4)), rel=1e-2)


def test_constant_rate_with_lr_schedule_none(tiny):
    train(make(tiny, epochs=3, lr_schedule="none"))
    assert [float(row["learning_rate"]) for row in history(tiny["run"])] == pytest.approx([1e-3] * 3)


def test_callbacks_are_configured_as_asked(tmp_path):
    # Keras' own tests cover what ReduceLROnPlateau and EarlyStopping do; this checks what kerasport asks of them.
    from kerasport.train.callbacks import LearningRateRecorder, build_callbacks

    config = TrainConfig(plateau_patience=2, plateau_factor=0.5, early_stopping=3, lr_schedule="step")
    stack = build_callbacks(config, tmp_path, console=None, steps_per_epoch=1, resuming=False)
    kinds = [type(callback) for callback in stack]
    plateau = stack[kinds.index(keras.callbacks.ReduceLROnPlateau)]
    assert (plateau.monitor, plateau.factor, plateau.patience, plateau.min_lr) == ("val_loss", 0.5, 2, 0.0)
    stopping = stack[kinds.index(keras.callbacks.EarlyStopping)]
    assert (stopping.monitor, stopping.patience, stopping.restore_best_weights) == ("val_loss", 3, True)
    checkpoint = stack[kinds.index(keras.callbacks.ModelCheckpoint)]
    assert (checkpoint.monitor, checkpoint.save_best_only) == ("val_loss", True)
    # the recorder reads the rate before a schedule or the plateau changes it; BackupAndRestore comes after both
    assert kinds.index(LearningRateRecorder) == 0
    assert kinds.index(keras.callbacks.LearningRateScheduler) < kinds.index(keras.callbacks.ReduceLROnPlateau) \
        < kinds.index(keras.callbacks.BackupAndRestore)

    plain = build_callbacks(TrainConfig(plateau=False, early_stopping=0, lr_schedule="none"), tmp_path, console=None,
                            steps_per_epoch=1, resuming=False)
    assert not {keras.callbacks.ReduceLROnPlateau, keras.callbacks.EarlyStopping,
                keras.callbacks.LearningRateScheduler} & {type(callback) for callback in plain}


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch: int):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_resume_continues_from_the_last_finished_epoch(tiny):
    run = Path(tiny["run"])
    config = make(tiny, epochs=4, lr_schedule="step", lr_step_every=1, lr_step_factor=0.5, plateau=False)
    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[Interrupt(at_epoch=2)])
    assert not (run / "train").exists() and not (run / "manifest.json").exists()  # nothing looks complete
    assert (run / WORK_DIR_NAME / "backup").is_dir()

    result = train(TrainConfig(run=tiny["run"], resume=True))
    assert result.metrics["epochs_this_session"] == 2 and result.metrics["epochs_run"] == 4
    rows = history(tiny["run"])
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    # the resumed run continued the schedule from the restored optimizer rate, not from the start
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])


def test_resume_without_an_interrupted_run_is_a_usage_error(tiny):
    from kerasport.errors import UsageError

    with pytest.raises(UsageError, match="nothing to resume"):
        train(TrainConfig(run=tiny["run"], resume=True))


def test_same_seed_gives_identical_weights(tiny, tmp_path):
    first = train(TrainConfig(**{**tiny, "run": str(tmp_path / "a")}, deterministic=True))
    second = train(TrainConfig(**{**tiny, "run": str(tmp_path / "b")}, deterministic=True))
    third = train(TrainConfig(**{**tiny, "run": str(tmp_path / "c")}, deterministic=True, seed=7))
    weights = [keras.saving.load_model(r.run_dir / "train" / "model.keras").get_weights()
               for r in (first, second, third)]
    for a, b in zip(weights[0], weights[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(weights[0], weights[2], strict=True))


def test_regression_end_to_end(tiny):
    result = train(make(tiny, task="regression"))
    manifest = verify_bundle(tiny["run"])
    (output,) = manifest.contract.outputs
    assert (output.name, output.kind, output.activation) == ("values", "values", "identity")
    # the reported errors are the shipped model's on the held-out images (all 30 are in the eval sample)
    sample = load_samples(Path(tiny["run"]) / "train" / "eval_sample.npz", manifest.contract)
    model = keras.saving.load_model(Path(tiny["run"]) / "train" / "model.keras")
    errors = (keras.ops.convert_to_numpy(model(sample.inputs[INPUT_NAME], training=False)).ravel()
              - sample.targets[output.name].ravel())
    assert result.metrics["test_mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-5)
    assert result.metrics["test_mse"] == pytest.approx((errors ** 2).mean(), rel=1e-5)
    assert "mae" in history(tiny["run"])[0] and (Path(tiny["run"]) / "train" / "curves.png").is_file()


def test_tensorboard_logs_land_in_the_bundle(tiny):
    train(make(tiny, epochs=1, tensorboard=True))
    logs = Path(tiny["run"]) / "train" / "logs"
    assert any(path.name.startswith("events.out.tfevents") for path in logs.rglob("*"))


def test_rerun_replaces_the_previous_bundle(tiny):
    train(make(tiny, epochs=1))
    old_hash = verify_bundle(tiny["run"]).artifact("keras").sha256
    train(make(tiny, epochs=1, seed=3))
    assert verify_bundle(tiny["run"]).artifact("keras").sha256 != old_hash


USER_BUILDER = '''
import keras


def small_cnn(input_shape, n_outputs, activation, kernel_initializer, bias_initializer, output_activation):
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation=activation, kernel_initializer=kernel_initializer,
                            bias_initializer=bias_initializer)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation=output_activation)(x))
'''


def test_a_user_builder_trains_and_is_recorded(tiny, tmp_path, monkeypatch):
    import hashlib

    source = tmp_path / "kerasport_test_user_models.py"
    source.write_text(USER_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = train(make(tiny, epochs=1, arch="kerasport_test_user_models:small_cnn"))
    stage = Path(tiny["run"]) / "train"
    record = {"builder": "kerasport_test_user_models:small_cnn", "module": "kerasport_test_user_models",
              "function": "small_cnn", "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert json.loads((stage / "config.json").read_text())["config"]["builder"] == record
    manifest = verify_bundle(tiny["run"])
    assert manifest.data["model"]["builder"] == record and manifest.name == "kerasport-small_cnn"
    assert result.metrics["parameters"] == keras.saving.load_model(stage / "model.keras").count_params()
    # the SavedModel serves the contract's names whatever the builder called its tensors
    import tensorflow as tf

    signature = tf.saved_model.load(str(stage / "saved_model")).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == [INPUT_NAME]


def test_a_bad_builder_is_exit_2_in_one_line_before_anything_is_written(tiny):
    from typer.testing import CliRunner

    from kerasport.app.cli import app
    from kerasport.errors import EXIT_USAGE

    result = CliRunner().invoke(app, ["train", "--data", tiny["data"], "--run", tiny["run"],
                                      "--arch", "kerasport_no_such_module:build"])
    assert result.exit_code == EXIT_USAGE
    assert "module 'kerasport_no_such_module' does not import (ModuleNotFoundError" in result.output
    assert "Traceback" not in result.output and not Path(tiny["run"]).exists()
