"""The `--allow-select-tf-ops` rung: a model whose op has no TFLite built-in converts with TensorFlow Select ops,
and the ladder records that no TensorFlow-free runtime here runs it (LiteRT has no Flex delegate) — never a pass;
the rest of the export is kept."""

from __future__ import annotations

import keras
import numpy as np
from export_checks import imported_bundle

from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.export.tflite_ladder import RUNG_DYNAMIC, SELECT_SUFFIX, tflite_rungs
from kerasport.manifest import load_manifest


@keras.saving.register_keras_serializable(package="kerasport_tests")
class Determinant(keras.layers.Layer):
    """The determinant of each row as a 2x2 matrix: TensorFlow's MatrixDeterminant has no TFLite built-in, only a
    TensorFlow Select (Flex) kernel; ONNX has Det."""

    def call(self, inputs):
        return keras.ops.expand_dims(keras.ops.det(keras.ops.reshape(inputs, (-1, 2, 2))), -1)


def test_a_select_ops_artifact_is_recorded_as_not_runnable_here_not_a_pass(tmp_path):
    features = keras.Input((4,), name="features")
    model = keras.Model(features, keras.layers.Dense(2, name="values")(Determinant()(features)))
    samples = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    run = imported_bundle(tmp_path / "run", model, {"features": samples}, {"features": samples})
    result = export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "tflite-fp32"], keep_going=True,
                                         allow_select_tf_ops=True))
    manifest = load_manifest(run)
    tflite = manifest.artifact("tflite-fp32")
    assert tflite.status.startswith("failed:")
    ladder = {attempt["rung"]: attempt["result"] for attempt in tflite.get("ladder")}
    assert list(ladder) == [name for name, _, _ in tflite_rungs(True, has_keras_model=True)]
    assert "tf.MatrixDeterminant" in ladder[RUNG_DYNAMIC], ladder
    selected = ladder[RUNG_DYNAMIC + SELECT_SUFFIX]
    assert selected.startswith("failed: built with TensorFlow Select ops, which no TensorFlow-free runtime here "
                               "runs"), selected
    assert "so not a pass" in selected
    # ONNX has a Det kernel: that variant is exported and recorded.
    rows = {row["variant"]: row["status"] for row in result.rows}
    assert rows == {"onnx-fp32": "ok", "tflite-fp32": tflite.status}
    assert manifest.artifact("onnx-fp32").status == "ok"
