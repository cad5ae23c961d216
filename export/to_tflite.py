"""SavedModel -> TFLite: fp32, fp16, dynamic-range int8 and full-integer int8, built-in ops only by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.errors import ConversionError

_SELECT_OPS_HINT = ("the model needs TensorFlow ops outside the TFLite built-ins (SELECT_TF_OPS); pass "
                    "--allow-select-tf-ops to allow them (LiteRT then needs the Flex delegate)")


def convert_saved_model_to_tflite(saved_model: Path, destination: Path, *, precision: str,
                                  calibration: np.ndarray | None = None, int8_io: bool = False,
                                  allow_select_tf_ops: bool = False) -> dict:
    """Convert with the TFLite converter; `precision` is fp32, fp16, dynamic-int8 or int8."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["serving_default"])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if precision == "int8" else tf.lite.OpsSet.TFLITE_BUILTINS]
    if allow_select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    details: dict = {"ops_set": [str(op).rsplit(".", 1)[-1] for op in ops]}
    if precision in ("fp16", "dynamic-int8", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConversionError("full-integer int8 needs calibration images; the bundle has none")
        samples = calibration.astype(np.float32)
        converter.representative_dataset = lambda: ([samples[i:i + 1]] for i in range(len(samples)))
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        details.update(calibration_images=len(samples), io_dtype="int8" if int8_io else "float32")
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # noqa: BLE001 - the converter raises ConverterError and friends
        text = str(error)
        if "SELECT_TF_OPS" in text or "Flex" in text or "not supported" in text.lower():
            raise ConversionError(f"TFLite {precision} conversion of {saved_model}: {_SELECT_OPS_HINT}") from error
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        raise ConversionError(f"TFLite {precision} conversion of {saved_model} failed: {first}") from error
    destination.write_bytes(flatbuffer)
    return details


def tflite_io_details(model_path: Path) -> dict:
    """Input/output tensor details as LiteRT reports them (names, dtypes, dynamic shapes, quantization)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))

    def describe(detail: dict) -> dict:
        scale, zero_point = detail["quantization"]
        described = {"tensor": detail["name"], "dtype": np.dtype(detail["dtype"]).name,
                     "shape": [int(d) for d in detail["shape_signature"]]}
        if scale:
            described["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
        return described

    signature = interpreter.get_signature_list().get("serving_default", {})
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    return {"input": describe(interpreter.get_input_details()[0]),
            "output": describe(interpreter.get_output_details()[0]), "signature": signature, "ops": ops}
