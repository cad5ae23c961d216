"""Model builders: the reference CNN (`seed`), a compact microcontroller variant (`edge`), and a user's own
(`--arch package.module:function`, see builders.py).

All take raw 0..255 pixels of the configured image size and colour (`--image-size`, `--color`) and rescale inside
the model, so every runtime that later serves the model gets the same raw input. The seed's MaxPool (pool 2,
strides 1, valid) and Flatten work at any size of at least 2x2; only the Dense layer's parameter count changes
(12,038,154 parameters at 28x28x1 and 10 classes).
"""

from __future__ import annotations

from kerasport.contract import COLOR_MODES
from kerasport.images import REFERENCE_IMAGE

from .config import INPUT_NAME, TrainConfig

RELU_FAMILY = {"relu", "leaky_relu", "elu", "relu6", "swish"}
# README, "CLI" (--initializer): He-normal for the ReLU family, Glorot for sigmoid/tanh, LeCun-normal for SELU.
AUTO_INITIALIZERS = {**dict.fromkeys(RELU_FAMILY, "he_normal"), "sigmoid": "glorot_uniform",
                     "tanh": "glorot_uniform", "selu": "lecun_normal"}


def resolve_initializer(activation: str, initializer: str) -> str:
    """The kernel initializer's Keras name: `initializer`, or for `auto` the one paired with `activation`."""
    return AUTO_INITIALIZERS[activation] if initializer == "auto" else initializer


def resolve_bias_initializer(relu_bias: float):
    """The hidden layers' bias initializer: a constant `relu_bias` (e.g. 0.1 against dead ReLUs) or zeros."""
    import keras

    return keras.initializers.Constant(relu_bias) if relu_bias else "zeros"


def model_input_shape(config: TrainConfig) -> tuple[int, int, int]:
    """(height, width, channels) of the model's image input: `--image-size`/`--color`, 28x28x1 while auto."""
    height, width = config.image_shape() or (REFERENCE_IMAGE.height, REFERENCE_IMAGE.width)
    return height, width, COLOR_MODES["rgb" if config.color == "rgb" else "grayscale"]


def _scaled(units: int, width: float) -> int:
    return max(1, int(round(units * width)))


def build_model(config: TrainConfig, n_outputs: int, input_shape: tuple[int, int, int] | None = None):
    """Build and return an uncompiled Keras model for `config`.

    Args:
        config: the training configuration (arch, width, activation, initializer, dropout, task, image size).
        n_outputs: classes (classification) or target values (regression).
        input_shape: (height, width, channels) of the image input; None = from `--image-size`/`--color`.

    Raises:
        UsageError: an unknown initializer, or a user builder that fails or returns the wrong model (exit 2).
    """
    import keras

    input_shape = tuple(input_shape or model_input_shape(config))
    initializer_name = resolve_initializer(config.activation, config.initializer)
    try:
        keras.initializers.get(initializer_name)
    except ValueError as error:
        from kerasport.errors import UsageError

        raise UsageError(f"--initializer {config.initializer!r} is not a Keras initializer; expected auto or a "
                         f"name such as he_normal, glorot_uniform, orthogonal") from error
    if not config.builtin_arch:
        from .builders import build_user_model

        return build_user_model(config.arch, builder_arguments(config, n_outputs, input_shape))
    return _build_reference(config, n_outputs, input_shape, initializer_name)


def builder_arguments(config: TrainConfig, n_outputs: int, input_shape: tuple[int, int, int]) -> dict:
    """The keyword arguments a user's builder may take (builders.BUILDER_ARGUMENTS documents each)."""
    classification = config.task == "classification"
    return {"input_shape": tuple(input_shape), "n_outputs": n_outputs, "task": config.task,
            "activation": config.activation,
            "kernel_initializer": resolve_initializer(config.activation, config.initializer),
            "bias_initializer": resolve_bias_initializer(config.relu_bias),
            "output_activation": "softmax" if classification else "linear",
            "width": config.width, "dropout": config.dropout, "seed": config.seed, "input_name": INPUT_NAME}


