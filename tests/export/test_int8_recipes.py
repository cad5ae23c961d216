"""`kerasport export --int8-recipe auto|full|FILE` on a tiny trained bundle: real conversions, real runtimes.

The bundle's own parity.toml sets the int8 bounds the search must meet (as it does for the gate), so each test picks
bounds from what the code measured on this very model: one that the full-integer model passes, one that nothing
passes, and one that only a float layer passes.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest
from helpers import trained_bundle
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_USAGE
from kerasport.export.int8_recipe import MAX_FLOAT_LAYERS
from kerasport.export.stage import STAGE_DIR_NAME, ExportOptions, export_bundle
from kerasport.int8_recipe import (
    RECIPE_SUFFIX,
    RUNG_CALIBRATION,
    RUNG_FLOAT_LAYERS,
    RUNG_FULL,
    RUNG_INT16,
    TUNING_ARTIFACT,
    Int8Recipe,
)
from kerasport.manifest import artifact_entry, load_manifest
from kerasport.samples import Samples, load_samples, save_samples
from kerasport.tolerances import TOLERANCE_FILE

runner = CliRunner()
TFLITE = ["tflite-int8", "tflm"]
CALIBRATION = 40


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return trained_bundle(tmp_path_factory.mktemp("recipes"), epochs=1)


@pytest.fixture
def run(bundle, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(bundle, copy)
    return copy


def set_int8_bounds(run, **bounds) -> None:
    lines = ["[int8]"] + [f"{key} = {value!r}" for key, value in bounds.items()]
    (run / TOLERANCE_FILE).write_text("\n".join(lines) + "\n")


def export(run, formats, recipe="auto"):
    return export_bundle(ExportOptions(run=str(run), formats=formats, calibration_samples=CALIBRATION,
                                       int8_recipe=str(recipe)))


def artifact_bytes(run, name) -> bytes:
    return load_manifest(run).artifact(name).resolve(run).read_bytes()


def record(run, name) -> dict:
    return load_manifest(run).artifact(name).get("int8_recipe")


def test_train_writes_a_tuning_sample_apart_from_the_eval_sample(bundle):
    manifest = load_manifest(bundle)
    tuning = load_samples(manifest.artifact(TUNING_ARTIFACT).resolve(bundle), manifest.contract)
    evaluation = load_samples(manifest.artifact("eval_sample").resolve(bundle), manifest.contract)
    assert len(tuning) and tuning.labelled
    name = manifest.contract.input_names[0]
    seen = {array.tobytes() for array in evaluation.inputs[name]}
    assert not any(array.tobytes() in seen for array in tuning.inputs[name])


def test_auto_keeps_a_passing_full_integer_model_byte_for_byte(run):
    set_int8_bounds(run, min_agreement=0.0, max_accuracy_drop=1.0)
    export(run, ["onnx-int8", *TFLITE], "full")
    full = {name: artifact_bytes(run, name) for name in ("onnx-int8", *TFLITE)}
    assert record(run, "tflite-int8")["mode"] == "full"
    export(run, ["onnx-int8", *TFLITE], "auto")
    for name, data in full.items():
        assert artifact_bytes(run, name) == data, name
        entry = record(run, name)
        assert entry["identical_to_full"] and "byte-identical" in entry["outcome"]
        assert [rung["rung"] for rung in entry["rungs"]] == [RUNG_FULL]
    assert (run / STAGE_DIR_NAME / f"tflite-int8{RECIPE_SUFFIX}").read_bytes() == Int8Recipe().to_json()


def test_auto_finds_float_layers_a_saved_recipe_reproduces_and_eval_data_never_matters(run, tmp_path):
    # An impossible bound: no rung fixes it, the variant still ships full-integer (the gate judges it), and every
    # rung is recorded — every single-layer candidate with its figures.
    set_int8_bounds(run, atol=1e-9, min_agreement=0.0, max_accuracy_drop=1.0)
    export(run, ["tflite-int8"], "full")
    full = artifact_bytes(run, "tflite-int8")
    export(run, ["tflite-int8"], "auto")
    assert artifact_bytes(run, "tflite-int8") == full
    entry = record(run, "tflite-int8")
    assert "no rung passes" in entry["outcome"] and entry["identical_to_full"] is True and entry["search_seconds"] > 0
    rungs = {rung["rung"]: rung for rung in entry["rungs"]}
    assert list(rungs) == [RUNG_FULL, RUNG_FLOAT_LAYERS, RUNG_INT16, RUNG_CALIBRATION]
    assert all("max_abs_diff" in trial and not trial["passed"] for trial in rungs[RUNG_FLOAT_LAYERS]["trials"])
    full_error = rungs[RUNG_FULL]["figures"]["max_abs_diff"]
    ranked = [trial for trial in rungs[RUNG_FLOAT_LAYERS]["trials"] if trial["purpose"] == "rank"]
    assert {trial["float_layers"][0] for trial in ranked} == set(rungs[RUNG_FLOAT_LAYERS]["ranking"])
    best = min(ranked, key=lambda trial: trial["max_abs_diff"])
    assert best["max_abs_diff"] < full_error, "no layer in float lowers the int8 error of this model"
    # A bound the full-integer model misses and the best single float layer meets.
    bound = min(best["max_abs_diff"] + 2e-6, (best["max_abs_diff"] + full_error) / 2)
    set_int8_bounds(run, atol=bound, min_agreement=0.0, max_accuracy_drop=1.0)
    export(run, TFLITE, "auto")
    entry = record(run, "tflite-int8")
    layers = entry["recipe"]["float_layers"]
    assert 1 <= len(layers) <= MAX_FLOAT_LAYERS and entry["rungs"][-1]["rung"] == RUNG_FLOAT_LAYERS
    assert entry["rungs"][-1]["figures"]["passed"] and entry["cost"]["bytes"] > 0
    mixed = artifact_bytes(run, "tflite-int8")
    recipe_file = run / STAGE_DIR_NAME / f"tflite-int8{RECIPE_SUFFIX}"
    recipe_bytes = recipe_file.read_bytes()
    assert (run / STAGE_DIR_NAME / f"tflm{RECIPE_SUFFIX}").read_bytes() == recipe_bytes
    assert record(run, "tflm")["recipe"] == entry["recipe"]
    # The saved recipe reproduces the same bytes.
    saved = tmp_path / "saved.recipe.json"
    saved.write_bytes(recipe_bytes)
    export(run, ["tflite-int8"], saved)
    assert artifact_bytes(run, "tflite-int8") == mixed
    assert record(run, "tflite-int8")["mode"] == "file"
    # Other eval inputs and labels: the search reads only the tuning sample, so the recipe is the same.
    _replace_eval_sample(run)
    export(run, ["tflite-int8"], "auto")
    assert recipe_file.read_bytes() == recipe_bytes
    assert artifact_bytes(run, "tflite-int8") == mixed


def _replace_eval_sample(run) -> None:
    manifest = load_manifest(run)
    artifact = manifest.artifact("eval_sample")
    sample = load_samples(artifact.resolve(run), manifest.contract)
    rng = np.random.default_rng(7)
    inputs = {name: rng.permutation(array)[::-1].copy() * 0.5 for name, array in sample.inputs.items()}
    targets = {name: (array + 1) % 3 for name, array in sample.targets.items()}
    before = hashlib.sha256(artifact.resolve(run).read_bytes()).hexdigest()
    save_samples(artifact.resolve(run), Samples(inputs, targets))
    manifest.set_artifact("eval_sample", artifact_entry(run, artifact.path, format="npz", precision="fp32"))
    manifest.save(run)
    assert hashlib.sha256(artifact.resolve(run).read_bytes()).hexdigest() != before


def test_onnx_recipe_file_keeps_a_layer_in_float_reproducibly(run, tmp_path):
    manifest = load_manifest(run)
    recipe = Int8Recipe(float_layers=("conv1",), calibration_method="percentile")
    path = tmp_path / "conv1.recipe.json"
    path.write_bytes(recipe.to_json())
    export(run, ["onnx-int8"], path)
    first = artifact_bytes(run, "onnx-int8")
    details = load_manifest(run).artifact("onnx-int8")
    assert details.get("float_nodes") > 0 and "percentile" in details.get("quantization")
    assert (run / STAGE_DIR_NAME / f"onnx-int8{RECIPE_SUFFIX}").read_bytes() == recipe.to_json()
    export(run, ["onnx-int8"], path)
    assert artifact_bytes(run, "onnx-int8") == first
    assert manifest.contract.input_names  # the bundle is still whole


def test_a_bad_recipe_is_a_usage_error_and_changes_nothing(run, tmp_path):
    export(run, ["tflite-int8"], "full")
    before = json.loads((run / "manifest.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    unknown = tmp_path / "unknown.json"
    unknown.write_bytes(Int8Recipe(float_layers=("no_such_layer",)).to_json())
    for path, said in ((bad, "not an int8 recipe"), (unknown, "no_such_layer")):
        result = runner.invoke(app, ["export", "--run", str(run), "--formats", "tflite-int8", "--int8-recipe",
                                     str(path)])
        assert result.exit_code == EXIT_USAGE, result.output
        assert said in result.output and "Traceback" not in result.output
    assert json.loads((run / "manifest.json").read_text()) == before
