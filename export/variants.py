"""The deployable variants the export stage knows: file name, format, precision and the runtime that runs it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    filename: str
    format: str
    precision: str
    runtime: str


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("onnx-fp32", "model.onnx", "onnx", "fp32", "onnxruntime"),
        Variant("onnx-int8", "model_int8.onnx", "onnx", "int8", "onnxruntime"),
        Variant("tflite-fp32", "model_fp32.tflite", "tflite", "fp32", "ai-edge-litert"),
        Variant("tflite-fp16", "model_fp16.tflite", "tflite", "fp16", "ai-edge-litert"),
        Variant("tflite-dynamic", "model_dynamic.tflite", "tflite", "dynamic-int8", "ai-edge-litert"),
        Variant("tflite-int8", "model_int8.tflite", "tflite", "int8", "ai-edge-litert"),
        Variant("tflm", "model_int8.cc", "c-array", "int8", "tflite-micro"),
    )
}
DEFAULT_FORMATS = tuple(VARIANTS)
# The newest opset tf2onnx 1.17 can emit (its OPSET_TO_IR_VERSION ends at 18); onnxruntime 1.32 runs up to 23.
DEFAULT_OPSET = 18


def parse_formats(text: str) -> list[str]:
    from kerasport.errors import UsageError

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise UsageError(f"--formats {text!r}: unknown {', '.join(unknown) or '(empty)'}; expected a comma list of "
                         f"{', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))
