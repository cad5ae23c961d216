"""The tiny non-reference models the tests share, the samples that fit them, and the bundle writer they go through.

One two-input/two-output model (a picture and a feature vector in; class probabilities and one value out), one
tabular regressor and one RGB classifier serve the import, export, parity and serving tests alike; tests/conftest.py
exposes the shared bundles as fixtures. Bundles are written through the import library (`contract_from_keras` +
`write_imported_bundle`), exactly as `kerasport import` does. Keras is imported inside the functions that build
models, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.samples import Samples

PICTURE = (32, 32, 3)
FEATURES = 8
FEATURE_RANGE = (-5.0, 5.0)
PIXEL_RANGE = (0.0, 255.0)
CLASSES = ("cat", "dog", "fox")
CLASS_OUTPUT = "species"  # the two-input model's class probabilities
VALUE_OUTPUT = "size"  # and its regression value
TABULAR = 13
PHOTO_LABELS = ("red", "green", "blue")


def two_input_model(seed: int = 0):
    """A 32x32 RGB picture (raw 0..255) and 8 features -> class probabilities (3) and one regression value."""
    import keras

    keras.utils.set_random_seed(seed)
    picture = keras.Input(PICTURE, name="picture")
    features = keras.Input((FEATURES,), name="features")
    x = keras.layers.Rescaling(1 / 255)(picture)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    merged = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(features)])
    classes = keras.layers.Dense(len(CLASSES), activation="softmax", name=CLASS_OUTPUT)(merged)
    value = keras.layers.Dense(1, name=VALUE_OUTPUT)(merged)
    return keras.Model([picture, features], [classes, value])


def two_input_samples(n: int, seed: int, labelled: bool = True) -> Samples:
    """`n` random pictures and feature vectors, with random class indices and values as targets when `labelled`."""
    rng = np.random.default_rng(seed)
    inputs = {"picture": rng.integers(0, 256, (n, *PICTURE)).astype(np.float32),
              "features": rng.normal(0, 1, (n, FEATURES)).astype(np.float32)}
    targets = {CLASS_OUTPUT: rng.integers(0, len(CLASSES), n),
               VALUE_OUTPUT: rng.normal(0, 1, (n, 1)).astype(np.float32)}
    return Samples(inputs, targets if labelled else {})


def regressor_model(seed: int = 0):
    """[batch, 13] -> [batch, 1]: a house-price style regressor (input `row`, output `price`)."""
    import keras

    keras.utils.set_random_seed(seed)
    row = keras.Input((TABULAR,), name="row")
    hidden = keras.layers.Dense(16, activation="relu")(row)
    return keras.Model(row, keras.layers.Dense(1, name="price")(hidden))


def regressor_samples(n: int, seed: int) -> Samples:
    """`n` normal rows; the target is a linear function of the first feature."""
    rows = np.random.default_rng(seed).normal(0, 1, (n, TABULAR)).astype(np.float32)
    return Samples({"row": rows}, {"price": (rows[:, :1] * 2 + 1).astype(np.float32)})


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
    """`n` dark pictures, each with one channel bright: the label is that channel."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    pictures = rng.integers(0, 60, (n, *PICTURE)).astype(np.float32)
    pictures[np.arange(n), :, :, labels] = 230
    return Samples({"photo": pictures}, {"colour": labels})


def write_imported(run: Path, model, eval_samples: Samples, calibration: Samples, *, name: str = "test-model",
                   labels: tuple[str, ...] = (), task: str = "auto", ranges: dict | None = None, version: str = "1",
                   source: dict | None = None) -> Path:
    """Write `model` as an imported bundle into `run`, as `kerasport import` does; not exported.

    Args:
        run: the run directory to write.
        model: a Keras model.
        eval_samples: the pinned evaluation sample (targets optional).
        calibration: the int8 calibration sample.
        name: the model's name in the manifest.
        labels: class labels of the classification output.
        task: the contract hint (`auto` infers it from the outputs).
        ranges: value ranges per input name, e.g. {"picture": PIXEL_RANGE}.
        version: the model version in the manifest.
        source: what the manifest records as the source (default: a test).

    Returns:
        `run`.
    """
    from kerasport.ingest.importer import ContractHints, contract_from_keras, write_imported_bundle

    contract = contract_from_keras(model, ContractHints(task=task, labels=labels), ranges or {})
    write_imported_bundle(run, model, contract, eval_samples=eval_samples, calibration=calibration, name=name,
                          version=version, source=source or {"kind": "test"})
    return run


def two_input_bundle(run: Path, *, eval_examples: int = 40, labelled: bool = True,
                     ranges: dict | None = None) -> Path:
    """The two-input model as an imported bundle (not exported): `eval_examples` eval examples, 16 to calibrate."""
    return write_imported(run, two_input_model(), two_input_samples(eval_examples, seed=1, labelled=labelled),
                          two_input_samples(16, seed=2, labelled=False), name="two-inputs", labels=CLASSES,
                          ranges=ranges or {"picture": PIXEL_RANGE})


def regressor_bundle(run: Path, *, eval_examples: int = 40) -> Path:
    """The tabular regressor as an imported bundle (not exported)."""
    return write_imported(run, regressor_model(), regressor_samples(eval_examples, seed=1),
                          regressor_samples(16, seed=2), name="prices", task="regression")


def rgb_bundle(run: Path, *, eval_examples: int = 12) -> Path:
    """The RGB classifier as an imported bundle (not exported)."""
    samples = rgb_samples(eval_examples, seed=1)
    return write_imported(run, rgb_classifier_model(), samples, samples.take(8), name="colours",
                          labels=PHOTO_LABELS, ranges={"photo": PIXEL_RANGE})


def export_formats(run: Path, formats: list[str]) -> Path:
    """Export `formats` of the bundle in `run` (the export stage's library call); returns `run`."""
    from kerasport.export.stage import ExportOptions, export_bundle

    export_bundle(ExportOptions(run=str(run), formats=list(formats)))
    return run
