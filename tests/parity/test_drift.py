"""`kerasport parity --baseline OTHER_RUN`: flips, accuracy delta and output shift between two releases."""

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE
from kerasport.parity.drift import SHEET_PREFIX, ks_two_sample
from kerasport.samples import Samples

runner = CliRunner()
SIDE = 10
CLASSES = ("a", "b", "c")
EXAMPLES = 40
SHIFT = 1.5  # added to class 0's logit bias in the second release: some decisions flip to class 0


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIDE, SIDE, 1)).astype(np.float32)


def release(shift: float = 0.0):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 1), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    features = keras.Model(inputs, x).predict(images(64, 3), verbose=0)
    kernel = np.random.default_rng(0).normal(0, 1, (4, len(CLASSES))) / (features.std(axis=0)[:, None] + 1e-6)
    bias = -features.mean(axis=0) @ kernel
    bias[0] += shift
    model.get_layer("probabilities").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def write(run, model, labels=CLASSES, side=SIDE):
    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.ingest.importer import ContractHints, contract_from_keras, write_imported_bundle

    eval_images = images(EXAMPLES, 1)
    targets = release().predict(eval_images, verbose=0).argmax(axis=1)  # the first release is right by construction
    contract = contract_from_keras(model, ContractHints(labels=labels), {"image": (0, 255)})
    eval_samples = Samples({"image": eval_images}, {"probabilities": targets})
    write_imported_bundle(run, model, contract, eval_samples=eval_samples,
                          calibration=Samples({"image": images(16, 2)}), name="drift", version=str(side),
                          source={"kind": "test"})
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32"]))
    return run


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    return write(root / "v1", release()), write(root / "v2", release(SHIFT))


@pytest.fixture
def pair(releases, tmp_path):
    copies = []
    for source in releases:
        copies.append(tmp_path / source.name)
        shutil.copytree(source, copies[-1])
    return copies


def expected_flips():
    old, new = release(), release(SHIFT)
    data = images(EXAMPLES, 1)
    return np.flatnonzero(old.predict(data, verbose=0).argmax(1) != new.predict(data, verbose=0).argmax(1)).tolist()


def test_the_same_release_shows_no_drift(pair):
    baseline, _ = pair
    result = runner.invoke(app, ["parity", "--run", str(baseline), "--no-sweep", "--baseline", str(baseline),
                                 "--max-flips", "0", "--max-accuracy-drop", "0"])
    assert result.exit_code == EXIT_OK, result.output
    drift = json.loads((baseline / "parity" / "report.json").read_text())["drift"]
    assert drift["passed"] and set(drift["models"]) == {"keras", "onnx-fp32"}
    for outputs in drift["models"].values():
        stats = outputs["probabilities"]
        assert stats["flips"] == 0 and stats["accuracy_delta"] == 0 and stats["shift"]["ks_statistic"] == 0


def test_flips_and_accuracy_drop_are_measured_and_a_breach_fails_naming_it(pair):
    baseline, candidate = pair
    flipped = expected_flips()
    assert 0 < len(flipped) < EXAMPLES  # the second release changes some decisions, not all
    result = runner.invoke(app, ["parity", "--run", str(candidate), "--no-sweep", "--baseline", str(baseline),
                                 "--max-flips", str(len(flipped) - 1)])
    assert result.exit_code == EXIT_CHECK_FAILED, result.output
    assert "drift keras: drift_flips[keras/probabilities]" in result.output
    report = json.loads((candidate / "parity" / "report.json").read_text())
    assert report["passed"] is True  # the artifacts still match their own Keras model: drift is separate
    drift = report["drift"]
    assert drift["inputs"]["examples"] == EXAMPLES and not drift["passed"]
    for name in ("keras", "onnx-fp32"):
        stats = drift["models"][name]["probabilities"]
        assert stats["flipped_indices"] == flipped
        assert stats["accuracy_delta"] == pytest.approx(-len(flipped) / EXAMPLES)  # v1 is right on every example
        low, high = stats["accuracy_delta_ci95"]
        assert low <= stats["accuracy_delta"] <= high < 0
        assert stats["shift"]["ks_statistic"] > 0
        assert (candidate / "parity" / f"{SHEET_PREFIX}{name}.png").stat().st_size > 0
    suite = ET.parse(candidate / "parity" / "junit.xml").getroot().find("testsuite")
    drift_cases = [case for case in suite.findall("testcase") if case.get("classname") == "parity.drift"]
    assert len(drift_cases) == len(drift["checks"]) == 4  # flips and accuracy drop, for keras and onnx-fp32
    assert sum(case.find("failure") is not None for case in drift_cases) == 2
    assert f"![keras: flipped examples]({SHEET_PREFIX}keras.png)" in (candidate / "parity" / "report.md").read_text()

    drop = len(flipped) / EXAMPLES
    within = runner.invoke(app, ["parity", "--run", str(candidate), "--no-sweep", "--baseline", str(baseline),
                                 "--max-flips", str(len(flipped)), "--max-accuracy-drop", f"{drop + 0.001}"])
    assert within.exit_code == EXIT_OK, within.output
    beyond = runner.invoke(app, ["parity", "--run", str(candidate), "--no-sweep", "--baseline", str(baseline),
                                 "--max-accuracy-drop", f"{drop - 0.001}"])
    assert beyond.exit_code == EXIT_CHECK_FAILED and "drift_accuracy_drop[keras/probabilities]" in beyond.output


def test_incompatible_or_missing_baseline_exits_2_naming_the_difference(pair, tmp_path):
    baseline, candidate = pair
    other = write(tmp_path / "other", release(), labels=("x", "y", "z"))
    result = runner.invoke(app, ["parity", "--run", str(candidate), "--no-sweep", "--baseline", str(other)])
    assert result.exit_code == EXIT_USAGE
    assert "output 'probabilities' labels ['a', 'b', 'c'] vs baseline ['x', 'y', 'z']" in result.output
    missing = runner.invoke(app, ["parity", "--run", str(candidate), "--baseline", str(tmp_path / "none")])
    assert missing.exit_code == EXIT_USAGE and "manifest.json is missing" in missing.output
    no_baseline = runner.invoke(app, ["parity", "--run", str(candidate), "--max-flips", "0"])
    assert no_baseline.exit_code == EXIT_USAGE and "--baseline" in no_baseline.output


def test_an_altered_baseline_eval_slice_is_refused(pair):
    baseline, candidate = pair
    (sample,) = (baseline / "model").glob("eval_sample.npz")
    with np.load(sample) as data:
        arrays = {key: data[key] for key in data}
    arrays["input:image"][0] = 255 - arrays["input:image"][0]
    np.savez(sample, **arrays)
    result = runner.invoke(app, ["parity", "--run", str(candidate), "--no-sweep", "--baseline", str(baseline)])
    assert result.exit_code == EXIT_CHECK_FAILED and "'eval_sample' was altered" in result.output


def test_ks_statistic_and_p_value_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    first, second = rng.normal(0, 1, 300), rng.normal(0.3, 1, 200)
    statistic, p_value = ks_two_sample(first, second)
    expected = stats.ks_2samp(first, second, method="asymp")
    assert statistic == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue, rel=0.1, abs=1e-4)
    assert ks_two_sample(first, first) == (0.0, 1.0)
