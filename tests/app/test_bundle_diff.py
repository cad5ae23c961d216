"""`kerasport bundle diff RUN_A RUN_B`: which artifacts differ (sha256), and for models how far apart each layer's
weights are. Exit 0 identical, 1 different, 2 a missing bundle. The bundles are a small imported model exported
to ONNX and TFLite; one copy has a single weight of one layer moved by DELTA."""

import json
import shutil

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from devtools.tiny_models import write_imported
from kerasport.app.cli import app
from kerasport.bundle_diff import DIFFERS, EQUIVALENT, ONLY_A, SAME
from kerasport.errors import EXIT_OK, EXIT_USAGE
from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.manifest import artifact_entry, load_manifest
from kerasport.samples import Samples
from kerasport.verdict import Verdict

runner = CliRunner()
FORMATS = ["onnx-fp32", "tflite-fp32"]
CHANGED_LAYER = "hidden"
DELTA = 0.5
EXIT_DIFFERENT = 1


def small_model():
    keras.utils.set_random_seed(0)
    features = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(5, activation="relu", name=CHANGED_LAYER)(features)
    label = keras.layers.Dense(3, activation="softmax", name="label")(hidden)
    return keras.Model(features, label)


def write_bundle(run, model, formats=FORMATS):
    rng = np.random.default_rng(0)
    inputs = {"features": rng.normal(size=(12, 6)).astype(np.float32)}
    write_imported(run, model, Samples(inputs), Samples(inputs), name="small", labels=("a", "b", "c"))
    export_bundle(ExportOptions(run=str(run), formats=list(formats), calibration_samples=12))
    return run


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """`a` and `same` (the same model written and exported twice), `moved` (one weight + DELTA, ONNX only)."""
    root = tmp_path_factory.mktemp("diff")
    model = small_model()
    runs = {"a": write_bundle(root / "a", model), "same": write_bundle(root / "same", model)}
    kernel, bias = model.get_layer(CHANGED_LAYER).get_weights()
    kernel[2, 3] += DELTA
    model.get_layer(CHANGED_LAYER).set_weights([kernel, bias])
    runs["moved"] = write_bundle(root / "moved", model, formats=["onnx-fp32"])
    return runs


def diff(*args):
    return runner.invoke(app, ["bundle", "diff", *map(str, args)])


def test_the_same_model_written_twice_is_identical(bundles):
    result = diff(bundles["a"], bundles["same"])
    assert result.exit_code == EXIT_OK, result.output
    names = load_manifest(bundles["a"]).artifact_names()
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[:len(names)]}
    assert rows == {name: SAME for name in names}
    assert "identical" in result.output.splitlines()[-1]


def test_a_moved_weight_is_found_in_its_layer_in_every_model_format(bundles):
    result = diff(bundles["a"], bundles["moved"], "--json")
    assert result.exit_code == EXIT_DIFFERENT, result.output
    report = json.loads(result.output)
    assert report["identical"] is False
    rows = {row["name"]: row for row in report["artifacts"]}
    assert rows["tflite-fp32"]["status"] == ONLY_A  # `moved` was exported to ONNX only
    assert rows["eval_sample"]["status"] == SAME
    keras_layers = {t["name"]: t["max_abs_diff"] for t in rows["keras"]["tensors"]}
    assert keras_layers[CHANGED_LAYER] == pytest.approx(DELTA)
    assert {name: delta for name, delta in keras_layers.items() if name != CHANGED_LAYER} == {"label": 0.0}
    onnx_deltas = sorted(t["max_abs_diff"] for t in rows["onnx-fp32"]["tensors"])
    assert onnx_deltas[-1] == pytest.approx(DELTA) and onnx_deltas[:-1] == [0.0] * (len(onnx_deltas) - 1)
    assert rows["saved_model"]["status"] == DIFFERS and "variables" in rows["saved_model"]["detail"]


def test_the_text_report_names_the_layer_and_the_artifacts_only_one_side_has(bundles):
    result = diff(bundles["a"], bundles["moved"])
    assert result.exit_code == EXIT_DIFFERENT
    lines = result.output.splitlines()
    assert any(line.split() == [f"{DELTA:.3g}", CHANGED_LAYER] for line in lines), result.output
    assert any(line.startswith("tflite-fp32") and ONLY_A in line for line in lines)
    assert "differ" in lines[-1]


def test_a_missing_bundle_is_a_usage_error(bundles, tmp_path):
    result = diff(bundles["a"], tmp_path / "nothing-here")
    assert result.exit_code == EXIT_USAGE
    assert "no bundle" in result.output


def test_a_report_that_differs_only_in_timings_is_equivalent(bundles, tmp_path):
    runs = []
    for name, seconds in (("x", 1.5), ("y", 2.5)):
        run = tmp_path / name
        shutil.copytree(bundles["a"], run)
        (run / "report.json").write_text(json.dumps({"verdict": Verdict.PASS, "seconds": seconds,
                                                      "finished": f"2026-01-0{int(seconds)}"}))
        manifest = load_manifest(run)
        manifest.set_artifact("report", artifact_entry(run, "report.json", format="json", precision="n/a"))
        manifest.save(run)
        runs.append(run)
    result = diff(*runs, "--json")
    assert result.exit_code == EXIT_OK, result.output
    rows = {row["name"]: row["status"] for row in json.loads(result.output)["artifacts"]}
    assert rows["report"] == EQUIVALENT

    (runs[1] / "report.json").write_text(json.dumps({"verdict": Verdict.FAIL, "seconds": 2.5}))
    manifest = load_manifest(runs[1])
    manifest.set_artifact("report", artifact_entry(runs[1], "report.json", format="json", precision="n/a"))
    manifest.save(runs[1])
    assert diff(*runs).exit_code == EXIT_DIFFERENT
