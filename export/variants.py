"""The deployable variants the export stage knows, as a registry.

Each `Variant` names its file, format, precision and the runtime that runs it, the variants it is built from
(`requires`) and the function that builds it (`build`, in `builders.py`). The stage walks the registry in order,
so a variant's prerequisites always come before it; adding a variant is one entry here and one build function.
No TensorFlow import here: the CLI reads this module to check `--formats`.
"""

from __future__ import annotations

from . import builders
from .variant import Companion, Variant

# The newest opset tf2onnx 1.17 can emit (its OPSET_TO_IR_VERSION ends at 18); onnxruntime 1.32 runs up to 23.
DEFAULT_OPSET = 18
MIN_OPSET = 7


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("onnx-fp32", "model.onnx", "onnx", "fp32", "onnxruntime", builders.build_onnx),
        Variant("onnx-int8", "model_int8.onnx", "onnx", "int8", "onnxruntime", builders.build_onnx_int8,
                requires=("onnx-fp32",)),
        Variant("tflite-fp32", "model_fp32.tflite", "tflite", "fp32", "ai-edge-litert", builders.build_tflite),
        Variant("tflite-fp16", "model_fp16.tflite", "tflite", "fp16", "ai-edge-litert", builders.build_tflite),
        Variant("tflite-dynamic", "model_dynamic.tflite", "tflite", "dynamic-int8", "ai-edge-litert",
                builders.build_tflite),
        Variant("tflite-int8", "model_int8.tflite", "tflite", "int8", "ai-edge-litert", builders.build_tflite),
        Variant("tflm", "model_int8.cc", "c-array", "int8", "tflite-micro", builders.build_tflm,
                requires=("tflite-int8",), companion=Companion("tflm-header", "model_int8.h", "c-header")),
    )
}
DEFAULT_FORMATS = tuple(VARIANTS)


def build_order(requested: list[str]) -> list[str]:
    """The requested variants and everything they require, in registry order (prerequisites first)."""
    needed: set[str] = set()
    pending = list(requested)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending.extend(VARIANTS[name].requires)
    return [name for name in VARIANTS if name in needed]


def parse_formats(text: str) -> list[str]:
    """The variant names of a `--formats` comma list, in the order given, without repeats.

    Raises:
        UsageError: an unknown name, or an empty list.
    """
    from kerasport.errors import UsageError

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise UsageError(f"--formats {text!r}: unknown {', '.join(unknown) or '(empty)'}; expected a comma list of "
                         f"{', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))
