"""The runtime settings sweep: each ONNX/TFLite artifact re-run on the eval inputs under other settings.

onnxruntime at optimization levels disabled/basic/all, LiteRT with and without XNNPACK, each with 1 and 2
threads. A setting that moves any output beyond the tolerance (the gate's own bound, `allowed_difference`), or
that cannot run, is a finding in the report — not a gate failure: the gate judges the default settings.

Each setting first runs one eval batch of every shape the full run uses (the first batch and the last, shorter
one). Where its outputs there are bit-identical to outputs already computed on the whole eval sample by the same
kernels with another thread count — the default settings' (the gate's own run) or another setting's — the setting
performs the same arithmetic (how the kernels split the work across threads depends on the shapes, not the
values), so those outputs stand for the rest and the other batches are not re-run. Otherwise the remaining
batches run as well. Each row says which it was.

Outputs of other kernels (XNNPACK on or off, another optimization level) never stand in, however well they match
on the sampled batches: integer kernels round ties their own way, so they can agree on whole batches and differ
on a few examples elsewhere (the seed model's tflite-int8: XNNPACK and LiteRT's built-in kernels agree on the
first and last batch and differ on 2 of 359 examples, by 14 output steps).

A setting that is, on this host, the very configuration of a run already made (onnxruntime's default thread count
is one per physical core, so on 2 cores `threads=2` is the default) runs nothing and says so.

The runs do not depend on the reference (`sweep_runs`), so they can be computed while it loads; `sweep` judges
them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.compare import agreement_statistics, class_scores, error_statistics
from kerasport.contract import ModelContract
from kerasport.manifest import Artifact
from kerasport.runtimes import RuntimeSettings, default_intra_op_threads
from kerasport.tolerances import PRECISION_CLASS, Tolerance, bound_excess, decision_margin, noise_floors

from .runners import EVAL_BATCH, GATE_SETTINGS, Reference, open_candidate

ORT_SWEEP_LEVELS = ("disabled", "basic", "all")
SWEEP_THREADS = (1, 2)


def sweep_settings(artifact_format: str) -> tuple[str, list[RuntimeSettings]]:
    """The runtime's name and the settings the sweep tries for an artifact format."""
    if artifact_format == "onnx":
        return "onnxruntime", [dataclasses.replace(GATE_SETTINGS, threads=t, ort_optimization=level)
                               for level in ORT_SWEEP_LEVELS for t in SWEEP_THREADS]
    return "ai-edge-litert", [dataclasses.replace(GATE_SETTINGS, threads=t, xnnpack=x) for x in (True, False)
                              for t in SWEEP_THREADS]


@dataclass
class SettingRun:
    """One setting's run on the eval sample: its outputs and what ran, or why it could not run."""

    settings: str
    outputs: dict[str, np.ndarray] | None = None
    ran: dict | None = None
    seconds: float = 0.0
    error: str | None = None


def effective(settings: RuntimeSettings, runtime: str) -> RuntimeSettings:
    """The settings as the runtime applies them on this host: onnxruntime's default thread count (0) is one per
    physical core (kerasport.runtimes); LiteRT's default is left to LiteRT, so it stays 0 (unknown)."""
    if runtime == "onnxruntime" and not settings.threads:
        return dataclasses.replace(settings, threads=default_intra_op_threads())
    return settings


def same_kernels(first: RuntimeSettings, second: RuntimeSettings) -> bool:
    """Whether two settings run the same kernels, differing at most in their thread count."""
    return dataclasses.replace(first, threads=0) == dataclasses.replace(second, threads=0)


def sweep_runs(run_dir: Path, artifact: Artifact, contract: ModelContract, eval_inputs: Mapping[str, np.ndarray],
               default_outputs: Mapping[str, np.ndarray] | None = None,
               seeds: Sequence[tuple[RuntimeSettings, str, Mapping[str, np.ndarray]]] = ()) -> list[SettingRun]:
    """Every sweep setting's outputs on the eval inputs (see the module doc for what is reused).

    Args:
        default_outputs: the candidate's eval outputs under the default settings (the gate's run), if known.
        seeds: (settings, label, eval outputs) of other runs of this artifact computed already on the whole eval
            sample (the tflm check's run in LiteRT's built-in kernels), reused like the default settings'.

    Returns:
        One SettingRun per setting of `sweep_settings`, in order; a setting that cannot run carries its error.
    """
    runtime, settings = sweep_settings(artifact.format)
    known = [(GATE_SETTINGS, "the default settings", default_outputs)] if default_outputs is not None else []
    known += list(seeds)
    runs = []
    total = len(next(iter(eval_inputs.values())))
    for setting in settings:
        started = time.perf_counter()
        label = setting.describe(runtime)
        identical = next(((known_label, known_outputs) for known_setting, known_label, known_outputs in known
                          if effective(known_setting, runtime) == effective(setting, runtime)), None)
        if identical is not None:  # e.g. onnxruntime's default thread count is this host's cores: nothing to run
            runs.append(SettingRun(label, dict(identical[1]), {"examples": 0, "of": total, "same_as": identical[0],
                                                               "same_settings": True}))
            continue
        try:
            runner = open_candidate(run_dir, artifact, contract, setting)
            outputs, ran = run_setting(runner, eval_inputs, [(known_label, known_outputs)
                                                             for known_setting, known_label, known_outputs in known
                                                             if same_kernels(known_setting, setting)])
        except Exception as error:  # noqa: BLE001 - a setting that cannot run is itself a finding, not a crash
            runs.append(SettingRun(label, error=f"{type(error).__name__}: {error}"))
            continue
        if ran.get("same_as") is None:
            known.append((setting, label, outputs))
        runs.append(SettingRun(label, outputs, ran, time.perf_counter() - started))
    return runs


