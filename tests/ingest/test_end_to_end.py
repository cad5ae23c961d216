"""Issue 8 end to end: a model trained elsewhere goes through `kerasport import` → `export` → `parity` (the CLI)
→ `kerasport serve` (a real subprocess, queried over HTTP), and what comes back equals Keras on the same inputs.

Case 1: MobileNetV2 (all variants; slow). Case 2: two inputs, two outputs. Case 3: a tabular MLP regressor.
(Case 7, the reference `kerasport run` path, is tests/e2e/test_pipeline.py.) One bundle per case, built once.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import keras
import numpy as np
import pytest
from helpers import ServerProcess
from import_helpers import invoke

from devtools.imported_models import MOBILENET_LABELS, mobilenet_v2, noise_pictures
from devtools.tiny_models import CLASS_OUTPUT, CLASSES, VALUE_OUTPUT
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK
from kerasport.export.variants import VARIANTS
from kerasport.manifest import load_manifest, verify_bundle
from kerasport.tolerances import PRECISION_CLASS, TolerancePolicy
from kerasport.verdict import Verdict

FP32_ATOL = TolerancePolicy().fp32.atol
FP32_VARIANTS = ("onnx-fp32", "tflite-fp32")
MOBILENET_EXAMPLES = 16
TIMEOUT = 60


@dataclass
class Verified:
    """A bundle after import, export and parity through the CLI, and what each command answered."""

    run: Path
    export_rows: list[dict]
    parity_exit: int
    report: dict


def import_export_parity(run: Path, source: Path, import_args: list[str], export_args: list[str],
                         parity_args: list[str] = ()) -> Verified:
    result = invoke(["import", str(source), "--run", str(run), *import_args])
    assert result.exit_code == EXIT_OK, result.stderr
    return export_parity(run, export_args, parity_args)


def export_parity(run: Path, export_args: list[str], parity_args: list[str] = ()) -> Verified:
    result = invoke(["export", "--run", str(run), *export_args, "--json"])
    assert result.exit_code == EXIT_OK, result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    parity = invoke(["parity", "--run", str(run), "--no-sweep", *parity_args])
    report = json.loads((run / "parity" / "report.json").read_text())
    return Verified(run, rows, parity.exit_code, report)


def keras_outputs(run: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bundle's Keras model on `inputs` (`model(x)`, training=False), keyed by the contract's output names."""
    manifest = load_manifest(run)
    model = keras.saving.load_model(manifest.artifact("keras").resolve(run))
    arrays = [inputs[name] for name in manifest.contract.input_names]
    outputs = model(arrays[0] if len(arrays) == 1 else arrays, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: keras.ops.convert_to_numpy(value)
            for name, value in zip(manifest.contract.output_names, outputs, strict=True)}


def v2_tensor(name: str, array: np.ndarray) -> dict:
    return {"name": name, "shape": list(array.shape), "datatype": "FP32", "data": array.ravel().tolist()}


def v2_outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {tensor["name"]: np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
            for tensor in response.json()["outputs"]}


