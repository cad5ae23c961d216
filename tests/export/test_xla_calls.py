"""A SavedModel whose calls Keras marks for XLA compilation (ConvNeXt's grouped convolution) converts to ONNX.

The model is a ConvNeXt block at width 8 inside an outer functional model, as a transfer-learning wrapper holds
ConvNeXtTiny: a grouped (depthwise) Conv2D, LayerNormalization, an exact-GELU MLP and the residual. Keras' TF
backend traces the grouped convolution as a nested `tf.function(jit_compile=True)`; before export/xla_calls.py,
tf2onnx left that call a StatefulPartitionedCall at every opset and the ONNX variant failed.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from export_checks import imported_bundle, run_onnx

from kerasport.export.builders import RUNG_XLA_INLINED
from kerasport.export.stage import STAGE_DIR_NAME, ExportOptions, export_bundle
from kerasport.export.variants import DEFAULT_OPSET, VARIANTS
from kerasport.export.xla_calls import FINGERPRINT_FILE, write_without_xla_marks, xla_marked_calls
from kerasport.fsutil import sha256_file
from kerasport.manifest import load_manifest, verify_bundle
from kerasport.tolerances import TolerancePolicy

FP32_ATOL = TolerancePolicy().fp32.atol
EXAMPLES = 8
SIDE = 8
WIDTH = 8
GROUPED_CONVOLUTIONS = 1


def convnext_block_model():
    """Pixels -> rescaling -> a nested model holding a stem and one ConvNeXt block at width 8 -> softmax."""
    layers = keras.layers
    block_input = keras.Input((SIDE, SIDE, 3))
    stem = layers.LayerNormalization(epsilon=1e-6)(layers.Conv2D(WIDTH, 2, strides=2)(block_input))
    hidden = layers.Conv2D(WIDTH, 3, padding="same", groups=WIDTH, name="depthwise_conv")(stem)
    hidden = layers.LayerNormalization(epsilon=1e-6)(hidden)
    hidden = layers.Dense(4 * WIDTH, activation="gelu")(hidden)
    hidden = layers.Dense(WIDTH)(hidden) + stem
    probabilities = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(hidden))
    inner = keras.Model(block_input, probabilities, name="convnext_block")
    pixels = keras.Input((SIDE, SIDE, 3), name="pixels")
    return keras.Model(pixels, inner(layers.Rescaling(1 / 127.5, offset=-1)(pixels)), name="wrapped")


def pictures(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (EXAMPLES, SIDE, SIDE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = convnext_block_model()
    run = imported_bundle(tmp_path_factory.mktemp("xla") / "run", model, {"pixels": pictures(0)},
                          {"pixels": pictures(1)})
    return run, model


def test_the_grouped_convolution_is_a_call_marked_for_xla_in_the_bundles_saved_model(bundle):
    run, _ = bundle
    marked = xla_marked_calls(load_manifest(run).artifact("saved_model").resolve(run))
    assert marked == {"calls": GROUPED_CONVOLUTIONS, "ops": ["Conv2D"]}


def test_the_copy_for_tf2onnx_drops_the_marks_and_leaves_the_saved_model_alone(bundle, tmp_path):
    run, _ = bundle
    saved_model = load_manifest(run).artifact("saved_model").resolve(run)
    before = {path.relative_to(saved_model): sha256_file(path) for path in saved_model.rglob("*") if path.is_file()}
    assert write_without_xla_marks(saved_model, tmp_path / "copy") == GROUPED_CONVOLUTIONS
    assert xla_marked_calls(tmp_path / "copy")["calls"] == 0
    assert xla_marked_calls(saved_model)["calls"] == GROUPED_CONVOLUTIONS
    after = {path.relative_to(saved_model): sha256_file(path) for path in saved_model.rglob("*") if path.is_file()}
    assert after == before
    copied = {path.relative_to(tmp_path / "copy") for path in (tmp_path / "copy").rglob("*") if path.is_file()}
    assert copied == set(before) - {Path(FINGERPRINT_FILE)}  # only the fingerprint (stale in a copy) is left out
    with pytest.raises(FileExistsError):
        write_without_xla_marks(saved_model, tmp_path / "copy")


def test_a_nested_convnext_block_converts_to_onnx_and_matches_keras(bundle):
    run, model = bundle
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32"]))
    manifest = verify_bundle(run)
    entry = manifest.artifact("onnx-fp32").entry
    rung = f"tf2onnx opset {DEFAULT_OPSET}, {RUNG_XLA_INLINED}"
    assert entry["status"] == "ok" and entry["rung"] == rung
    assert entry["ladder"] == [{"rung": rung, "result": "ok"}]
    assert entry["xla_calls_inlined"] == {"calls": GROUPED_CONVOLUTIONS, "ops": ["Conv2D"]}
    x = pictures(2)
    served = run_onnx(run / STAGE_DIR_NAME / VARIANTS["onnx-fp32"].filename, {"pixels": x}, manifest.contract)
    (output,) = manifest.contract.output_names
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(served[output], expected, atol=FP32_ATOL, rtol=0)
