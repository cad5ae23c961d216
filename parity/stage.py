"""The parity gate: the reference model against every deployed artifact, on every output.

Reference: the Keras model (`training=False`), or the SavedModel when the bundle has no Keras model (a
SavedModel-source import). Candidates: the SavedModel signature (TensorFlow, when Keras is the reference), every
ONNX / TFLite artifact export built (`failed: ...` entries of `export --keep-going` are listed as not built) and the
TFLM C array, run in TFLite Micro's interpreter (`tflm.py`; `skipped` where tflite-micro is not installed), whose
flash and RAM can be budgeted (`budgets.py`).
Inputs, fed by name: the pinned eval sample plus edge inputs generated per input (`edges.py`) at batch sizes 1, 7
and 64. Each output gets error statistics and, by kind, classification or regression metrics (`checks.py`) against
the tolerance of the candidate's precision class; a sweep of runtime settings reports configurations that change
results (`sweep.py`). Reports are written atomically to `<run>/parity/` and the verdicts into the manifest.
"""

from __future__ import annotations

import contextlib
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasport.bundle import Stage
from kerasport.contract import ModelContract
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_RUNTIME, CheckFailed, ConversionError, UsageError
from kerasport.fsutil import atomic_path, sha256_file
from kerasport.manifest import Artifact, Manifest, artifact_entry, load_manifest, utc_now, verify_bundle
from kerasport.perf import DEFAULT_BUDGET_S, perf_by_default
from kerasport.samples import load_samples
from kerasport.tfenv import quiet_tensorflow
from kerasport.tolerances import PRECISION_CLASS, TolerancePolicy, load_policy
from kerasport.verdict import Verdict

from . import sweep as settings_sweep
from .budgets import apply_budgets, require_tflm, resolve_budgets
from .checks import judge, load_error
from .edges import EDGE_EXAMPLES, EDGE_SEED, GeneratedInputs, edge_inputs
from .fp16_error import rounded_graph_outputs, rounded_key, with_stored_fp16_error
from .performance import measure_and_recommend
from .recipes import recipe_section
from .results import (
    ArtifactRef,
    CandidateResult,
    EdgeInputsInfo,
    EvalSampleInfo,
    ExplainSection,
    InputsInfo,
    LabelledData,
    OutputDescription,
    ParityReport,
)
from .runners import (
    EDGE_BATCH_SIZES,
    EVAL_BATCH,
    RUNTIME_FORMATS,
    CandidateOutputs,
    KerasRunner,
    Reference,
    SavedModelRunner,
    measure_reference,
)
from .sweep import SettingRun
from .tflm import (
    TFLM_BUILTIN,
    TFLM_FORMAT,
    TFLM_MODES,
    TFLM_RUN_LABEL,
    check_tflm,
    litert_source,
    record_microcontroller,
    sampled_checks,
)

STAGE_DIR_NAME = Stage.PARITY.folder
REPORT_ARTIFACT = "parity-report"
REPORT_PATH = f"{STAGE_DIR_NAME}/report.json"
# Candidate checks run at once (`check_candidates`).
CANDIDATE_THREADS = 2
NO_LABELS = "no labelled data was given: agreement only, no accuracy"


@dataclass
class ParityOptions:
    run: str = "build"
    sweep: bool = True
    overrides: dict = field(default_factory=dict)
    seed: int = EDGE_SEED  # the edge inputs (and a stand-in eval set) are generated from this seed
    # Flash/RAM budgets of the tflm artifact (budgets.py): a device of kerasport.devices and/or explicit KiB.
    device: str | None = None
    max_flash_kib: float | None = None
    max_ram_kib: float | None = None
    # Per-layer explanation (explain/) of every candidate (True), of none (False), or of each candidate that fails.
    explain: bool | None = None
    # Drift against a previous release (drift.py): its run directory and the policy limits.
    baseline: str | None = None
    max_accuracy_drop: float | None = None
    max_flips: int | None = None
    # The tflm candidate: "sample" (TFLM on a bounded sample, LiteRT's built-in kernels on the rest where they are
    # bit-identical there; tflm.py) or "full" (every example in TFLM).
    tflm: str = "sample"
    # After the gate: measure every passing candidate's speed (perf.py), capped in time; recommend per target.
    perf: bool = field(default_factory=perf_by_default)
    perf_seconds: float = DEFAULT_BUDGET_S


