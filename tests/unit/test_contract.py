"""The model contract and the manifest schema: parsing, validation, schema-1 migration, samples. No TensorFlow."""

import json

import numpy as np
import pytest

from kerasport.contract import DYNAMIC, V2_DATATYPES, ModelContract, check_pixel_range, image_input_spec
from kerasport.errors import CheckFailed, UsageError
from kerasport.manifest import SCHEMA_VERSION, load_manifest, migrate_schema_1, new_manifest
from kerasport.samples import Samples, load_samples, save_samples
from kerasport.verdict import Verdict

TWO_BY_TWO = {
    "inputs": [
        {"name": "picture", "dtype": "float32", "shape": [-1, 32, 32, 3], "kind": "image", "value_range": [0, 255],
         "image": {"height": 32, "width": 32, "color_mode": "rgb"}},
        {"name": "features", "dtype": "float32", "shape": [-1, 8], "kind": "tensor"},
    ],
    "outputs": [
        {"name": "cls", "dtype": "float32", "shape": [-1, 3], "kind": "probabilities", "labels": ["a", "b", "c"]},
        {"name": "reg", "dtype": "float32", "shape": [-1, 1], "kind": "values"},
    ],
}


def test_contract_round_trips_and_answers_what_stages_ask():
    contract = ModelContract.from_dict(TWO_BY_TWO)
    assert ModelContract.from_dict(contract.to_dict()) == contract
    assert contract.input_names == ["picture", "features"] and contract.output_names == ["cls", "reg"]
    assert contract.task == "mixed" and contract.image_input is None
    assert contract.classification_output.name == "cls" and contract.output("cls").label(2) == "c"
    picture = contract.input("picture")
    assert picture.image.channels == 3 and picture.image.pil_mode == "RGB"
    assert picture.example_shape(7) == (7, 32, 32, 3) and picture.v2_datatype == V2_DATATYPES["float32"]
    with pytest.raises(UsageError, match=r"unknown input 'nope'; this model's inputs are \['picture', 'features'\]"):
        contract.input("nope")


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["inputs"][0].update(shape=[-1, 32, 32, 1]), "does not match its 32x32 rgb image spec"),
    (lambda c: c["inputs"][1].update(dtype="complex64"), "dtype 'complex64'"),
    (lambda c: c["inputs"][1].update(shape=[-1, 0]), "expected positive integers or -1"),
    (lambda c: c["outputs"][0].update(labels=["a", "b"]), "2 labels for an output of width 3"),
    (lambda c: c["outputs"][1].update(kind="scores"), "kind 'scores'"),
    (lambda c: c["outputs"].append(dict(c["outputs"][0])), "output names .* repeat"),
    (lambda c: c.update(inputs=[]), "no inputs"),
])
def test_invalid_contracts_are_refused_in_one_line(mutate, message):
    raw = json.loads(json.dumps(TWO_BY_TWO))
    mutate(raw)
    with pytest.raises(CheckFailed, match=message) as caught:
        ModelContract.from_dict(raw)
    assert "\n" not in str(caught.value)


