"""TFLite Micro's known abort, named: an int8 SOFTMAX whose input scale is at or below 2^-26 (logits that barely
vary, as in an untrained MobileNet) makes TFLM abort while preparing; export records the op, the kernel's check
and the scale for the `tflm` variant and keeps the rest."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from export_checks import imported_bundle

from kerasport.devices import measure_arena, tflm_missing
from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.isolation import StepCrashed, run_isolated
from kerasport.manifest import load_manifest
from kerasport.tflm_limits import SOFTMAX_MIN_INPUT_SCALE, tflm_limitations

pytestmark = pytest.mark.skipif(tflm_missing() is not None, reason="needs tflite-micro")


def pictures(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((16, 6), dtype=np.float32)


def flat_logits_model():
    """Logits that do not depend on the input (a zero kernel): calibration sees a range of almost nothing."""
    features = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(features)
    logits = keras.layers.Dense(3, kernel_initializer="zeros", bias_initializer="zeros")(hidden)
    return keras.Model(features, keras.layers.Softmax(name="probs")(logits))


def export(tmp_path, recipe: str):
    run = imported_bundle(tmp_path / "run", flat_logits_model(), {"features": pictures(0)},
                          {"features": pictures(1)})
    result = export_bundle(ExportOptions(run=str(run), formats=["tflite-int8", "tflm"], keep_going=True,
                                         int8_recipe=recipe))
    return run, result, load_manifest(run)


def assert_names_the_limit(text: str) -> None:
    assert "TFLite Micro limitation: op " in text and "SOFTMAX: int8 input scale" in text, text
    assert "QuantizeMultiplierGreaterThanOne" in text, text


def test_with_the_full_int8_recipe_the_limit_is_named_and_the_rest_is_kept(tmp_path):
    run, result, manifest = export(tmp_path, "full")
    int8, tflm = manifest.artifact("tflite-int8"), manifest.artifact("tflm")
    assert int8.status == "ok" and tflm.status.startswith("failed:")
    for text in (tflm.status, *(attempt["result"] for attempt in tflm.get("ladder"))):
        assert_names_the_limit(text)
    assert "crashed" not in tflm.status  # named before TFLM loads it, not after an abort
    assert [row["variant"] for row in result.rows if row["status"] == "ok"] == ["tflite-int8"]
    # The limit is real: the same bytes abort TFLite Micro (in a child), and the scale is below the bound.
    model = int8.resolve(run).read_bytes()
    (line,) = tflm_limitations(model)
    assert float(line.split(" input scale ")[1].split()[0]) <= SOFTMAX_MIN_INPUT_SCALE
    with pytest.raises(StepCrashed) as crashed:
        run_isolated("TFLite Micro", measure_arena, model, 1)
    assert crashed.value.how == "SIGABRT"


def test_the_auto_recipe_keeps_the_softmax_in_float_and_tflm_runs_it(tmp_path):
    # Before: the recipe's TFLite Micro check loaded the model in-process and the abort ended the export.
    _, _, manifest = export(tmp_path, "auto")
    tflm = manifest.artifact("tflm")
    assert tflm.status == "ok" and tflm.get("arena")["measured"]
    recipe = tflm.get("int8_recipe")
    full = recipe["rungs"][0]
    assert full["rung"] == "full" and not full["passed"]
    assert_names_the_limit(full["figures"]["tflm"]["error"])
    assert recipe["recipe"]["float_layers"] == ["probs"]
