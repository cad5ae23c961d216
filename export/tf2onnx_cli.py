"""tf2onnx's own command line (`tf2onnx.convert.main`), with conversions for TensorFlow ops it lacks.

Run as `python -m kerasport.export.tf2onnx_cli --saved-model DIR --opset N --output FILE ...` (the same options as
`python -m tf2onnx.convert`), always in a child process (export/to_onnx.py). Before handing over to tf2onnx's
main, it registers handlers through tf2onnx's public `tf_op` decorator for ops Keras emits that tf2onnx 1.17 has no
mapping for:

- `Erfc`: Keras' exact GELU (`Dense(activation="gelu")`, ConvNeXt, every transformer MLP) is TensorFlow's
  `0.5 * x * erfc(-x / sqrt(2))`; ONNX has `Erf` (opset 9+), and erfc(x) = 1 - erf(x).
"""

from __future__ import annotations

import numpy as np

# The ops this module adds (the export records them with the conversion).
ADDED_CONVERSIONS = {"Erfc": "1 - Erf(x)"}


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