def assert_close(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(served) == set(expected)
    for name, value in expected.items():
        assert served[name].shape == value.shape, name
        np.testing.assert_allclose(served[name], value, rtol=0, atol=FP32_ATOL, err_msg=name)


def candidate(report: dict, name: str) -> dict:
    return report["candidates"][name]


# --- case 1: MobileNetV2, every variant -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory) -> Verified:
    work = tmp_path_factory.mktemp("mobilenet")
    mobilenet_v2().save(work / "mobilenet.keras")
    np.savez(work / "eval.npz", x=noise_pictures(MOBILENET_EXAMPLES, seed=1),
             y=np.random.default_rng(1).integers(0, len(MOBILENET_LABELS), MOBILENET_EXAMPLES))
    np.savez(work / "calibration.npz", x=noise_pictures(MOBILENET_EXAMPLES, seed=2))
    # Default tolerances. fp16 differs from Keras by up to ~0.011 on a noise edge picture here, over the fixed 1e-2
    # the 8-layer reference CNN needs; the fp16 bound follows the model's own fp16 weight-rounding error (2x), so
    # it holds for MobileNetV2's 50-odd rounded layers. int8 keeps its defaults: see test_mobilenet_parity.
    # --int8-recipe full: the default `auto` search finds no rung that passes on this untrained network (measured:
    # every float-layer rung fails, and it ships the full-integer recipe, minmax, no float layers), so asking for
    # full directly builds the same int8 artifacts and the same verdicts without about 40 s of searching; the search
    # itself is tests/export/test_int8_recipes.py's subject.
    return import_export_parity(
        work / "run", work / "mobilenet.keras",
        ["--eval-data", f"npz:{work / 'eval.npz'}", "--calibration-data", f"npz:{work / 'calibration.npz'}",
         "--labels", ",".join(MOBILENET_LABELS), "--name", "mobilenet-v2"],
        ["--calibration-samples", str(MOBILENET_EXAMPLES), "--int8-recipe", "full"],
        # the int8 candidates fail (test_mobilenet_parity): --no-explain skips their automatic per-layer walk
        # (about 25 s here), which tests/parity/test_explain.py covers
        ["--no-explain"])


@pytest.mark.slow
def test_mobilenet_exports_every_variant(mobilenet):
    assert [row["variant"] for row in mobilenet.export_rows] == list(VARIANTS)
    assert all(row["status"] == "ok" for row in mobilenet.export_rows), mobilenet.export_rows
    manifest = verify_bundle(mobilenet.run)
    (spec,) = manifest.contract.inputs
    assert (spec.kind, spec.shape, spec.image.color_mode) == ("image", (-1, 96, 96, 3), "rgb")
    assert manifest.contract.classification_output.labels == MOBILENET_LABELS


@pytest.mark.slow
def test_mobilenet_parity(mobilenet):
    """Every fp32 and fp16 variant passes. The int8 ones may not: an untrained network on noise pictures has
    near-uniform class scores that 8-bit weights and activations reorder (measured: 77-85 % top-1 agreement on the
    decisive examples against the required 99 %). That is the gate doing its job, so int8 keeps its default bar and
    this test asserts that int8 candidates are the only ones failing, with exit 1."""
    report = mobilenet.report
    verdicts = {name: result["verdict"] for name, result in report["candidates"].items()}
    assert set(verdicts) >= {name for name, v in VARIANTS.items() if v.runnable}
    for name, result in report["candidates"].items():
        if PRECISION_CLASS[result["precision"]] != "int8":
            failures = [c["message"] for c in result["checks"] if not c["passed"]]
            assert result["verdict"] == Verdict.PASS, (name, failures)
        if PRECISION_CLASS[result["precision"]] == "fp32":
            assert result["outputs"]["predictions"]["eval"]["max_abs_diff"] <= FP32_ATOL, name
    failing = {failure.split(":")[0] for failure in report["failures"]}
    assert all(PRECISION_CLASS[candidate(report, name)["precision"]] == "int8" for name in failing), failing
    assert mobilenet.parity_exit == (EXIT_CHECK_FAILED if failing else EXIT_OK)


@pytest.mark.slow
def test_mobilenet_served_onnx_fp32_matches_keras_and_classifies_a_png(mobilenet):
    from PIL import Image

    run = mobilenet.run
    manifest = load_manifest(run)
    (name,) = manifest.contract.input_names
    pictures = noise_pictures(3, seed=7)
    expected = keras_outputs(run, {name: pictures})
    server = ServerProcess(run, "--variant", "onnx-fp32", "--no-access-log")
    try:
        assert server.ready["variant"] == "onnx-fp32"
        url = f"{server.url}/v2/models/mobilenet-v2/infer"
        served = v2_outputs(httpx.post(url, json={"inputs": [v2_tensor(name, pictures)]}, timeout=TIMEOUT))
        assert_close(served, expected)

        # A 96x96 RGB PNG of the first picture: no resize, so Keras on its pixels is the exact expectation.
        png = io.BytesIO()
        Image.fromarray(pictures[0].astype(np.uint8), "RGB").save(png, format="PNG")
        response = httpx.post(f"{server.url}/v1/models/mobilenet-v2:classify?top_k=3", content=png.getvalue(),
                              headers={"Content-Type": "image/png"}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        probabilities = expected["predictions"][0]
        best = np.argsort(-probabilities)[:3]
        assert [row["label"] for row in result["top_k"]] == [MOBILENET_LABELS[i] for i in best]
        np.testing.assert_allclose([row["probability"] for row in result["top_k"]], probabilities[best],
                                   atol=FP32_ATOL)
    finally:
        assert server.stop() == 0


# --- case 2: two inputs (picture + features), two outputs (class probabilities + a value) ------------------------

@pytest.fixture(scope="module")
def two_io(imported_bundle, tmp_path_factory) -> Verified:
    run = tmp_path_factory.mktemp("two-io") / "run"
    shutil.copytree(imported_bundle, run)  # `kerasport import` of the two-input model, run once per session
    return export_parity(run, ["--formats", ",".join(FP32_VARIANTS)])


def test_two_io_parity_checks_both_outputs(two_io):
    assert [row["variant"] for row in two_io.export_rows] == list(FP32_VARIANTS)
    assert two_io.parity_exit == EXIT_OK, two_io.report["failures"]
    assert two_io.report["task"] == "mixed"
    for name in ("saved_model", *FP32_VARIANTS):
        outputs = candidate(two_io.report, name)["outputs"]
        klass, amount = outputs[CLASS_OUTPUT], outputs[VALUE_OUTPUT]
        assert klass["metrics"] == "classification" and amount["metrics"] == "regression", name
        assert {"top1_agreement", "accuracy_delta"} <= set(klass["eval"]), name
        assert "mae_delta" in amount["eval"] and "top1_agreement" not in amount["eval"], name
        assert abs(amount["eval"]["mae_delta"]) <= FP32_ATOL, name
        checks = {check["id"] for check in candidate(two_io.report, name)["checks"]}
        assert {f"accuracy_drop[{CLASS_OUTPUT}]", f"mae_increase[{VALUE_OUTPUT}]",
                f"max_abs_diff[{VALUE_OUTPUT}]"} <= checks, name


def test_two_io_served_v2_infer_with_two_named_inputs(two_io):
    rng = np.random.default_rng(11)
    inputs = {"picture": rng.integers(0, 256, (2, 32, 32, 3)).astype(np.float32),
              "features": rng.normal(size=(2, 8)).astype(np.float32)}
    expected = keras_outputs(two_io.run, inputs)
    model = load_manifest(two_io.run).name
    server = ServerProcess(two_io.run, "--variant", "tflite-fp32", "--no-access-log")
    try:
        body = {"inputs": [v2_tensor(name, array) for name, array in inputs.items()]}
        served = v2_outputs(httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=TIMEOUT))
        assert_close(served, expected)
        assert served[CLASS_OUTPUT].shape == (2, len(CLASSES))
    finally:
        assert server.stop() == 0


# --- case 3: a tabular MLP regressor, [batch, 13] -> [batch, 1] ---------------------------------------------------

@pytest.fixture(scope="module")
def regressor(mlp_keras, mlp_npz, tmp_path_factory) -> Verified:
    run = tmp_path_factory.mktemp("regressor") / "run"
    return import_export_parity(run, mlp_keras, ["--eval-data", f"npz:{mlp_npz}", "--name", "regressor"],
                                ["--formats", ",".join(FP32_VARIANTS)])


def test_regressor_parity_reports_mae_deltas(regressor):
    assert regressor.parity_exit == EXIT_OK, regressor.report["failures"]
    assert regressor.report["task"] == "regression"
    (output,) = load_manifest(regressor.run).contract.output_names
    for name in FP32_VARIANTS:
        measured = candidate(regressor.report, name)["outputs"][output]["eval"]
        assert measured["reference_mae"] > 0 and abs(measured["mae_delta"]) <= FP32_ATOL, (name, measured)
        assert "top1_agreement" not in measured


def test_regressor_served_tf_serving_instances(regressor, mlp_npz):
    with np.load(mlp_npz) as data:
        rows = data["x"][:3]
    contract = load_manifest(regressor.run).contract
    (name,), (output,) = contract.input_names, contract.output_names
    expected = keras_outputs(regressor.run, {name: rows})[output]
    server = ServerProcess(regressor.run, "--variant", "onnx-fp32", "--no-access-log")
    try:
        response = httpx.post(f"{server.url}/v1/models/regressor:predict", json={"instances": rows.tolist()},
                              timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        predictions = np.asarray(response.json()["predictions"], np.float32)
        assert predictions.shape == (len(rows), 1) == expected.shape
        np.testing.assert_allclose(predictions, expected, rtol=0, atol=FP32_ATOL)
    finally:
        assert server.stop() == 0
