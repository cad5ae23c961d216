"""The export stage on imported models other than the reference CNN: several named inputs and outputs, tabular
regression, integer inputs, and a model some runtime cannot take (`--keep-going`). MobileNetV2 end to end is
tests/import/test_end_to_end.py; its export time bar is bench/imported.py."""

import json

import keras
import numpy as np
import pytest
from export_checks import eval_inputs, imported_bundle, keras_outputs, run_litert, run_onnx
from typer.testing import CliRunner

from devtools.tiny_models import (
    CLASSES,
    PIXEL_RANGE,
    TABULAR,
    regressor_model,
    regressor_samples,
    two_input_model,
    two_input_samples,
)
from kerasport.app.cli import app
from kerasport.errors import EXIT_OK, EXIT_RUNTIME
from kerasport.export.smoke import SMOKE_BATCHES
from kerasport.export.stage import STAGE_DIR_NAME, ExportOptions, export_bundle
from kerasport.export.variants import VARIANTS
from kerasport.int8_recipe import ONNX_REDUCE_RANGE
from kerasport.manifest import load_manifest, verify_bundle

runner = CliRunner()
RUNNABLE = [name for name, variant in VARIANTS.items() if variant.runnable]
FP32 = {"onnx-fp32": run_onnx, "tflite-fp32": run_litert}
SAMPLES = 16


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    run = imported_bundle(tmp_path_factory.mktemp("two-inputs") / "run", two_input_model(),
                          two_input_samples(SAMPLES, 1).inputs, two_input_samples(SAMPLES, 2).inputs,
                          labels=CLASSES, ranges={"picture": PIXEL_RANGE})
    export_bundle(ExportOptions(run=str(run), calibration_samples=SAMPLES))
    return run


def test_two_inputs_two_outputs_every_variant_is_recorded_as_its_runtime_sees_it(two_inputs):
    manifest = verify_bundle(two_inputs)
    contract = manifest.contract
    for name, variant in VARIANTS.items():
        artifact = manifest.artifact(name)
        assert artifact.status == "ok", (name, artifact.status)
        assert [t["name"] for t in artifact.get("inputs")] == contract.input_names, name
        assert [t["name"] for t in artifact.get("outputs")] == contract.output_names, name
        batch = "batch" if variant.format == "onnx" else -1
        for tensor, spec in zip(artifact.get("inputs"), contract.inputs, strict=True):
            assert tensor["shape"] == [batch, *spec.item_shape], name
        if variant.format == "tflite":
            assert all(t["tensor"] for t in artifact.get("inputs")), name
    # full-integer int8 keeps float I/O by default but quantizes inside: its ops include QUANTIZE
    assert "QUANTIZE" in manifest.artifact("tflite-int8").get("ops")
    assert manifest.artifact("onnx-int8").get("calibration_samples") == SAMPLES


def test_onnx_int8_weights_fit_seven_bits_so_every_x86_host_computes_the_gated_integers(two_inputs):
    """u8 x s8 on x86 without VNNI sums product pairs in 16 bits: 255 x 127 x 2 saturates, 255 x 64 x 2 = 32640
    does not."""
    import onnx
    from onnx import numpy_helper

    assert ONNX_REDUCE_RANGE
    model = onnx.load(str(load_manifest(two_inputs).artifact("onnx-int8").resolve(two_inputs)))
    weights = [numpy_helper.to_array(tensor) for tensor in model.graph.initializer
               if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) >= 2]
    assert weights, "no int8 weight tensors in the int8 model"
    assert all(int(w.min()) >= -64 and int(w.max()) <= 64 for w in weights), [(w.min(), w.max()) for w in weights]
    assert "7-bit" in load_manifest(two_inputs).artifact("onnx-int8").get("quantization")


@pytest.mark.parametrize("name", RUNNABLE)
def test_two_inputs_two_outputs_every_variant_runs(two_inputs, name):
    manifest = load_manifest(two_inputs)
    artifact = manifest.artifact(name)
    run = run_onnx if artifact.format == "onnx" else run_litert
    for batch in SMOKE_BATCHES:
        outputs = run(artifact.resolve(two_inputs), eval_inputs(two_inputs, batch), manifest.contract)
        for spec in manifest.contract.outputs:
            assert outputs[spec.name].shape == (batch, *spec.shape[1:]), (name, spec.name)
            assert np.isfinite(outputs[spec.name]).all()


def test_two_inputs_two_outputs_fp32_matches_keras(two_inputs):
    manifest = load_manifest(two_inputs)
    model = keras.saving.load_model(manifest.artifact("keras").resolve(two_inputs))
    inputs = eval_inputs(two_inputs, 4)
    reference = keras_outputs(model, inputs, manifest.contract)
    for name, run in FP32.items():
        outputs = run(manifest.artifact(name).resolve(two_inputs), inputs, manifest.contract)
        for output in manifest.contract.output_names:
            np.testing.assert_allclose(outputs[output], reference[output], atol=1e-4, err_msg=f"{name} {output}")


