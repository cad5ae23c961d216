"""The export stage on the reference (trained) bundle, through its API and CLI: every variant runs, fp32 equals
Keras, the manifest records each artifact as its runtime sees it, and the bundle is tamper-evident."""

import dataclasses
import hashlib
import json

import keras
import numpy as np
import pytest
from export_checks import eval_inputs, run_litert, run_onnx
from helpers import copy_bundle
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, ConversionError
from kerasport.export.stage import SCRATCH_DIR_NAME, STAGE_DIR_NAME, TOOLS, ExportOptions, export_bundle
from kerasport.export.tflm import ARRAY_NAME, DEVICE_FLASH, read_c_array
from kerasport.export.variants import DEFAULT_OPSET, VARIANTS
from kerasport.manifest import hash_artifact, load_manifest, verify_bundle

runner = CliRunner()
RUNNABLE = [name for name, variant in VARIANTS.items() if variant.runnable]
SMALLEST_DEVICE = min(DEVICE_FLASH, key=DEVICE_FLASH.get)


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_variant_runs_batches_1_and_7(exported, name):
    manifest = load_manifest(exported)
    artifact = manifest.artifact(name)
    (spec,) = manifest.contract.outputs
    for batch in (1, 7):
        inputs = eval_inputs(exported, batch)
        run = run_onnx if artifact.format == "onnx" else run_litert
        (out,) = run(artifact.resolve(exported), inputs, manifest.contract).values()
        assert out.shape == (batch, spec.width) and np.isfinite(out).all()
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=0.02)  # still probabilities


def test_fp32_variants_equal_keras(exported):
    manifest = load_manifest(exported)
    model = keras.saving.load_model(manifest.artifact("keras").resolve(exported))
    inputs = eval_inputs(exported, 8)
    (reference,) = (keras.ops.convert_to_numpy(model(x, training=False)) for x in inputs.values())
    for name, run in (("onnx-fp32", run_onnx), ("tflite-fp32", run_litert)):
        (out,) = run(manifest.artifact(name).resolve(exported), inputs, manifest.contract).values()
        np.testing.assert_allclose(out, reference, atol=1e-5, err_msg=name)


def test_manifest_records_every_artifact_with_hashes_io_and_versions(exported):
    manifest = verify_bundle(exported)
    (image,), (output,) = manifest.contract.inputs, manifest.contract.outputs
    for name, variant in VARIANTS.items():
        artifact = manifest.artifact(name)
        assert artifact.path == f"{STAGE_DIR_NAME}/{variant.filename}" and artifact.status == "ok"
        assert artifact.sha256 == hashlib.sha256(artifact.resolve(exported).read_bytes()).hexdigest()
        assert artifact.bytes == artifact.resolve(exported).stat().st_size
        assert (artifact.format, artifact.precision, artifact.runtime) == (variant.format, variant.precision,
                                                                           variant.runtime)
        (tensor_in,), (tensor_out,) = artifact.get("inputs"), artifact.get("outputs")
        assert tensor_in["name"] == image.name and tensor_out["name"] == output.name
        batch = "batch" if variant.format == "onnx" else -1
        assert tensor_in["shape"] == [batch, *image.item_shape]
        assert tensor_out["shape"] == [batch, *output.shape[1:]]
    assert manifest.artifact("onnx-fp32").get("opset") == DEFAULT_OPSET
    assert manifest.stage("export")["opset"] == DEFAULT_OPSET
    for tool in TOOLS:
        assert manifest.versions[tool]
    sizes = {name: manifest.artifact(name).bytes for name in VARIANTS}
    assert sizes["tflite-fp16"] < 0.6 * sizes["tflite-fp32"]
    assert sizes["tflite-int8"] < 0.4 * sizes["tflite-fp32"]


def test_c_array_bytes_equal_the_int8_tflite(exported):
    manifest = load_manifest(exported)
    source, int8 = manifest.artifact("tflm").resolve(exported), manifest.artifact("tflite-int8").resolve(exported)
    assert read_c_array(source) == int8.read_bytes()
    text = source.read_text()
    assert f"alignas(16) const unsigned char {ARRAY_NAME}[]" in text
    assert f"{ARRAY_NAME}_len = {int8.stat().st_size};" in text
    header = manifest.artifact("tflm-header").resolve(exported)
    assert f"extern const unsigned int {ARRAY_NAME}_len;" in header.read_text()
    tflm = manifest.artifact("tflm")
    assert tflm.get("all_ops_supported") and "CONV_2D" in tflm.get("ops")
    assert tflm.get("fits_flash")[SMALLEST_DEVICE] is True
    assert tflm.get("inputs") == manifest.artifact("tflite-int8").get("inputs")


def test_bundle_verify_refuses_a_flipped_byte_and_a_deleted_file(exported_copy):
    ok = runner.invoke(app, ["bundle", "verify", "--run", str(exported_copy)])
    assert ok.exit_code == EXIT_OK and "match the manifest" in ok.output

    onnx_path = exported_copy / "export" / VARIANTS["onnx-fp32"].filename
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))
    (exported_copy / "export" / VARIANTS["tflite-fp16"].filename).unlink()
    result = runner.invoke(app, ["bundle", "verify", "--run", str(exported_copy)])
    assert result.exit_code == EXIT_CHECK_FAILED
    assert "artifact 'onnx-fp32' was altered" in result.output
    assert "artifact 'tflite-fp16' is missing" in result.output


def snapshot(run):
    return ({p.name: p.read_bytes() for p in (run / STAGE_DIR_NAME).iterdir()},
            (run / "manifest.json").read_text())


