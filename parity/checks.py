"""The gate's checks for one candidate: every output against the reference, under its precision's tolerance.

Per output: shapes at every batch size (`dynamic_batch`), `finite`, `max_abs_diff` (the bound of
`tolerances.allowed_difference`), and for classification outputs `top1_agreement` and (with targets)
`accuracy_drop`, both judged on the decisive examples (reference top-2 margin at least
`tolerances.decision_margin`: the configured tie margin, or twice the model's own error for the precision when
that is larger; every flip is reported), for regression outputs (with targets) `mae_increase`. A check is identified as
`<check>[<output>]`; `outputs` (the candidate returns the contract's output names) and `loads_and_runs` are
per candidate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kerasport.compare import (
    accuracy_statistics,
    agreement_statistics,
    class_scores,
    class_targets,
    error_statistics,
    regression_statistics,
)
from kerasport.contract import ModelContract, OutputSpec
from kerasport.tolerances import Tolerance, bound_excess, decision_margin, noise_floors
from kerasport.verdict import Verdict

from .results import Check, OutputResult
from .runners import EDGE_BATCH_SIZES, Outputs, Reference

LOAD_CHECK = "loads_and_runs"
NOISE_WORDS = {"fp16_weights": "fp16 weight-rounding error", "float32_error": "float32 error",
               "batch_order": "batch-order noise"}


class Checks:
    """The list of checks one candidate collects, as report records."""

    def __init__(self) -> None:
        self.records: list[Check] = []

    def add(self, check: str, passed: bool, message: str, output: str | None = None) -> bool:
        self.records.append(Check.of(check, passed, message, output))
        return bool(passed)

    @property
    def verdict(self) -> Verdict:
        return Verdict.of_checks([record.passed for record in self.records])

    def failed_ids(self) -> list[str]:
        return [record.id for record in self.records if not record.passed]


def load_error(message: str) -> list[Check]:
    """The one check record of a candidate that would not load or run."""
    checks = Checks()
    checks.add(LOAD_CHECK, False, message)
    return checks.records


def judge(contract: ModelContract, tolerance: Tolerance, reference: Reference, outputs: Outputs,
          targets: Mapping[str, np.ndarray]) -> tuple[dict[str, OutputResult], Checks]:
    """Compare every output of a candidate with the reference.

    Args:
        contract: the outputs to compare (names, kinds).
        tolerance: the candidate's precision class.
        reference: the reference's outputs and noise floor.
        outputs: the candidate's outputs on the same inputs.
        targets: per output name, eval targets when the eval sample has them.

    Returns:
        Per output name its statistics, and the checks.
    """
    checks = Checks()
    expected, received = set(contract.output_names), set(outputs.eval)
    if not checks.add("outputs", expected <= received,
                      f"outputs {sorted(received)}; expected the contract's {sorted(expected)}"):
        return {}, checks
    per_output = {spec.name: _judge_output(spec, tolerance, reference, outputs, targets.get(spec.name), checks)
                  for spec in contract.output_specs()}
    return per_output, checks


def _shapes_match(name: str, reference: Reference, outputs: Outputs) -> bool:
    return outputs.eval[name].shape == reference.outputs.eval[name].shape and all(
        outputs.edge[batch][name].shape == reference.outputs.edge[batch][name].shape for batch in EDGE_BATCH_SIZES)


def _judge_output(spec: OutputSpec, tolerance: Tolerance, reference: Reference, outputs: Outputs,
                  targets: np.ndarray | None, checks: Checks) -> OutputResult:
    name = spec.name
    result = OutputResult(spec.kind, "classification" if spec.is_classification else "regression",
                          labelled=targets is not None)
    expected_shape = list(reference.outputs.eval[name].shape[1:])
    if not checks.add("dynamic_batch", _shapes_match(name, reference, outputs),
                      f"batch sizes {list(EDGE_BATCH_SIZES)} and the eval slice gave shapes "
                      f"{[list(outputs.edge[b][name].shape) for b in EDGE_BATCH_SIZES]}; expected [batch, "
                      f"{', '.join(map(str, expected_shape))}]", name):
        return result
    finite = np.isfinite(outputs.eval[name]).all() and all(
        np.isfinite(outputs.edge[b][name]).all() for b in EDGE_BATCH_SIZES)
    checks.add("finite", finite, "every value is finite" if finite else "NaN or Inf in the outputs", name)
    result.eval = error_statistics(reference.outputs.eval[name], outputs.eval[name])
    result.edge = {str(b): error_statistics(reference.outputs.edge[b][name], outputs.edge[b][name])
                   for b in EDGE_BATCH_SIZES}
    _check_bound(spec, tolerance, reference, outputs, result, checks)
    if spec.is_classification:
        _check_classification(spec, tolerance, reference, outputs, targets, result, checks)
    elif targets is not None:
        _check_regression(name, tolerance, reference, outputs, targets, result, checks)
    return result


def _check_bound(spec: OutputSpec, tolerance: Tolerance, reference: Reference, outputs: Outputs,
                 result: OutputResult,
                 checks: Checks) -> None:
    if tolerance.atol is None:
        return
    name = spec.name
    eval_noise, edge_noise = noise_floors(tolerance, reference.noise[name])
    eval_excess = bound_excess(tolerance, reference.outputs.eval[name], outputs.eval[name], eval_noise, spec.kind)
    edge_excess = max(bound_excess(tolerance, reference.outputs.edge[b][name], outputs.edge[b][name], edge_noise,
                                   spec.kind) for b in EDGE_BATCH_SIZES)
    rtol = tolerance.rtol + (tolerance.values_rtol if spec.kind != "probabilities" else 0.0)
    allowed_eval = max(tolerance.atol, tolerance.noise_multiple * eval_noise)
    allowed_edge = max(tolerance.atol, tolerance.noise_multiple * edge_noise)
    noise_name = {"fp16_weights": reference.noise[name].get("fp16_source",
                                                         "the reference's own error with float16-rounded weights"),
                  "float32_error": "the reference's own float32 error (vs float64, or batch order if larger)"}.get(
        tolerance.noise_source, "the reference's own batch-order noise")
    worst_edge = max(stats["max_abs_diff"] for stats in result.edge.values())
    checks.add("max_abs_diff", eval_excess <= 0 and edge_excess <= 0,
               f"max |diff| {result.eval['max_abs_diff']:.3g} on the eval inputs (allowed {allowed_eval:.3g}), "
               f"{worst_edge:.3g} on edge inputs (allowed {allowed_edge:.3g}); bound = max(atol {tolerance.atol:g}, "
               f"{tolerance.noise_multiple:g} x {noise_name})"
               + (f" + {rtol:g}·|reference|" if rtol else ""), name)


def _check_classification(spec: OutputSpec, tolerance: Tolerance, reference: Reference, outputs: Outputs,
                          targets: np.ndarray | None, result: OutputResult, checks: Checks) -> None:
    ref_scores = class_scores(reference.outputs.eval[spec.name], spec.kind)
    cand_scores = class_scores(outputs.eval[spec.name], spec.kind)
    margin = decision_margin(tolerance, noise_floors(tolerance, reference.noise[spec.name])[0])
    stats = agreement_statistics(ref_scores, cand_scores, margin)
    result.eval.update(stats)
    noise = NOISE_WORDS.get(tolerance.noise_source, tolerance.noise_source)
    why = "" if margin == tolerance.tie_margin else \
        f", twice the model's own {noise}, above tie_margin {tolerance.tie_margin:g}"
    checks.add("top1_agreement", stats["decisive_agreement"] >= tolerance.min_agreement,
               f"top-1 agreement {stats['decisive_agreement']:.4f} on {stats['decisive_examples']} decisive "
               f"examples (reference top-2 margin >= {margin:.3g}{why}); raw {stats['top1_agreement']:.4f} "
               f"with {stats['label_flips']} flips of {len(ref_scores)}, {stats['near_tie_flips']} on near-ties; "
               f"required >= {tolerance.min_agreement:g}", spec.name)
    if targets is None:
        return
    accuracy = accuracy_statistics(ref_scores, cand_scores, targets)
    result.eval.update(accuracy)
    if tolerance.max_accuracy_drop is not None:
        # Judged on the decisive examples, like top-1 agreement: a near-tie's flip is within the output bound.
        top2 = np.sort(ref_scores, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) >= margin
        labels = class_targets(targets, len(ref_scores), ref_scores.shape[1])
        drop = -accuracy_statistics(ref_scores[decisive], cand_scores[decisive], labels[decisive])[
            "accuracy_delta"] if decisive.any() else 0.0
        result.eval["decisive_accuracy_delta"] = -drop
        checks.add("accuracy_drop", drop <= tolerance.max_accuracy_drop + 1e-12,
                   f"accuracy {accuracy['accuracy']:.4f} vs reference {accuracy['reference_accuracy']:.4f} "
                   f"(Δ {accuracy['accuracy_delta'] * 100:+.2f} pp); on the {int(decisive.sum())} decisive examples "
                   f"Δ {-drop * 100:+.2f} pp; allowed drop {tolerance.max_accuracy_drop * 100:.2f} pp", spec.name)


def _check_regression(name: str, tolerance: Tolerance, reference: Reference, outputs: Outputs,
                      targets: np.ndarray, result: OutputResult, checks: Checks) -> None:
    stats = regression_statistics(reference.outputs.eval[name], outputs.eval[name], targets)
    result.eval.update(stats)
    if tolerance.max_mae_increase is not None:
        checks.add("mae_increase", stats["mae_relative_increase"] <= tolerance.max_mae_increase + 1e-12,
                   f"MAE {stats['mae']:.4g} vs reference {stats['reference_mae']:.4g} "
                   f"({stats['mae_relative_increase'] * 100:+.2f} %); "
                   f"allowed +{tolerance.max_mae_increase * 100:.1f} %", name)
