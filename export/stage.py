"""The export stage: every requested variant, smoke-run in its runtime, recorded in the manifest.

All variants are built in a staging copy of `<run>/export/` that replaces the old directory only when the export
succeeds, so a failed export leaves the previous bundle intact. By default one variant that cannot be built fails
the whole export (exit 3, nothing changed); with `keep_going` the variants that converted are kept and the others
are recorded in the manifest with `status: "failed: <reason>"`.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kerasport.errors import CheckFailed, ConversionError, UsageError
from kerasport.fsutil import atomic_path, remove_path
from kerasport.isolation import run_isolated
from kerasport.manifest import Manifest, artifact_entry, load_manifest, utc_now, verify_bundle
from kerasport.samples import Samples, load_samples

from .builders import BuildContext, Built
from .messages import first_line
from .smoke import smoke_run
from .variants import DEFAULT_OPSET, MIN_OPSET, VARIANTS, Variant, build_order

STAGE_DIR_NAME = "export"
SCRATCH_DIR_NAME = ".scratch"
TOOLS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")
# What the export reads from the bundle (all verified against their recorded sha256 first).
INPUT_ARTIFACTS = ("saved_model", "calibration_sample", "eval_sample")
# Read too when the bundle has it: the TFLite ladder's batch-1 rung re-traces the Keras model.
KERAS_ARTIFACT = "keras"
STATUS_OK = "ok"


@dataclass
class ExportOptions:
    run: str = "build"
    formats: list[str] = field(default_factory=lambda: list(VARIANTS))
    opset: int = DEFAULT_OPSET
    calibration_samples: int = 200
    int8_io: bool = False
    allow_select_tf_ops: bool = False
    keep_going: bool = False


@dataclass
class ExportResult:
    """What `export_bundle` did: one row per requested variant (`status` "ok" or "failed: ..."), the manifest."""

    run_dir: Path
    rows: list[dict]
    manifest: Manifest
    failures: dict[str, str] = field(default_factory=dict)


@dataclass
class _Sources:
    """The bundle's parts the export reads, loaded and checked once."""

    run_dir: Path
    manifest: Manifest
    saved_model: Path
    calibration: Samples
    eval_sample: Samples


@dataclass
class _Outcome:
    built: dict[str, Built] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    # Per failed variant: every conversion-ladder attempt and its one-line result (export/ladder.py).
    attempts: dict[str, list[dict]] = field(default_factory=dict)


def tool_versions() -> dict:
    versions = {}
    for package in TOOLS:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def export_bundle(options: ExportOptions, *, console=None) -> ExportResult:
    """Build the requested variants from the bundle's SavedModel, smoke-run each, and record them in the manifest.

    Names, shapes and dtypes come from the manifest's contract; int8 variants are calibrated on the bundle's
    calibration sample (every input), and every runnable variant runs batches 1 and 7 of the eval sample.

    Args:
        options: the run directory, the variants (`formats`), the ONNX opset, how many calibration examples,
            int8 I/O for tflite-int8/tflm, whether TFLite may use TensorFlow Select ops, and `keep_going`.
        console: a rich console for one progress line per variant, or None for silence.

    Returns:
        An ExportResult with one row per requested variant, the saved manifest and the failures (`keep_going`).

    Raises:
        UsageError: bad options, no bundle, or a bundle whose SavedModel or samples are missing, altered or
            unusable (exit 2).
        ConversionError: a variant cannot be built or does not run in its runtime (exit 3; one line naming the
            variant, the op when known and the runtime). Without `keep_going` nothing in `export/` or the
            manifest changes; with it, only when every requested variant failed.
    """
    _check_options(options)
    sources = _load_sources(Path(options.run), options.calibration_samples)
    outcome = _build_variants(sources, options, console)
    rows = [_row(name, outcome) for name in options.formats]
    manifest = _record(sources, options, outcome, rows)
    return ExportResult(run_dir=sources.run_dir, rows=rows, manifest=manifest, failures=dict(outcome.failures))


def _check_options(options: ExportOptions) -> None:
    if options.calibration_samples < 1:
        raise UsageError(f"--calibration-samples {options.calibration_samples}; expected at least 1")
    if not MIN_OPSET <= options.opset <= DEFAULT_OPSET:
        raise UsageError(f"--opset {options.opset} is outside what tf2onnx 1.17 emits; expected "
                         f"{MIN_OPSET}..{DEFAULT_OPSET}")
    unknown = [name for name in options.formats if name not in VARIANTS]
    if unknown or not options.formats:
        raise UsageError(f"formats {options.formats}; expected a non-empty list of {', '.join(VARIANTS)}")


