"""Per-candidate comparison against the Keras reference: error statistics, agreement, accuracy with a CI."""

from __future__ import annotations

import math

import numpy as np

# Relative differences divide by max(|reference|, this): tiny probabilities would otherwise dominate.
RELATIVE_FLOOR = 1e-3
Z_95 = 1.959963984540054


def error_statistics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    relative = diff / np.maximum(np.abs(reference.astype(np.float64)), RELATIVE_FLOOR)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "p99_abs_diff": float(np.quantile(diff, 0.99)), "max_rel_diff": float(relative.max())}


def wilson_interval(successes: int, total: int) -> list[float]:
    if total == 0:
        return [0.0, 1.0]
    p = successes / total
    denominator = 1 + Z_95 ** 2 / total
    centre = (p + Z_95 ** 2 / (2 * total)) / denominator
    half = Z_95 * math.sqrt(p * (1 - p) / total + Z_95 ** 2 / (4 * total ** 2)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def classification_statistics(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray,
                              tie_margin: float = 0.0) -> dict:
    ref_top1, cand_top1 = reference.argmax(axis=1), candidate.argmax(axis=1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= tie_margin
    flips = ref_top1 != cand_top1
    ref_correct, cand_correct = ref_top1 == labels, cand_top1 == labels
    # The accuracy delta is paired (same images), so its CI comes from the per-image differences.
    paired = cand_correct.astype(np.float64) - ref_correct.astype(np.float64)
    n = len(labels)
    spread = Z_95 * paired.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    delta = float(paired.mean())
    return {"top1_agreement": float((~flips).mean()), "label_flips": int(flips.sum()),
            "decisive_images": int(decisive.sum()), "tie_margin": tie_margin,
            "decisive_agreement": float((~flips[decisive]).mean()) if decisive.any() else 1.0,
            "near_tie_flips": int((flips & ~decisive).sum()), "flipped_indices": np.flatnonzero(flips).tolist(),
            "accuracy": float(cand_correct.mean()), "reference_accuracy": float(ref_correct.mean()),
            "accuracy_delta": delta, "accuracy_delta_ci95": [delta - spread, delta + spread],
            "accuracy_ci95": wilson_interval(int(cand_correct.sum()), n)}


def regression_statistics(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> dict:
    targets = targets.reshape(reference.shape)
    reference_mae = float(np.abs(reference - targets).mean())
    candidate_mae = float(np.abs(candidate - targets).mean())
    return {"mae": candidate_mae, "reference_mae": reference_mae, "mae_delta": candidate_mae - reference_mae,
            "mae_relative_increase": (candidate_mae - reference_mae) / max(reference_mae, 1e-12)}


def edge_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs a real image never is, at 28x28x1 raw pixels; each is tiled to batch 64 with noisy variants."""
    rng = np.random.default_rng(seed)
    checker = (np.indices((28, 28)).sum(axis=0) % 2 * 255).astype(np.float32)
    bright = np.zeros((28, 28), np.float32)
    bright[14, 14] = 255
    return {"all_0": np.zeros((28, 28), np.float32), "all_255": np.full((28, 28), 255, np.float32),
            "uniform_noise": rng.uniform(0, 255, (28, 28)).astype(np.float32), "single_bright_pixel": bright,
            "checkerboard": checker}


def edge_batch(seed: int = 0, size: int = 64) -> np.ndarray:
    """The edge inputs first, then seeded noise of varying strength up to `size` images."""
    rng = np.random.default_rng(seed)
    base = list(edge_inputs(seed).values())
    while len(base) < size:
        scale = rng.uniform(0, 255)
        base.append(np.clip(rng.normal(scale, 60, (28, 28)), 0, 255).astype(np.float32))
    return np.stack(base)[..., None]
