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


def recipe_scratch(context: BuildContext, variant: Variant, path: Path) -> Path:
    """Where the int8 recipe search writes its candidates (the export's scratch, removed when it finishes)."""
    return (context.scratch or path.parent) / f"{variant.name}-recipes"


# Lower opsets the ONNX ladder tries after the requested one (tf2onnx maps some ops differently per opset).
ONNX_FALLBACK_OPSETS = (17, 15, 13)
# What the rungs converting a copy without XLA-compilation marks (xla_calls.py) add after their opset.
RUNG_XLA_INLINED = "XLA-compiled calls inlined"


def onnx_opsets(requested: int) -> list[int]:
    """The requested opset, then the fallbacks below it, highest first."""
    return [requested, *(opset for opset in ONNX_FALLBACK_OPSETS if opset < requested)]


def build_onnx(context: BuildContext, variant: Variant, path: Path) -> dict:
    """ONNX through tf2onnx's command line, down an opset ladder; each rung is checked and loaded in onnxruntime.

    A SavedModel with calls marked for XLA compilation (Keras' grouped convolutions: ConvNeXt) is converted from a
    copy without the marks, which tf2onnx can inline (xla_calls.py); its rungs say so and `xla_calls_inlined`
    records what was inlined. Any other SavedModel is converted as it is.
    """
    import tempfile

    from .xla_calls import write_without_xla_marks, xla_marked_calls

    marked = xla_marked_calls(context.saved_model)
    if not marked["calls"]:
        return _onnx_ladder(context, variant, path, context.saved_model, rung_suffix="")
    with tempfile.TemporaryDirectory(prefix="onnx-source-", dir=context.scratch) as scratch:
        source = Path(scratch) / "saved_model"
        write_without_xla_marks(context.saved_model, source)
        details = _onnx_ladder(context, variant, path, source, rung_suffix=f", {RUNG_XLA_INLINED}")
    return {**details, "xla_calls_inlined": marked}


def _onnx_ladder(context: BuildContext, variant: Variant, path: Path, saved_model: Path, *, rung_suffix: str) -> dict:
    from kerasport.isolation import run_isolated

    from .ladder import climb
    from .smoke import smoke_run
    from .to_onnx import convert_saved_model_to_onnx, onnx_io_details

    def rung(opset: int):
        def attempt() -> dict:
            details = convert_saved_model_to_onnx(saved_model, path, opset=opset, contract=context.contract)
            if context.eval_sample is not None:
                run_isolated(f"{variant.runtime} load", smoke_run, path, variant.format, variant.runtime,
                             context.contract, context.eval_sample)
            return details
        return attempt

    details = climb("ONNX", [(f"tf2onnx opset {opset}{rung_suffix}", rung(opset))
                             for opset in onnx_opsets(context.opset)])
    return {**details, **onnx_io_details(path)}


def build_onnx_int8(context: BuildContext, variant: Variant, path: Path) -> dict:
    from .to_onnx import onnx_io_details, quantize_onnx_static

    if context.int8_recipe is not None:
        from .int8_onnx import OnnxRecipes
        from .int8_recipe import apply_recipe

        backend = OnnxRecipes(context, context.int8_recipe, recipe_scratch(context, variant, path))
        return {**apply_recipe(backend, variant.name, path, context.int8_recipe), **onnx_io_details(path)}
    (fp32,) = (context.prerequisite(name).path for name in variant.requires)
    details = quantize_onnx_static(fp32, path, context.calibration, contract=context.contract,
                                   scratch=context.scratch or path.parent)
    return {**details, **onnx_io_details(path)}


def build_tflite(context: BuildContext, variant: Variant, path: Path) -> dict:
    """TFLite through its conversion ladder (tflite_ladder.py), each rung converted and smoke-run in a child."""
    from .tflite_ladder import build_tflite_ladder

    if variant.precision == "int8" and context.int8_recipe is not None:
        from .int8_recipe import apply_recipe
        from .int8_tflite import TfliteRecipes
        from .to_tflite import tflite_io_details

        backend = TfliteRecipes(context, context.int8_recipe, recipe_scratch(context, variant, path))
        return {**apply_recipe(backend, variant.name, path, context.int8_recipe),
                **tflite_io_details(path, context.contract)}
    return build_tflite_ladder(context.saved_model, context.keras_model, path, precision=variant.precision,
                               contract=context.contract, calibration=context.calibration,
                               eval_sample=context.eval_sample,
                               int8_io=context.int8_io and variant.precision == "int8",
                               allow_select_tf_ops=context.allow_select_tf_ops)


def build_tflm(context: BuildContext, variant: Variant, path: Path) -> dict:
    """The int8 TFLite model as a C array (+ header): ops, flash, measured arena, MACs and the fit per device.

    A ladder: the tflite-int8 model as it is, then (when TFLite Micro cannot run it, e.g. the SHAPE/PACK/RESHAPE
    a dynamic batch leaves in MobileNet's head) a batch-1 int8 conversion, which a microcontroller runs anyway.
    """
    from .ladder import climb

    (int8,) = (context.prerequisite(name) for name in variant.requires)
    if variant.companion is None:
        raise ConversionError(f"{variant.name}: no header file is declared for the C array")
    header = path.with_name(variant.companion.filename)
    header.unlink(missing_ok=True)  # never write through a hard link into the previous export
    rungs = [("the tflite-int8 model", lambda: _tflm_from(context, variant, int8.path, int8.details, path, header,
                                                           int8.path.name))]
    if context.keras_model is not None and int8.details.get("batch", -1) != 1:
        rungs.append(("a batch-1 int8 conversion", lambda: _tflm_from_batch_one(context, variant, path, header)))
    return climb("TFLite Micro", rungs)


def _tflm_from(context: BuildContext, variant: Variant, model: Path, model_details: dict, path: Path, header: Path,
               source_name: str) -> dict:
    from .int8_recipe import tflm_recipe
    from .tflm import tflm_details, write_c_array

    details = tflm_details(model, model_details.get("ops", []), inputs=len(context.contract.inputs))
    sha256 = sha256_file(model)
    write_c_array(model, path, header, sha256=sha256, ops=details["ops"], arena=details["arena"])
    io = {key: model_details[key] for key in ("inputs", "outputs") if key in model_details}
    if "int8_recipe" in model_details:
        details["int8_recipe"] = tflm_recipe(model_details["int8_recipe"], model, path, variant.name)
    return {**details, **io, "source_model": source_name, "source_sha256": sha256,
            "op_resolver": {**details["op_resolver"], "file": header.name}}


def _tflm_from_batch_one(context: BuildContext, variant: Variant, path: Path, header: Path) -> dict:
    from kerasport.isolation import run_isolated

    from .tflite_ladder import RUNG_BATCH_ONE, convert_tflite_rung

    model = (context.scratch or path.parent) / "model_int8_batch1.tflite"
    details = run_isolated(f"TFLite converter int8 / {RUNG_BATCH_ONE} (for TFLite Micro)", convert_tflite_rung,
                           context.saved_model, context.keras_model, model, precision="int8",
                           contract=context.contract, calibration=context.calibration,
                           eval_sample=context.eval_sample, int8_io=context.int8_io, select_tf_ops=False,
                           batch_one=True)
    try:
        return _tflm_from(context, variant, model, details, path, header,
                          f"{model.name} (a batch-1 int8 conversion, not kept; its sha256 is recorded)")
    finally:
        model.unlink(missing_ok=True)
