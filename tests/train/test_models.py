"""The model builders: the reference CNN exactly, the edge variant's budget, activation/initializer pairing."""

import uuid

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


# --- any input size and colour (issue 9) ----------------------------------------------------------------------


def seed_parameters(height: int, width: int, channels: int, classes: int) -> int:
    """The reference layers' parameter count at an input size: only conv1's depth and the dense fan-in change."""
    conv1 = 3 * 3 * channels * 32 + 32
    bn1 = 4 * 32
    conv2 = 3 * 3 * 32 * 64 + 64
    conv3 = 3 * 3 * 64 * 128 + 128
    dense = (height - 1) * (width - 1) * 128 * 128 + 128  # MaxPool(2, strides 1, valid) trims one row and column
    return conv1 + bn1 + conv2 + conv3 + dense + 128 * classes + classes


@pytest.mark.parametrize("image_size, color, shape", [
    ("auto", "auto", (28, 28, 1)), ("28x28", "grayscale", (28, 28, 1)), ("20x24", "rgb", (20, 24, 3)),
    ("32x32", "grayscale", (32, 32, 1)),
])
def test_seed_takes_any_size_and_colour(image_size, color, shape):
    model = build_model(TrainConfig(image_size=image_size, color=color), n_outputs=10)
    assert tuple(model.input.shape) == (None, *shape) and tuple(model.output.shape) == (None, 10)
    assert model.count_params() == seed_parameters(*shape, 10)
    if shape == (28, 28, 1):
        assert model.count_params() == 12_038_154  # the reference count, exactly


def test_edge_takes_any_size_of_at_least_8x8():
    model = build_model(TrainConfig(arch="edge", image_size="8x8", color="rgb"), n_outputs=4)
    assert tuple(model.input.shape) == (None, 8, 8, 3) and tuple(model.output.shape) == (None, 4)


@pytest.mark.parametrize("image_size, message", [("28", "is not HxW"), ("4x28", "at least 8x8"),
                                                 ("28x28x3", "is not HxW")])
def test_bad_image_size_is_a_usage_error(image_size, message):
    from kerasport.errors import UsageError

    with pytest.raises(UsageError, match=message):
        TrainConfig(image_size=image_size)
    with pytest.raises(UsageError, match="--color 'cmyk' is not one of"):
        TrainConfig(color="cmyk")


# --- --arch package.module:function ---------------------------------------------------------------------------

BUILDER_MODULE = '''
import keras

received = {}


def build(input_shape, n_outputs, kernel_initializer, bias_initializer, output_activation, activation):
    received.update(input_shape=input_shape, n_outputs=n_outputs, kernel_initializer=kernel_initializer,
                    bias_initializer=bias_initializer, activation=activation)
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation=activation, kernel_initializer=kernel_initializer,
                            bias_initializer=bias_initializer)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation=output_activation)(x))


def everything(**kwargs):
    received.update(kwargs)
    return build(kwargs["input_shape"], kwargs["n_outputs"], kwargs["kernel_initializer"],
                 kwargs["bias_initializer"], kwargs["output_activation"], kwargs["activation"])


def not_a_model(input_shape, n_outputs):
    return {"input_shape": input_shape}


def wrong_input(n_outputs):
    inputs = keras.Input(shape=(10, 10, 1))
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation="softmax")(keras.layers.Flatten()(inputs)))


def wrong_output(input_shape):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))


def logits(input_shape, n_outputs):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(keras.layers.Flatten()(inputs)))


def wants_more(input_shape, n_outputs, learning_rate_multiplier):
    raise AssertionError("never called")


def raises(input_shape):
    raise ValueError("no such layer size")


not_callable = 42
'''


@pytest.fixture
def builders_module(tmp_path, monkeypatch):
    """A builder module written for this test, importable under a name of its own."""
    name = f"user_builders_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(BUILDER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("activation, initializer", [("relu", "he_normal"), ("tanh", "glorot_uniform"),
                                                    ("selu", "lecun_normal")])
def test_a_user_builder_receives_the_paired_initializers(builders_module, activation, initializer):
    import importlib

    config = TrainConfig(arch=f"{builders_module}:build", activation=activation, relu_bias=0.1,
                         image_size="20x24", color="rgb")
    model = build_model(config, n_outputs=5)
    received = importlib.import_module(builders_module).received
    assert received["input_shape"] == (20, 24, 3) and received["n_outputs"] == 5
    assert received["kernel_initializer"] == initializer and received["activation"] == activation
    assert received["bias_initializer"].get_config()["value"] == pytest.approx(0.1)
    assert tuple(model.output.shape) == (None, 5)


def test_a_builder_with_kwargs_gets_every_argument(builders_module):
    import importlib

    from kerasport.train.builders import BUILDER_ARGUMENTS

    build_model(TrainConfig(arch=f"{builders_module}:everything", task="regression"), n_outputs=2)
    received = importlib.import_module(builders_module).received
    assert set(received) == set(BUILDER_ARGUMENTS)
    assert (received["task"], received["output_activation"], received["bias_initializer"]) == (
        "regression", "linear", "zeros")


@pytest.mark.parametrize("function, message", [
    ("nope", r"has no 'nope'; it defines build, everything, logits"),
    ("not_callable", "'not_callable' is a int; expected a function"),
    ("not_a_model", "the builder returned a dict; expected a keras.Model"),
    ("wrong_input", r"the model takes \(None, 10, 10, 1\); expected one input of shape \(None, 28, 28, 1\)"),
    ("wrong_output", r"the model returns \(None, 3\); expected one output of shape \(None, 10\)"),
    ("logits", "outputs are not probabilities .* expected a softmax head"),
    ("wants_more", "the builder requires 'learning_rate_multiplier', which kerasport does not pass"),
    ("raises", r"the builder raised ValueError: no such layer size at user_builders_.*\.py:\d+"),
])
def test_bad_builders_are_one_line_usage_errors(builders_module, function, message):
    from kerasport.errors import UsageError

    with pytest.raises(UsageError, match=message) as caught:
        build_model(TrainConfig(arch=f"{builders_module}:{function}"), n_outputs=10)
    assert "\n" not in str(caught.value) and f"--arch '{builders_module}:{function}'" in str(caught.value)


def test_a_module_that_does_not_import(tmp_path, monkeypatch):
    from kerasport.errors import UsageError

    (tmp_path / "broken_builders.py").write_text("import keras\ndef broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="module 'broken_builders' does not import \\(SyntaxError"):
        build_model(TrainConfig(arch="broken_builders:build"), n_outputs=10)
    with pytest.raises(UsageError, match="module 'no_such_package.models' does not import "
                                         "\\(ModuleNotFoundError"):
        build_model(TrainConfig(arch="no_such_package.models:build"), n_outputs=10)
    with pytest.raises(UsageError, match="is not one of seed, edge or package.module:function"):
        TrainConfig(arch="resnet")