@dataclass
class ParityResult:
    run_dir: Path
    report: ParityReport
    exit_code: int
    failures: list[str]


@dataclass
class ParityPlan:
    """What one parity run compares: the reference, the candidates, and the variants export could not build."""

    manifest: Manifest
    reference: Artifact
    candidates: list[Artifact]
    not_built: dict[str, str]


@dataclass
class EvalData:
    """The inputs every runner sees, the targets per output (possibly none) and how they were obtained."""

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    edges: GeneratedInputs
    description: EvalSampleInfo


def run_parity(options: ParityOptions, *, console=None) -> ParityResult:
    """Check every deployed artifact of a bundle against its reference; write the reports and the verdicts.

    Args:
        options: the run directory, whether to sweep runtime settings, tolerance overrides (per precision class,
            None values ignored) and the seed of the generated inputs.
        console: a rich console for one line per candidate and the notes on labelled data; None is silent.

    Returns:
        A ParityResult: the report (also in `<run>/parity/report.json`), the failing checks, and the exit code —
        EXIT_OK when every check passed, EXIT_CHECK_FAILED when a check failed, EXIT_RUNTIME when an artifact
        would not load or run.

    Raises:
        UsageError: no bundle, no reference model, nothing exported, or a bad tolerance file/override (exit 2).
        CheckFailed: an artifact was altered since it was recorded, or the eval sample does not fit the contract.
        ConversionError: the reference itself cannot load or run.
    """
    run_dir = Path(options.run)
    if options.tflm not in TFLM_MODES:
        raise UsageError(f"--tflm {options.tflm!r}; expected one of {', '.join(TFLM_MODES)}")
    if not options.perf_seconds > 0:
        raise UsageError(f"--perf-seconds {options.perf_seconds}; expected a time cap > 0 (or --no-perf)")
    budgets = resolve_budgets(options.device, options.max_flash_kib, options.max_ram_kib)
    plan = plan_parity(run_dir)
    if not options.baseline and options.max_flips is not None:
        raise UsageError("--max-flips limits the drift against a previous release; expected --baseline OTHER_RUN "
                         "with it")
    baseline = check_baseline(options, plan.manifest) if options.baseline else None
    require_tflm(budgets, any(artifact.format == TFLM_FORMAT for artifact in plan.candidates), run_dir)
    policy = load_policy(run_dir, options.overrides)
    quiet_tensorflow()
    started = time.perf_counter()
    contract = plan.manifest.contract
    data = load_eval_data(run_dir, plan.manifest, options.seed)
    notes = label_notes(contract, data)
    for note in notes if console is not None else ():
        console.print(f"parity: {note}")
    shared = CandidateOutputs(run_dir, contract, data.inputs, data.edges.inputs)
    prefetch_outputs(shared, plan.candidates, policy, data, sweep=options.sweep)
    runner = _reference_runner(run_dir, plan.reference, contract, plan.manifest.source)
    fp16_noise = any(policy.for_precision(artifact.precision).noise_source == "fp16_weights"
                     for artifact in plan.candidates)
    float32_noise = any(policy.for_precision(artifact.precision).noise_source == "float32_error"
                        for artifact in plan.candidates)
    reference = measure_reference(runner, plan.reference, contract, data.inputs, data.edges.inputs,
                                  fp16_noise=fp16_noise, float32_noise=float32_noise)
    results = check_candidates(run_dir, plan.candidates, contract, policy, reference, data, sweep=options.sweep,
                               tflm_mode=options.tflm, console=console, shared=shared)
    explained, files = (explain_for_gate(run_dir, plan, runner, policy, reference, data, results,
                                         everything=options.explain is True, console=console)
                        if options.explain is not False else (None, {}))
    drifted, drift_files = (run_drift(baseline, run_dir, plan.manifest, runner, console=console)
                            if baseline else (None, {}))
    report = build_report(plan, policy, reference, data, results, notes, options.seed,
                          seconds=time.perf_counter() - started)
    report.explain, report.drift = explained, drifted
    apply_budgets(report, budgets, options.device)
    measure_and_recommend(run_dir, plan.manifest, report, measure=options.perf, budget_seconds=options.perf_seconds,
                          max_accuracy_drop=options.max_accuracy_drop, console=console)
    _write_reports(run_dir, report, {**files, **drift_files})
    record_verdicts(run_dir, report)
    write_report_html(run_dir, console)
    failures = report.all_failures
    if any(result.verdict == Verdict.ERROR for result in results.values()):
        exit_code = EXIT_RUNTIME
    else:
        exit_code = EXIT_OK if not failures else EXIT_CHECK_FAILED
    return ParityResult(run_dir=run_dir, report=report, exit_code=exit_code, failures=failures)


