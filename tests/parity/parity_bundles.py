"""Tiny imported bundles for the parity tests: a two-input/two-output model and a tabular MLP regressor.

The bundles are written through the import library (`write_imported_bundle`), exactly as `kerasport import` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.samples import Samples

IMAGE_SHAPE = (32, 32, 3)
FEATURES = 8
CLASSES = ("cat", "dog", "bird")
TABULAR_FEATURES = 13


def two_io_model(seed: int = 0):
    """A 32x32 RGB picture (raw 0..255) and 8 features -> class probabilities (3) and one regression value."""
    import keras

    keras.utils.set_random_seed(seed)
    picture = keras.Input(IMAGE_SHAPE, name="picture")
    features = keras.Input((FEATURES,), name="features")
    x = keras.layers.Rescaling(1 / 255)(picture)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    merged = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(features)])
    classes = keras.layers.Dense(len(CLASSES), activation="softmax", name="species")(merged)
    value = keras.layers.Dense(1, name="weight")(merged)
    return keras.Model([picture, features], [classes, value])


def two_io_samples(n: int, seed: int, labelled: bool = True) -> Samples:
    rng = np.random.default_rng(seed)
    inputs = {"picture": rng.integers(0, 256, (n, *IMAGE_SHAPE)).astype(np.float32),
              "features": rng.normal(0, 1, (n, FEATURES)).astype(np.float32)}
    targets = {"species": rng.integers(0, len(CLASSES), n), "weight": rng.normal(0, 1, (n, 1)).astype(np.float32)}
    return Samples(inputs, targets if labelled else {})


def mlp_regressor(seed: int = 0):
    """[batch, 13] -> [batch, 1]: a house-price style regressor."""
    import keras

    keras.utils.set_random_seed(seed)
    rows = keras.Input((TABULAR_FEATURES,), name="row")
    hidden = keras.layers.Dense(16, activation="relu")(rows)
    return keras.Model(rows, keras.layers.Dense(1, name="price")(hidden))


def mlp_samples(n: int, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    rows = rng.normal(0, 1, (n, TABULAR_FEATURES)).astype(np.float32)
    return Samples({"row": rows}, {"price": (rows[:, :1] * 2 + 1).astype(np.float32)})


def write_bundle(run: Path, model, eval_samples: Samples, calibration: Samples, *, name: str,
                 labels: tuple[str, ...] = (), input_range: dict | None = None) -> Path:
    from kerasport.ingest.importer import ContractHints, contract_from_keras, write_imported_bundle

    contract = contract_from_keras(model, ContractHints(labels=labels), input_range or {})
    write_imported_bundle(run, model, contract, eval_samples=eval_samples, calibration=calibration, name=name,
                          version="1", source={"kind": "test"})
    return run


def two_io_bundle(run: Path, labelled: bool = True) -> Path:
    return write_bundle(run, two_io_model(), two_io_samples(40, seed=1, labelled=labelled),
                        two_io_samples(16, seed=2, labelled=False), name="two-io", labels=CLASSES,
                        input_range={"picture": (0.0, 255.0)})


def mlp_bundle(run: Path) -> Path:
    return write_bundle(run, mlp_regressor(), mlp_samples(40, seed=1), mlp_samples(16, seed=2), name="mlp")
