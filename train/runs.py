"""What a training run does around the fit, shared by the single-process and the multi-worker paths: the work
directory, data splits, evaluation with the best weights, and writing `<run>/train/` and the manifest.
"""


from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport import __version__
from kerasport.bundle import Stage, forget_invalidated, remove_invalidated_folders
from kerasport.contract import DYNAMIC, ModelContract, OutputSpec, image_input_spec
from kerasport.errors import UsageError
from kerasport.fsutil import atomic_path, remove_path, write_json_atomic
from kerasport.keras_bundle import export_saved_model, model_artifacts, save_keras_model, write_samples
from kerasport.manifest import Manifest, new_manifest, utc_now
from kerasport.samples import Samples

from .config import INPUT_NAME, TrainConfig
from .data import Dataset

WORK_DIR_NAME = ".train-work"


STAGE_DIR_NAME = Stage.TRAIN.folder


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    manifest: Manifest


@dataclass
class Fitted:
    """What fitting produced: the model, its data splits and history."""

    model: object
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    history: object
    fit_seconds: float


def finish_run(run_dir: Path, work_dir: Path, config: TrainConfig, dataset: Dataset, fitted: Fitted,
                metrics: dict, n_outputs: int, *, distributed: dict | None = None) -> Manifest:
    """Write `<run>/train/` and the manifest for a finished fit, then drop the work dir and stale stages.

    `distributed` (the cluster a multi-worker run trained on) is recorded in the stage's config and the manifest.
    """
    import keras
    import tensorflow as tf

    from .models import resolve_initializer

    resolved = {**config.to_dict(), "resume": False,
                "resolved_initializer": resolve_initializer(config.activation, config.initializer),
                **_builder_section(config)}
    environment = _environment(keras, tf)
    stage_record = {"config": resolved, "data": {"spec": dataset.name, "fingerprint": dataset.fingerprint(),
                                                 "source": dataset.source, "labels": dataset.labels},
                    "environment": environment, "finished": utc_now()}
    if distributed is not None:
        stage_record["distributed"] = distributed
    contract = reference_contract(config, dataset, n_outputs)
    _write_train_stage(run_dir / STAGE_DIR_NAME, work_dir, fitted, dataset, config, contract, metrics,
                       stage_record)

    manifest = _build_manifest(run_dir, config, dataset, contract, environment, metrics)
    if distributed is not None:
        manifest.set_stage(STAGE_DIR_NAME, {**manifest.stage(STAGE_DIR_NAME), "distributed": distributed})
    forget_invalidated(manifest, Stage.TRAIN)
    manifest.save(run_dir)
    remove_path(work_dir)
    remove_invalidated_folders(run_dir, Stage.TRAIN)
    return manifest


def prepare_work_dir(work_dir: Path, config: TrainConfig) -> None:
    if config.resume:
        _trim_history_to_backup(work_dir)
    else:
        remove_path(work_dir)  # a stale interrupted run must not be resumed silently
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work_dir / "config.json", config.to_dict())


def check_arch(config: TrainConfig) -> None:
    """Import a user's `--arch package.module:function` builder now, so a bad one fails before anything is written."""
    if not config.builtin_arch:
        from .builders import load_builder

        load_builder(config.arch)


def _headline_keys(config: TrainConfig) -> tuple[str, str]:
    return ("test_accuracy", "test_loss") if config.task == "classification" else ("test_mae", "test_mse")


def _evaluate_with_precise_bn(model, fitted: Fitted, dataset: Dataset, config: TrainConfig) -> dict:
    if config.precise_bn:
        recalibrate_batch_norm(model, fitted.x_fit, batch_size=256)
    return evaluate(model, dataset, config)


