"""After the gate: measured speed of every candidate that passed (`kerasport.perf`, each in its own child process),
the recommendation per target (`kerasport.selection`), the accuracy-Δ-vs-latency plot and its Pareto front."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from kerasport.errors import UsageError
from kerasport.manifest import Manifest
from kerasport.perf import DEFAULT_BUDGET_S, measure_bundle, synthetic_inputs
from kerasport.profile import LITERT_UNAVAILABLE, profile_onnx
from kerasport.selection import choose, recommend
from kerasport.verdict import Verdict

from .results import (
    CandidateResult,
    ParityReport,
    PerformanceSection,
    ProfileSection,
    RecommendationPolicy,
    TargetChoice,
)
from .sweep import sweep_record
from .tflm import record_microcontroller


def accuracy_delta(result: CandidateResult) -> float | None:
    """The candidate's accuracy minus the reference's on the first labelled classification output (None: none)."""
    for stats in (result.outputs or {}).values():
        measured = stats.eval or {}
        if "accuracy_delta" in measured:
            return float(measured["accuracy_delta"])
    return None


def verdict_preview(manifest: Manifest, report: ParityReport) -> Manifest:
    """A copy of the manifest with this run's verdicts and microcontroller fit, as record_verdicts will write them."""
    preview = manifest.copy()
    for name, result in report.candidates.items():
        preview.set_parity(name, {"verdict": result.verdict, **sweep_record(result.sweep)})
    record_microcontroller(preview, report)
    return preview


def measure_and_recommend(run_dir: Path, manifest: Manifest, report: ParityReport, *, measure: bool = True,
                          budget_seconds: float = DEFAULT_BUDGET_S, max_accuracy_drop: float | None = None,
                          console=None) -> None:
    """Add `performance` (measured now, or the manifest's earlier block with `measure=False`) and `recommendation`
    to the report, for record_verdicts to carry into the manifest.

    Args:
        run_dir: the bundle. manifest: its manifest as the gate planned it. report: the gate's report (updated).
        measure: measure every passing candidate now (False: `--no-perf`, keep the earlier measurements of
            artifacts whose bytes have not changed since).
        budget_seconds: the time cap of the measurement.
        max_accuracy_drop: the server recommendation's accuracy limit (0.01 = 1 pp).
        console: a rich console for one line per candidate; None is silent.
    """
    preview = verdict_preview(manifest, report)
    passed = [name for name, result in report.candidates.items() if result.verdict == Verdict.PASS]
    if measure:
        if console is not None:
            console.print(f"perf: measuring {len(passed)} passing candidates, each in its own process (cap "
                          f"{budget_seconds:g} s; --no-perf skips)")
        performance = measure_bundle(run_dir, passed, budget_seconds=budget_seconds, manifest=manifest,
                                     console=console)
    else:
        performance = current_measurements(preview)
    for name, figures in performance.get("candidates", {}).items():
        if name in report.candidates:
            figures["accuracy_delta"] = accuracy_delta(report.candidates[name])
        figures["sha256"] = preview.artifact(name).sha256 if preview.has(name) else None
    if performance:
        report.performance = PerformanceSection.from_dict(performance)
    preview.set_performance(performance or None)
    report.recommendation = {target: TargetChoice.from_dict(choice)
                             for target, choice in recommend(preview, max_accuracy_drop).items()}
    report.recommendation_policy = RecommendationPolicy(max_accuracy_drop, bool(performance))
    server = report.recommendation["server_cpu"].variant
    if measure and server:
        report.profile = ProfileSection.from_dict(profile_recommended(run_dir, preview, server))


def profile_recommended(run_dir: Path, manifest: Manifest, variant: str) -> dict:
    """The per-op profile of the server recommendation (onnxruntime's profiler); for a TFLite recommendation, why
    there is none, and the fastest passing ONNX candidate's profile beside it. Never fatal to the gate."""
    artifact = manifest.artifact(variant)
    inputs = synthetic_inputs(manifest, 1)
    try:
        if artifact.format == "onnx":
            return {"variant": variant, **profile_onnx(artifact.resolve(run_dir), inputs)}
        section: dict = {"variant": variant, "unavailable": LITERT_UNAVAILABLE}
        try:
            onnx = choose(manifest, formats=("onnx",)).variant
        except UsageError:
            return section
        section["onnx_instead"] = {"variant": onnx,
                                   **profile_onnx(manifest.artifact(onnx).resolve(run_dir), inputs)}
        return section
    except Exception as error:  # noqa: BLE001 - a profiler failure costs the profile, never the gate
        return {"variant": variant, "error": f"{type(error).__name__}: {error}"}


def current_measurements(manifest: Manifest) -> dict:
    """The manifest's performance block without the candidates whose bytes changed since they were measured."""
    block = dict(manifest.performance)
    if not block:
        return {}
    block["candidates"] = {name: figures for name, figures in (block.get("candidates") or {}).items()
                           if manifest.has(name) and figures.get("sha256") in (None, manifest.artifact(name).sha256)}
    return block


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """The names no other point beats on both axes: (name, latency ms, accuracy Δ) — lower latency, higher Δ."""
    front = set()
    for name, latency, delta in points:
        dominated = any((other_latency <= latency and other_delta >= delta)
                        and (other_latency < latency or other_delta > delta)
                        for other, other_latency, other_delta in points if other != name)
        if not dominated:
            front.add(name)
    return front


@dataclass(frozen=True)
class PlotPoint:
    """One measured candidate on the accuracy-vs-latency plot."""

    name: str
    p50_ms: float
    delta_pp: float  # accuracy Δ in percentage points (agreement loss where unlabelled)
    bytes: int
    pareto: bool = False


def plot_points(report: ParityReport) -> list[PlotPoint]:
    """The measured candidates as plot points: name, p50 ms, accuracy Δ (pp; agreement loss where unlabelled),
    file bytes, and whether it lies on the Pareto front."""
    rows = []
    for name, figures in (report.performance.candidates if report.performance else {}).items():
        if not figures.get("measured"):
            continue
        delta = figures.get("accuracy_delta")
        if delta is None:  # unlabelled: top-1 agreement with the reference, as a loss (0 = agrees everywhere)
            candidate = report.candidates.get(name)
            outputs = (candidate.outputs if candidate else None) or {}
            agreements = [stats.eval["top1_agreement"] for stats in outputs.values()
                          if "top1_agreement" in (stats.eval or {})]
            delta = (min(agreements) - 1.0) if agreements else 0.0
        rows.append(PlotPoint(name, figures["latency_ms"]["p50"], delta * 100, figures["file_bytes"]))
    front = pareto_front([(row.name, row.p50_ms, row.delta_pp) for row in rows])
    return [replace(row, pareto=row.name in front) for row in rows]
