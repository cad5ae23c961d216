"""Helpers for the import tests: arrays that fit the shared two-input model (devtools/tiny_models.py), a Sequential
regressor, CLI calls."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from devtools.tiny_models import CLASS_OUTPUT, CLASSES, FEATURES, PICTURE, VALUE_OUTPUT
from kerasport.app.cli import app

EXAMPLES = 20


def mlp_regressor():
    """[batch, 13] -> [batch, 1], as a Sequential model."""
    import keras

    return keras.Sequential([keras.Input((13,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])


def two_io_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """An npz's arrays for the two-input model (devtools/tiny_models.py): inputs, class indices and values."""
    rng = np.random.default_rng(seed)
    return {"picture": rng.integers(0, 256, (EXAMPLES, *PICTURE)).astype(np.float32),
            "features": rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32),
            f"y:{CLASS_OUTPUT}": rng.integers(0, len(CLASSES), EXAMPLES),
            f"target:{VALUE_OUTPUT}": rng.normal(size=EXAMPLES)}


def invoke(argv: list[str]):
    return CliRunner().invoke(app, argv)


def invoke_json(argv: list[str]) -> dict:
    result = invoke([*argv, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)