def _choose_weights(fitted: Fitted, dataset: Dataset, config: TrainConfig, work_dir: Path, rows: list[dict]) -> dict:
    """Leave in the model the weights to ship (the best val_loss epoch's with --restore-best, else the last
    epoch's) and measure the other ones, post-processed the same way (precise BN), for metrics.json.

    Returns the comparison keys: restore_best, final_epoch, shipped_epoch and the other side's
    final_epoch_<metric> or best_epoch_<metric> (the caller fills in the shipped side from its own evaluation).
    """
    best_path = work_dir / "best.weights.h5"
    final_epoch = int(rows[-1].get("epoch", len(rows) - 1)) if rows else None
    best_epoch = _best_epoch(rows).get("best_epoch")
    record = {"restore_best": config.restore_best, "final_epoch": final_epoch}
    if best_epoch is None or best_epoch == final_epoch or not best_path.is_file():
        return {**record, "shipped_epoch": final_epoch}
    model = fitted.model
    final_weights = model.get_weights()
    if config.restore_best:
        other, other_metrics = "final", _evaluate_with_precise_bn(model, fitted, dataset, config)
        model.load_weights(best_path)
    else:
        model.load_weights(best_path)
        other, other_metrics = "best", _evaluate_with_precise_bn(model, fitted, dataset, config)
        model.set_weights(final_weights)
    record.update({f"{other}_epoch_{key}": other_metrics[key] for key in _headline_keys(config)})
    return {**record, "shipped_epoch": best_epoch if config.restore_best else final_epoch}


def evaluate_and_summarize(fitted: Fitted, dataset: Dataset, config: TrainConfig, work_dir: Path) -> dict:
    model = fitted.model
    rows = _read_history(work_dir / "history.csv")
    weights = _choose_weights(fitted, dataset, config, work_dir, rows)
    before_recalibration = None
    if config.precise_bn:
        # Measured on every run, so the effect of the recalibration is visible in metrics.json.
        before_recalibration = evaluate(model, dataset, config)
        recalibrate_batch_norm(model, fitted.x_fit, batch_size=256)
    metrics = evaluate(model, dataset, config)
    if before_recalibration is not None:
        headline = "test_accuracy" if config.task == "classification" else "test_mae"
        metrics[f"{headline}_before_precise_bn"] = before_recalibration[headline]
    for side in ("final", "best"):  # the shipped side (both when the best epoch was the last) is what shipped
        for key in _headline_keys(config):
            weights.setdefault(f"{side}_epoch_{key}", metrics[key])
    metrics.update(weights)
    epochs = len(fitted.history.epoch)
    metrics.update(epochs_run=len(rows), epochs_this_session=epochs, fit_seconds=round(fitted.fit_seconds, 2),
                   train_images_per_second=round(len(fitted.x_fit) * epochs / max(fitted.fit_seconds, 1e-9), 1),
                   n_train=len(fitted.x_fit), n_val=len(fitted.x_val), n_test=len(dataset.x_test),
                   final_learning_rate=rows[-1]["learning_rate"] if rows else None,
                   **_best_epoch(rows),
                   parameters=int(model.count_params()))
    return metrics


def _write_train_stage(train_dir: Path, work_dir: Path, fitted: Fitted, dataset: Dataset, config: TrainConfig,
                       contract: ModelContract, metrics: dict, stage_record: dict) -> None:
    """Everything in `<run>/train/`, built in a staging directory and swapped in only when complete."""
    from .plots import plot_confusion, plot_curves

    with atomic_path(train_dir) as staging:
        staging.mkdir()
        save_keras_model(fitted.model, staging / "model.keras")
        export_saved_model(fitted.model, staging / "saved_model", contract)
        shutil.copyfile(work_dir / "history.csv", staging / "history.csv")
        if (work_dir / "best.weights.h5").is_file():
            # ModelCheckpoint's best-val_loss weights, kept next to the final model (load with load_weights)
            shutil.copyfile(work_dir / "best.weights.h5", staging / "best.weights.h5")
        if config.tensorboard and (work_dir / "logs").is_dir():
            shutil.copytree(work_dir / "logs", staging / "logs")
        write_json_atomic(staging / "metrics.json", metrics)
        write_json_atomic(staging / "config.json", stage_record)
        input_name, output_name = contract.inputs[0].name, contract.outputs[0].name
        eval_samples = Samples({input_name: dataset.x_test[:config.eval_samples]},
                               {output_name: dataset.y_test[:config.eval_samples]})
        # Training images (never the held-out slice) for int8 calibration in the export stage.
        picks = np.random.default_rng(config.seed).permutation(len(fitted.x_fit))[:config.calibration_samples]
        write_samples(staging, eval_samples, Samples({input_name: fitted.x_fit[picks]},
                                                     {output_name: fitted.y_fit[picks]}))
        plot_curves(_read_history(work_dir / "history.csv"), config.task, staging / "curves.png",
                    shipped_epoch=metrics.get("shipped_epoch"))
        if config.task == "classification":
            plot_confusion(np.asarray(metrics["confusion_matrix"]), dataset.labels, staging / "confusion.png")