def sweep(run_dir: Path, artifact: Artifact, contract: ModelContract, eval_inputs: Mapping[str, np.ndarray],
          reference: Reference, tolerance: Tolerance, default_outputs: Mapping[str, np.ndarray] | None = None,
          runs: list[SettingRun] | None = None) -> list[dict]:
    """One row per setting: how far each output moves from the reference, and whether it stays within tolerance.

    Args:
        run_dir: the bundle.
        artifact: the candidate swept.
        contract: the model's inputs and outputs.
        eval_inputs: the whole eval sample.
        reference: the reference outputs and noise floors.
        tolerance: the candidate's precision class bound.
        default_outputs: the candidate's eval outputs under the default settings (the gate's run), if known: the
            same kernels with another thread count, bit-identical to them on the sampled batches, reuse them.
        runs: the settings' runs when computed already (`sweep_runs`); None runs them here.

    Returns:
        One row per setting, with `ran` saying whether it ran on every batch or on the sampled ones only.
    """
    if runs is None:
        runs = sweep_runs(run_dir, artifact, contract, eval_inputs, default_outputs)
    rows = []
    for run in runs:
        if run.error is not None:
            rows.append({"settings": run.settings, "error": run.error, "max_abs_diff": None, "seconds": 0.0,
                         "within_tolerance": False})
            continue
        rows.append({"settings": run.settings, "seconds": round(run.seconds, 3), "ran": run.ran,
                     **_compare(contract, run.outputs, reference, tolerance)})
    return rows


def batch_bounds(total: int, batch: int = EVAL_BATCH) -> list[tuple[int, int]]:
    """(start, stop) of each eval batch, as the gate's own run cuts them."""
    return [(start, min(start + batch, total)) for start in range(0, total, batch)]


def run_setting(runner, inputs: Mapping[str, np.ndarray],
                known: list[tuple[str, Mapping[str, np.ndarray]]]) -> tuple[dict[str, np.ndarray], dict]:
    """One setting's eval outputs: the sampled batches, then either known outputs they match bit for bit or the
    remaining batches.

    Returns:
        The outputs on every eval example, and what ran: {"examples": run here, "of": total, "same_as": the
        label of the known outputs reused, or None}.
    """
    total = len(next(iter(inputs.values())))
    bounds = batch_bounds(total)
    sampled = sorted({0, len(bounds) - 1})

    def run(index: int) -> dict[str, np.ndarray]:
        start, stop = bounds[index]
        return runner.run({name: array[start:stop] for name, array in inputs.items()})

    parts = {index: run(index) for index in sampled}
    examples = sum(bounds[index][1] - bounds[index][0] for index in sampled)
    for label, outputs in known:
        if all(np.array_equal(part[name], outputs[name][bounds[index][0]:bounds[index][1]])
               for index, part in parts.items() for name in part):
            return dict(outputs), {"examples": examples, "of": total, "same_as": label}
    parts.update({index: run(index) for index in range(len(bounds)) if index not in parts})
    ordered = [parts[index] for index in range(len(bounds))]
    return ({name: np.concatenate([part[name] for part in ordered]) for name in ordered[0]},
            {"examples": total, "of": total, "same_as": None})


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


def unsteady_settings(rows: list[dict]) -> list[str]:
    """The swept settings under which the artifact does not run or leaves its tolerance (the manifest records them:
    the selection policy prefers artifacts whose answers hold under every setting)."""
    return [row["settings"] for row in rows if "error" in row or not row["within_tolerance"]]


def sweep_record(rows: list[dict] | None) -> dict:
    """What the manifest keeps of a candidate's sweep, beside its verdict: {} when no sweep ran (`--no-sweep`, or a
    format that has none), else {"sweep": {"settings": n, "beyond_tolerance": [settings...]}}."""
    if rows is None:
        return {}
    return {"sweep": {"settings": len(rows), "beyond_tolerance": unsteady_settings(rows)}}


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