def explain_for_gate(run_dir: Path, plan: ParityPlan, runner, policy: TolerancePolicy, reference: Reference,
                     data: EvalData, results: dict[str, CandidateResult], *, everything: bool,
                     console=None) -> tuple[ExplainSection | None, dict]:
    """The explain section (and its plot) for every candidate (`--explain`) or for each one that failed."""
    from .explain.int8 import Int8Fixer
    from .explain.layers import explain_candidates

    failed = {name for name, result in results.items() if result.verdict == Verdict.FAIL}
    artifacts = [artifact for artifact in plan.candidates if everything or artifact.name in failed]
    if not artifacts:
        return None, {}
    if not isinstance(runner, KerasRunner):
        return ExplainSection(unavailable="the reference is a SavedModel: per-layer comparison needs the Keras "
                                          "model's layers"), {}
    fixes = Int8Fixer(run_dir, plan.manifest, data.inputs, reference.outputs.eval, data.targets) if everything \
        else None
    section, files = explain_candidates(run_dir, plan.manifest, runner.model, policy, data.inputs, data.edges,
                                        artifacts, fixes=fixes, console=console)
    section.trigger = "--explain" if everything else "automatic: the candidates that failed the gate"
    return section, files


def check_baseline(options: ParityOptions, manifest: Manifest):
    """The baseline bundle of `--baseline`, checked before anything runs (see drift.py)."""
    from .drift import DriftPolicy, open_baseline

    return open_baseline(Path(options.baseline), manifest, DriftPolicy(options.max_accuracy_drop, options.max_flips))


def run_drift(baseline, run_dir: Path, manifest: Manifest, runner, *, console=None):
    from .drift import compare_releases

    return compare_releases(baseline, run_dir, manifest, runner, console=console)


def write_report_html(run_dir: Path, console=None) -> None:
    """`<run>/report.html`; a failure to write it is reported, never fatal to the gate."""
    from .html import write_html_report

    try:
        path = write_html_report(run_dir)
    except Exception as error:  # noqa: BLE001 - the gate's verdicts stand without the HTML page
        if console is not None:
            console.print(f"parity: report.html not written ({type(error).__name__}: {error})")
        return
    if console is not None:
        console.print(f"parity: report {path}")