def config_to_resume(work_dir: Path, requested: TrainConfig) -> TrainConfig:
    saved = work_dir / "config.json"
    if not (work_dir / "backup").is_dir() or not saved.is_file():
        raise UsageError(f"--resume: nothing to resume in {work_dir.parent} (no interrupted run at {work_dir}); "
                         f"expected a run that stopped before finishing")
    config = TrainConfig.from_dict(json.loads(saved.read_text()))
    config.resume = True
    # The only setting a resumed run may change: how many epochs it runs in total.
    if requested.epochs != TrainConfig.epochs and requested.epochs != config.epochs:
        config.epochs = requested.epochs
    config.run = requested.run
    return config


def _trim_history_to_backup(work_dir: Path) -> None:
    """Drop history rows of epochs the backup does not hold (the run died between logging and backing up)."""
    metadata = work_dir / "backup" / "training_metadata.json"
    history = work_dir / "history.csv"
    if not metadata.is_file() or not history.is_file():
        return
    resume_epoch = int(json.loads(metadata.read_text())["epoch"])
    with open(history, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(float(row[0])) < resume_epoch]
    with atomic_path(history) as temp, open(temp, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)


def validation_split(dataset: Dataset, config: TrainConfig):
    """Seeded, shuffled hold-out from the training data (Keras' validation_split takes the tail unshuffled,
    which on class-sorted files like many IDX dumps would validate on a single class)."""
    order = np.random.default_rng(config.seed).permutation(len(dataset.x_train))
    n_val = max(1, int(round(len(order) * config.val_split)))
    if n_val >= len(order):
        raise UsageError(f"--val-split {config.val_split} leaves no training samples out of {len(order)}")
    val, fit = order[:n_val], order[n_val:]
    return dataset.x_train[fit], dataset.y_train[fit], dataset.x_train[val], dataset.y_train[val]


def regression_width(dataset: Dataset) -> int:
    return 1 if dataset.y_train.ndim == 1 else int(dataset.y_train.shape[1])


def augmenter(config: TrainConfig):
    """The `--augment` layers (applied with training=True to batches of raw pixels)."""
    import keras

    # Small shifts and rotations: handwriting varies in position and slant, and the digits set is small.
    return keras.Sequential([
        keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=config.seed),
        keras.layers.RandomRotation(0.04, fill_mode="constant", seed=config.seed + 1),
    ])


def recalibrate_batch_norm(model, x: np.ndarray, batch_size: int = 256) -> None:
    """Replace every BatchNormalization layer's moving statistics with the exact statistics of `x`.

    With few steps per epoch, the default momentum (0.99) leaves the moving averages trailing the fast-changing
    weights, which costs test accuracy on small datasets. Recomputing them once after training ("precise BN")
    fixes that without changing the architecture.
    """
    import keras

    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        features = keras.Model(model.input, layer.input)
        count, total, total_sq = 0, None, None
        for start in range(0, len(x), batch_size):
            batch = keras.ops.convert_to_numpy(features(x[start:start + batch_size], training=False))
            batch = batch.reshape(-1, batch.shape[-1]).astype(np.float64)
            total = batch.sum(0) if total is None else total + batch.sum(0)
            total_sq = (batch ** 2).sum(0) if total_sq is None else total_sq + (batch ** 2).sum(0)
            count += len(batch)
        mean = total / count
        variance = np.maximum(total_sq / count - mean ** 2, 0.0)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))


