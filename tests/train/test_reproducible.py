"""Byte-reproducible releases: the same seed with --deterministic twice gives the same bytes for every artifact
(model.keras, the SavedModel, both ONNX files, every TFLite variant, the TFLM array); another seed gives other
bytes. Both releases are built in one process, the harder case (TensorFlow's and tf2onnx's global counters have
moved on between them); bundle diff's CLI is tested in tests/app/test_bundle_diff.py."""

import json
import zipfile

import keras
import numpy as np
import onnx
import pytest
from helpers import write_idx_dir
from onnx import TensorProto, helper

from kerasport.canonical import ZIP_DATE, fixed_save_date
from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.export.to_onnx import GENERATED_CONSTANT, canonicalize_generated_names
from kerasport.export.variants import VARIANTS
from kerasport.manifest import load_manifest
from kerasport.train.config import TrainConfig
from kerasport.train.fit import train

SEED = 3
MODEL_ARTIFACTS = ("keras", "saved_model", *VARIANTS)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Three tiny releases: seed 3, seed 3 again, seed 4 (all --deterministic), every variant exported."""
    root = tmp_path_factory.mktemp("reproducible")
    data = write_idx_dir(root / "idx", n_train=96, n_test=24)
    runs = {}
    for name, seed in (("first", SEED), ("again", SEED), ("other", SEED + 1)):
        run = root / name
        train(TrainConfig(data=f"idx:{data}", run=str(run), width=0.125, epochs=1, batch_size=16, seed=seed,
                          deterministic=True, eval_samples=16, calibration_samples=16))
        export_bundle(ExportOptions(run=str(run), calibration_samples=16))
        runs[name] = run
    return runs


def hashes(run) -> dict[str, str]:
    manifest = load_manifest(run)
    return {name: manifest.artifact(name).sha256 for name in manifest.artifact_names()
            if manifest.artifact(name).get("role") != "parity report"}


def test_same_seed_twice_gives_identical_bytes_for_every_artifact(releases):
    first, again = hashes(releases["first"]), hashes(releases["again"])
    assert set(MODEL_ARTIFACTS) <= set(first)
    assert first == again


def test_another_seed_gives_other_bytes_for_every_model(releases):
    first, other = hashes(releases["first"]), hashes(releases["other"])
    assert [name for name in MODEL_ARTIFACTS if first[name] == other[name]] == []


def test_the_normalised_keras_file_loads_with_its_weights_and_fixed_dates(releases):
    path = releases["first"] / "train" / "model.keras"
    with zipfile.ZipFile(path) as archive:
        assert {entry.date_time for entry in archive.infolist()} == {ZIP_DATE}
        assert json.loads(archive.read("metadata.json"))["date_saved"] == fixed_save_date()
        config = archive.read("config.json").decode()
    assert '"shared_object_id": 1' in config  # the dtype policy all layers share, numbered, not an id()
    model = keras.saving.load_model(path)
    other = keras.saving.load_model(releases["other"] / "train" / "model.keras")
    assert len(model.get_weights()) == len(other.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), other.get_weights(), strict=True))


def test_the_canonical_saved_model_serves_what_the_keras_model_computes(releases):
    import tensorflow as tf

    train_dir = releases["first"] / "train"
    contract = load_manifest(releases["first"]).contract
    (spec,) = contract.inputs
    images = np.random.default_rng(0).uniform(0, 255, spec.example_shape(4)).astype(np.float32)
    expected = keras.saving.load_model(train_dir / "model.keras")(images, training=False)
    served = tf.saved_model.load(str(train_dir / "saved_model")).signatures["serving_default"](
        **{spec.name: tf.constant(images)})
    np.testing.assert_array_equal(served[contract.outputs[0].name].numpy(), keras.ops.convert_to_numpy(expected))
    assert tf.saved_model.experimental.read_fingerprint(str(train_dir / "saved_model")).saved_model_checksum > 0


def test_source_date_epoch_sets_the_recorded_save_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert fixed_save_date() == "1970-01-02@00:00:00"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")
    assert fixed_save_date() == "1980-01-01@00:00:00"


def tf2onnx_like_graph(counter: int, swap: bool, constant: str):
    """What two tf2onnx runs produce: the same graph with other counter numbers and initializer order."""
    shape = helper.make_tensor(f"new_shape__{counter}", TensorProto.INT64, [2], [-1, 4])
    one = helper.make_tensor(f"{constant}__{counter + 3}", TensorProto.FLOAT, [1], [1.0])
    reshape = f"Reshape__{counter + 1}"
    nodes = [helper.make_node("Reshape", ["x", shape.name], [f"{reshape}:0"], name=reshape),
             helper.make_node("Add", [f"{reshape}:0", one.name], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              initializer=[one, shape] if swap else [shape, one])
    return helper.make_model(graph)


def test_generated_onnx_names_and_initializer_order_are_canonical():
    first, second = tf2onnx_like_graph(27, False, "const_axes"), tf2onnx_like_graph(48, True, "const_starts")
    for model in (first, second):
        assert canonicalize_generated_names(model.graph) == 3
        onnx.checker.check_model(model, full_check=True)
    assert first.SerializeToString() == second.SerializeToString()
    graph = first.graph
    assert [t.name for t in graph.initializer] == [f"{GENERATED_CONSTANT}1", f"{GENERATED_CONSTANT}2"]
    assert [n.name for n in graph.node] == ["Reshape__3", "add"]
    assert ([i.name for i in graph.input], [o.name for o in graph.output]) == (["x"], ["y"])