def plan_parity(run_dir: Path) -> ParityPlan:
    """Pick the reference and the candidates, then verify every recorded hash before anything loads.

    Raises:
        UsageError: no reference model, or no built ONNX/TFLite artifact. CheckFailed: an altered artifact.
    """
    manifest = load_manifest(run_dir)
    if manifest.has("keras"):
        reference = manifest.artifact("keras")
    elif manifest.source.get("kind") == "saved_model" and manifest.has("saved_model"):
        reference = manifest.artifact("saved_model")
    else:
        raise UsageError(f"{run_dir}: the manifest lists no keras model (nor a SavedModel source); expected a "
                         f"bundle from `kerasport train` or `kerasport import`")
    candidates, not_built = [], {}
    if reference.name == "keras" and manifest.has("saved_model") and manifest.artifact("saved_model").status == "ok":
        candidates.append(manifest.artifact("saved_model"))
    for artifact in manifest.artifacts():
        if artifact.format not in (*RUNTIME_FORMATS, TFLM_FORMAT):  # the C array runs in TFLite Micro (tflm.py)
            continue
        if artifact.status != "ok":
            not_built[artifact.name] = artifact.status
        else:
            candidates.append(artifact)
    if not any(artifact.format in RUNTIME_FORMATS for artifact in candidates):
        failed = f" ({len(not_built)} recorded as failed: {', '.join(not_built)})" if not_built else ""
        raise UsageError(f"{run_dir}: no exported artifacts to check{failed}; run `kerasport export --run "
                         f"{run_dir}` first")
    # This stage's own previous report is about to be replaced: the one entry not required to be intact.
    verify_bundle(run_dir, [name for name in manifest.artifact_names() if name != REPORT_ARTIFACT])
    return ParityPlan(manifest, reference, candidates, not_built)


def load_eval_data(run_dir: Path, manifest: Manifest, seed: int = EDGE_SEED) -> EvalData:
    """The eval sample (inputs in the contract's dtypes, targets per output) and the edge inputs.

    Without an eval sample in the bundle, seeded noise generated from the input spec stands in (unlabelled).

    Raises:
        CheckFailed: the eval sample does not fit the contract, or its targets and inputs differ in length.
    """
    contract = manifest.contract
    samples = None
    if manifest.has("eval_sample"):
        artifact = manifest.artifact("eval_sample")
        samples = load_samples(artifact.resolve(run_dir), contract)
    if samples is not None and len(samples):
        inputs = {spec.name: np.asarray(samples.inputs[spec.name], dtype=spec.dtype) for spec in contract.inputs}
        for name, target in samples.targets.items():
            if len(target) != len(samples):
                raise CheckFailed(f"{artifact.path}: {len(target)} targets for output {name!r}; expected one per "
                                  f"example ({len(samples)})")
        description = EvalSampleInfo(artifact.path, sha256_file(artifact.resolve(run_dir)), len(samples),
                                     labelled_outputs=sorted(samples.targets), generated=False)
        targets = dict(samples.targets)
    else:
        stand_in = edge_inputs(contract, size=EVAL_BATCH, seed=seed + 1, patterns=False)
        inputs, targets = stand_in.inputs, {}
        description = EvalSampleInfo(None, stand_in.sha256(), len(stand_in), labelled_outputs=[], generated=True,
                                     what="the bundle has no eval sample: seeded noise from the input spec")
    edges = edge_inputs(contract, size=EDGE_EXAMPLES, seed=seed, observed=None if description.generated else inputs)
    return EvalData(inputs, targets, edges, description)


def label_notes(contract: ModelContract, data: EvalData) -> list[str]:
    """Plain statements of what cannot be measured for lack of targets (empty when every output has them)."""
    if not data.targets:
        return [NO_LABELS + (" (the bundle has no eval sample; inputs generated from the input spec)"
                             if data.description.generated else "")]
    return [f"output {spec.name!r} has no targets in the eval sample: "
            + ("agreement only, no accuracy" if spec.is_classification else "error statistics only, no MAE")
            for spec in contract.output_specs() if spec.name not in data.targets]


def _reference_runner(run_dir: Path, artifact: Artifact, contract: ModelContract, source: dict):
    path = artifact.resolve(run_dir)
    return KerasRunner(path, contract, source) if artifact.name == "keras" else SavedModelRunner(path, contract)


