"""TFLite Micro's limits that abort the process instead of failing: found on the flatbuffer before TFLM loads it.

TFLite Micro checks some quantization parameters with `TFLITE_CHECK` while it prepares a kernel; a failed check
calls `abort()` with no message (the Python wrapper dies with SIGABRT). Isolation keeps that crash to one
variant, and this module says which op and which parameter caused it, so the manifest and the report name TFLM's
exact limitation instead of "crashed".

Known limit (checked against tflite-micro's kernels and measured on its Python interpreter):

- SOFTMAX with int8 input: `softmax_common.cc` `CalculateSoftmaxParams` calls `PreprocessSoftmaxScaling(beta,
  input_scale, kScaledDiffIntegerBits = 5)`, whose `QuantizeMultiplierGreaterThanOne` checks
  `beta x input_scale x 2^26 > 1`. An input scale at or below 2^-26 (1.49e-8, with Keras' beta of 1) aborts;
  measured: a MobileNet whose calibrated logits span 2e-6 (scale 7.8e-9) aborts, the same bytes with the scale
  set to 1.5e-8 load and run, 1.45e-8 abort. LiteRT's int8 softmax uses a lookup table and runs such a model.
"""

from __future__ import annotations

SOFTMAX_SCALED_DIFF_INTEGER_BITS = 5  # tflite-micro softmax_common.cc kScaledDiffIntegerBits
# beta x input scale x 2^(31 - 5) must exceed 1 (QuantizeMultiplierGreaterThanOne)
SOFTMAX_MIN_INPUT_SCALE = 2.0 ** -(31 - SOFTMAX_SCALED_DIFF_INTEGER_BITS)
KERAS_SOFTMAX_BETA = 1.0  # Keras' softmax converts to a TFLite SOFTMAX with beta 1
INT8_LEVELS = 255  # the span of an int8 tensor is 255 steps of its scale


def tflm_limitations(model: bytes) -> list[str]:
    """One line per op of the int8 flatbuffer `model` that TFLite Micro would abort on while preparing it.

    Args:
        model: the TFLite flatbuffer (the tflite-int8 model, or the C array's bytes).

    Returns:
        Lines naming the op (index and builtin name), the kernel's check and the tensor's parameter; empty when
        none of the known limits is reached.
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    lines = []
    for op in interpreter._get_ops_details():
        if op["op_name"] != "SOFTMAX" or not len(op["inputs"]):
            continue
        tensor = tensors[int(op["inputs"][0])]
        scale = float(tensor["quantization"][0])
        if np.dtype(tensor["dtype"]) != np.int8 or not 0 < KERAS_SOFTMAX_BETA * scale <= SOFTMAX_MIN_INPUT_SCALE:
            continue
        # Short enough for a one-line variant status: the op, the parameter, the check; the module doc has the rest.
        bits = 31 - SOFTMAX_SCALED_DIFF_INTEGER_BITS
        lines.append(f"op {op['index']} SOFTMAX: int8 input scale {scale:.3g} <= 2^-{bits} "
                     f"({SOFTMAX_MIN_INPUT_SCALE:.3g}), so TFLM's SOFTMAX Prepare aborts "
                     f"(QuantizeMultiplierGreaterThanOne in PreprocessSoftmaxScaling); its logits span only "
                     f"{INT8_LEVELS * scale:.2g}")
    return lines
