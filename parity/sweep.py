"""The runtime settings sweep: each ONNX/TFLite artifact re-run on the eval inputs under other settings.

onnxruntime at optimization levels disabled/basic/all, LiteRT with and without XNNPACK, each with 1 and 2
threads. A setting that moves any output beyond the tolerance (the gate's own bound, `allowed_difference`), or
that cannot run, is a finding in the report — not a gate failure: the gate judges the default settings.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kerasport.compare import agreement_statistics, class_scores, error_statistics
from kerasport.contract import ModelContract
from kerasport.manifest import Artifact
from kerasport.runtimes import RuntimeSettings
from kerasport.tolerances import PRECISION_CLASS, Tolerance, bound_excess, decision_margin, noise_floors

from .runners import Reference, open_candidate, run_batched

ORT_SWEEP_LEVELS = ("disabled", "basic", "all")
SWEEP_THREADS = (1, 2)


def sweep_settings(artifact_format: str) -> tuple[str, list[RuntimeSettings]]:
    """The runtime's name and the settings the sweep tries for an artifact format."""
    if artifact_format == "onnx":
        return "onnxruntime", [RuntimeSettings(threads=t, ort_optimization=level) for level in ORT_SWEEP_LEVELS
                               for t in SWEEP_THREADS]
    return "ai-edge-litert", [RuntimeSettings(threads=t, xnnpack=x) for x in (True, False) for t in SWEEP_THREADS]


def sweep(run_dir: Path, artifact: Artifact, contract: ModelContract, eval_inputs: Mapping[str, np.ndarray],
          reference: Reference, tolerance: Tolerance) -> list[dict]:
    """One row per setting: how far each output moves from the reference, and whether it stays within tolerance."""
    runtime, settings = sweep_settings(artifact.format)
    rows = []
    for setting in settings:
        started = time.perf_counter()
        try:
            outputs = run_batched(open_candidate(run_dir, artifact, contract, setting), eval_inputs)
        except Exception as error:  # noqa: BLE001 - a setting that cannot run is itself a finding, not a crash
            rows.append({"settings": setting.describe(runtime), "error": f"{type(error).__name__}: {error}",
                         "max_abs_diff": None, "seconds": 0.0, "within_tolerance": False})
            continue
        seconds = time.perf_counter() - started
        rows.append({"settings": setting.describe(runtime), "seconds": round(seconds, 3),
                     **_compare(contract, outputs, reference, tolerance)})
    return rows


def _compare(contract: ModelContract, outputs: Mapping[str, np.ndarray], reference: Reference,
             tolerance: Tolerance) -> dict:
    per_output, within, agreements = {}, True, []
    for spec in contract.output_specs():
        expected, received = reference.outputs.eval[spec.name], outputs.get(spec.name)
        if received is None or received.shape != expected.shape:
            per_output[spec.name] = {"error": f"shape {None if received is None else list(received.shape)}"}
            within = False
            continue
        stats = {"max_abs_diff": error_statistics(expected, received)["max_abs_diff"]}
        eval_noise, _ = noise_floors(tolerance, reference.noise[spec.name])
        if tolerance.atol is not None:
            within &= bound_excess(tolerance, expected, received, eval_noise, spec.kind) <= 0
        if spec.is_classification:
            agreement = agreement_statistics(class_scores(expected, spec.kind), class_scores(received, spec.kind),
                                             decision_margin(tolerance, eval_noise))
            stats.update(top1_agreement=agreement["top1_agreement"],
                         decisive_agreement=agreement["decisive_agreement"])
            agreements.append(agreement["top1_agreement"])
            within &= agreement["decisive_agreement"] >= tolerance.min_agreement
        per_output[spec.name] = stats
    differences = [stats["max_abs_diff"] for stats in per_output.values() if "max_abs_diff" in stats]
    row = {"max_abs_diff": max(differences) if differences else None, "outputs": per_output,
           "within_tolerance": bool(within)}
    if agreements:
        row["top1_agreement"] = min(agreements)
    return row


def findings(name: str, precision: str, rows: list[dict]) -> list[str]:
    """One line per setting that does not run or leaves the tolerance."""
    lines = []
    for row in rows:
        if "error" in row:
            lines.append(f"{name} with {row['settings']}: does not run ({row['error']})")
        elif not row["within_tolerance"]:
            difference = "n/a" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.3g}"
            agreement = f", agreement {row['top1_agreement']:.4f}" if "top1_agreement" in row else ""
            lines.append(f"{name} with {row['settings']}: max|diff| {difference}{agreement} — beyond the "
                         f"{PRECISION_CLASS.get(precision, 'fp32')} tolerance")
    return lines
