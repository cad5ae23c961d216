"""The parity gate: passes a faithful bundle, catches a perturbed artifact, reports in JSON/Markdown/JUnit."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter
from helpers import copy_bundle
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, UsageError
from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.manifest import hash_artifact, load_manifest, require_verified, verify_bundle
from kerasport.parity.edges import EDGE_EXAMPLES
from kerasport.parity.formatting import SWEEP_SAMPLE_NOTE
from kerasport.parity.runners import EDGE_BATCH_SIZES
from kerasport.parity.stage import ParityOptions, run_parity
from kerasport.parity.sweep import ORT_SWEEP_LEVELS, SWEEP_THREADS
from kerasport.tolerances import TolerancePolicy
from kerasport.verdict import Verdict

runner = CliRunner()


def refresh_hash(run, name):
    """What a buggy converter does: write a wrong model and record its hash as if it were right."""
    manifest = load_manifest(run)
    artifact = manifest.artifact(name)
    sha256, size = hash_artifact(artifact.resolve(run))
    manifest.set_artifact(name, {**artifact.entry, "sha256": sha256, "bytes": size})
    manifest.save(run)


def perturb_onnx(run, scale=1.5):
    path = run / "export" / "model.onnx"
    model = onnx.load(str(path))
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if t.data_type == 1 else 0)
    array = onnx.numpy_helper.to_array(weights).copy()
    array.flat[: array.size // 10] *= scale  # one weight tensor, a tenth of its values
    weights.CopyFrom(onnx.numpy_helper.from_array(array, weights.name))
    onnx.save(model, str(path))
    refresh_hash(run, "onnx-fp32")


def perturb_tflite(run, filename="model_fp32.tflite", name="tflite-fp32"):
    path = run / "export" / filename
    data = bytearray(path.read_bytes())
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    # the largest float32 constant (a weight tensor): find its bytes in the flatbuffer and change them
    best = None
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] != np.float32 or len(detail["shape"]) < 2:
            continue
        try:
            values = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        if best is None or values.size > best.size:
            best = values.copy()
    offset = bytes(data).find(best.tobytes())
    assert offset > 0, "weight bytes not found in the flatbuffer"
    perturbed = best.copy()
    perturbed.flat[: perturbed.size // 10] *= 1.5
    data[offset:offset + best.nbytes] = perturbed.tobytes()
    path.write_bytes(bytes(data))
    refresh_hash(run, name)


def test_faithful_bundle_passes_and_records_verdicts(exported_copy):
    result = run_parity(ParityOptions(run=str(exported_copy)))
    assert result.exit_code == EXIT_OK, result.failures
    manifest = verify_bundle(exported_copy)
    for name in ("saved_model", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-dynamic",
                 "tflite-int8"):
        assert manifest.parity_verdict(name) == Verdict.PASS, name
    assert manifest.stage("parity")["passed"] is True and manifest.stage("parity")["reference"] == "keras"
    assert "keras" not in result.report.candidates
    for output in ("report.json", "report.md", "junit.xml", "errors.png"):
        assert (exported_copy / "parity" / output).is_file()
    require_verified(manifest, "onnx-fp32")  # the serving gate accepts it


def test_candidates_checked_side_by_side_answer_as_one_at_a_time(exported_copy, monkeypatch):
    from kerasport.parity import stage

    assert stage.CANDIDATE_THREADS > 1
    side_by_side = run_parity(ParityOptions(run=str(exported_copy), sweep=False, perf=False)).report
    monkeypatch.setattr(stage, "CANDIDATE_THREADS", 1)
    one_at_a_time = run_parity(ParityOptions(run=str(exported_copy), sweep=False, perf=False)).report
    assert list(side_by_side.candidates) == list(one_at_a_time.candidates)  # the plan's order, not finishing order
    output = next(iter(side_by_side.outputs))
    for name, result in one_at_a_time.candidates.items():
        assert side_by_side.candidates[name].verdict == result.verdict, name
        assert side_by_side.candidates[name].eval_stats(output) == result.eval_stats(output), name


def test_report_json_has_every_field(exported_copy):
    run_parity(ParityOptions(run=str(exported_copy)))
    report = json.loads((exported_copy / "parity" / "report.json").read_text())
    manifest = load_manifest(exported_copy)
    (image,), (output,) = manifest.contract.input_specs(), manifest.contract.output_names
    assert report["passed"] is True
    assert report["tolerances"] == TolerancePolicy().to_dict()
    floor = report["reference"]["noise_floor"]
    assert floor["max_abs_diff"] == floor["outputs"][output]["max_abs_diff"]
    assert report["reference"]["artifact"] == "keras" and report["labelled_data"]["given"] is True
    assert report["inputs"]["eval_sample"]["sha256"] == manifest.artifact("eval_sample").sha256
    edge = report["inputs"]["edge"]
    assert edge["batch_sizes"] == list(EDGE_BATCH_SIZES) and edge["examples"] == EDGE_EXAMPLES
    assert edge["inputs"][image.name]["kinds"] == ["min", "max", "uniform_noise", "single_bright_pixel",
                                                   "checkerboard"]
    described = edge["inputs"][image.name]["range"]
    assert (described["low"], described["high"], described["source"]) == (*image.value_range, "contract")
    assert report["artifacts"]["onnx-fp32"]["sha256"] == manifest.artifact("onnx-fp32").sha256
    assert {"tensorflow", "onnxruntime", "ai-edge-litert"} <= set(report["versions"])
    candidate = report["candidates"]["tflite-int8"]["outputs"][output]
    assert candidate["metrics"] == "classification" and candidate["labelled"] is True
    for key in ("max_abs_diff", "mean_abs_diff", "max_rel_diff", "top1_agreement", "label_flips", "accuracy",
                "reference_accuracy", "accuracy_delta", "accuracy_delta_ci95", "accuracy_ci95"):
        assert key in candidate["eval"], key
    assert set(candidate["edge"]) == {str(batch) for batch in EDGE_BATCH_SIZES}
    sweep = {row["settings"] for row in report["candidates"]["tflite-int8"]["sweep"]}
    assert sweep == {f"xnnpack={x}, threads={t}" for x in ("on", "off") for t in SWEEP_THREADS}
    assert {row["settings"] for row in report["candidates"]["onnx-fp32"]["sweep"]} == {
        f"optimization={level}, threads={t}" for level in ORT_SWEEP_LEVELS for t in SWEEP_THREADS}
    recorded = load_manifest(exported_copy)  # the selection policy reads the sweep's outcome there
    for name, result in report["candidates"].items():
        if result.get("sweep") is not None:
            beyond = [row["settings"] for row in result["sweep"] if not row.get("within_tolerance")]
            assert recorded.artifact(name).parity["sweep"] == {"settings": len(result["sweep"]),
                                                               "beyond_tolerance": beyond}, name
            assert recorded.artifact(name).settings_beyond_tolerance == beyond
    examples = report["inputs"]["eval_sample"]["examples"]
    for row in report["candidates"]["onnx-fp32"]["sweep"] + report["candidates"]["tflite-int8"]["sweep"]:
        ran = row["ran"]  # every example, or the sampled batches bit-identical to outputs computed on every one
        assert ran["of"] == examples
        assert (ran["same_as"] is None and ran["examples"] == examples) or (
            isinstance(ran["same_as"], str) and ran["examples"] <= examples)
    markdown = (exported_copy / "parity" / "report.md").read_text()
    assert "| onnx-fp32 | fp32 | onnxruntime |" in markdown and "PASSED" in markdown
    assert " ran on |" in markdown and SWEEP_SAMPLE_NOTE in markdown
    assert "no labelled data" not in markdown


def test_perturbed_onnx_weights_fail_the_gate_naming_the_artifact(exported_copy):
    perturb_onnx(exported_copy)
    verify_bundle(exported_copy)  # the hash was refreshed: integrity alone cannot catch this
    result = runner.invoke(app, ["parity", "--run", str(exported_copy), "--no-sweep"])
    assert result.exit_code == EXIT_CHECK_FAILED, result.output
    assert "onnx-fp32: max_abs_diff" in result.output
    manifest = load_manifest(exported_copy)
    assert manifest.parity_verdict("onnx-fp32") == Verdict.FAIL
    assert manifest.parity_verdict("tflite-fp32") == Verdict.PASS
    # The fp32 bound followed the model's own float32 error (vs float64) and still caught the fault.
    report = json.loads((exported_copy / "parity" / "report.json").read_text())
    floors = report["reference"]["noise_floor"]["outputs"]
    assert all(stats["float32_max_abs_diff"] > 0 for stats in floors.values()), floors
    with pytest.raises(UsageError, match="failed parity"):
        require_verified(manifest, "onnx-fp32")
    require_verified(manifest, "onnx-fp32", allow_unverified=True)


def test_perturbed_tflite_weights_fail_the_gate_naming_the_artifact(exported_copy):
    perturb_tflite(exported_copy)
    result = run_parity(ParityOptions(run=str(exported_copy), sweep=False))
    assert result.exit_code == EXIT_CHECK_FAILED
    failing = {failure.split(":")[0] for failure in result.failures}
    assert failing == {"tflite-fp32"}


def test_junit_counts_failures(exported_copy):
    perturb_onnx(exported_copy)
    result = run_parity(ParityOptions(run=str(exported_copy), sweep=False))
    root = ET.parse(exported_copy / "parity" / "junit.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    failed = [case for case in cases if case.find("failure") is not None]
    assert int(suite.get("tests")) == len(cases) == sum(len(c.checks) for c in result.report.candidates.values())
    assert int(suite.get("failures")) == len(failed) == len(result.failures) >= 1
    assert {case.get("classname") for case in failed} == {"parity.onnx-fp32"}
    assert all(case.find("failure").get("message") for case in failed)


def test_altered_file_without_a_refreshed_hash_is_refused(exported_copy):
    path = exported_copy / "export" / "model_fp16.tflite"
    path.write_bytes(path.read_bytes()[:-10])
    result = runner.invoke(app, ["parity", "--run", str(exported_copy)])
    assert result.exit_code == EXIT_CHECK_FAILED and "artifact 'tflite-fp16' was altered" in result.output


def test_rerun_after_the_old_reports_were_deleted(exported_copy):
    import shutil

    run_parity(ParityOptions(run=str(exported_copy), sweep=False))
    shutil.rmtree(exported_copy / "parity")
    again = run_parity(ParityOptions(run=str(exported_copy), sweep=False))
    assert again.exit_code == EXIT_OK and (exported_copy / "parity" / "report.json").is_file()
    verify_bundle(exported_copy)


def test_artifact_that_will_not_load_exits_3(exported_copy):
    (exported_copy / "export" / "model.onnx").write_bytes(b"not an onnx model")
    refresh_hash(exported_copy, "onnx-fp32")
    result = runner.invoke(app, ["parity", "--run", str(exported_copy), "--no-sweep"])
    assert result.exit_code == EXIT_RUNTIME, result.output
    assert "onnx-fp32" in result.output
    junit = ET.parse(exported_copy / "parity" / "junit.xml").getroot().find("testsuite")
    assert int(junit.get("errors")) == 1


def test_usage_errors_exit_2(exported_copy, tmp_path):
    missing = runner.invoke(app, ["parity", "--run", str(tmp_path / "none")])
    assert missing.exit_code == EXIT_USAGE and "manifest.json is missing" in missing.output
    manifest = load_manifest(exported_copy)  # as `kerasport train` leaves it: nothing exported yet
    for artifact in list(manifest.artifacts()):
        if artifact.format in ("onnx", "tflite"):
            manifest.remove_artifact(artifact.name)
    manifest.save(exported_copy)
    not_exported = runner.invoke(app, ["parity", "--run", str(exported_copy)])
    assert not_exported.exit_code == EXIT_USAGE and "kerasport export" in not_exported.output


def test_tolerance_file_and_option_override(exported_copy):
    (exported_copy / "parity.toml").write_text("[fp32]\natol = 1e-15\nnoise_multiple = 0\n")
    strict = run_parity(ParityOptions(run=str(exported_copy), sweep=False))
    assert strict.exit_code == EXIT_CHECK_FAILED
    assert any(f.startswith(("onnx-fp32: max_abs_diff", "tflite-fp32: max_abs_diff")) for f in strict.failures)
    assert str(exported_copy / "parity.toml") in strict.report.tolerances["source"]

    relaxed = runner.invoke(app, ["parity", "--run", str(exported_copy), "--no-sweep", "--fp32-atol", "1e-3"])
    assert relaxed.exit_code == EXIT_OK, relaxed.output

    (exported_copy / "parity.toml").write_text("[fp32]\nslack = 3\n")
    bad = runner.invoke(app, ["parity", "--run", str(exported_copy)])
    assert bad.exit_code == EXIT_USAGE and "unknown key 'slack'" in bad.output


def test_regression_model_parity(regression_trained, tmp_path):
    run = copy_bundle(regression_trained, tmp_path)
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "tflite-fp32", "tflite-fp16"]))
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    (output,) = load_manifest(run).contract.output_names
    stats = result.report.candidates["onnx-fp32"].eval_stats(output)
    assert {"mae", "reference_mae", "mae_delta", "mae_delta_ci95"} <= set(stats) and abs(stats["mae_delta"]) < 1e-4
    assert "top1_agreement" not in stats


def test_serving_gate_refuses_a_missing_verdict(exported_copy):
    manifest = load_manifest(exported_copy)  # exported but never checked
    with pytest.raises(UsageError, match="has no parity verdict"):
        require_verified(manifest, "tflite-int8")
    with pytest.raises(UsageError, match="not in the manifest"):
        require_verified(manifest, "coreml")
