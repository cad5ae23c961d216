"""Versions of one small model for model-repository tests and the swap soak (bench/soak.py --swap).

Every version is a real bundle: a Keras regressor written through the import library, exported to ONNX and checked
by `kerasport parity`, so a server accepts it without --allow-unverified. Versions differ in their weights (`seed`),
and the output of version v on the probe input is what tells a response's version from its numbers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

FEATURES = 6
MODEL_NAME = "prices"
PROBE = np.linspace(-1.0, 1.0, FEATURES, dtype=np.float32)[None, :]


def regressor(seed: int):
    """[batch, 6] -> [batch, 1], weights drawn from `seed`."""
    import keras

    keras.utils.set_random_seed(seed)
    row = keras.Input((FEATURES,), name="row")
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(row)
    return keras.Model(row, keras.layers.Dense(1, name="price")(hidden))


def write_version(run: Path, seed: int, *, name: str = MODEL_NAME, version: str = "1") -> Path:
    """A verified bundle of `regressor(seed)` at `run` (exported to onnx-fp32, parity passed)."""
    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity
    from kerasport.samples import Samples

    from .tiny_models import write_imported

    model = regressor(seed)
    rows = np.random.default_rng(seed).normal(0, 1, (16, FEATURES)).astype(np.float32)
    samples = Samples({"row": rows}, {"price": rows[:, :1] * 2})  # labels far from any version: a real error
    write_imported(run, model, samples, samples.take(8), name=name, task="regression", version=version,
                   source={"kind": "test", "seed": seed})
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32"], calibration_samples=8))
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    if result.exit_code != 0:
        raise RuntimeError(f"parity failed for the seed {seed} regressor: {result.failures}")
    return run


def expected_output(run: Path) -> float:
    """The bundle's answer to PROBE, computed in-process by its ONNX artifact (no server)."""
    from kerasport.serve.model import load_served_model

    return float(load_served_model(run).predict({"row": PROBE})["price"][0, 0])


def drop_in(source: Path, repository: Path, name: str, version: int) -> Path:
    """Copy a bundle into `repository/name/version` the way a release tool should: copy beside, rename in place."""
    target = repository / name / str(version)
    staging = repository / name / f".{version}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    os.replace(staging, target)
    return target


def flip_byte(path: Path) -> None:
    """Change one byte in the middle of a file (a tampered artifact)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
