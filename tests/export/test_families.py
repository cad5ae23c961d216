"""Layer families a converter mishandles: GELU, attention and a 1x1 LayerNormalization to ONNX, recurrent layers
to TFLite at batch 1.

Each model is tiny; the artifacts are run in onnxruntime / kerasport's LiteRT runtime and compared with Keras.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest
from export_checks import imported_bundle, run_onnx

from kerasport.export.builders import ONNX_FALLBACK_OPSETS
from kerasport.export.stage import STAGE_DIR_NAME, ExportOptions, export_bundle
from kerasport.export.tflite_ladder import RUNG_BATCH_ONE, RUNG_DYNAMIC
from kerasport.export.variants import VARIANTS
from kerasport.manifest import load_manifest, verify_bundle
from kerasport.runtimes import open_runtime
from kerasport.tolerances import TolerancePolicy

FP32_ATOL = TolerancePolicy().fp32.atol
EXAMPLES = 8
LOWEST_OPSET = ONNX_FALLBACK_OPSETS[-1]


def sequences(shape, seed):
    return np.random.default_rng(seed).random((EXAMPLES, *shape), dtype=np.float32)


def keras_answer(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_gelu_and_attention_convert_to_onnx_through_tf2onnx_and_match_keras(tmp_path):
    rows = keras.Input((6, 8), name="rows")
    hidden = keras.layers.MultiHeadAttention(2, 4)(rows, rows)
    hidden = keras.layers.LayerNormalization()(hidden + rows)
    hidden = keras.layers.Dense(16, activation="gelu")(hidden)  # exact GELU: TensorFlow's Erfc
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras.Model(rows, outputs)
    x = sequences((6, 8), 0)
    run = imported_bundle(tmp_path / "run", model, {"rows": x}, {"rows": sequences((6, 8), 1)})
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32"]))
    entry = load_manifest(run).artifact("onnx-fp32").entry
    assert entry["status"] == "ok" and "tf2onnx" in entry["converter"] and "Erfc" in entry["converter"]
    assert entry["ladder"] == [{"rung": entry["rung"], "result": "ok"}]
    contract = load_manifest(run).contract
    served = run_onnx(run / STAGE_DIR_NAME / VARIANTS["onnx-fp32"].filename, {"rows": x}, contract)
    np.testing.assert_allclose(served["probs"], keras_answer(model, x), atol=FP32_ATOL, rtol=0)


def test_a_convnext_block_on_a_1x1_map_converts_to_onnx_and_matches_keras(tmp_path):
    # ConvNeXtTiny's last stage at a 32x32 input: tf2onnx's Mul(d, d) for the LayerNormalization's SquaredDifference
    # got a Reshape from a stale shape, so the variance was reduced over a size-1 axis (max |diff| 0.6-0.75 before).
    layers = keras.layers
    pixels = keras.Input((1, 1, 8), name="pixels")
    hidden = layers.LayerNormalization(epsilon=1e-6)(layers.DepthwiseConv2D(3, padding="same")(pixels))
    hidden = layers.Dense(8)(layers.Dense(32, activation="gelu")(hidden)) + pixels
    outputs = layers.Dense(3, activation="softmax", name="probs")(layers.GlobalAveragePooling2D()(hidden))
    model = keras.Model(pixels, outputs)
    x = sequences((1, 1, 8), 4) * 4 - 2
    run = imported_bundle(tmp_path / "run", model, {"pixels": x}, {"pixels": sequences((1, 1, 8), 5)})
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32"]))
    entry = load_manifest(run).artifact("onnx-fp32").entry
    assert entry["status"] == "ok" and "SquaredDifference" in entry["converter"]
    path = run / STAGE_DIR_NAME / VARIANTS["onnx-fp32"].filename
    served = run_onnx(path, {"pixels": x}, load_manifest(run).contract)
    np.testing.assert_allclose(served["probs"], keras_answer(model, x), atol=FP32_ATOL, rtol=0)
    assert "Pow" in {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.slow  # ~100 s on 2 shared cores: two TFLite rungs and a tf2onnx child, each importing TF
def test_a_recurrent_model_gets_a_batch_1_tflite_and_keeps_its_failed_onnx_per_variant(tmp_path):
    rows = keras.Input((5, 4), name="rows")
    model = keras.Model(rows, keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.GRU(6)(rows)))
    x = sequences((5, 4), 2)
    run = imported_bundle(tmp_path / "run", model, {"rows": x}, {"rows": sequences((5, 4), 3)})
    result = export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "tflite-fp32"], opset=LOWEST_OPSET,
                                         keep_going=True))
    manifest = verify_bundle(run)
    onnx = manifest.artifact("onnx-fp32").entry
    rung = f"tf2onnx opset {LOWEST_OPSET}"  # the ladder's last rung: nothing below it to try
    assert set(result.failures) == {"onnx-fp32"} and onnx["status"].startswith(f"failed: ONNX, {rung}: ")
    assert [attempt["rung"] for attempt in onnx["ladder"]] == [rung]
    tflite = manifest.artifact("tflite-fp32").entry
    assert tflite["status"] == "ok" and tflite["rung"] == RUNG_BATCH_ONE and tflite["batch"] == 1
    assert tflite["ladder"][0]["rung"] == RUNG_DYNAMIC and "TensorListReserve" in tflite["ladder"][0]["result"]
    assert tflite["inputs"][0]["shape"][0] == 1 and tflite["recurrent"]["fused"] is False
    # kerasport's TF-free runtime (export, parity, serve, predict) runs any batch through the batch-1 artifact.
    runtime = open_runtime(run / STAGE_DIR_NAME / VARIANTS["tflite-fp32"].filename, "tflite")
    assert runtime.fixed_batch == 1
    np.testing.assert_allclose(runtime.run({"rows": x})["probs"], keras_answer(model, x), atol=FP32_ATOL, rtol=0)
