"""`kerasport import` of each kind of SOURCE: .keras, .h5, a SavedModel directory, a builder function, custom
layers and Lambda layers, checked through the bundle it writes."""

from __future__ import annotations

import shutil
import sys
import textwrap

import numpy as np
import pytest
from import_helpers import EXAMPLES, invoke, invoke_json, mlp_regressor, two_io_arrays

from devtools.tiny_models import CLASS_OUTPUT, CLASSES, VALUE_OUTPUT, two_input_model
from kerasport.ingest.data import PIXEL_RANGE, SYNTHETIC_EXAMPLES
from kerasport.ingest.sources import CUSTOM_OBJECTS_FLAG, UNSAFE_FLAG
from kerasport.int8_recipe import TUNING_ARTIFACT
from kerasport.manifest import load_manifest, verify_bundle
from kerasport.samples import load_samples

BUNDLE_ARTIFACTS = {"keras", "saved_model", "eval_sample", "calibration_sample"}


def _error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_two_inputs_two_outputs_keras_file(imported_bundle, two_io_npz):
    manifest = verify_bundle(imported_bundle)
    contract = manifest.contract
    assert set(manifest.artifact_names()) == BUNDLE_ARTIFACTS
    assert manifest.source["kind"] == "keras"
    picture, features = contract.input("picture"), contract.input("features")
    assert (picture.kind, picture.shape, picture.image.color_mode) == ("image", (-1, 32, 32, 3), "rgb")
    assert picture.value_range == PIXEL_RANGE  # integer pixels 0..255
    arrays = two_io_arrays()
    assert features.kind == "tensor"
    assert features.value_range == (pytest.approx(arrays["features"].min()), pytest.approx(arrays["features"].max()))
    klass, amount = contract.output(CLASS_OUTPUT), contract.output(VALUE_OUTPUT)
    assert (klass.kind, klass.labels, klass.activation) == ("probabilities", CLASSES, "softmax")
    assert (amount.kind, amount.shape, amount.labels) == ("values", (-1, 1), ())
    assert contract.task == "mixed"

    samples = load_samples(manifest.artifact("eval_sample").resolve(imported_bundle), contract)
    np.testing.assert_array_equal(samples.inputs["picture"], arrays["picture"])
    np.testing.assert_array_equal(samples.targets[CLASS_OUTPUT], arrays[f"y:{CLASS_OUTPUT}"])
    np.testing.assert_allclose(samples.targets[VALUE_OUTPUT][:, 0], arrays[f"target:{VALUE_OUTPUT}"], rtol=1e-6)
    calibration = load_samples(manifest.artifact("calibration_sample").resolve(imported_bundle), contract)
    np.testing.assert_array_equal(calibration.inputs["features"], arrays["features"])
    assert not calibration.labelled and manifest.artifact("eval_sample").get("synthetic") is False


def test_saved_model_signature_takes_the_contract_names(imported_bundle):
    import tensorflow as tf

    manifest = load_manifest(imported_bundle)
    signature = tf.saved_model.load(str(manifest.artifact("saved_model").resolve(imported_bundle)))
    outputs = signature.signatures["serving_default"](picture=tf.zeros((2, 32, 32, 3)), features=tf.zeros((2, 8)))
    assert set(outputs) == set(manifest.contract.output_names)


def test_tabular_regressor_with_x_and_y(mlp_keras, mlp_npz, tmp_path):
    summary = invoke_json(["import", str(mlp_keras), "--run", str(tmp_path / "run"), "--eval-data", f"npz:{mlp_npz}",
                           "--eval-samples", "12"])
    assert summary["task"] == "regression" and summary["eval_examples"] == 12
    manifest = load_manifest(tmp_path / "run")
    (spec,), (output,) = manifest.contract.inputs, manifest.contract.outputs
    assert (spec.kind, spec.shape, output.kind, output.shape) == ("tensor", (-1, 13), "values", (-1, 1))
    assert not output.name.startswith("keras_tensor")  # a Sequential output is named after its layer
    with np.load(mlp_npz) as data:
        x, y = data["x"], data["y"]
    assert spec.value_range == (pytest.approx(x.min()), pytest.approx(x.max()))
    samples = load_samples(manifest.artifact("eval_sample").resolve(tmp_path / "run"), manifest.contract)
    assert samples.targets[output.name].shape == (12, 1)
    assert set(samples.targets[output.name][:, 0]) <= set(y.astype(np.float32))


