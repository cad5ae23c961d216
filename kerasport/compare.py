"""Comparison statistics for one output of a candidate against the reference: pure functions on arrays.

Error statistics apply to every output. Classification outputs (`probabilities`, `logits`) add top-1 agreement
and label flips (argmax of the raw values; a single-column output is a binary decision: p >= 0.5, logit >= 0) and,
given class targets, accuracy with a Wilson 95 % interval and the paired accuracy delta with a 95 % CI.
Regression outputs (`values`), given targets, add the MAE and its paired delta with a 95 % CI.
"""

from __future__ import annotations

import math

import numpy as np

# Relative differences divide by max(|reference|, this): tiny probabilities would otherwise dominate.
RELATIVE_FLOOR = 1e-3
Z_95 = 1.959963984540054


def error_statistics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """max / mean / p99 absolute difference and the max relative difference (denominator floored)."""
    reference = np.asarray(reference, dtype=np.float64)
    diff = np.abs(np.asarray(candidate, dtype=np.float64) - reference)
    relative = diff / np.maximum(np.abs(reference), RELATIVE_FLOOR)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "p99_abs_diff": float(np.quantile(diff, 0.99)), "max_rel_diff": float(relative.max())}


def wilson_interval(successes: int, total: int) -> list[float]:
    """The Wilson score 95 % interval of a proportion; [0, 1] when there is nothing to count."""
    if total == 0:
        return [0.0, 1.0]
    p = successes / total
    denominator = 1 + Z_95 ** 2 / total
    centre = (p + Z_95 ** 2 / (2 * total)) / denominator
    half = Z_95 * math.sqrt(p * (1 - p) / total + Z_95 ** 2 / (4 * total ** 2)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def paired_delta_interval(differences: np.ndarray) -> tuple[float, list[float]]:
    """Mean of paired per-example differences and its normal 95 % CI (mean ± z·sd/√n)."""
    differences = np.asarray(differences, dtype=np.float64).ravel()
    n = len(differences)
    delta = float(differences.mean()) if n else 0.0
    spread = Z_95 * float(differences.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return delta, [delta - spread, delta + spread]


def class_scores(values: np.ndarray, kind: str) -> np.ndarray:
    """Scores as [examples, classes] with the classes on the last axis; one column becomes a binary pair."""
    values = np.asarray(values, dtype=np.float64)
    scores = values.reshape(-1, 1) if values.ndim <= 1 else values.reshape(-1, values.shape[-1])
    if scores.shape[1] == 1:
        # a sigmoid probability p is the pair (1 - p, p); a logit z compares with 0: the pair (0, z)
        column = scores[:, 0]
        return np.stack([1 - column if kind == "probabilities" else np.zeros_like(column), column], axis=1)
    return scores


def class_targets(targets: np.ndarray, examples: int, classes: int) -> np.ndarray:
    """Class indices per example: integer targets as given, one-hot rows by their argmax."""
    targets = np.asarray(targets)
    if classes > 1 and targets.size == examples * classes and targets.size != examples:
        return targets.reshape(examples, classes).argmax(axis=1)
    return targets.reshape(-1).astype(np.int64)


def agreement_statistics(reference: np.ndarray, candidate: np.ndarray, tie_margin: float = 0.0) -> dict:
    """Top-1 agreement of two [examples, classes] score arrays; agreement on decisive examples, flips."""
    ref_top1, cand_top1 = reference.argmax(axis=1), candidate.argmax(axis=1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= tie_margin
    flips = ref_top1 != cand_top1
    return {"top1_agreement": float((~flips).mean()), "label_flips": int(flips.sum()),
            "decisive_examples": int(decisive.sum()), "tie_margin": tie_margin,
            "decisive_agreement": float((~flips[decisive]).mean()) if decisive.any() else 1.0,
            "near_tie_flips": int((flips & ~decisive).sum()), "flipped_indices": np.flatnonzero(flips).tolist()}


def accuracy_statistics(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> dict:
    """Accuracy of both score arrays against class targets, the candidate's Wilson CI and the paired delta CI."""
    labels = class_targets(targets, len(reference), reference.shape[1])
    ref_correct, cand_correct = reference.argmax(axis=1) == labels, candidate.argmax(axis=1) == labels
    # The accuracy delta is paired (same examples), so its CI comes from the per-example differences.
    delta, interval = paired_delta_interval(cand_correct.astype(np.float64) - ref_correct.astype(np.float64))
    return {"accuracy": float(cand_correct.mean()), "reference_accuracy": float(ref_correct.mean()),
            "accuracy_delta": delta, "accuracy_delta_ci95": interval,
            "accuracy_ci95": wilson_interval(int(cand_correct.sum()), len(labels))}


def regression_statistics(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> dict:
    """MAE of both against the targets, the delta with its paired 95 % CI, and the relative increase."""
    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, dtype=np.float64).reshape(reference.shape)
    targets = np.asarray(targets, dtype=np.float64).reshape(reference.shape)
    ref_errors, cand_errors = np.abs(reference - targets).mean(axis=1), np.abs(candidate - targets).mean(axis=1)
    reference_mae, candidate_mae = float(ref_errors.mean()), float(cand_errors.mean())
    delta, interval = paired_delta_interval(cand_errors - ref_errors)
    return {"mae": candidate_mae, "reference_mae": reference_mae, "mae_delta": delta, "mae_delta_ci95": interval,
            "mae_relative_increase": delta / max(reference_mae, 1e-12)}
