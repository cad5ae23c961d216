"""The MobileNetV2 of issue 8 (case 1) and noise pictures that fit it, shared by tests/import and bench/imported.py."""

from __future__ import annotations

import numpy as np

MOBILENET_SHAPE = (96, 96, 3)
MOBILENET_LABELS = ("a", "b", "c", "d", "e")


def noise_pictures(count: int, seed: int, shape: tuple[int, ...] = MOBILENET_SHAPE) -> np.ndarray:
    """`count` pictures of uniform random pixels 0..255, float32 [count, *shape]."""
    return np.random.default_rng(seed).integers(0, 256, (count, *shape)).astype(np.float32)


def mobilenet_v2(seed: int = 0, statistics_seed: int = 99):
    """`keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35, classes=5)`, with its
    batch-norm statistics set from 16 noise pictures.

    Freshly initialised, this model answers exactly 1/5 for every class on any input (the activations vanish through
    the untrained batch norms), which would make every parity comparison vacuous. One forward pass in training mode
    with momentum 0 sets each batch norm's moving mean and variance to its input's statistics, so the outputs depend
    on the picture; the architecture and every other weight stay as Keras built them.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(weights=None, input_shape=MOBILENET_SHAPE, alpha=0.35,
                                           classes=len(MOBILENET_LABELS))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(noise_pictures(16, statistics_seed), training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
    return model
