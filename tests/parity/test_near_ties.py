"""Near-ties follow the model's own error for the precision: a flip that fp16 weight rounding alone can cause is
reported, not judged; a flip on a decision wider than that error, or a value outside the bound, still fails."""

import numpy as np
import pytest

from kerasport.contract import InputSpec, ModelContract, OutputSpec
from kerasport.parity.checks import judge
from kerasport.parity.runners import EDGE_BATCH_SIZES, Outputs, Reference
from kerasport.tolerances import NEAR_TIE_NOISE_FACTOR, TolerancePolicy, decision_margin

CONTRACT = ModelContract(inputs=(InputSpec(name="x", dtype="float32", shape=(-1, 2)),),
                         outputs=(OutputSpec(name="p", dtype="float32", shape=(-1, 3), kind="probabilities"),))
EXAMPLES = 40
CLOSE = (0, 1)  # the examples whose two top classes are 0.02 apart
CLOSE_MARGIN = 0.02


def reference_scores() -> np.ndarray:
    scores = np.tile([0.7, 0.2, 0.1], (EXAMPLES, 1))
    scores[list(CLOSE)] = [0.45, 0.45 + CLOSE_MARGIN, 0.1 - CLOSE_MARGIN]
    return scores


def outputs_of(scores: np.ndarray) -> Outputs:
    return Outputs({"p": scores}, {batch: {"p": scores[:batch]} for batch in EDGE_BATCH_SIZES if batch <= EXAMPLES}
                   | {batch: {"p": np.resize(scores, (batch, 3))} for batch in EDGE_BATCH_SIZES if batch > EXAMPLES})


def reference_with_fp16_error(error: float) -> Reference:
    noise = {"max_abs_diff": 1e-7, "edge_max_abs_diff": 1e-7, "fp16_max_abs_diff": error,
             "fp16_edge_max_abs_diff": error}
    return Reference(outputs_of(reference_scores()), {"p": noise}, {})


def flip(scores: np.ndarray, rows, by: float) -> np.ndarray:
    """Move `by` of probability from each row's top class to its runner-up (a top-1 flip when `by` > the margin)."""
    changed = scores.copy()
    for row in rows:
        top, second = np.argsort(changed[row])[::-1][:2]
        changed[row, top] -= by
        changed[row, second] += by
    return changed


def verdicts(error: float, candidate: np.ndarray) -> dict[str, bool]:
    fp16 = TolerancePolicy().fp16
    targets = {"p": reference_scores().argmax(axis=1)}
    _, checks = judge(CONTRACT, fp16, reference_with_fp16_error(error), outputs_of(candidate), targets)
    return {record.check: record.passed for record in checks.records}


def test_the_decision_margin_is_the_tie_margin_or_twice_the_models_own_error():
    fp16 = TolerancePolicy().fp16
    assert decision_margin(fp16, 0.0) == fp16.tie_margin
    assert decision_margin(fp16, 0.12) == pytest.approx(NEAR_TIE_NOISE_FACTOR * 0.12)


def test_flips_that_fp16_rounding_alone_can_cause_are_near_ties():
    # MobileNetV3Small's case: fp16 weights alone move a probability by 0.12; two decisions 0.02 apart flip.
    error = 0.12
    candidate = flip(reference_scores(), CLOSE, CLOSE_MARGIN * 1.5)
    assert NEAR_TIE_NOISE_FACTOR * error > CLOSE_MARGIN >= TolerancePolicy().fp16.tie_margin
    assert verdicts(error, candidate) == {"outputs": True, "dynamic_batch": True, "finite": True,
                                          "max_abs_diff": True, "top1_agreement": True, "accuracy_drop": True}


def test_the_same_flips_fail_for_a_model_whose_fp16_error_is_small():
    error = 1e-3  # 2 x error < the 0.02 margin: the flips are real decisions changed
    candidate = flip(reference_scores(), CLOSE, CLOSE_MARGIN * 1.5)
    failed = {check for check, passed in verdicts(error, candidate).items() if not passed}
    assert failed == {"max_abs_diff", "top1_agreement", "accuracy_drop"}


def test_a_flip_on_a_decisive_example_still_fails_with_a_large_fp16_error():
    error = 0.12
    decisive = [5]  # margin 0.5 > 2 x 0.12
    candidate = flip(reference_scores(), decisive, 0.3)
    failed = {check for check, passed in verdicts(error, candidate).items() if not passed}
    assert failed == {"max_abs_diff", "top1_agreement", "accuracy_drop"}
