"""The training stage: data -> model -> fit with the reference's callbacks -> evaluated, exported bundle.

Everything is produced in a work directory inside the run and moved to `<run>/train/` only after it all
succeeded, so a failed or interrupted run never leaves files that look complete. The work directory keeps
BackupAndRestore's state so `--resume` can continue from the last finished epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kerasport.tfenv import quiet_tensorflow

from .config import TrainConfig
from .data import Dataset, load_training_data
from .runs import (
    WORK_DIR_NAME,
    Fitted,
    TrainResult,
    augmenter,
    check_arch,
    config_to_resume,
    evaluate_and_summarize,
    finish_run,
    prepare_work_dir,
    regression_width,
    validation_split,
)


def train(config: TrainConfig, *, console=None, extra_callbacks: list | None = None) -> TrainResult:
    """Run the training stage: load data, fit with the reference's callbacks, evaluate, write the bundle.

    Args:
        config: the validated training configuration (`kerasport train --help` documents every field).
        console: a rich Console for the per-epoch progress bar, or None for silence.
        extra_callbacks: Keras callbacks run before kerasport's own (tests use this to interrupt a run).

    Returns:
        The run directory, the test metrics (also in `<run>/train/metrics.json`) and the new manifest.

    Raises:
        UsageError / DataError: bad options or data, before anything is written (exit 2).
    """
    if config.distributed:
        from .distributed import train_distributed

        return train_distributed(config, console=console, extra_callbacks=extra_callbacks)
    run_dir = Path(config.run)
    work_dir = run_dir / WORK_DIR_NAME
    if config.resume:
        config = config_to_resume(work_dir, config)
    # fails before anything is written; the config comes back with --image-size/--color as the data turned out
    config, dataset = load_training_data(config)
    check_arch(config)

    quiet_tensorflow()
    import keras
    import tensorflow as tf

    prepare_work_dir(work_dir, config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    n_outputs = len(dataset.labels) if config.task == "classification" else regression_width(dataset)
    fitted = _fit(config, dataset, n_outputs, work_dir, console, extra_callbacks)
    metrics = evaluate_and_summarize(fitted, dataset, config, work_dir)
    manifest = finish_run(run_dir, work_dir, config, dataset, fitted, metrics, n_outputs)
    return TrainResult(run_dir=run_dir, metrics=metrics, manifest=manifest)


def _fit(config: TrainConfig, dataset: Dataset, n_outputs: int, work_dir: Path, console,
         extra_callbacks: list | None) -> Fitted:
    from .callbacks import build_callbacks
    from .models import build_model, compile_model

    x_fit, y_fit, x_val, y_val = validation_split(dataset, config)
    model = build_model(config, n_outputs)
    compile_model(model, config)
    steps_per_epoch = int(np.ceil(len(x_fit) / config.batch_size))
    callbacks = build_callbacks(config, work_dir, console=console, steps_per_epoch=steps_per_epoch,
                                resuming=config.resume)
    callbacks = list(extra_callbacks or []) + callbacks
    started = time.perf_counter()
    history = model.fit(*_fit_inputs(x_fit, y_fit, config), batch_size=None if config.augment else config.batch_size,
                        epochs=config.epochs, validation_data=(x_val, y_val), callbacks=callbacks,
                        shuffle=True, verbose=0)
    return Fitted(model, x_fit, y_fit, x_val, history, time.perf_counter() - started)


def _fit_inputs(x, y, config: TrainConfig):
    if not config.augment:
        return (x, y)
    import tensorflow as tf

    augment = augmenter(config)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=config.seed).batch(config.batch_size)
    data = data.map(lambda images, targets: (augment(images, training=True), targets))
    return (data.prefetch(tf.data.AUTOTUNE),)