def test_corrupt_saved_model_exits_2_and_keeps_the_previous_export(exported_copy):
    before = snapshot(exported_copy)
    saved_model = load_manifest(exported_copy).artifact("saved_model").resolve(exported_copy)
    (saved_model / "saved_model.pb").write_bytes(b"garbage")
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "onnx-fp32"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "saved_model" in result.output
    assert snapshot(exported_copy) == before

    # a SavedModel that is broken yet re-hashed (as a buggy tool would) still cannot be loaded: exit 2
    manifest = json.loads(before[1])
    manifest["artifacts"]["saved_model"]["sha256"] = hash_artifact(saved_model)[0]
    (exported_copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "onnx-fp32"])
    assert result.exit_code == EXIT_USAGE and "not a loadable SavedModel" in result.output, result.output
    assert snapshot(exported_copy)[0] == before[0]


def test_formats_subset_keeps_the_other_variants(exported_copy):
    onnx_before = (exported_copy / "export" / VARIANTS["onnx-fp32"].filename).read_bytes()
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "tflite-fp16", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(row["variant"], row["status"]) for row in rows] == [("tflite-fp16", "ok")]
    assert (exported_copy / "export" / VARIANTS["onnx-fp32"].filename).read_bytes() == onnx_before
    verify_bundle(exported_copy)  # the untouched variants still match their recorded hashes


def test_unknown_format_bad_opset_and_missing_bundle_exit_2(tmp_path, exported):
    bad = runner.invoke(app, ["export", "--run", str(exported), "--formats", "onnx-fp32,coreml"])
    assert bad.exit_code == EXIT_USAGE and "unknown coreml" in bad.output
    opset = runner.invoke(app, ["export", "--run", str(exported), "--opset", str(DEFAULT_OPSET + 1)])
    assert opset.exit_code == EXIT_USAGE and f"--opset {DEFAULT_OPSET + 1}" in opset.output
    missing = runner.invoke(app, ["export", "--run", str(tmp_path / "nothing")])
    assert missing.exit_code == EXIT_USAGE and "manifest.json is missing" in missing.output


def test_regression_model_and_int8_io_export(regression_trained, tmp_path):
    run = copy_bundle(regression_trained, tmp_path)
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "tflite-int8", "tflm"], int8_io=True,
                                calibration_samples=20))
    manifest = verify_bundle(run)
    (tensor_in,) = manifest.artifact("tflite-int8").get("inputs")
    assert tensor_in["dtype"] == "int8" and tensor_in["quantization"]["scale"] > 0
    assert manifest.artifact("tflite-int8").get("io_dtype") == "int8"
    inputs = eval_inputs(run, 4)
    model = keras.saving.load_model(manifest.artifact("keras").resolve(run))
    (x,) = inputs.values()
    (out,) = run_onnx(manifest.artifact("onnx-fp32").resolve(run), inputs, manifest.contract).values()
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-4)
    assert read_c_array(manifest.artifact("tflm").resolve(run)) == \
        manifest.artifact("tflite-int8").resolve(run).read_bytes()


def test_edge_int8_has_batchnorm_folded_into_the_convolution(edge_exported):
    tflm = load_manifest(edge_exported).artifact("tflm")
    assert "MUL" not in tflm.get("ops") and "ADD" not in tflm.get("ops"), tflm.get("ops")
    assert tflm.get("all_ops_supported") and tflm.get("model_bytes") < DEVICE_FLASH[SMALLEST_DEVICE]


def replace_build(monkeypatch, name, build):
    """Swap one variant's build function in the registry (the stage must build through the registry)."""
    monkeypatch.setitem(VARIANTS, name, dataclasses.replace(VARIANTS[name], build=build))


def test_keep_going_replaces_a_variant_that_now_fails_and_rebuilds_the_rest(exported_copy, monkeypatch):
    def fails(context, variant, path):
        raise ConversionError("op Frobnicate has no int8 kernel")

    replace_build(monkeypatch, "onnx-int8", fails)
    int8 = exported_copy / STAGE_DIR_NAME / VARIANTS["onnx-int8"].filename
    assert int8.exists()
    result = export_bundle(ExportOptions(run=str(exported_copy), formats=["onnx-int8", "tflite-fp16"],
                                         calibration_samples=20, keep_going=True))
    assert result.failures == {"onnx-int8": "op Frobnicate has no int8 kernel"}
    manifest = verify_bundle(exported_copy)
    assert manifest.artifact("onnx-int8").status == "failed: op Frobnicate has no int8 kernel"
    assert manifest.artifact("tflite-fp16").status == "ok" and manifest.artifact("onnx-fp32").status == "ok"
    assert not int8.exists()  # the previous file is not left behind a failed entry
    assert not (exported_copy / STAGE_DIR_NAME / SCRATCH_DIR_NAME).exists()


def test_an_artifact_that_does_not_run_fails_the_export_in_one_line_and_changes_nothing(exported_copy, monkeypatch):
    def garbage(context, variant, path):
        path.write_bytes(b"not a flatbuffer")
        return {}

    replace_build(monkeypatch, "tflite-fp16", garbage)
    before = snapshot(exported_copy)
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "tflite-fp16"])
    assert result.exit_code == EXIT_RUNTIME, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    runtime = VARIANTS["tflite-fp16"].runtime
    assert line.startswith(f"error: variant tflite-fp16 for {runtime} failed: ") and "does not load in" in line
    assert snapshot(exported_copy) == before
