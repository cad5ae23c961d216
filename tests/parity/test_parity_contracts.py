"""Parity on contracts other than the reference CNN: several inputs and outputs, a tabular regressor, unlabelled
eval data, a SavedModel reference and variants export could not build."""

import json
import shutil

import onnx
import pytest
from parity_bundles import mlp_bundle, two_io_bundle
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE
from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.manifest import hash_artifact, load_manifest
from kerasport.parity.stage import NO_LABELS, ParityOptions, run_parity
from kerasport.samples import Samples, load_samples, save_samples
from kerasport.verdict import Verdict

FP32_FP16 = ["onnx-fp32", "tflite-fp32", "tflite-fp16"]


@pytest.fixture(scope="module")
def two_io(tmp_path_factory):
    run = two_io_bundle(tmp_path_factory.mktemp("two-io") / "run")
    export_bundle(ExportOptions(run=str(run), formats=FP32_FP16))
    return run


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    run = mlp_bundle(tmp_path_factory.mktemp("mlp") / "run")
    export_bundle(ExportOptions(run=str(run), formats=FP32_FP16))
    return run


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def rehash(run, name):
    manifest = load_manifest(run)
    artifact = manifest.artifact(name)
    sha256, size = hash_artifact(artifact.resolve(run))
    manifest.set_artifact(name, {**artifact.entry, "sha256": sha256, "bytes": size})
    manifest.save(run)


def test_two_inputs_two_outputs_every_output_compared_by_its_kind(two_io, tmp_path):
    run = copy_of(two_io, tmp_path)
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    contract = load_manifest(run).contract
    classes, values = contract.classification_output, next(s for s in contract.output_specs()
                                                           if not s.is_classification)
    report = result.report
    assert set(report.candidates) == {"saved_model", *FP32_FP16}
    assert report.candidates["tflite-fp16"].precision == "fp16"
    for name, candidate in report.candidates.items():
        assert set(candidate.outputs) == set(contract.output_names), name
        probabilities = candidate.eval_stats(classes.name)
        regression = candidate.eval_stats(values.name)
        assert probabilities["top1_agreement"] == 1.0 and "accuracy_ci95" in probabilities
        assert "mae" not in probabilities
        assert "mae_delta" in regression and "top1_agreement" not in regression
        checks = {check.id for check in candidate.checks}
        assert {f"max_abs_diff[{classes.name}]", f"max_abs_diff[{values.name}]", f"accuracy_drop[{classes.name}]",
                f"mae_increase[{values.name}]"} <= checks
    edge = report.inputs.edge.inputs
    picture, features = contract.input_specs()
    assert (picture.kind, features.kind) == ("image", "tensor")
    assert edge[picture.name]["kinds"][-1] == "checkerboard" and edge[picture.name]["range"]["source"] == "contract"
    assert edge[features.name]["kinds"][-1] == "alternating"
    assert edge[features.name]["range"]["source"] == "eval sample"
    manifest = load_manifest(run)
    assert all(manifest.parity_verdict(name) == Verdict.PASS for name in report.candidates)
    markdown = (run / "parity" / "report.md").read_text()
    assert f"## Output `{classes.name}`" in markdown and f"## Output `{values.name}`" in markdown


def test_a_wrong_value_head_fails_that_output_only(two_io, tmp_path):
    run = copy_of(two_io, tmp_path)
    path = load_manifest(run).artifact("onnx-fp32").resolve(run)
    model = onnx.load(str(path))
    # the value head's kernel: the model's only [features, 1] matrix
    head = next(tensor for tensor in model.graph.initializer if len(tensor.dims) == 2 and tensor.dims[1] == 1)
    head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) * 1.5, head.name))
    onnx.save(model, str(path))
    rehash(run, "onnx-fp32")
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == EXIT_CHECK_FAILED
    values = next(spec for spec in load_manifest(run).contract.output_specs() if not spec.is_classification)
    failing = {failure.split(" — ")[0] for failure in result.failures}
    assert f"onnx-fp32: max_abs_diff[{values.name}]" in failing
    assert all(failure.startswith("onnx-fp32: ") and f"[{values.name}]" in failure for failure in failing)


