"""SavedModel -> TFLite: fp32, fp16, dynamic-range int8 and full-integer int8, built-in ops only by default.

The converter reads the SavedModel's `serving_default` signature, so the TFLite model keeps it: its inputs and
outputs carry the contract's names, and LiteRT resizes the dynamic batch at run time.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.errors import ConversionError
from kerasport.samples import Samples

from .messages import first_line, tflite_missing_ops, tflite_op_error

SIGNATURE = "serving_default"
QUANTIZED_PRECISIONS = ("fp16", "dynamic-int8", "int8")
_SELECT_OPS_HINT = ("pass --allow-select-tf-ops to use TensorFlow Select ops (LiteRT then needs the Flex "
                    "delegate)")


def representative_dataset(calibration: Samples, contract: ModelContract) -> Iterator[dict[str, np.ndarray]]:
    """One example per step, as a dict keyed by the signature's input names (every input, in its contract dtype).

    For a SavedModel signature the TFLite calibrator maps a dict by name onto the signature's inputs; a list would
    have to follow the graph's tensor order, which need not be the signature's.
    """
    inputs = {spec.name: np.asarray(calibration.inputs[spec.name], dtype=spec.dtype) for spec in contract.inputs}
    for index in range(len(calibration)):
        yield {name: array[index:index + 1] for name, array in inputs.items()}


def convert_saved_model_to_tflite(saved_model: Path, destination: Path, *, precision: str, contract: ModelContract,
                                  calibration: Samples | None = None, int8_io: bool = False,
                                  allow_select_tf_ops: bool = False) -> dict:
    """Convert with the TFLite converter; `precision` is fp32, fp16, dynamic-int8 or int8.

    Full-integer int8 is calibrated on every input of the calibration sample; only float tensors are quantized
    (integer ids and booleans keep their dtype, also with `int8_io`, which makes the float inputs/outputs int8).

    Raises:
        ConversionError: the converter fails; when ops lack a TFLite built-in, the message names them.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if precision == "int8" else tf.lite.OpsSet.TFLITE_BUILTINS]
    if allow_select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    details: dict = {"ops_set": [str(op).rsplit(".", 1)[-1] for op in ops]}
    if precision in QUANTIZED_PRECISIONS:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConversionError("full-integer int8 needs a calibration sample; the bundle has none")
        converter.representative_dataset = lambda: representative_dataset(calibration, contract)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        details.update(calibration_samples=len(calibration), io_dtype="int8" if int8_io else "float32")
    try:
        with warnings.catch_warnings():
            # The calibrator still uses tf.lite.Interpreter and warns that it is deprecated; not the user's concern.
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
            flatbuffer = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises ConverterError and friends
        raise ConversionError(_converter_failure(error, precision, allow_select_tf_ops)) from error
    destination.write_bytes(flatbuffer)
    return details


def _converter_failure(error: Exception, precision: str, allow_select_tf_ops: bool) -> str:
    ops = tflite_missing_ops(error)
    if not ops:
        return f"the TFLite {precision} converter failed: {tflite_op_error(error) or first_line(error)}"
    text = str(error)
    needs_flex = "ERROR_NEEDS_FLEX_OPS" in text or "TF Select ops" in text
    needs_custom = "ERROR_NEEDS_CUSTOM_OPS" in text or "Custom ops:" in text
    plural = len(ops) > 1
    named = f"op{'s' if plural else ''} {', '.join(ops)} {'have' if plural else 'has'}"
    if needs_flex and not needs_custom and not allow_select_tf_ops:
        return f"{named} no TFLite built-in; {_SELECT_OPS_HINT}"
    if precision == "int8" and not needs_custom:
        return f"{named} no full-integer int8 TFLite kernel"
    return f"{named} neither a TFLite built-in nor a TensorFlow Select kernel (LiteRT would need a custom op)"


def tflite_io_details(model_path: Path, contract: ModelContract) -> dict:
    """The `serving_default` signature's tensors as LiteRT reports them, in contract order, and the model's ops.

    Each input/output: the contract `name`, the TFLite `tensor` name, `dtype`, `shape` (-1 dynamic) and, for
    quantized tensors, `quantization` (scale, zero point).

    Raises:
        ConversionError: the model has no `serving_default` signature with the contract's names.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    if SIGNATURE not in interpreter.get_signature_list():
        raise ConversionError(f"{model_path.name} has no {SIGNATURE!r} signature; signatures: "
                              f"{list(interpreter.get_signature_list())}")
    runner = interpreter.get_signature_runner(SIGNATURE)
    described = {}
    for kind, details, expected in (("inputs", runner.get_input_details(), contract.input_names),
                                    ("outputs", runner.get_output_details(), contract.output_names)):
        if sorted(details) != sorted(expected):
            raise ConversionError(f"{model_path.name}: signature {kind} {sorted(details)}; the contract names "
                                  f"{expected}")
        described[kind] = [_describe(name, details[name]) for name in expected]
    described["ops"] = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    return described


def _describe(name: str, detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    described = {"name": name, "tensor": detail["name"], "dtype": np.dtype(detail["dtype"]).name,
                 "shape": [int(d) for d in detail["shape_signature"]]}
    if scale:
        described["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return described