def check_candidates(run_dir: Path, candidates: list[Artifact], contract: ModelContract, policy: TolerancePolicy,
                     reference: Reference, data: EvalData, *, sweep: bool, tflm_mode: str = "sample",
                     console=None, shared: CandidateOutputs | None = None) -> dict[str, CandidateResult]:
    """`check_candidate` for every candidate, CANDIDATE_THREADS at a time; results (and console lines) in order.

    The runtimes release the GIL while they compute, and much of a check runs on one core (TFLite Micro, the
    sweep's one-thread settings, Python between batches), so two checks at once keep a second core busy. Each
    check owns its sessions; the outputs do not depend on what runs beside them.
    """
    order = check_order(candidates)
    fp32_graph, tflm_source = stored_fp32_graph(candidates), litert_source(candidates)
    shared = shared or CandidateOutputs(run_dir, contract, data.inputs, data.edges.inputs)
    with ThreadPoolExecutor(max_workers=CANDIDATE_THREADS, thread_name_prefix="parity-candidate") as pool:
        futures = {artifact.name: pool.submit(check_candidate, run_dir, artifact, contract, policy, reference, data,
                                              sweep=sweep, tflm_mode=tflm_mode, fp32_graph=fp32_graph,
                                              shared=shared, tflm_source=tflm_source)
                   for artifact in order}
        results = {}
        for artifact in candidates:
            results[artifact.name] = futures[artifact.name].result()
            if console is not None:
                console.print(candidate_line(artifact.name, results[artifact.name]))
    return results


def check_order(candidates: list[Artifact]) -> list[Artifact]:
    """The order the checks start in: the longest first (TFLite Micro runs example by example; fp16 runs the
    tflite-fp32 graph twice more for its bound, fp16_error.py), so the pool does not end on one of them."""
    return sorted(candidates, key=lambda artifact: (artifact.format != TFLM_FORMAT,
                                                    PRECISION_CLASS.get(artifact.precision) != "fp16"))


def swept(shared: CandidateOutputs, artifact: Artifact, tflm_source: Artifact | None) -> list[SettingRun]:
    """The candidate's settings sweep runs (`sweep.sweep_runs`), computed once per gate; the tflm check's run of
    `tflm_source` (the tflite-int8 artifact its C array holds) in LiteRT's built-in kernels is reused.

    Raises:
        ConversionError: the candidate does not run under its default settings.
    """
    def compute() -> list[SettingRun]:
        seeds = []
        if tflm_source is not None and artifact.name == tflm_source.name:
            with contextlib.suppress(ConversionError):  # then the sweep runs that setting and records why not
                seeds.append((TFLM_BUILTIN, TFLM_RUN_LABEL, shared.under(artifact, TFLM_BUILTIN).eval))
        return settings_sweep.sweep_runs(shared.run_dir, artifact, shared.contract, shared.eval_inputs,
                                         default_outputs=shared.get(artifact).eval, seeds=seeds)

    return shared.once(sweep_key(artifact), compute)


def sweep_key(artifact: Artifact) -> str:
    """The key of the candidate's settings sweep in CandidateOutputs."""
    return f"{artifact.name}: settings sweep"


def stored_fp32_graph(candidates: list[Artifact]) -> Artifact | None:
    """The bundle's tflite-fp32 artifact (the fp16 bound's stored graph, `fp16_error.py`), or None."""
    return next((artifact for artifact in candidates if artifact.format == "tflite"
                 and PRECISION_CLASS.get(artifact.precision) == "fp32"), None)


def prefetch_outputs(shared: CandidateOutputs, candidates: list[Artifact], policy: TolerancePolicy,
                     data: EvalData, *, sweep: bool) -> None:
    """Start the candidates' runs that need no reference on a background thread (their default runs, then their
    settings sweeps): TensorFlow's import, the reference's load and its noise measurement take about 10 s, much of
    it on one core. The sweeps go in the opposite order to the checks', which compute what is not ready yet."""
    fp32_graph = stored_fp32_graph(candidates)
    jobs = []
    if fp32_graph is not None and any(artifact.format == "tflite" and policy.for_precision(
            artifact.precision).noise_source == "fp16_weights" for artifact in candidates):
        jobs += [functools.partial(shared.get, fp32_graph),
                 functools.partial(rounded_graph_outputs, shared, fp32_graph, data)]
    runnable = [artifact for artifact in check_order(candidates) if artifact.format in RUNTIME_FORMATS]
    jobs += [functools.partial(shared.get, artifact) for artifact in runnable]
    if sweep:
        tflm_source = litert_source(candidates)
        if tflm_source is not None:  # the tflm check's run, which the tflite-int8 sweep reuses
            jobs.append(functools.partial(shared.under, tflm_source, TFLM_BUILTIN))
        jobs += [functools.partial(swept, shared, artifact, tflm_source) for artifact in reversed(runnable)]
    shared.prefetch(jobs)


