"""`--arch package.module:function`: train a model the user builds, on kerasport's data, callbacks and bundle.

The builder is a function called with keyword arguments (it declares the ones it needs, or takes `**kwargs`):

    input_shape          (height, width, channels) of the image input: raw pixels 0..255 (`--image-size`, `--color`)
    n_outputs            classes (classification) or target values (regression)
    task                 "classification" | "regression"
    activation           the hidden layers' activation (`--activation`)
    kernel_initializer   its paired initializer's Keras name (`--initializer auto`: he_normal for the ReLU family,
                         glorot_uniform for sigmoid/tanh, lecun_normal for SELU), or the one asked for
    bias_initializer     "zeros", or a Constant(`--relu-bias`) (e.g. 0.1 against dead ReLUs)
    output_activation    "softmax" (classification: the head must output probabilities) | "linear" (regression)
    width, dropout, seed `--width`, `--dropout`, `--seed`
    input_name           the contract's input name (naming the keras.Input after it is optional)

and returns an uncompiled `keras.Model` with one input of shape `(None, *input_shape)` and one output of shape
`(None, n_outputs)`; kerasport compiles it with the optimizer and loss the options ask for. The model receives raw
0..255 pixels, so it should scale them itself (e.g. `keras.layers.Rescaling(1 / 255)` first), as the built-in
architectures do: every runtime that serves it then gets the same raw input.

What was trained is recorded: the builder's `package.module:function` and the sha256 of its module's source file
go into `train/config.json` and the manifest's model section.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.errors import UsageError

BUILDER_ARGUMENTS = ("input_shape", "n_outputs", "task", "activation", "kernel_initializer", "bias_initializer",
                     "output_activation", "width", "dropout", "seed", "input_name")
# How far a classification head's rows may be from summing to 1 before the output is not probabilities.
PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Builder:
    """A loaded `package.module:function` builder."""

    spec: str
    module: str
    function: str
    source_sha256: str
    call: object

    def record(self) -> dict:
        """What config.json and the manifest record about the builder."""
        return {"builder": self.spec, "module": self.module, "function": self.function,
                "source_sha256": self.source_sha256}


def load_builder(spec: str) -> Builder:
    """Import the builder `package.module:function` (cwd and PYTHONPATH are searched).

    Raises:
        UsageError: the module does not import, has no such function, or it is not callable (exit 2).
    """
    module_name, _, function_name = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))  # `kerasport train --arch mymodels:build` run next to mymodels.py
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises, the answer is the same
        raise UsageError(f"--arch {spec!r}: module {module_name!r} does not import ({_describe(error)}); expected "
                         f"an importable module on PYTHONPATH or in the current directory") from None
    builder = getattr(module, function_name, None)
    if builder is None:
        defined = sorted(name for name, value in vars(module).items()
                         if inspect.isfunction(value) and value.__module__ == module.__name__)
        raise UsageError(f"--arch {spec!r}: module {module_name!r} has no {function_name!r}; it defines "
                         f"{', '.join(defined) or 'no functions'}")
    if not callable(builder):
        raise UsageError(f"--arch {spec!r}: {function_name!r} is a {type(builder).__name__}; expected a function "
                         f"returning a keras.Model")
    return Builder(spec, module_name, function_name, _source_sha256(module), builder)


def builder_record(spec: str) -> dict:
    """`load_builder(spec).record()`: the builder's spec and source hash, for config.json and the manifest."""
    return load_builder(spec).record()


def build_user_model(spec: str, arguments: dict):
    """Call the builder with the keyword arguments it declares and check what it returns.

    Args:
        spec: `package.module:function`.
        arguments: every keyword in BUILDER_ARGUMENTS (models.builder_arguments).

    Returns:
        The builder's keras.Model, uncompiled.

    Raises:
        UsageError: the builder cannot be loaded, asks for an argument kerasport does not give, raises, or returns
            something other than a keras.Model with the expected input and output shapes (exit 2).
    """
    builder = load_builder(spec)
    model = _call(builder, arguments)
    check_built_model(spec, model, arguments)
    return model


def _call(builder: Builder, arguments: dict):
    try:
        signature = inspect.signature(builder.call)
    except (TypeError, ValueError):
        signature = None
    given = dict(arguments)
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        unknown = [name for name, p in signature.parameters.items()
                   if name not in arguments and p.default is p.empty and p.kind is not p.VAR_POSITIONAL]
        if unknown:
            raise UsageError(f"--arch {builder.spec!r}: the builder requires {', '.join(map(repr, unknown))}, which "
                             f"kerasport does not pass; expected keyword parameters among "
                             f"{', '.join(BUILDER_ARGUMENTS)}")
        given = {name: value for name, value in arguments.items() if name in signature.parameters}
    try:
        return builder.call(**given)
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's code: report where it failed, in one line
        frames = traceback.extract_tb(error.__traceback__)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        raise UsageError(f"--arch {builder.spec!r}: the builder raised {_describe(error)}{where}; expected it to "
                         f"return a keras.Model") from None


def check_built_model(spec: str, model, arguments: dict) -> None:
    """The model must take `(None, *input_shape)` and return `(None, n_outputs)` (probabilities if classifying).

    Raises:
        UsageError: naming what the builder returned and what was expected.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise UsageError(f"--arch {spec!r}: the builder returned a {type(model).__name__}; expected a keras.Model")
    input_shape, n_outputs = tuple(arguments["input_shape"]), arguments["n_outputs"]
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        inputs, outputs = [], []
    if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != input_shape:
        received = ", ".join(str(tuple(tensor.shape)) for tensor in inputs) or "no defined input"
        raise UsageError(f"--arch {spec!r}: the model takes {received}; expected one input of shape "
                         f"{(None, *input_shape)} (start with keras.Input(shape=input_shape))")
    if len(outputs) != 1 or tuple(outputs[0].shape[1:]) != (n_outputs,):
        received = ", ".join(str(tuple(tensor.shape)) for tensor in outputs) or "nothing"
        raise UsageError(f"--arch {spec!r}: the model returns {received}; expected one output of shape "
                         f"{(None, n_outputs)}")
    if arguments["task"] == "classification":
        _check_probabilities(spec, model, input_shape)


def _check_probabilities(spec: str, model, input_shape: tuple) -> None:
    import keras

    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, *input_shape)).astype(np.float32)
    rows = keras.ops.convert_to_numpy(model(pixels, training=False))
    if not (np.all(rows >= -PROBABILITY_TOLERANCE) and np.allclose(rows.sum(axis=-1), 1.0,
                                                                   atol=PROBABILITY_TOLERANCE)):
        raise UsageError(f"--arch {spec!r}: the model's outputs are not probabilities (a row sums to "
                         f"{float(rows.sum(axis=-1)[0]):.4g}); expected a softmax head for --task classification "
                         f"(use the output_activation argument)")


def _source_sha256(module) -> str:
    """sha256 of the module's source file (the builder and the helpers it uses); "unavailable" without one."""
    try:
        path = inspect.getsourcefile(module)
    except TypeError:
        path = None
    if path and Path(path).is_file():
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return "unavailable"


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text[:200] + "..." if len(text) > 200 else text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
