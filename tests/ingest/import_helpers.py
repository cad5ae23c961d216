"""Helpers for the import tests: small Keras models, arrays that fit them, CLI calls."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from kerasport.app.cli import app

EXAMPLES = 20
CLASSES = ("cat", "dog", "fox")
FEATURES = 8
PICTURE = (32, 32, 3)


def two_io_model():
    """A 32x32x3 picture and 8 features in; 3-class probabilities and one regression value out."""
    import keras

    picture = keras.Input(PICTURE, name="picture")
    features = keras.Input((FEATURES,), name="features")
    x = keras.layers.Rescaling(1 / 255)(picture)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, features])
    klass = keras.layers.Dense(len(CLASSES), activation="softmax", name="klass")(x)
    amount = keras.layers.Dense(1, name="amount")(x)
    return keras.Model([picture, features], [klass, amount])


def mlp_regressor():
    """[batch, 13] -> [batch, 1], as a Sequential model."""
    import keras

    return keras.Sequential([keras.Input((13,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])


def two_io_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"picture": rng.integers(0, 256, (EXAMPLES, *PICTURE)).astype(np.float32),
            "features": rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32),
            "y:klass": rng.integers(0, len(CLASSES), EXAMPLES),
            "target:amount": rng.normal(size=EXAMPLES)}


def invoke(argv: list[str]):
    return CliRunner().invoke(app, argv)


def invoke_json(argv: list[str]) -> dict:
    result = invoke([*argv, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)