def test_unlabelled_eval_sample_gives_agreement_only_and_says_so(two_io, tmp_path):
    run = copy_of(two_io, tmp_path)
    manifest = load_manifest(run)
    path = manifest.artifact("eval_sample").resolve(run)
    save_samples(path, Samples(load_samples(path, manifest.contract).inputs))
    rehash(run, "eval_sample")
    result = CliRunner().invoke(app, ["parity", "--run", str(run), "--no-sweep"])
    assert result.exit_code == EXIT_OK, result.output
    assert NO_LABELS in result.output
    report = json.loads((run / "parity" / "report.json").read_text())
    assert report["labelled_data"] == {"given": False, "outputs": dict.fromkeys(manifest.contract.output_names, False),
                                       "notes": [NO_LABELS]}
    for candidate in report["candidates"].values():
        for stats in candidate["outputs"].values():
            assert not {"accuracy", "accuracy_delta", "mae", "mae_delta"} & set(stats["eval"])
    species = report["candidates"]["onnx-fp32"]["outputs"][manifest.contract.classification_output.name]
    assert species["eval"]["top1_agreement"] == 1.0 and species["labelled"] is False
    assert NO_LABELS[1:] in (run / "parity" / "report.md").read_text()


def test_tabular_regressor_mae_deltas(mlp, tmp_path):
    run = copy_of(mlp, tmp_path)
    result = run_parity(ParityOptions(run=str(run)))
    assert result.exit_code == EXIT_OK, result.failures
    (row,), (price,) = load_manifest(run).contract.input_specs(), load_manifest(run).contract.output_specs()
    assert row.kind == "tensor" and price.kind == "values" and result.report.task == "regression"
    for name in FP32_FP16:
        stats = result.report.candidates[name].eval_stats(price.name)
        assert abs(stats["mae_delta"]) <= stats["reference_mae"] * 0.02 and "top1_agreement" not in stats
        assert result.report.candidates[name].sweep, name
    assert result.report.inputs.edge.inputs[row.name]["kinds"] == [
        "min", "max", "zeros", "uniform_noise", "alternating"]


def test_savedmodel_reference_when_the_bundle_has_no_keras_model(mlp, tmp_path):
    run = copy_of(mlp, tmp_path)
    raw = json.loads((run / "manifest.json").read_text())
    (run / raw["artifacts"].pop("keras")["path"]).unlink()
    raw["model"]["source"] = {"kind": "saved_model", "path": "elsewhere/saved_model"}
    (run / "manifest.json").write_text(json.dumps(raw))
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    assert result.report.reference.artifact == "saved_model"
    assert result.report.reference.runtime.startswith("tensorflow")
    assert set(result.report.candidates) == set(FP32_FP16)
    assert load_manifest(run).stage("parity")["reference"] == "saved_model"


def test_without_an_eval_sample_inputs_come_from_the_spec(mlp, tmp_path):
    run = copy_of(mlp, tmp_path)
    manifest = load_manifest(run)
    manifest.remove_artifact("eval_sample")
    manifest.save(run)
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    sample = result.report.inputs.eval_sample
    assert sample.generated is True and sample.examples > 0 and sample.labelled_outputs == []
    assert result.report.labelled_data.given is False
    assert result.report.labelled_data.notes[0].startswith(NO_LABELS)


def test_variants_export_could_not_build_are_listed_not_checked(two_io, tmp_path):
    run = copy_of(two_io, tmp_path)
    manifest = load_manifest(run)
    failed = manifest.artifact("tflite-fp16")
    failed.resolve(run).unlink()
    reason = "failed: TFLite fp16: op FlexErf is not a TFLite built-in"
    manifest.set_artifact(failed.name, {**failed.entry, "sha256": "", "bytes": 0, "status": reason})
    manifest.save(run)
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    assert result.report.not_built == {failed.name: reason} and failed.name not in result.report.candidates
    assert load_manifest(run).parity_verdict(failed.name) is None
    assert f"- {failed.name}: {reason}" in (run / "parity" / "report.md").read_text()

    for name in ("onnx-fp32", "tflite-fp32"):
        manifest.set_artifact(name, {**manifest.artifact(name).entry, "status": "failed: test"})
    manifest.save(run)
    nothing = CliRunner().invoke(app, ["parity", "--run", str(run)])
    assert nothing.exit_code == EXIT_USAGE and "3 recorded as failed" in nothing.output
