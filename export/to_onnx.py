"""SavedModel -> ONNX with tf2onnx, and int8 ONNX with onnxruntime.quantization (static, QDQ)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.errors import ConversionError


def convert_saved_model_to_onnx(saved_model: Path, destination: Path, *, opset: int, input_name: str,
                                output_name: str) -> dict:
    """The saved-model path of tf2onnx (what `python -m tf2onnx.convert --saved-model` does), in process.

    tf2onnx's `from_keras` does not handle Keras 3 models; the SavedModel signature is the stable interface.
    """
    import onnx
    from tf2onnx import convert, tf_loader

    try:
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(saved_model), None, None, "serve", ["serving_default"], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True)
        proto, _ = convert._convert_common(
            graph_def, name="kerasport", opset=opset, input_names=inputs, output_names=outputs,
            tensors_to_rename=renames, initialized_tables=tables, continue_on_error=False)
    except Exception as error:  # noqa: BLE001 - tf2onnx raises many types; all mean "conversion failed"
        raise ConversionError(f"tf2onnx could not convert {saved_model} at opset {opset}: "
                              f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    graph_inputs = [tensor.name for tensor in proto.graph.input]
    graph_outputs = [tensor.name for tensor in proto.graph.output]
    if graph_inputs != [input_name] or graph_outputs != [output_name]:
        raise ConversionError(f"tf2onnx produced inputs {graph_inputs} and outputs {graph_outputs}; expected "
                              f"[{input_name!r}] and [{output_name!r}]")
    # A readable name for the dynamic batch dimension instead of tf2onnx's generated `unk__NN`.
    for tensor in (*proto.graph.input, *proto.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(destination))
    return {"opset": opset, "onnx_checker": "passed", "producer": f"{proto.producer_name} {proto.producer_version}",
            # bench/export.py: a pre-optimized model started no faster (76.7 vs 78.2 ms for `seed`), and
            # ORT_ENABLE_ALL output is tied to the CPU it was optimized on, so the portable graph ships.
            "offline_graph_optimization": False}


class _CalibrationReader:
    """Feeds calibration images to onnxruntime.quantization in small batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 16):
        self._batches = iter([{input_name: images[start:start + batch_size]}
                              for start in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_onnx_static(fp32_model: Path, destination: Path, calibration: np.ndarray, *,
                         input_name: str, scratch: Path) -> dict:
    """Static int8 quantization in QDQ format, per-channel weights, calibrated on training images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / "model_prepared.onnx"
    try:
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(destination), _CalibrationReader(calibration.astype(np.float32),
                                                                            input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    except Exception as error:  # noqa: BLE001
        raise ConversionError(f"onnxruntime static quantization of {fp32_model.name} failed: "
                              f"{type(error).__name__}: {error}") from error
    finally:
        prepared.unlink(missing_ok=True)
    return {"quantization": "static QDQ, per-channel int8 weights, uint8 activations, MinMax",
            "calibration_images": len(calibration)}


def quantize_onnx_dynamic(fp32_model: Path, destination: Path) -> dict:
    """Dynamic (weights-only ahead of time) int8 quantization; measured against static in bench/export.py."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_model), str(destination), weight_type=QuantType.QInt8, per_channel=True)
    return {"quantization": "dynamic, per-channel int8 weights"}
