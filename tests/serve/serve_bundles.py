"""Tiny imported bundles of non-reference models for the serving tests, exported with `kerasport export`.

Bundles are written through the import library (`contract_from_keras` + `write_imported_bundle`), as
`kerasport import` does; parity is not run, so tests serve them with `allow_unverified`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from kerasport.samples import Samples

PICTURE = (32, 32, 3)
FEATURES = 8
FEATURE_RANGE = (-5.0, 5.0)
SPECIES = ("cat", "dog", "fox")
TABULAR = 13
PHOTO_LABELS = ("red", "green", "blue")


def two_inputs_model():
    """A 32x32 RGB picture (raw 0..255) and 8 features -> class probabilities (3) and one regression value."""
    import keras

    keras.utils.set_random_seed(0)
    picture = keras.Input(PICTURE, name="picture")
    features = keras.Input((FEATURES,), name="features")
    x = keras.layers.Rescaling(1 / 255)(picture)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    merged = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(features)])
    species = keras.layers.Dense(len(SPECIES), activation="softmax", name="species")(merged)
    size = keras.layers.Dense(1, name="size")(merged)
    return keras.Model([picture, features], [species, size])


def two_inputs_samples(n: int, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    return Samples({"picture": rng.integers(0, 256, (n, *PICTURE)).astype(np.float32),
                    "features": rng.normal(0, 1, (n, FEATURES)).astype(np.float32)},
                   {"species": rng.integers(0, len(SPECIES), n), "size": rng.normal(0, 1, (n, 1)).astype(np.float32)})


def regressor_model():
    """[batch, 13] -> [batch, 1]."""
    import keras

    keras.utils.set_random_seed(0)
    row = keras.Input((TABULAR,), name="row")
    return keras.Model(row, keras.layers.Dense(1, name="price")(keras.layers.Dense(8, activation="relu")(row)))


def regressor_samples(n: int, seed: int) -> Samples:
    rows = np.random.default_rng(seed).normal(0, 1, (n, TABULAR)).astype(np.float32)
    return Samples({"row": rows}, {"price": rows[:, :1] * 2})


def rgb_classifier_model():
    """A 32x32 RGB classifier that sees colour: mean red/green/blue -> which dominates."""
    import keras

    keras.utils.set_random_seed(0)
    photo = keras.Input(PICTURE, name="photo")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(photo))
    dense = keras.layers.Dense(len(PHOTO_LABELS), activation="softmax", name="colour")
    model = keras.Model(photo, dense(x))
    dense.set_weights([np.eye(3, dtype=np.float32) * 10, np.zeros(3, np.float32)])
    return model


def rgb_samples(n: int, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    pictures = rng.integers(0, 60, (n, *PICTURE)).astype(np.float32)
    pictures[np.arange(n), :, :, labels] = 230
    return Samples({"photo": pictures}, {"colour": labels})


def build(run: Path, model, eval_samples: Samples, *, name: str, labels=(), task: str = "auto",
          ranges: dict | None = None, formats: str = "onnx-fp32") -> Path:
    from kerasport.app.cli import app
    from kerasport.ingest.importer import ContractHints, contract_from_keras, write_imported_bundle

    contract = contract_from_keras(model, ContractHints(task=task, labels=labels), ranges or {})
    write_imported_bundle(run, model, contract, eval_samples=eval_samples, calibration=eval_samples.take(8),
                          name=name, version="1", source={"kind": "test"})
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--formats", formats])
    assert result.exit_code == 0, result.output
    return run


def two_inputs_bundle(run: Path) -> Path:
    return build(run, two_inputs_model(), two_inputs_samples(16, seed=1), name="two-inputs", labels=SPECIES,
                 ranges={"picture": (0.0, 255.0), "features": FEATURE_RANGE}, formats="onnx-fp32,tflite-fp32")


def regressor_bundle(run: Path) -> Path:
    return build(run, regressor_model(), regressor_samples(16, seed=1), name="prices", task="regression")


def rgb_bundle(run: Path) -> Path:
    return build(run, rgb_classifier_model(), rgb_samples(12, seed=1), name="colours", labels=PHOTO_LABELS,
                 ranges={"photo": (0.0, 255.0)})