def _load_sources(run_dir: Path, calibration_samples: int) -> _Sources:
    recorded = load_manifest(run_dir)  # exit 2 when there is no bundle at all
    try:
        names = [*INPUT_ARTIFACTS, *([KERAS_ARTIFACT] if recorded.has(KERAS_ARTIFACT) else [])]
        manifest = verify_bundle(run_dir, names)
        calibration = load_samples(manifest.artifact("calibration_sample").resolve(run_dir), manifest.contract)
        eval_sample = load_samples(manifest.artifact("eval_sample").resolve(run_dir), manifest.contract)
    except CheckFailed as error:
        raise UsageError(f"cannot export: {error}") from error
    if not len(calibration) or not len(eval_sample):
        raise UsageError(f"cannot export: the bundle's calibration ({len(calibration)}) or eval ({len(eval_sample)}) "
                         f"sample is empty; expected at least one example each")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved_model = manifest.artifact("saved_model").resolve(run_dir)
    _check_saved_model(saved_model, manifest)
    return _Sources(run_dir=run_dir, manifest=manifest, saved_model=saved_model,
                    calibration=calibration.take(calibration_samples), eval_sample=eval_sample)


def _check_saved_model(saved_model: Path, manifest: Manifest) -> None:
    """The SavedModel loads and its `serving_default` signature takes and returns the contract's names."""
    import tensorflow as tf

    try:
        signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable SavedModel
        raise UsageError(f"cannot export: {saved_model} is not a loadable SavedModel with a serving_default "
                         f"signature ({first_line(error, 200)})") from error
    contract = manifest.contract
    inputs = sorted(signature.structured_input_signature[1])
    outputs = sorted(signature.structured_outputs)
    if inputs != sorted(contract.input_names) or outputs != sorted(contract.output_names):
        raise UsageError(f"cannot export: the SavedModel's serving_default takes {inputs} and returns {outputs}; "
                         f"the manifest's contract names {contract.input_names} and {contract.output_names}")


def _build_variants(sources: _Sources, options: ExportOptions, console) -> _Outcome:
    """Build every requested variant (and its prerequisites) in a staging copy of `export/`, then swap it in."""
    outcome = _Outcome()
    export_dir = sources.run_dir / STAGE_DIR_NAME
    remove_stale_staging(sources.run_dir)
    with atomic_path(export_dir) as staging:
        _stage_previous_export(export_dir, staging)
        scratch = staging / SCRATCH_DIR_NAME
        scratch.mkdir(exist_ok=True)
        context = BuildContext(saved_model=sources.saved_model, contract=sources.manifest.contract,
                               calibration=sources.calibration, opset=options.opset, int8_io=options.int8_io,
                               allow_select_tf_ops=options.allow_select_tf_ops, built=outcome.built, scratch=scratch,
                               keras_model=_keras_model(sources), eval_sample=sources.eval_sample)
        for name in build_order(options.formats):
            # Prerequisites that were not requested are built in scratch and not kept.
            folder = staging if name in options.formats else scratch
            try:
                _build_one(VARIANTS[name], folder, context, sources, outcome)
            except ConversionError as error:
                _give_up_or_go_on(VARIANTS[name], folder, error, options, outcome, console)
                continue
            if console is not None and name in options.formats:
                console.print(f"exported {name:<15} {outcome.bytes[name] / 1e6:8.2f} MB in "
                              f"{outcome.seconds[name]:6.2f} s")
        if outcome.failures and not any(name in outcome.built for name in options.formats):
            raise ConversionError(f"export failed for every requested variant (first: "
                                  f"{next(iter(outcome.failures.items()))[1]}); nothing was changed")
        shutil.rmtree(scratch)
    return outcome


def _build_one(variant: Variant, folder: Path, context: BuildContext, sources: _Sources, outcome: _Outcome) -> None:
    failed = [name for name in variant.requires if name in outcome.failures]
    if failed:
        raise ConversionError(f"needs {failed[0]}, which failed: {outcome.failures[failed[0]]}")
    path = folder / variant.filename
    path.unlink(missing_ok=True)  # never write through a hard link into the previous export
    started = time.perf_counter()
    details = variant.build(context, variant, path)
    outcome.seconds[variant.name] = time.perf_counter() - started
    if variant.runnable:
        # The runtime's first load of a new artifact is native code that can abort: a child process.
        run_isolated(f"{variant.runtime} load", smoke_run, path, variant.format, variant.runtime, context.contract,
                     sources.eval_sample)
    outcome.bytes[variant.name] = path.stat().st_size
    outcome.built[variant.name] = Built(path, {**details,
                                               "conversion_seconds": round(outcome.seconds[variant.name], 2)})