def _build_reference(config: TrainConfig, n_outputs: int, input_shape: tuple[int, int, int], initializer_name: str):
    """The built-in `seed` and `edge` architectures."""
    import keras
    from keras import layers

    def hidden(**kwargs):
        # A fresh initializer object per layer: sharing one seeded instance would give layers the same draw.
        return {"activation": config.activation, "kernel_initializer": keras.initializers.get(initializer_name),
                "bias_initializer": resolve_bias_initializer(config.relu_bias), **kwargs}

    width = config.width
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME, dtype="float32")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if config.arch == "seed":
        x = layers.Conv2D(_scaled(32, width), 3, padding="same", name="conv1", **hidden())(x)
        x = layers.BatchNormalization(name="bn1")(x)
        x = layers.Conv2D(_scaled(64, width), 3, padding="same", name="conv2", **hidden())(x)
        x = layers.MaxPool2D(pool_size=2, strides=1, name="pool")(x)
        x = layers.Conv2D(_scaled(128, width), 3, padding="same", name="conv3", **hidden())(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(_scaled(128, width), name="dense", **hidden())(x)
    elif config.arch == "edge":
        # Strided pooling shrinks the feature map (28 -> 14 -> 7 -> 3) so the dense layer stays small.
        # Conv -> BN -> activation (not the seed's BN after the activation): the TFLite converter folds this BN
        # into the convolution, so full-int8 has no separate per-tensor-quantized MUL/ADD to lose accuracy in.
        conv1 = hidden(use_bias=False)
        activation = conv1.pop("activation")
        conv1.pop("bias_initializer")
        x = layers.Conv2D(_scaled(8, width), 3, padding="same", name="conv1", activation=None, **conv1)(x)
        x = layers.BatchNormalization(name="bn1")(x)
        x = layers.Activation(activation, name="act1")(x)
        x = layers.MaxPool2D(pool_size=2, name="pool1")(x)
        x = layers.Conv2D(_scaled(16, width), 3, padding="same", name="conv2", **hidden())(x)
        x = layers.MaxPool2D(pool_size=2, name="pool2")(x)
        x = layers.Conv2D(_scaled(32, width), 3, padding="same", name="conv3", **hidden())(x)
        x = layers.MaxPool2D(pool_size=2, name="pool3")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(_scaled(64, width), name="dense", **hidden())(x)
    else:
        raise ValueError(f"unknown arch {config.arch!r}")
    if config.dropout:
        x = layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    if config.task == "classification":
        outputs = layers.Dense(n_outputs, activation="softmax", name="probabilities")(x)
    else:
        outputs = layers.Dense(n_outputs, activation=None, name="values")(x)
    return keras.Model(inputs, outputs, name=f"kerasport_{config.arch}")


def make_optimizer(config: TrainConfig):
    import keras

    # An explicit name: Keras otherwise numbers optimizers per process (adam, adam_1, ...), which lands in
    # model.keras and makes two trainings in one process differ by bytes.
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate, name="adam")
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=0.9, nesterov=True, name="sgd")
    return keras.optimizers.RMSprop(learning_rate=config.learning_rate, name="rmsprop")


def compile_model(model, config: TrainConfig) -> None:
    import keras

    if config.task == "classification":
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    else:
        loss = keras.losses.MeanSquaredError()
        metrics = [keras.metrics.MeanAbsoluteError(name="mae")]
    model.compile(optimizer=make_optimizer(config), loss=loss, metrics=metrics)
    # The optimizer's slots created now, eagerly, rather than on fit's first step inside the traced train function:
    # measured 2.49 -> 2.04 s of CPU per tiny training here, with byte-identical weights.
    model.optimizer.build(model.trainable_variables)
