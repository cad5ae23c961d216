"""The export stage through its API and CLI: every variant runs, fp32 equals Keras, the bundle is tamper-evident."""

import hashlib
import json

import keras
import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from helpers import trained_bundle
from typer.testing import CliRunner

from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.export.tflm import read_c_array
from kerasport.export.variants import VARIANTS
from kerasport.app.cli import app
from kerasport.manifest import load_manifest, verify_bundle

runner = CliRunner()
MODEL_VARIANTS = [name for name, variant in VARIANTS.items() if variant.runtime != "tflite-micro"]


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch
    return session.run(None, {"image": x})[0]


def run_litert(path, x):
    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    assert list(detail["shape_signature"]) == [-1, 28, 28, 1]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def eval_images(run, n):
    return np.load(run / "train" / "eval_sample.npz")["x"][:n].astype(np.float32)


@pytest.mark.parametrize("name", MODEL_VARIANTS)
def test_every_variant_runs_batches_1_and_7(exported, name):
    entry = load_manifest(exported)["artifacts"][name]
    path = exported / entry["path"]
    for batch in (1, 7):
        x = eval_images(exported, batch)
        out = run_onnx(path, x) if entry["format"] == "onnx" else run_litert(path, x)
        assert out.shape == (batch, 3) and np.isfinite(out).all()
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=0.02)  # still probabilities


def test_fp32_variants_equal_keras(exported):
    model = keras.saving.load_model(exported / "train" / "model.keras")
    x = eval_images(exported, 8)
    reference = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(run_onnx(exported / "export" / "model.onnx", x), reference, atol=1e-5)
    np.testing.assert_allclose(run_litert(exported / "export" / "model_fp32.tflite", x), reference, atol=1e-5)


def test_manifest_records_every_artifact_with_hashes_specs_and_versions(exported):
    manifest = verify_bundle(exported)
    for name, variant in VARIANTS.items():
        entry = manifest["artifacts"][name]
        assert entry["path"] == f"export/{variant.filename}"
        assert entry["sha256"] == hashlib.sha256((exported / entry["path"]).read_bytes()).hexdigest()
        assert entry["bytes"] == (exported / entry["path"]).stat().st_size
        assert {"format", "precision", "runtime", "input", "output"} <= set(entry)
        assert entry["input"]["name"] == "image" and entry["input"]["shape"] == [-1, 28, 28, 1]
        assert entry["output"]["shape"] == [-1, 3]
    assert manifest["artifacts"]["onnx-fp32"]["opset"] == 18
    assert manifest["stages"]["export"]["opset"] == 18
    for tool in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        assert manifest["versions"][tool]
    sizes = {name: manifest["artifacts"][name]["bytes"] for name in VARIANTS}
    assert sizes["tflite-fp16"] < 0.6 * sizes["tflite-fp32"]
    assert sizes["tflite-int8"] < 0.4 * sizes["tflite-fp32"]


def test_c_array_bytes_equal_the_int8_tflite(exported):
    source = exported / "export" / "model_int8.cc"
    assert read_c_array(source) == (exported / "export" / "model_int8.tflite").read_bytes()
    text = source.read_text()
    assert "alignas(16) const unsigned char g_kerasport_model[]" in text
    assert f"g_kerasport_model_len = {(exported / 'export' / 'model_int8.tflite').stat().st_size};" in text
    assert "extern const unsigned int g_kerasport_model_len;" in (exported / "export" / "model_int8.h").read_text()
    tflm = load_manifest(exported)["artifacts"]["tflm"]
    assert tflm["all_ops_supported"] and "CONV_2D" in tflm["ops"]
    assert tflm["fits_flash"]["Cortex-M0+ (256 KiB, e.g. RP2040-class MCU)"] is True


def test_bundle_verify_refuses_a_flipped_byte_and_a_deleted_file(exported_copy):
    ok = runner.invoke(app, ["bundle", "verify", "--run", str(exported_copy)])
    assert ok.exit_code == 0 and "match the manifest" in ok.output

    onnx_path = exported_copy / "export" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))
    (exported_copy / "export" / "model_fp16.tflite").unlink()
    result = runner.invoke(app, ["bundle", "verify", "--run", str(exported_copy)])
    assert result.exit_code == 1
    assert "artifact 'onnx-fp32' was altered" in result.output
    assert "artifact 'tflite-fp16' is missing" in result.output


def test_corrupt_saved_model_exits_2_and_keeps_the_previous_export(exported_copy):
    before = {p.name: p.read_bytes() for p in (exported_copy / "export").iterdir()}
    manifest_before = (exported_copy / "manifest.json").read_text()
    (exported_copy / "train" / "saved_model" / "saved_model.pb").write_bytes(b"garbage")
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "onnx-fp32"])
    assert result.exit_code == 2, result.output
    assert "saved_model" in result.output
    assert {p.name: p.read_bytes() for p in (exported_copy / "export").iterdir()} == before
    assert (exported_copy / "manifest.json").read_text() == manifest_before

    # a SavedModel that is broken yet re-hashed (as a buggy tool would) still cannot be loaded: exit 2
    manifest = json.loads(manifest_before)
    from kerasport.manifest import hash_artifact

    manifest["artifacts"]["saved_model"]["sha256"] = hash_artifact(exported_copy / "train" / "saved_model")[0]
    (exported_copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "onnx-fp32"])
    assert result.exit_code == 2 and "not a loadable SavedModel" in result.output, result.output
    assert {p.name: p.read_bytes() for p in (exported_copy / "export").iterdir()} == before


def test_formats_subset_keeps_the_other_variants(exported_copy):
    onnx_before = (exported_copy / "export" / "model.onnx").read_bytes()
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "tflite-fp16", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [row["variant"] for row in rows] == ["tflite-fp16"]
    assert (exported_copy / "export" / "model.onnx").read_bytes() == onnx_before
    verify_bundle(exported_copy)  # the untouched variants still match their recorded hashes


def test_unknown_format_and_missing_bundle_exit_2(tmp_path, exported):
    bad = runner.invoke(app, ["export", "--run", str(exported), "--formats", "onnx-fp32,coreml"])
    assert bad.exit_code == 2 and "unknown coreml" in bad.output
    missing = runner.invoke(app, ["export", "--run", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "manifest.json is missing" in missing.output


def test_regression_model_and_int8_io_export(tmp_path):
    run = trained_bundle(tmp_path, task="regression", epochs=1)
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "tflite-int8", "tflm"], int8_io=True,
                                calibration_samples=20))
    manifest = verify_bundle(run)
    assert manifest["artifacts"]["tflite-int8"]["input"]["dtype"] == "int8"
    assert "quantization" in manifest["artifacts"]["tflite-int8"]["input"]
    x = eval_images(run, 4)
    model = keras.saving.load_model(run / "train" / "model.keras")
    np.testing.assert_allclose(run_onnx(run / "export" / "model.onnx", x),
                               keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-4)
    assert read_c_array(run / "export" / "model_int8.cc") == (run / "export" / "model_int8.tflite").read_bytes()


def test_edge_int8_has_batchnorm_folded_into_the_convolution(tmp_path):
    run = trained_bundle(tmp_path, arch="edge", epochs=1)
    export_bundle(ExportOptions(run=str(run), formats=["tflite-int8", "tflm"], calibration_samples=20))
    tflm = load_manifest(run)["artifacts"]["tflm"]
    assert "MUL" not in tflm["ops"] and "ADD" not in tflm["ops"], tflm["ops"]
    assert tflm["all_ops_supported"] and tflm["model_bytes"] < 256 * 1024