def test_tabular_mlp_regressor_exports_every_variant(tmp_path):
    model = regressor_model()
    sample = regressor_samples(SAMPLES, seed=0).inputs
    run = imported_bundle(tmp_path / "run", model, sample, sample, task="regression")
    result = export_bundle(ExportOptions(run=str(run), calibration_samples=SAMPLES))
    assert [row["status"] for row in result.rows] == ["ok"] * len(VARIANTS)
    manifest = verify_bundle(run)
    assert manifest.task == "regression"
    assert manifest.artifact("tflite-fp32").get("inputs")[0]["shape"] == [-1, TABULAR]
    assert manifest.artifact("onnx-fp32").get("outputs")[0]["shape"] == ["batch", 1]
    inputs = eval_inputs(run, 5)
    reference = keras_outputs(model, inputs, manifest.contract)
    for name, run_artifact in FP32.items():
        out = run_artifact(manifest.artifact(name).resolve(run), inputs, manifest.contract)["price"]
        np.testing.assert_allclose(out, reference["price"], atol=1e-4, err_msg=name)


def test_integer_inputs_are_fed_to_calibration_but_never_quantized(tmp_path):
    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), name="ids", dtype="int32")
    features = keras.Input((5,), name="features")
    x = keras.layers.Flatten()(keras.layers.Embedding(20, 4)(ids))
    model = keras.Model([ids, features], keras.layers.Dense(2, name="y")(keras.layers.Concatenate()([x, features])))
    rng = np.random.default_rng(0)
    sample = {"ids": rng.integers(0, 20, (SAMPLES, 6)).astype(np.int32),
              "features": rng.normal(size=(SAMPLES, 5)).astype(np.float32)}
    run = imported_bundle(tmp_path / "run", model, sample, sample, task="regression")
    export_bundle(ExportOptions(run=str(run), formats=["onnx-int8", "tflite-int8"], int8_io=True,
                                calibration_samples=SAMPLES))
    manifest = verify_bundle(run)
    for name in ("onnx-int8", "tflite-int8"):
        tensors = {t["name"]: t for t in manifest.artifact(name).get("inputs")}
        assert tensors["ids"]["dtype"] == "int32" and "quantization" not in tensors["ids"], name
    tflite_features = {t["name"]: t for t in manifest.artifact("tflite-int8").get("inputs")}["features"]
    assert tflite_features["dtype"] == "int8" and tflite_features["quantization"]["scale"] > 0
    assert not manifest.has("onnx-fp32")  # a prerequisite that was not asked for is not kept
    assert not (run / STAGE_DIR_NAME / VARIANTS["onnx-fp32"].filename).exists()


class Determinant(keras.layers.Layer):
    """tf.MatrixDeterminant: tf2onnx converts it, the TFLite built-ins lack it."""

    def call(self, x):
        return keras.ops.expand_dims(keras.ops.linalg.det(keras.ops.reshape(x, (-1, 2, 2))), -1)


@pytest.fixture
def determinant_bundle(tmp_path):
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, name="y")(keras.layers.Concatenate()([Determinant()(x), x])))
    sample = {"x": np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)}
    return imported_bundle(tmp_path / "run", model, sample, sample, task="regression")


def snapshot(run):
    export_dir = run / STAGE_DIR_NAME
    files = {p.name: p.read_bytes() for p in export_dir.iterdir()} if export_dir.exists() else None
    return files, (run / "manifest.json").read_text()


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_keep_going_keeps_what_converted_and_records_the_failures(determinant_bundle):
    run = determinant_bundle
    formats = "onnx-fp32,tflite-fp32,tflm"
    result = runner.invoke(app, ["export", "--run", str(run), "--formats", formats, "--keep-going", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    rows = {row["variant"]: row for row in json.loads(result.stdout.strip().splitlines()[-1])}
    assert rows["onnx-fp32"]["status"] == "ok"
    manifest = verify_bundle(run)  # failed entries have no file and are skipped; the rest match their hashes
    assert manifest.artifact("onnx-fp32").status == "ok"
    failed = manifest.artifact("tflite-fp32")
    # the ladder's first rung names the op and the switch; the other rungs' reasons follow
    assert failed.status.startswith("failed: TFLite fp32, dynamic batch: op tf.MatrixDeterminant")
    assert "--allow-select-tf-ops" in failed.status
    assert (failed.path, failed.sha256, failed.bytes) == (f"{STAGE_DIR_NAME}/{VARIANTS['tflite-fp32'].filename}",
                                                          "", 0)
    assert not failed.resolve(run).exists()
    assert manifest.artifact("tflm").status.startswith("failed: needs tflite-int8, which failed: ")
    assert "op tf.MatrixDeterminant" in manifest.artifact("tflm").status
    assert not manifest.has("tflm-header")
    assert rows["tflite-fp32"]["status"] == failed.status
    assert manifest.stage("export")["variants"]["tflite-fp32"]["status"] == failed.status

    # Without --keep-going the same failure is one line (variant, op, runtime), exit 3, and nothing changes.
    before = snapshot(run)
    result = runner.invoke(app, ["export", "--run", str(run), "--formats", formats])
    assert result.exit_code == EXIT_RUNTIME, result.output
    (line,) = error_lines(result.output)
    assert "tflite-fp32" in line and "tf.MatrixDeterminant" in line and VARIANTS["tflite-fp32"].runtime in line
    assert snapshot(run) == before


def test_keep_going_with_nothing_converted_exits_3_and_changes_nothing(determinant_bundle):
    before = snapshot(determinant_bundle)
    result = runner.invoke(app, ["export", "--run", str(determinant_bundle), "--formats", "tflite-fp32",
                                 "--keep-going"])
    assert result.exit_code == EXIT_RUNTIME, result.output
    (line,) = error_lines(result.output)
    assert "every requested variant" in line and "tf.MatrixDeterminant" in line
    assert snapshot(determinant_bundle) == before
