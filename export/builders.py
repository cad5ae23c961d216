"""How each variant is built: the `build` functions the registry in `variants.py` points to.

A build function takes the shared `BuildContext` (the SavedModel, the contract, the calibration sample, the
conversion settings and the variants built so far), the `Variant` and the path to write, and returns the details
the manifest records for the artifact, including its `inputs`/`outputs` as its runtime sees them. It raises
ConversionError with one line naming the op (when known) when the model cannot be built.
"""

from __future__ import annotations

from pathlib import Path

from kerasport.errors import ConversionError
from kerasport.fsutil import sha256_file

from .variant import BuildContext, Variant


def build_onnx(context: BuildContext, variant: Variant, path: Path) -> dict:
    from .to_onnx import convert_saved_model_to_onnx, onnx_io_details

    details = convert_saved_model_to_onnx(context.saved_model, path, opset=context.opset, contract=context.contract)
    return {**details, **onnx_io_details(path)}


def build_onnx_int8(context: BuildContext, variant: Variant, path: Path) -> dict:
    from .to_onnx import onnx_io_details, quantize_onnx_static

    (fp32,) = (context.prerequisite(name).path for name in variant.requires)
    details = quantize_onnx_static(fp32, path, context.calibration, contract=context.contract,
                                   scratch=context.scratch or path.parent)
    return {**details, **onnx_io_details(path)}


def build_tflite(context: BuildContext, variant: Variant, path: Path) -> dict:
    from .to_tflite import convert_saved_model_to_tflite, tflite_io_details

    details = convert_saved_model_to_tflite(
        context.saved_model, path, precision=variant.precision, contract=context.contract,
        calibration=context.calibration, int8_io=context.int8_io and variant.precision == "int8",
        allow_select_tf_ops=context.allow_select_tf_ops)
    return {**details, **tflite_io_details(path, context.contract)}


def build_tflm(context: BuildContext, variant: Variant, path: Path) -> dict:
    """The int8 TFLite model as a C array (+ header): ops, flash, measured arena, MACs and the fit per device."""
    from .tflm import tflm_details, write_c_array

    (int8,) = (context.prerequisite(name) for name in variant.requires)
    if variant.companion is None:
        raise ConversionError(f"{variant.name}: no header file is declared for the C array")
    header = path.with_name(variant.companion.filename)
    header.unlink(missing_ok=True)  # never write through a hard link into the previous export
    details = tflm_details(int8.path, int8.details.get("ops", []), inputs=len(context.contract.inputs))
    sha256 = sha256_file(int8.path)
    write_c_array(int8.path, path, header, sha256=sha256, ops=details["ops"], arena=details["arena"])
    io = {key: int8.details[key] for key in ("inputs", "outputs") if key in int8.details}
    return {**details, **io, "source_model": int8.path.name, "source_sha256": sha256,
            "op_resolver": {**details["op_resolver"], "file": header.name}}
