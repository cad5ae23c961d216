"""int8 recipes (pure parts): the JSON document, the tuning judgement with the gate's int8 bounds, the float-layer
search, and naming layers from a `.keras` archive without Keras."""

import json
import zipfile

import numpy as np
import pytest

from kerasport.contract import InputSpec, ModelContract, OutputSpec
from kerasport.errors import UsageError
from kerasport.int8_recipe import (
    AUTO,
    FULL,
    RECIPE_SCHEMA,
    Int8Recipe,
    judge_tuning,
    load_recipe,
    parse_recipe_option,
    search_float_layers,
)
from kerasport.layer_scopes import ScopeIndex, keras_archive_layers
from kerasport.tolerances import TolerancePolicy

CONTRACT = ModelContract(inputs=(InputSpec(name="x", dtype="float32", shape=(-1, 4), kind="tensor"),),
                         outputs=(OutputSpec(name="p", dtype="float32", shape=(-1, 3), kind="probabilities"),))


def test_a_recipe_round_trips_through_canonical_json(tmp_path):
    recipe = Int8Recipe(float_layers=("conv1", "bn1"), activation_bits=8, calibration_method="percentile",
                        calibration_samples=100)
    path = tmp_path / "r.json"
    path.write_bytes(recipe.to_json())
    assert load_recipe(path) == recipe
    assert load_recipe(path).to_json() == recipe.to_json()
    assert json.loads(recipe.to_json())["schema"] == RECIPE_SCHEMA
    assert Int8Recipe().is_full and not recipe.is_full


@pytest.mark.parametrize(("document", "named"), [
    ({"float_layers": []}, "schema"),
    ({"schema": RECIPE_SCHEMA, "float_layers": "conv1"}, "float_layers"),
    ({"schema": RECIPE_SCHEMA, "activation_bits": 4}, "activation_bits"),
    ({"schema": RECIPE_SCHEMA, "calibration": {"method": "median"}}, "calibration.method"),
    ({"schema": RECIPE_SCHEMA, "calibration": {"samples": 0}}, "calibration.samples"),
])
def test_a_bad_recipe_is_a_one_line_usage_error(tmp_path, document, named):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UsageError, match=named):
        load_recipe(path)


def test_the_option_takes_auto_full_or_a_file(tmp_path):
    assert parse_recipe_option(AUTO) == AUTO and parse_recipe_option(FULL) == FULL
    with pytest.raises(UsageError, match="no such file"):
        parse_recipe_option(str(tmp_path / "missing.json"))
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(UsageError, match="not a readable JSON"):
        parse_recipe_option(str(tmp_path / "text.json"))


def _probabilities(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    values = np.full((len(labels), 3), (1 - confidence) / 2)
    values[np.arange(len(labels)), labels] = confidence
    return values


def test_the_tuning_judgement_applies_the_gates_int8_bounds():
    tolerance = TolerancePolicy().int8
    labels = np.arange(200) % 3
    reference = _probabilities(labels)
    allowed = int(len(labels) * (1 - tolerance.min_agreement))
    flipped = labels.copy()
    flipped[:allowed + 1] = (flipped[:allowed + 1] + 1) % 3
    same = judge_tuning(CONTRACT, tolerance, {"p": reference}, {"p": reference}, {"p": labels})
    assert same["passed"] and same["decisive_agreement"] == 1.0 and same["accuracy_delta"] == 0.0
    worse = judge_tuning(CONTRACT, tolerance, {"p": reference}, {"p": _probabilities(flipped)}, {"p": labels})
    assert not worse["passed"]
    assert set(worse["failed"]) == {"top1_agreement[p]", "accuracy_drop[p]"}
    # Without targets only agreement counts (import's default tuning data).
    unlabelled = judge_tuning(CONTRACT, tolerance, {"p": reference}, {"p": _probabilities(flipped)}, {})
    assert unlabelled["failed"] == ["top1_agreement[p]"] and "accuracy_delta" not in unlabelled


def test_the_tuning_judgement_applies_a_value_bound_when_the_bundle_sets_one():
    policy = TolerancePolicy()
    policy.update("int8", {"atol": 0.01}, "parity.toml")
    labels = np.arange(30) % 3
    reference = _probabilities(labels)
    figures = judge_tuning(CONTRACT, policy.int8, {"p": reference}, {"p": reference + 0.02}, {"p": labels})
    assert figures["failed"] == ["max_abs_diff[p]"]


def _judge_needing(required: set[str], helpful: dict[str, float]):
    """A candidate passes when it keeps every `required` layer in float; agreement rises with `helpful` ones."""
    calls = []

    def judge(layers):
        calls.append(tuple(layers))
        agreement = 0.9 + sum(helpful.get(layer, 0.0) for layer in layers)
        return {"passed": required <= set(layers), "failed": [] if required <= set(layers) else ["x"],
                "decisive_agreement": agreement}

    return judge, calls


def test_the_search_adds_layers_in_rank_order_then_drops_what_is_not_needed():
    judge, calls = _judge_needing({"b", "d"}, {"d": 0.05, "c": 0.04, "b": 0.03})
    found = search_float_layers(["a", "b", "c", "d"], judge, max_layers=3)
    assert found.ranking[:3] == ["d", "c", "b"]
    assert set(found.float_layers) == {"b", "d"}  # c was added on the way and dropped again
    assert len(calls) == len(set(calls))  # no candidate is judged twice
    assert {tuple(trial["float_layers"]) for trial in found.trials} == set(calls)


def test_the_search_gives_up_beyond_the_layer_budget():
    judge, _ = _judge_needing({"a", "b", "c", "d"}, {})
    found = search_float_layers(["a", "b", "c", "d"], judge, max_layers=3)
    assert found.float_layers is None
    assert all(not trial["passed"] for trial in found.trials)


def test_layers_are_named_from_the_keras_archive_and_mapped_by_scope(tmp_path):
    config = {"class_name": "Functional", "config": {"name": "net", "layers": [
        {"class_name": "InputLayer", "config": {"name": "image"}},
        {"class_name": "Conv2D", "config": {"name": "conv1"}},
        {"class_name": "Dense", "config": {"name": "dense"}}]}}
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("config.json", json.dumps(config))
    nodes, model_name = keras_archive_layers(archive)
    assert [node.name for node in nodes] == ["conv1", "dense"] and model_name == "net"
    index = ScopeIndex(nodes, model_name)
    assert index.owner(["net_1/dense_1/MatMul", "net_1/conv1_1/Relu"]) == "dense"
    assert index.owner(["StatefulPartitionedCall/net_1/conv1_1/BiasAdd"]) == "conv1"
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not a Keras archive"):
        keras_archive_layers(tmp_path / "broken.keras")


def test_the_search_stops_ranking_at_the_first_layer_that_passes_alone():
    judge, calls = _judge_needing({"b"}, {"b": 0.05})
    found = search_float_layers(["a", "b", "c", "d"], judge, max_layers=3)
    assert found.float_layers == ("b",)
    assert calls == [("a",), ("b",)]  # one layer is the fewest: c and d are never built
    assert found.ranking[0] == "b" and set(found.ranking) == {"a", "b", "c", "d"}


def test_a_kept_layers_consumers_join_it_before_the_next_ranked_layer():
    judge, calls = _judge_needing({"a", "d"}, {"a": 0.05, "b": 0.04, "c": 0.03})
    found = search_float_layers(["a", "b", "c", "d"], judge, max_layers=3, consumers={"a": ["d"]})
    assert found.float_layers == ("a", "d")
    assert ("a", "d") in calls and ("a", "b") not in calls
