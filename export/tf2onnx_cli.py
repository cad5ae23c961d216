"""tf2onnx's own command line (`tf2onnx.convert.main`), with conversions for TensorFlow ops it lacks.

Run as `python -m kerasport.export.tf2onnx_cli --saved-model DIR --opset N --output FILE ...` (the same options as
`python -m tf2onnx.convert`), always in a child process (export/to_onnx.py). Before handing over to tf2onnx's
main, it registers handlers through tf2onnx's public `tf_op` decorator for ops Keras emits that tf2onnx 1.17 has no
mapping for:

- `Erfc`: Keras' exact GELU (`Dense(activation="gelu")`, ConvNeXt, every transformer MLP) is TensorFlow's
  `0.5 * x * erfc(-x / sqrt(2))`; ONNX has `Erf` (opset 9+), and erfc(x) = 1 - erf(x).

and replaces, for the tensors it gets wrong, tf2onnx's conversion of two ops it does map:

- `SquaredDifference` and `Square` become `Pow(d, 2)` instead of tf2onnx's `Mul(d, d)` when the result has a
  dimension of size 1. tf2onnx's transpose optimizer moves a Transpose below a Mul whose two inputs are that same
  Transpose without transposing the Mul's recorded shape (`_mul_handler`, unlike every other op it moves one past);
  its last pass then turns the Transpose after the Mul into a Reshape computed from that stale shape, which is
  wrong exactly when only size-1 dimensions move (1x1 spatial, NHWC <-> NCHW). Keras' LayerNormalization computes
  its variance with a SquaredDifference, so a LayerNormalization after a (depthwise) convolution on a 1x1 feature
  map (ConvNeXtTiny's last stage at a 32x32 input) reduced over the wrong axis: outputs off by 0.49 where Keras'
  probabilities are, and the broadcast that follows builds C x C tensors (30x slower). A Pow has no rule in that
  optimizer, so nothing is moved past it. Other shapes keep tf2onnx's own conversion (and its graph).
"""

from __future__ import annotations

import numpy as np

# The ops this module adds or replaces (the export records them with the conversion).
ADDED_CONVERSIONS = {"Erfc": "1 - Erf(x)",
                     "SquaredDifference": "Pow(a - b, 2) when the result has a size-1 dimension",
                     "Square": "Pow(x, 2) when the result has a size-1 dimension"}


def register_conversions() -> None:
    """Register the extra op handlers with tf2onnx (idempotent per process)."""
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class Erfc:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"),
                                          inputs=[one.output[0], node.output[0]])

    _register_squares()


def _squared_by_pow(ctx, node) -> bool:
    """Whether a square of `node`'s result is written as Pow: a float result with a size-1 (or unknown) shape."""
    from onnx import TensorProto

    shape = ctx.get_shape(node.output[0])
    floating = ctx.get_dtype(node.output[0]) in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
    return floating and (shape is None or 1 in shape)


def _pow_two(ctx, node, base: str) -> str:
    """A constant 2 in `node`'s dtype, for `Pow(base, 2)`."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(base))
    return ctx.make_const(utils.make_name(f"{node.name}_two"), np.array(2, dtype=dtype)).output[0]


def _register_squares() -> None:
    """SquaredDifference and Square as Pow(., 2) where tf2onnx's Mul(d, d) gets a wrong Reshape (see the top)."""
    from tf2onnx import utils
    from tf2onnx.handler import tf_op
    from tf2onnx.onnx_opset import math as tf2onnx_math

    def difference_squared(ctx, node) -> None:
        node.type = "Sub"
        ctx.insert_new_node_on_output("Pow", node.output[0], name=utils.make_name(f"{node.name}_square"),
                                      inputs=[node.output[0], _pow_two(ctx, node, node.output[0])])

    def squared(ctx, node) -> None:
        node.type = "Pow"
        node.input.append(_pow_two(ctx, node, node.input[0]))

    for op, rewrite in (("SquaredDifference", difference_squared), ("Square", squared)):
        tf_op(op)(_pow_where_needed(getattr(tf2onnx_math, op), rewrite))


def _pow_where_needed(tf2onnx_handler, rewrite):
    """A tf2onnx handler class: `rewrite` where `_squared_by_pow` says so, tf2onnx's own conversion elsewhere."""

    class Handler:
        @classmethod
        def version_1(cls, ctx, node, **kwargs):
            if not _squared_by_pow(ctx, node):
                return tf2onnx_handler.version_1(ctx, node, **kwargs)
            return rewrite(ctx, node)

    return Handler


def main() -> None:
    """Register the extra conversions, then run tf2onnx's command line on `sys.argv`."""
    from kerasport.tfenv import quiet_tensorflow

    quiet_tensorflow()
    from tf2onnx import convert

    register_conversions()
    convert.main()


def convert_in_child(arguments: list[str]) -> dict:
    """Inside a `kerasport.isolation.run_isolated` child: tf2onnx's command line on `arguments`.

    Returns:
        `returncode` (0: converted; 1: tf2onnx raised or exited non-zero) and `log`, everything the child wrote to
        stdout and stderr (tf2onnx names ops it cannot map there).
    """
    import sys

    from kerasport.isolation import child_output

    sys.argv = ["tf2onnx.convert", *arguments]
    returncode = 0
    try:
        main()
    except SystemExit as stop:
        returncode = 0 if stop.code in (0, None) else 1
    except Exception as error:  # noqa: BLE001 - tf2onnx raises anything; its message ends the log
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        returncode = 1
    return {"returncode": returncode, "log": child_output()}


if __name__ == "__main__":
    main()
