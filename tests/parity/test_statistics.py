"""Pure unit tests: the intervals, the tolerance bound, class scores and the generated inputs parity relies on."""

import numpy as np
import pytest

from kerasport.compare import (
    accuracy_statistics,
    agreement_statistics,
    class_scores,
    paired_delta_interval,
    regression_statistics,
    wilson_interval,
)
from kerasport.contract import InputSpec, ModelContract, OutputSpec, image_input_spec
from kerasport.parity.edges import DEFAULT_NORMAL_SPREAD, EDGE_EXAMPLES, edge_inputs, input_range
from kerasport.tolerances import Tolerance, allowed_difference, bound_excess


@pytest.mark.parametrize("successes, total, expected", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (score)
    (81, 263, (0.2553, 0.3662)), (15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)), (1, 29, (0.0061, 0.1718))])
def test_wilson_interval_matches_published_values(successes, total, expected):
    assert wilson_interval(successes, total) == pytest.approx(expected, abs=5e-5)


def test_paired_delta_interval_is_mean_plus_minus_z_standard_error():
    differences = np.array([1, 0, 0, -1, 1, 1, 0, 0], dtype=float)
    delta, (low, high) = paired_delta_interval(differences)
    half = 1.959963984540054 * np.std(differences, ddof=1) / np.sqrt(len(differences))
    assert delta == 0.25 and (low, high) == pytest.approx((0.25 - half, 0.25 + half))
    assert paired_delta_interval(np.array([0.5])) == (0.5, [0.5, 0.5])


def test_one_tolerance_bound_for_gate_and_sweep():
    tolerance = Tolerance(atol=1e-5, rtol=0.1, noise_multiple=5.0)
    reference = np.array([0.0, 1.0, -2.0])
    # max(atol, 5 x noise) + rtol x |reference|
    assert allowed_difference(tolerance, reference, noise_floor=1e-6) == pytest.approx([1e-5, 0.1 + 1e-5, 0.2 + 1e-5])
    assert allowed_difference(tolerance, reference, noise_floor=1e-5) == pytest.approx([5e-5, 0.1 + 5e-5, 0.2 + 5e-5])
    within = reference + np.array([0.9e-5, 0.1, -0.2])
    assert bound_excess(tolerance, reference, within, noise_floor=0.0) <= 0
    beyond = reference + np.array([0.0, 0.0, 0.21])
    assert bound_excess(tolerance, reference, beyond, noise_floor=0.0) == pytest.approx(0.01 - 1e-5)
    unbounded = Tolerance(atol=None)
    assert allowed_difference(unbounded, reference, 0.0) is None
    assert np.isnan(bound_excess(unbounded, reference, reference + 1, 0.0))


def test_single_column_outputs_are_binary_decisions():
    probabilities = class_scores(np.array([[0.2], [0.7]]), "probabilities")
    assert probabilities.argmax(axis=1).tolist() == [0, 1]
    assert probabilities[:, 1] - probabilities[:, 0] == pytest.approx([-0.6, 0.4])
    assert class_scores(np.array([[-3.0], [0.5]]), "logits").argmax(axis=1).tolist() == [0, 1]


def test_agreement_and_accuracy_statistics():
    reference = np.array([[0.9, 0.1], [0.51, 0.49], [0.2, 0.8], [0.3, 0.7]])
    candidate = np.array([[0.8, 0.2], [0.49, 0.51], [0.6, 0.4], [0.3, 0.7]])
    stats = agreement_statistics(reference, candidate, tie_margin=0.05)
    assert stats["label_flips"] == 2 and stats["flipped_indices"] == [1, 2] and stats["near_tie_flips"] == 1
    assert stats["top1_agreement"] == 0.5 and stats["decisive_examples"] == 3
    assert stats["decisive_agreement"] == pytest.approx(2 / 3)
    accuracy = accuracy_statistics(reference, candidate, np.array([0, 1, 1, 1]))
    assert (accuracy["reference_accuracy"], accuracy["accuracy"], accuracy["accuracy_delta"]) == (0.75, 0.75, 0.0)
    one_hot = accuracy_statistics(reference, candidate, np.eye(2)[[0, 1, 1, 1]])
    assert one_hot["accuracy"] == accuracy["accuracy"]


