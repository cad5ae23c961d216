"""The model builders: the reference CNN exactly, the edge variant's budget, activation/initializer pairing."""

import keras
import pytest

from kerasport.train.config import ACTIVATIONS, TrainConfig
from kerasport.train.models import build_model, compile_model

SEED_LAYERS = [
    ("InputLayer", None), ("Rescaling", None),
    ("Conv2D", {"filters": 32, "kernel_size": (3, 3), "padding": "same", "activation": "relu"}),
    ("BatchNormalization", None),
    ("Conv2D", {"filters": 64, "kernel_size": (3, 3), "padding": "same", "activation": "relu"}),
    ("MaxPooling2D", {"pool_size": (2, 2), "strides": (1, 1), "padding": "valid"}),
    ("Conv2D", {"filters": 128, "kernel_size": (3, 3), "padding": "same", "activation": "relu"}),
    ("Flatten", None),
    ("Dense", {"units": 128, "activation": "relu"}),
    ("Dense", {"units": 10, "activation": "softmax"}),
]


def test_seed_arch_is_the_reference_layer_by_layer():
    model = build_model(TrainConfig(), n_outputs=10)
    assert model.count_params() == 12_038_154
    assert len(model.layers) == len(SEED_LAYERS)
    for layer, (class_name, expected) in zip(model.layers, SEED_LAYERS, strict=True):
        assert type(layer).__name__ == class_name
        for key, value in (expected or {}).items():
            actual = layer.get_config()[key]
            assert (tuple(actual) if isinstance(actual, list) else actual) == value, (layer.name, key)
    assert model.input.name == "image"
    assert tuple(model.input.shape) == (None, 28, 28, 1)
    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)
    assert tuple(model.output.shape) == (None, 10)


def test_edge_arch_fits_a_microcontroller_budget():
    model = build_model(TrainConfig(arch="edge"), n_outputs=10)
    assert model.count_params() <= 100_000
    assert model.input.name == "image"


def test_width_scales_filters_and_units():
    model = build_model(TrainConfig(width=0.25), n_outputs=10)
    assert [model.get_layer(n).get_config()["filters"] for n in ("conv1", "conv2", "conv3")] == [8, 16, 32]
    assert model.get_layer("dense").get_config()["units"] == 32


EXPECTED_AUTO = {"relu": "HeNormal", "leaky_relu": "HeNormal", "elu": "HeNormal", "relu6": "HeNormal",
                 "swish": "HeNormal", "sigmoid": "GlorotUniform", "tanh": "GlorotUniform", "selu": "LecunNormal"}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_gets_its_paired_initializer(activation):
    model = build_model(TrainConfig(activation=activation, width=0.125), n_outputs=10)
    for name in ("conv1", "conv2", "conv3", "dense"):
        layer = model.get_layer(name)
        assert layer.get_config()["activation"] == {"swish": "silu"}.get(activation, activation)
        assert type(layer.kernel_initializer).__name__ == EXPECTED_AUTO[activation]
    # the head follows the task, not the hidden activation
    assert model.get_layer("probabilities").get_config()["activation"] == "softmax"


def test_relu_bias_and_explicit_initializer():
    model = build_model(TrainConfig(width=0.125, relu_bias=0.1, initializer="orthogonal"), n_outputs=10)
    dense = model.get_layer("dense")
    assert type(dense.kernel_initializer).__name__ == "Orthogonal"
    assert keras.ops.convert_to_numpy(dense.bias).min() == pytest.approx(0.1)


def test_regression_head_is_identity_with_mse():
    config = TrainConfig(task="regression", width=0.125)
    model = build_model(config, n_outputs=1)
    compile_model(model, config)
    assert model.get_layer("values").get_config()["activation"] == "linear"
    assert type(model.loss).__name__ == "MeanSquaredError"


def test_unknown_initializer_is_a_usage_error():
    from kerasport.errors import UsageError

    with pytest.raises(UsageError, match="not a Keras initializer"):
        build_model(TrainConfig(initializer="banana"), n_outputs=10)
