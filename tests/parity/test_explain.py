"""`kerasport parity --explain`: the first layer that diverges, and the int8 layers that cost the most.

The bundle is a tiny Conv -> ReLU -> BN model (the seed's BN-after-ReLU layout, which TFLite cannot fold into the
convolution): half of BN's per-channel multipliers are 100x smaller than the others and the next convolution reads
only those channels, scaled back up. In float the model is exact; per-tensor int8 quantization of BN's multiplier and
output (TFLite MUL, ORT QDQ Mul) loses those channels.
"""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter
from test_parity import refresh_hash
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_CHECK_FAILED
from kerasport.manifest import verify_bundle
from kerasport.parity.explain.layers import EXPLAIN_EDGE, EXPLAIN_EVAL, PLOT_FILE
from kerasport.parity.explain.match import COMPARED, align
from kerasport.parity.stage import ParityOptions, run_parity
from kerasport.samples import Samples

runner = CliRunner()
SIDE, CHANNELS, SMALL = 12, 8, 0.01
FAULTY = "conv_b"  # the middle convolution whose weights the planted faults scale
FORMATS = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIDE, SIDE, 1)).astype(np.float32)


def bn_after_relu_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(CHANNELS, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(CHANNELS, 3, padding="same", activation="relu", name=FAULTY)(x)
    x = keras.layers.Conv2D(CHANNELS, 3, padding="same", activation="relu", name="conv_c")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="bnrelu")
    half = CHANNELS // 2
    multiplier = np.array([SMALL] * half + [1.0] * half, np.float32)
    model.get_layer("bn").set_weights([multiplier, np.zeros(CHANNELS, np.float32), np.zeros(CHANNELS, np.float32),
                                       np.full(CHANNELS, 1 - 1e-3, np.float32)])
    kernel, bias = model.get_layer(FAULTY).get_weights()
    kernel[:, :, :half, :] /= SMALL
    kernel[:, :, half:, :] = 0
    model.get_layer(FAULTY).set_weights([kernel, bias])
    # a classifier whose three classes all occur: centre and scale the pooled features
    features = keras.Model(model.inputs, model.get_layer("gap").output).predict(images(64, 3), verbose=0)
    dense = np.random.default_rng(0).normal(0, 1, (CHANNELS, 3)) / (features.std(axis=0)[:, None] + 1e-6)
    model.get_layer("probabilities").set_weights([dense.astype(np.float32),
                                                  (-features.mean(axis=0) @ dense).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def bn_bundle(tmp_path_factory):
    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.ingest.importer import ContractHints, contract_from_keras, write_imported_bundle

    run = tmp_path_factory.mktemp("explain") / "run"
    model = bn_after_relu_model()
    eval_images = images(48, 1)
    labels = model.predict(eval_images, verbose=0).argmax(axis=1)  # the float model is right by construction
    contract = contract_from_keras(model, ContractHints(labels=("a", "b", "c")), {"image": (0, 255)})
    write_imported_bundle(run, model, contract, eval_samples=Samples({"image": eval_images}, {"probabilities": labels}),
                          calibration=Samples({"image": images(32, 2)}), name="bnrelu", version="1",
                          source={"kind": "test"})
    export_bundle(ExportOptions(run=str(run), formats=FORMATS))
    return run


@pytest.fixture
def bundle(bn_bundle, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(bn_bundle, copy)
    return copy


def scale_onnx_layer(run, layer, scale=1.5):
    path = run / "export" / "model.onnx"
    model = onnx.load(str(path))
    (weights,) = [tensor for tensor in model.graph.initializer
                  if f"/{layer}_1/" in tensor.name and len(tensor.dims) == 4]
    array = onnx.numpy_helper.to_array(weights) * scale
    weights.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weights.name))
    onnx.save(model, str(path))
    refresh_hash(run, "onnx-fp32")


def scale_tflite_layer(run, layer, scale=1.5):
    path = run / "export" / "model_fp32.tflite"
    data = bytearray(path.read_bytes())
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (detail,) = [d for d in interpreter.get_tensor_details()
                 if f"/{layer}_1/" in d["name"] and len(d["shape"]) == 4 and d["shape"][0] == CHANNELS
                 and d["dtype"] == np.float32 and tuple(d["shape"][1:3]) == (3, 3)]
    weights = interpreter.get_tensor(detail["index"]).copy()
    offset = bytes(data).find(weights.tobytes())
    assert offset > 0, "the layer's weights are not in the flatbuffer"
    data[offset:offset + weights.nbytes] = (weights * scale).astype(np.float32).tobytes()
    path.write_bytes(bytes(data))
    refresh_hash(run, "tflite-fp32")


def test_planted_fault_in_onnx_is_named_first_on_the_console_and_in_the_reports(bundle):
    scale_onnx_layer(bundle, FAULTY)
    result = runner.invoke(app, ["parity", "--run", str(bundle), "--no-sweep"])  # no --explain: it failed
    assert result.exit_code == EXIT_CHECK_FAILED, result.output
    assert f"explain onnx-fp32: first layer beyond tolerance: {FAULTY} (Conv2D" in result.output
    report = json.loads((bundle / "parity" / "report.json").read_text())
    section = report["explain"]
    assert section["trigger"].startswith("automatic")
    explained = section["candidates"]["onnx-fp32"]
    assert explained["first_divergent"]["layer"] == FAULTY
    rows = {row["layer"]: row for row in explained["layers"]}
    assert rows["conv_a"]["within"] and rows["bn"]["within"] and not rows[FAULTY]["within"]
    assert rows[FAULTY]["layout"] == "NCHW→NHWC"  # tf2onnx's channels-first convolution, compared transposed
    assert rows[FAULTY]["growth"] > 1e3  # the error jumps at the faulty layer
    assert "tflite-fp32" not in section["candidates"]  # it passed: not explained without --explain
    assert f"First layer beyond tolerance: {FAULTY} (Conv2D" in (bundle / "parity" / "report.md").read_text()
    assert (bundle / "parity" / PLOT_FILE).stat().st_size > 0
    assert section["inputs"] == {"eval_examples": EXPLAIN_EVAL, "edge_examples": EXPLAIN_EDGE,
                                 "edge_kinds": section["inputs"]["edge_kinds"]}

    # --no-explain: the same failing gate, its verdict only
    result = runner.invoke(app, ["parity", "--run", str(bundle), "--no-sweep", "--no-explain"])
    assert result.exit_code == EXIT_CHECK_FAILED, result.output
    assert "explain onnx-fp32" not in result.output
    assert json.loads((bundle / "parity" / "report.json").read_text()).get("explain") is None
    assert not (bundle / "parity" / PLOT_FILE).exists()


def test_planted_fault_in_tflite_is_named_first(bundle):
    scale_tflite_layer(bundle, FAULTY)
    result = run_parity(ParityOptions(run=str(bundle), sweep=False))
    assert result.exit_code == EXIT_CHECK_FAILED
    explained = result.report.explain.candidates["tflite-fp32"]
    assert explained.first_divergent.layer == FAULTY
    rows = {row["layer"]: row for row in explained.layers}
    # TFLite folds the rescaling into the first convolution: no tensor of its own, compared there
    assert rows["rescale"]["status"] == "fused" and rows["rescale"]["fused_into"] == "conv_a"
    assert rows["conv_a"]["within"] and rows["bn"]["within"]
    assert "onnx-fp32" not in result.report.explain.candidates


def test_explain_ranks_bn_after_relu_first_and_measures_the_fix_without_touching_the_bundle(bundle):
    hashes = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in (bundle / "export").iterdir()}
    result = runner.invoke(app, ["parity", "--run", str(bundle), "--no-sweep", "--explain"])
    assert result.exit_code == EXIT_CHECK_FAILED, result.output  # int8 loses the small channels: the gate fails
    report = json.loads((bundle / "parity" / "report.json").read_text())
    candidates = report["explain"]["candidates"]
    for name in ("onnx-fp32", "tflite-fp32"):  # faithful float artifacts: no false alarm
        assert candidates[name]["first_divergent"] is None
        assert all(row["within"] for row in candidates[name]["layers"] if row["status"] == COMPARED)
    for name in ("onnx-int8", "tflite-int8"):
        explained = candidates[name]
        assert explained["first_divergent"] is None  # int8 values are not bounded by the gate
        assert explained["costliest"][0]["layer"] == "bn", explained["costliest"]
        fixes = explained["fixes"]
        assert fixes["control"]["agreement"] == pytest.approx(fixes["shipped"]["agreement"])
        trials = {trial["fix"].split(" (")[0]: trial for trial in fixes["trials"]}
        assert "keep bn in float" in trials
        assert trials[f"keep bn and {FAULTY} in float"]["agreement"] > fixes["control"]["agreement"] + 0.25
        assert fixes["best"].startswith(f"keep bn and {FAULTY} in float")
        assert f"explain {name}: costliest int8 layer bn" in result.output
    verify_bundle(bundle)  # every fix was tried in a temporary directory
    assert hashes == {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                      for path in (bundle / "export").iterdir()}
    assert "Fixes tried" in (bundle / "parity" / "report.md").read_text()


def test_align_transposes_channels_first_and_refuses_other_shapes():
    rng = np.random.default_rng(0)
    keras_layout = rng.normal(size=(2, 5, 6, 3))
    aligned, layout = align(keras_layout, keras_layout.transpose(0, 3, 1, 2))
    assert layout == "NCHW→NHWC" and np.array_equal(aligned, keras_layout)
    aligned, layout = align(keras_layout.reshape(2, 90), keras_layout.reshape(2, 1, 90))
    assert layout == "same" and np.array_equal(aligned, keras_layout.reshape(2, 90))
    assert align(keras_layout, rng.normal(size=(2, 5, 6, 4))) is None
    assert align(keras_layout, keras_layout[:1]) is None


def test_a_subclassed_model_is_reported_as_not_explainable():
    import keras

    from kerasport.contract import ModelContract
    from kerasport.parity.explain.graph import ExplainUnavailable, KerasGraph

    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ExplainUnavailable, match="not a functional Keras model"):
        KerasGraph(Subclassed(), ModelContract.__new__(ModelContract))