def _give_up_or_go_on(variant: Variant, folder: Path, error: ConversionError, options: ExportOptions,
                      outcome: _Outcome, console) -> None:
    reason = first_line(error, limit=400)
    if not options.keep_going:
        raise ConversionError(f"variant {variant.name} for {variant.runtime} failed: {reason}; nothing was changed "
                              f"(--keep-going keeps the variants that convert)") from error
    outcome.failures[variant.name] = reason
    if getattr(error, "attempts", None):
        outcome.attempts[variant.name] = error.attempts
    for filename in (variant.filename, variant.companion.filename if variant.companion else None):
        if filename:
            (folder / filename).unlink(missing_ok=True)
    if console is not None and variant.name in options.formats:
        console.print(f"[red]failed[/red]   {variant.name:<15} for {variant.runtime}: {reason}")


def _keras_model(sources: _Sources) -> Path | None:
    manifest = sources.manifest
    return manifest.artifact(KERAS_ARTIFACT).resolve(sources.run_dir) if manifest.has(KERAS_ARTIFACT) else None


def remove_stale_staging(run_dir: Path) -> list[Path]:
    """Remove staging folders an earlier export left behind when its process was killed (`.export.*.tmp`).

    A normal exit (success, failure, Ctrl-C) removes its own staging folder; only a killed process leaves one.
    Two exports into one bundle at the same time are not supported, so anything matching is stale.

    Returns:
        The paths removed.
    """
    stale = [*run_dir.glob(f".{STAGE_DIR_NAME}.*.tmp"), *run_dir.glob(f".{STAGE_DIR_NAME}.old-*")]
    for path in stale:
        remove_path(path)
    return stale


def _stage_previous_export(export_dir: Path, staging: Path) -> None:
    """Start from the previous export (hard links: no copy of 100+ MB) so a --formats subset keeps the rest."""
    if export_dir.is_dir():
        shutil.copytree(export_dir, staging, copy_function=os.link)
    else:
        staging.mkdir()


def _record(sources: _Sources, options: ExportOptions, outcome: _Outcome, rows: list[dict]) -> Manifest:
    """Write the requested variants' entries (built or failed) and the stage record into the manifest."""
    run_dir, manifest = sources.run_dir, load_manifest(sources.run_dir)
    for name in options.formats:
        variant = VARIANTS[name]
        relative = f"{STAGE_DIR_NAME}/{variant.filename}"
        if name in outcome.built:
            manifest.set_artifact(name, artifact_entry(run_dir, relative, format=variant.format,
                                                       precision=variant.precision, runtime=variant.runtime,
                                                       status=STATUS_OK, **outcome.built[name].details))
        else:
            # Where the file would be, no hash, no bytes: `artifact_problems` skips entries whose status is not ok.
            manifest.set_artifact(name, {"path": relative, "format": variant.format, "precision": variant.precision,
                                         "runtime": variant.runtime, "sha256": "", "bytes": 0,
                                         "status": f"failed: {outcome.failures[name]}",
                                         **({"ladder": outcome.attempts[name]} if name in outcome.attempts else {})})
        if variant.companion is not None:
            companion = variant.companion
            if name in outcome.built:
                manifest.set_artifact(companion.artifact, artifact_entry(
                    run_dir, f"{STAGE_DIR_NAME}/{companion.filename}", format=companion.format,
                    precision=variant.precision, runtime=variant.runtime, status=STATUS_OK))
            else:
                manifest.remove_artifact(companion.artifact)
    versions = tool_versions()
    manifest.update_versions(versions)
    previous = manifest.stage("export").get("variants", {})
    manifest.set_stage("export", {
        "finished": utc_now(), "opset": options.opset, "tools": versions,
        "calibration_samples": len(sources.calibration), "int8_io": options.int8_io,
        "keep_going": options.keep_going,
        "variants": {**previous, **{row["variant"]: {key: row[key] for key in ("seconds", "bytes", "status")}
                                    for row in rows}}})
    # A re-export changes artifacts, so earlier parity verdicts no longer apply to them.
    manifest.drop_stage("parity")
    manifest.save(run_dir)
    return manifest


def _row(name: str, outcome: _Outcome) -> dict:
    built = name in outcome.built
    return {"variant": name, "file": f"{STAGE_DIR_NAME}/{VARIANTS[name].filename}",
            "bytes": outcome.bytes.get(name, 0), "seconds": round(outcome.seconds.get(name, 0.0), 2),
            "status": STATUS_OK if built else f"failed: {outcome.failures[name]}"}