def test_check_values_validates_shape_range_and_dtype():
    spec = image_input_spec("image", 4, 4)
    good = np.full((2, 4, 4, 1), 255, np.uint8)
    assert spec.check_values(good, "req").dtype == np.float32
    with pytest.raises(UsageError, match=r"shape \[2, 4, 4\]; input 'image' expects \[batch, 4, 4, 1\]"):
        spec.check_values(good[..., 0], "req")
    with pytest.raises(UsageError, match="values span 0..300; input 'image' expects values in 0..255"):
        spec.check_values(np.concatenate([good * 0, good.astype(np.float32) + 45]), "req")
    with pytest.raises(UsageError, match="NaN or Inf"):
        spec.check_values(np.full((1, 4, 4, 1), np.nan, np.float32), "req")
    ids = ModelContract.from_dict({"inputs": [{"name": "ids", "dtype": "int64", "shape": [-1, DYNAMIC]}],
                                   "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]}).input("ids")
    assert ids.check_values(np.array([[1.0, 2.0, 3.0]]), "req").dtype == np.int64  # any length: dynamic dim
    with pytest.raises(UsageError, match="non-integer values; input 'ids' is int64"):
        ids.check_values(np.array([[1.5]]), "req")


def test_pixel_range_refuses_prescaled_and_out_of_range_pixels():
    check_pixel_range(np.array([0, 128, 255], np.float32), "x")
    with pytest.raises(UsageError, match="looks already scaled to 0..1"):
        check_pixel_range(np.array([0.0, 0.5], np.float32), "x")
    with pytest.raises(UsageError, match="values span -1..3; expected raw pixels in 0..255"):
        check_pixel_range(np.array([-1, 3], np.float32), "x")


SCHEMA_1 = {
    "schema_version": 1, "model": {"name": "kerasport-seed", "task": "classification", "labels": ["0", "1", "2"]},
    "input": {"name": "image", "dtype": "float32", "shape": [-1, 28, 28, 1], "layout": "NHWC",
              "value_range": [0, 255], "color_mode": "grayscale"},
    "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, 3], "activation": "softmax"},
    "preprocessing": {"resize": [28, 28], "resample": "bilinear", "foreground": "light-on-dark"},
    "artifacts": {},
}


def test_schema_1_bundles_load_as_schema_2(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(SCHEMA_1))
    manifest = load_manifest(tmp_path)
    (image,) = manifest.contract.inputs
    (output,) = manifest.contract.outputs
    assert manifest.data["schema_version"] == SCHEMA_VERSION and manifest.data["migrated_from_schema"] == 1
    assert image.kind == "image" and image.image.foreground == "light-on-dark" and image.item_shape == (28, 28, 1)
    assert output.kind == "probabilities" and output.labels == ("0", "1", "2")


def test_unreadable_schema_1_and_unknown_schemas_say_rerun(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({**SCHEMA_1, "input": {"name": "image"}}))
    with pytest.raises(CheckFailed, match="schema-1 bundle that cannot be read as schema 2.*re-run"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**migrate_schema_1(SCHEMA_1), "schema_version": 9}))
    with pytest.raises(CheckFailed, match="schema_version is 9, expected one of"):
        load_manifest(tmp_path)


def test_manifest_accessors_and_parity_verdicts(tmp_path):
    contract = ModelContract.from_dict(TWO_BY_TWO)
    manifest = new_manifest(model={"name": "m", "version": "3"}, contract=contract)
    manifest.set_artifact("onnx-fp32", {"path": "export/model.onnx", "format": "onnx", "precision": "fp32",
                                        "sha256": "0" * 64, "bytes": 1})
    assert manifest.parity_verdict("onnx-fp32") is None and manifest.parity_verdict("absent") is None
    manifest.set_parity("onnx-fp32", {"verdict": Verdict.PASS})
    manifest.save(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded.artifact("onnx-fp32").passed_parity and loaded.version == "3" and loaded.contract == contract
    with pytest.raises(UsageError, match="artifact 'tflite-int8' is not in the manifest; it has onnx-fp32"):
        loaded.artifact("tflite-int8")


def test_samples_round_trip_and_legacy_layout(tmp_path):
    contract = ModelContract.from_dict(TWO_BY_TWO)
    rng = np.random.default_rng(0)
    samples = Samples({"picture": rng.uniform(0, 255, (5, 32, 32, 3)).astype(np.float32),
                       "features": rng.normal(size=(5, 8)).astype(np.float32)},
                      {"cls": np.arange(5) % 3})
    save_samples(tmp_path / "s.npz", samples)
    loaded = load_samples(tmp_path / "s.npz", contract)
    assert loaded.sha256() == samples.sha256() and list(loaded.targets) == ["cls"] and len(loaded) == 5
    np.savez(tmp_path / "wrong.npz", **{"input:picture": samples.inputs["picture"]})
    with pytest.raises(CheckFailed, match="no array for input 'features'"):
        load_samples(tmp_path / "wrong.npz", contract)
    legacy = ModelContract.from_dict(migrate_schema_1(SCHEMA_1))
    np.savez(tmp_path / "legacy.npz", x=np.zeros((4, 28, 28, 1), np.float32), y=np.arange(4))
    old = load_samples(tmp_path / "legacy.npz", legacy)
    assert old.inputs["image"].shape == (4, 28, 28, 1) and old.targets["probabilities"].tolist() == [0, 1, 2, 3]


def test_inferred_tensor_ranges_are_recorded_but_not_enforced():
    raw = {"name": "features", "dtype": "float32", "shape": [-1, 2], "kind": "tensor", "value_range": [-2.2, 2.5]}
    beyond = np.array([[3.0, -4.0]], np.float32)
    inferred = ModelContract.from_dict({"inputs": [{**raw, "value_range_origin": "inferred"}],
                                        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]})
    assert inferred.input("features").check_values(beyond, "req").shape == (1, 2)
    given = ModelContract.from_dict({"inputs": [raw], "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]})
    with pytest.raises(UsageError, match="values span -4..3; input 'features' expects values in -2.2..2.5"):
        given.input("features").check_values(beyond, "req")
    assert ModelContract.from_dict(inferred.to_dict()) == inferred