def test_h5_without_eval_data_gets_a_generated_sample(models_dir, tmp_path):
    path = models_dir / "mlp.h5"
    mlp_regressor().save(path)
    run = tmp_path / "run"
    summary = invoke_json(["import", str(path), "--run", str(run), "--input-range", "-1,1", "--seed", "3"])
    assert summary["source"]["kind"] == "h5" and summary["synthetic_eval_data"] is True
    manifest = verify_bundle(run)
    eval_entry = manifest.artifact("eval_sample")
    assert eval_entry.get("synthetic") is True and manifest.artifact("calibration_sample").get("synthetic") is True
    samples = load_samples(eval_entry.resolve(run), manifest.contract)
    values = samples.inputs[manifest.contract.input_names[0]]
    assert len(samples) == SYNTHETIC_EXAMPLES and not samples.labelled
    assert values.min() >= -1 and values.max() <= 1 and manifest.contract.inputs[0].value_range == (-1.0, 1.0)
    assert manifest.stage("import")["labelled_eval_data"] is False


def test_saved_model_directory_as_source(models_dir, tmp_path):
    source = models_dir / "exported"
    two_input_model().export(str(source), verbose=False)
    arrays = two_io_arrays(seed=4)
    # model.export() names its outputs output_0, output_1: those become the contract's names
    np.savez(tmp_path / "eval.npz", picture=arrays["picture"], features=arrays["features"],
             **{"y:output_0": arrays[f"y:{CLASS_OUTPUT}"], "y:output_1": arrays[f"target:{VALUE_OUTPUT}"]})
    run = tmp_path / "run"
    summary = invoke_json(["import", str(source), "--run", str(run), "--eval-data", f"npz:{tmp_path / 'eval.npz'}",
                           "--labels", ",".join(CLASSES)])
    assert summary["source"]["kind"] == "saved_model"
    manifest = verify_bundle(run)
    assert "keras" not in manifest.artifact_names() and manifest.has("saved_model")
    contract = manifest.contract
    assert sorted(contract.input_names) == ["features", "picture"]
    assert contract.output_names == ["output_0", "output_1"]
    assert contract.output("output_0").kind == "probabilities" and contract.output("output_0").labels == CLASSES
    assert contract.output("output_1").kind == "values"
    assert contract.input("picture").kind == "image"

    import tensorflow as tf

    copied = tf.saved_model.load(str(manifest.artifact("saved_model").resolve(run))).signatures["serving_default"]
    result = copied(picture=tf.constant(arrays["picture"][:2]), features=tf.constant(arrays["features"][:2]))
    assert set(result) == set(contract.output_names)