def evaluate(model, dataset: Dataset, config: TrainConfig) -> dict:
    x_test, y_test = dataset.x_test, dataset.y_test
    predictions = model.predict(x_test, batch_size=256, verbose=0)
    if config.task == "regression":
        targets = y_test.reshape(predictions.shape)
        errors = predictions - targets
        return {"test_mae": float(np.abs(errors).mean()), "test_mse": float((errors ** 2).mean()),
                "test_rmse": float(np.sqrt((errors ** 2).mean()))}
    probabilities = np.clip(predictions, 1e-7, 1.0)
    loss = float(-np.log(probabilities[np.arange(len(y_test)), y_test]).mean())
    predicted = predictions.argmax(axis=1)
    n_classes = predictions.shape[1]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_test, predicted), 1)
    per_class = {}
    for index, label in enumerate(dataset.labels):
        support = int(confusion[index].sum())
        per_class[label] = round(float(confusion[index, index] / support), 4) if support else None
    return {"test_accuracy": float((predicted == y_test).mean()), "test_loss": loss,
            "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist()}


def reference_contract(config: TrainConfig, dataset: Dataset, n_outputs: int) -> ModelContract:
    """The contract of a reference model: raw pixels in, softmax probabilities or regression values out."""
    image = dataset.image
    classification = config.task == "classification"
    output = OutputSpec(name="probabilities" if classification else "values", dtype="float32",
                        shape=(DYNAMIC, n_outputs), kind="probabilities" if classification else "values",
                        labels=tuple(dataset.labels) if classification else (),
                        activation="softmax" if classification else "identity")
    return ModelContract(inputs=(image_input_spec(INPUT_NAME, image.height, image.width, image.color_mode,
                                                  foreground=image.foreground),),
                         outputs=(output,))


def _best_epoch(rows: list[dict]) -> dict:
    scored = [row for row in rows if np.isfinite(row.get("val_loss", np.nan))]
    if not scored:
        return {}
    best = min(scored, key=lambda row: row["val_loss"])
    return {"best_epoch": int(best.get("epoch", 0)), "best_val_loss": best["val_loss"]}


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(handle)]


def _environment(keras, tf) -> dict:
    import sklearn

    return {"kerasport": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "python": platform.python_version(),
            "platform": platform.platform(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow default: on)")}


def _builder_section(config: TrainConfig) -> dict:
    """{"builder": {spec, module, function, source_sha256}} for a user's --arch builder, else nothing."""
    if config.builtin_arch:
        return {}
    from .builders import builder_record

    return {"builder": builder_record(config.arch)}


def _model_name(config: TrainConfig) -> str:
    """`kerasport-seed`; for a builder `kerasport-<function>` (a name packaging can use as a directory)."""
    return f"kerasport-{config.arch if config.builtin_arch else config.arch.rpartition(':')[2]}"


def _build_manifest(run_dir: Path, config: TrainConfig, dataset: Dataset, contract: ModelContract,
                    environment: dict, metrics: dict):
    classification = config.task == "classification"
    stage = STAGE_DIR_NAME
    artifacts = model_artifacts(run_dir, stage, eval_role="held-out parity and evaluation slice",
                                calibration_role="training images for int8 calibration")
    headline = ({"test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]} if classification
                else {"test_mae": metrics["test_mae"], "test_mse": metrics["test_mse"]})
    return new_manifest(
        model={"name": _model_name(config), "version": "1", "task": config.task, "arch": config.arch,
               "width": config.width, "parameters": metrics["parameters"], "source": {"kind": "trained"},
               **_builder_section(config)},
        contract=contract,
        seeds={"seed": config.seed, "deterministic": config.deterministic},
        versions=environment,
        stages={"train": {"finished": utc_now(), "config": f"{stage}/config.json",
                          "metrics": f"{stage}/metrics.json", **headline}},
        artifacts=artifacts,
    )