def check_candidate(run_dir: Path, artifact: Artifact, contract: ModelContract, policy: TolerancePolicy,
                    reference: Reference, data: EvalData, *, sweep: bool,
                    tflm_mode: str = "sample", fp32_graph: Artifact | None = None,
                    shared: CandidateOutputs | None = None, tflm_source: Artifact | None = None) -> CandidateResult:
    """Run one candidate on every input, judge every output, optionally sweep its runtime settings.

    A TFLite candidate whose tolerance follows the fp16 weight-rounding error is judged with that error measured
    on `fp32_graph` (the bundle's tflite-fp32 artifact) where it can be (`fp16_error.py`). `shared` computes each
    artifact's runs that need no reference once across the checks (a new one when None); the sweep of
    `tflm_source` (the tflite-int8 artifact the tflm candidate's C array holds) reuses the tflm check's run.
    """
    shared = shared or CandidateOutputs(run_dir, contract, data.inputs, data.edges.inputs)
    if artifact.format == TFLM_FORMAT:
        return check_tflm(run_dir, artifact, contract, policy, reference, data, tflm_mode, shared)
    started = shared.start_timing()
    result = CandidateResult(artifact.precision, artifact.runtime, artifact.path, artifact.format)
    tolerance = policy.for_precision(artifact.precision)
    # its seconds: its own runs (wherever computed) and its judging, not the runs it reuses from other candidates
    runs = [artifact.name, sweep_key(artifact)]
    if tolerance.noise_source == "fp16_weights" and artifact.format == "tflite":
        reference, result.fp16_error = with_stored_fp16_error(shared, fp32_graph, reference, data)
        runs += [rounded_key(fp32_graph)] if fp32_graph is not None else []
    try:
        outputs = shared.get(artifact)
    except ConversionError as error:
        result.verdict, result.checks = Verdict.ERROR, load_error(str(error))
        result.seconds = round(shared.own_seconds(started) + shared.spent(*runs), 3)
        return result
    result.outputs, checks = judge(contract, tolerance, reference, outputs, data.targets)
    result.verdict, result.checks = checks.verdict, checks.records
    result.histograms = error_histograms(reference, outputs)
    if sweep and artifact.format in RUNTIME_FORMATS:
        result.sweep = settings_sweep.sweep(run_dir, artifact, contract, data.inputs, reference, tolerance,
                                            runs=swept(shared, artifact, tflm_source))
    result.seconds = round(shared.own_seconds(started) + shared.spent(*runs), 3)
    return result


def error_histograms(reference: Reference, outputs) -> dict[str, list[int]]:
    """Per output, counts of |candidate - reference| on the eval inputs per half decade (report.html plots them)."""
    from .html import error_histogram

    return {name: error_histogram(expected, outputs.eval[name]) for name, expected in reference.outputs.eval.items()
            if name in outputs.eval and outputs.eval[name].shape == expected.shape}


def candidate_line(name: str, result: CandidateResult) -> str:
    """One console line: verdict and, per output, max |diff| plus agreement / accuracy Δ / MAE Δ where measured."""
    if result.skipped:
        return f"parity {name:<15} {Verdict.SKIPPED.upper()} {result.skipped}"
    parts = []
    for output, stats in (result.outputs or {}).items():
        measured = stats.eval
        if measured is None:
            parts.append(f"{output}: shape mismatch")
            continue
        text = f"{output}: max|diff| {measured['max_abs_diff']:.2e}"
        if "top1_agreement" in measured:
            text += f" agreement {measured['top1_agreement']:.4f}"
        if "accuracy_delta" in measured:
            text += f" accuracy Δ {measured['accuracy_delta'] * 100:+.2f} pp"
        if "mae_delta" in measured:
            text += f" MAE Δ {measured['mae_delta']:+.4g}"
        parts.append(text)
    if not parts:  # it would not run, or returned other outputs than the contract's
        parts += [check.message for check in result.failed_checks()][:1]
    return f"parity {name:<15} {result.verdict.upper():<5} " + "; ".join(parts)