def test_builder_function(tmp_path, monkeypatch):
    module = tmp_path / "builders_for_import.py"
    module.write_text(textwrap.dedent("""
        import keras

        def build():
            return keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, activation="softmax")])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    summary = invoke_json(["import", "builders_for_import:build", "--run", str(run), "--version", "7"])
    manifest = load_manifest(run)
    assert {key: summary["source"][key] for key in ("kind", "location")} == {
        "kind": "builder", "location": "builders_for_import:build"}
    assert "confirmed on" in next(iter(summary["source"]["output_kinds"].values()))  # how the task was decided
    assert (manifest.name, manifest.version, manifest.task) == ("build", "7", "classification")


CUSTOM_MODULE = """
import keras


@keras.saving.register_keras_serializable(package="import_test")
class TimesThree(keras.layers.Layer):
    def call(self, x):
        return x * 3.0
"""


def test_registered_custom_layer_needs_custom_objects(tmp_path, monkeypatch):
    import importlib

    import keras

    (tmp_path / "custom_layers_for_import.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    layers = importlib.import_module("custom_layers_for_import")
    inputs = keras.Input((4,), name="features")
    keras.Model(inputs, keras.layers.Dense(1)(layers.TimesThree(name="times_three")(inputs))).save(
        tmp_path / "custom.keras")
    # A fresh process would not know the class: forget the registration and the module.
    keras.saving.get_custom_objects().pop("import_test>TimesThree")
    sys.modules.pop("custom_layers_for_import")
    try:
        refused = invoke(["import", str(tmp_path / "custom.keras"), "--run", str(tmp_path / "refused")])
        assert refused.exit_code == 2
        line = _error_line(refused)
        assert "TimesThree" in line and CUSTOM_OBJECTS_FLAG in line
        assert not (tmp_path / "refused").exists()

        summary = invoke_json(["import", str(tmp_path / "custom.keras"), "--run", str(tmp_path / "run"),
                               CUSTOM_OBJECTS_FLAG, "custom_layers_for_import"])
        assert summary["source"]["custom_objects"] == "custom_layers_for_import"
    finally:
        keras.saving.get_custom_objects().pop("import_test>TimesThree", None)
        sys.modules.pop("custom_layers_for_import", None)


@pytest.mark.filterwarnings("ignore:The object being serialized includes a `lambda`")
def test_lambda_layer_is_refused_in_safe_mode(models_dir, tmp_path):
    import keras

    path = models_dir / "lambda.keras"
    inputs = keras.Input((4,), name="features")
    doubled = keras.layers.Lambda(lambda t: t * 2.0, name="double_it")(inputs)
    keras.Model(inputs, keras.layers.Dense(1)(doubled)).save(path)

    refused = invoke(["import", str(path), "--run", str(tmp_path / "run")])
    assert refused.exit_code == 2
    line = _error_line(refused)
    assert "'double_it'" in line and UNSAFE_FLAG in line
    assert not (tmp_path / "run").exists()

    summary = invoke_json(["import", str(path), "--run", str(tmp_path / "run"), UNSAFE_FLAG])
    assert summary["source"]["unsafe"] is True


def test_image_folders_give_labels(tmp_path):
    import keras
    from PIL import Image

    inputs = keras.Input((16, 16, 3), name="photo")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x)).save(tmp_path / "rgb.keras")
    rng = np.random.default_rng(0)
    for index in range(9):
        folder = tmp_path / "pictures" / CLASSES[index % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        # 24x20 on disk: decoded to RGB and resized to the model's 16x16
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    run = tmp_path / "run"
    summary = invoke_json(["import", str(tmp_path / "rgb.keras"), "--run", str(run),
                           "--eval-data", f"images:{tmp_path / 'pictures'}"])
    assert summary["labelled_eval_data"] is True and summary["eval_examples"] == 9
    manifest = load_manifest(run)
    output = manifest.contract.classification_output
    assert output.labels == CLASSES and manifest.contract.image_input.value_range == PIXEL_RANGE
    samples = load_samples(manifest.artifact("eval_sample").resolve(run), manifest.contract)
    assert samples.inputs["photo"].shape == (9, 16, 16, 3)
    assert sorted(samples.targets[output.name].tolist()) == sorted(i % len(CLASSES) for i in range(9))

    # --labels in another order: folder names map onto the given order
    relabelled = tmp_path / "relabelled"
    invoke_json(["import", str(tmp_path / "rgb.keras"), "--run", str(relabelled), "--labels", "fox,cat,dog",
                 "--eval-data", f"images:{tmp_path / 'pictures'}"])
    again = load_manifest(relabelled)
    targets = load_samples(again.artifact("eval_sample").resolve(relabelled), again.contract).targets[output.name]
    np.testing.assert_array_equal(targets, np.array([1, 2, 0])[samples.targets[output.name]])

    # a flat folder of pictures: inputs without targets
    flat = tmp_path / "flat"
    flat.mkdir()
    for picture in (tmp_path / "pictures").rglob("*.png"):
        shutil.copy(picture, flat / f"{picture.parent.name}-{picture.name}")
    unlabelled = invoke_json(["import", str(tmp_path / "rgb.keras"), "--run", str(tmp_path / "flat-run"),
                              "--eval-data", f"images:{flat}"])
    assert unlabelled["labelled_eval_data"] is False and unlabelled["eval_examples"] == 9


def test_eval_samples_subsample_and_calibration_default(two_io_keras, two_io_npz, tmp_path):
    summary = invoke_json(["import", str(two_io_keras), "--run", str(tmp_path / "run"), "--eval-data",
                           f"npz:{two_io_npz}", "--eval-samples", "9", "--calibration-samples", "4"])
    assert (summary["eval_examples"], summary["calibration_examples"]) == (9, 4)
    assert EXAMPLES > 9


def test_tuning_data_is_pinned_for_the_int8_recipe_search(mlp_keras, mlp_npz, tmp_path):
    run = tmp_path / "run"
    invoke_json(["import", str(mlp_keras), "--run", str(run), "--eval-data", f"npz:{mlp_npz}",
                 "--eval-samples", "12", "--tuning-data", f"npz:{mlp_npz}"])
    manifest = load_manifest(run)
    tuning = load_samples(manifest.artifact(TUNING_ARTIFACT).resolve(run), manifest.contract)
    output = manifest.contract.outputs[0].name
    assert len(tuning) == 12 and tuning.targets[output].shape == (12, 1)  # targets kept: accuracy/MAE count
    without = tmp_path / "without"
    invoke_json(["import", str(mlp_keras), "--run", str(without), "--eval-data", f"npz:{mlp_npz}"])
    assert not load_manifest(without).has(TUNING_ARTIFACT)  # export then tunes on the calibration inputs
