"""The TFLite conversion ladder: dynamic batch, then a fixed batch-1 signature, then TensorFlow Select ops.

1. `dynamic batch`: the SavedModel's `serving_default` as it is (LiteRT resizes the batch at run time).
2. `batch 1`: the Keras model re-traced with a batch of 1. Recurrent layers unroll their loop over a tensor list
   whose element shape must be static for the converter (`tf.TensorListReserve`); with batch 1 it is. A phone or a
   microcontroller runs batch 1 anyway; the artifact records `batch: 1` and kerasport's runtimes split a larger
   batch into single rows (`kerasport.runtimes`).
3. Only with `--allow-select-tf-ops`: the same two with TensorFlow Select ops. No TensorFlow-free runtime here has
   the Flex delegate, so such an artifact fails its smoke run and the rung says so: it is never a pass.

Every rung runs in a child process (kerasport.isolation): converting, then loading and smoke-running the result in
LiteRT, so a converter or interpreter crash costs one rung. The details say which rung built the artifact and
whether recurrent layers became TFLite's fused sequence kernels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kerasport.contract import ModelContract
from kerasport.errors import ConversionError
from kerasport.isolation import announce, run_isolated
from kerasport.samples import Samples

from .ladder import climb

FIXED_BATCH = 1
# TFLite's fused recurrent kernels, and the control-flow op an unfused recurrent loop becomes.
FUSED_SEQUENCE_KERNELS = ("UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
                          "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN")
LOOP_OP = "WHILE"
RUNG_DYNAMIC, RUNG_BATCH_ONE = "dynamic batch", "batch 1"
SELECT_SUFFIX = " + select TF ops"


def tflite_rungs(allow_select_tf_ops: bool, has_keras_model: bool) -> list[tuple[str, bool, bool]]:
    """(name, batch_one, select_tf_ops) for each rung, in order. Batch 1 needs the bundle's Keras model."""
    shapes = [(RUNG_DYNAMIC, False)] + ([(RUNG_BATCH_ONE, True)] if has_keras_model else [])
    rungs = [(name, batch_one, False) for name, batch_one in shapes]
    if allow_select_tf_ops:
        rungs += [(name + SELECT_SUFFIX, batch_one, True) for name, batch_one in shapes]
    return rungs


def build_tflite_ladder(saved_model: Path, keras_model: Path | None, destination: Path, *, precision: str,
                        contract: ModelContract, calibration: Samples | None, eval_sample: Samples | None,
                        int8_io: bool, allow_select_tf_ops: bool) -> dict:
    """Climb the TFLite ladder for one precision; each rung converts and smoke-runs in a child process.

    Returns:
        The working rung's details (see `convert_tflite_rung`) plus `rung` and `ladder`.

    Raises:
        LadderFailed: no rung built an artifact that loads and runs in LiteRT.
    """
    def rung(name: str, batch_one: bool, select_tf_ops: bool):
        return lambda: run_isolated(f"TFLite converter {precision} / {name}", convert_tflite_rung, saved_model,
                                    keras_model, destination, precision=precision, contract=contract,
                                    calibration=calibration, eval_sample=eval_sample, int8_io=int8_io,
                                    select_tf_ops=select_tf_ops, batch_one=batch_one)

    return climb(f"TFLite {precision}", [(name, rung(name, batch_one, select))
                                         for name, batch_one, select in tflite_rungs(allow_select_tf_ops,
                                                                                     keras_model is not None)])


def convert_tflite_rung(saved_model: Path, keras_model: Path | None, destination: Path, *, precision: str,
                        contract: ModelContract, calibration: Samples | None, eval_sample: Samples | None,
                        int8_io: bool, select_tf_ops: bool, batch_one: bool) -> dict:
    """One rung, in the child: convert (from a batch-1 re-trace when `batch_one`), load in LiteRT, smoke-run.

    Returns:
        The converter's details, the signature's tensors and ops (`tflite_io_details`), `batch` (-1 or 1) and,
        for a model with a recurrent loop or fused sequence kernel, `recurrent` (fused or not, which kernels).

    Raises:
        ConversionError: the conversion fails, or the artifact does not load or run in LiteRT.
    """
    from .smoke import smoke_run
    from .to_tflite import convert_saved_model_to_tflite, tflite_io_details

    with tempfile.TemporaryDirectory(prefix="kerasport-batch1-") as scratch:
        source = saved_model
        if batch_one:
            if keras_model is None:
                raise ConversionError("a batch-1 signature needs the bundle's Keras model; the bundle has none")
            source = Path(scratch) / "saved_model"
            fixed_batch_saved_model(keras_model, source, contract)
        details = convert_saved_model_to_tflite(source, destination, precision=precision, contract=contract,
                                                calibration=calibration, int8_io=int8_io,
                                                allow_select_tf_ops=select_tf_ops)
    announce("LiteRT load")
    details.update(tflite_io_details(destination, contract))
    if eval_sample is not None:
        try:
            smoke_run(destination, "tflite", "ai-edge-litert", contract, eval_sample)
        except ConversionError as error:
            if select_tf_ops:
                raise ConversionError(f"built with TensorFlow Select ops, which no TensorFlow-free runtime here "
                                      f"runs (LiteRT without the Flex delegate), so not a pass: {error}") from error
            raise
    details["batch"] = FIXED_BATCH if batch_one else -1
    recurrent = recurrent_kernels(details.get("ops", []))
    if recurrent is not None:
        details["recurrent"] = recurrent
    return details


def recurrent_kernels(ops: list[str]) -> dict | None:
    """Whether the model's recurrence became fused sequence kernels; None when it has neither those nor a loop."""
    fused = sorted(op for op in ops if op in FUSED_SEQUENCE_KERNELS)
    if not fused and LOOP_OP not in ops:
        return None
    return {"fused": bool(fused) and LOOP_OP not in ops, "fused_kernels": fused,
            "unfused_loop": LOOP_OP in ops,
            "what": "TFLite's fused sequence kernels (UNIDIRECTIONAL_SEQUENCE_LSTM ...) when the converter "
                    "recognised the recurrent layer; a WHILE loop of element-wise ops otherwise"}


def fixed_batch_saved_model(keras_model: Path, destination: Path, contract: ModelContract) -> None:
    """A SavedModel of the Keras model whose `serving_default` takes the contract's inputs at batch 1."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(str(keras_model), compile=False)
    names = contract.output_names

    def serve(*tensors):
        outputs = model(tensors[0] if len(tensors) == 1 else list(tensors), training=False)
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(names, outputs, strict=True))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[
        tf.TensorSpec(shape=(FIXED_BATCH, *(None if d < 0 else d for d in spec.shape[1:])),
                      dtype=tf.as_dtype(spec.dtype), name=spec.name) for spec in contract.inputs])
    archive.write_out(str(destination), verbose=False)