def build_report(plan: ParityPlan, policy: TolerancePolicy, reference: Reference, data: EvalData,
                 results: dict[str, CandidateResult], notes: list[str], seed: int, *, seconds: float) -> ParityReport:
    """report.json's content: verdicts, per-output metrics, inputs and artifacts with their hashes, tolerances."""
    contract, manifest = plan.manifest.contract, plan.manifest
    failures = [f"{name}: {check.id} — {check.message}" for name, result in results.items()
                for check in result.failed_checks()]
    findings = [line for name, result in results.items()
                for line in settings_sweep.findings(name, result.precision, result.sweep or [])]
    findings += [line for result in results.values() for line in result.findings or []]
    compared = [plan.reference, *plan.candidates]
    edge = EdgeInputsInfo(len(data.edges), list(EDGE_BATCH_SIZES), seed, data.edges.sha256(), data.edges.describe())
    return ParityReport(
        passed=not failures, finished=utc_now(), seconds=round(seconds, 2), task=contract.task,
        reference=reference.info,
        labelled_data=LabelledData(bool(data.targets), {name: name in data.targets for name in contract.output_names},
                                   notes),
        outputs={spec.name: OutputDescription(spec.kind, "classification" if spec.is_classification
                                              else "regression", spec.name in data.targets)
                 for spec in contract.output_specs()},
        tolerances=policy.to_dict(),
        inputs=InputsInfo(data.description, edge),
        artifacts={artifact.name: ArtifactRef(artifact.path, artifact.sha256) for artifact in compared},
        not_built=plan.not_built,
        versions=manifest.versions,
        candidates=results, findings=findings, failures=failures,
        int8_recipes=recipe_section(manifest, results),
        sampled_checks=sampled_checks(results),
    )


def _write_reports(run_dir: Path, report: ParityReport, files: dict[str, bytes] | None = None) -> None:
    from .reports import write_reports

    with atomic_path(run_dir / STAGE_DIR_NAME) as staging:
        staging.mkdir()
        write_reports(staging, report)
        for name, content in (files or {}).items():  # the explain plot, the drift contact sheet
            (staging / name).write_bytes(content)


def record_verdicts(run_dir: Path, report: ParityReport) -> None:
    """Each candidate's verdict into the manifest, the report as an artifact, and the stage summary."""
    manifest = load_manifest(run_dir)
    checked = report.finished
    for name, result in report.candidates.items():
        manifest.set_parity(name, {"verdict": result.verdict, "checked": checked, "report": REPORT_PATH,
                                   "failed_checks": [check.id for check in result.failed_checks()],
                                   **settings_sweep.sweep_record(result.sweep)})
    manifest.set_artifact(REPORT_ARTIFACT, artifact_entry(run_dir, REPORT_PATH, format="json", precision="n/a",
                                                          role="parity report"))
    record_microcontroller(manifest, report)
    manifest.set_performance(report.performance.to_dict() if report.performance else None)
    manifest.set_recommendation({target: choice.to_dict() for target, choice in report.recommendation.items()}
                                if report.recommendation is not None else None)
    manifest.set_stage(STAGE_DIR_NAME, {"finished": checked, "passed": report.passed, "report": REPORT_PATH,
                                        "reference": report.reference.artifact,
                                        "labelled_data": report.labelled_data.given,
                                        "not_built": sorted(report.not_built),
                                        "tolerances": report.tolerances,
                                        **({"budgets": [row.to_dict() for row in report.budgets.budgets]}
                                           if report.budgets else {})})
    manifest.save(run_dir)