def test_regression_statistics():
    targets = np.array([[1.0], [2.0], [3.0]])
    stats = regression_statistics(targets + 0.1, targets + np.array([[0.2], [0.1], [-0.1]]), targets.ravel())
    assert stats["reference_mae"] == pytest.approx(0.1) and stats["mae"] == pytest.approx(0.4 / 3)
    assert stats["mae_delta"] == pytest.approx(0.1 / 3)
    assert stats["mae_relative_increase"] == pytest.approx(1 / 3)


def _contract(*inputs: InputSpec) -> ModelContract:
    return ModelContract(inputs=inputs, outputs=(OutputSpec(name="out", dtype="float32", shape=(-1, 1)),))


def test_image_edges_follow_the_spec_and_range():
    picture = image_input_spec("picture", 12, 10, "rgb", value_range=(0.0, 255.0))
    generated = edge_inputs(_contract(picture))
    images = generated.inputs["picture"]
    assert images.shape == picture.example_shape(EDGE_EXAMPLES) and images.dtype == np.float32
    assert generated.kinds["picture"] == ["min", "max", "uniform_noise", "single_bright_pixel", "checkerboard"]
    assert images.min() >= 0 and images.max() <= 255
    low, high, noise, bright, checker = images[:5]
    assert (low == 0).all() and (high == 255).all() and noise.std() > 0
    channels = picture.image.channels
    assert (bright == 255).sum() == channels and (bright == 0).sum() == bright.size - channels
    assert checker[0, 0, 0] != checker[0, 1, 0] and checker[0, 0, 0] == checker[1, 1, 0]
    again = edge_inputs(_contract(picture))
    assert again.sha256() == generated.sha256() != edge_inputs(_contract(picture), seed=1).sha256()


def test_tensor_edges_zeros_only_inside_the_range_and_integers_for_integer_inputs():
    centred = InputSpec(name="features", dtype="float32", shape=(-1, 5), value_range=(-1.0, 2.0))
    positive = InputSpec(name="counts", dtype="int64", shape=(-1, 4), value_range=(0.0, 9.0))
    generated = edge_inputs(_contract(centred, positive))
    assert generated.kinds["features"] == ["min", "max", "zeros", "uniform_noise", "alternating"]
    assert generated.kinds["counts"] == ["min", "max", "uniform_noise", "alternating"]
    assert generated.inputs["features"][4].tolist() == [-1, 2, -1, 2, -1]
    counts = generated.inputs["counts"]
    assert counts.dtype == np.int64 and counts.min() >= 0 and counts.max() <= 9
    assert len(np.unique(counts)) > 2


def test_unknown_ranges_use_the_eval_sample_then_the_documented_default():
    spec = InputSpec(name="x", dtype="float32", shape=(-1, 3))
    observed = np.array([[-4.0, 0.0, 7.0]])
    assert (input_range(spec, observed).low, input_range(spec, observed).high) == (-4.0, 7.0)
    default = input_range(spec)
    assert default.source == "default" and default.normal
    assert (default.low, default.high) == (-DEFAULT_NORMAL_SPREAD, DEFAULT_NORMAL_SPREAD)
    generated = edge_inputs(_contract(spec))
    assert generated.inputs["x"][:2].tolist() == [[-DEFAULT_NORMAL_SPREAD] * 3, [DEFAULT_NORMAL_SPREAD] * 3]
    flags = InputSpec(name="flags", dtype="bool", shape=(-1, 6))
    assert edge_inputs(_contract(flags)).inputs["flags"].dtype == np.bool_
