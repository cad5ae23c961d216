"""The parity gate: Keras (training=False) is the reference; every deployed artifact is checked against it.

Candidates: the SavedModel signature (TensorFlow) and every ONNX / TFLite artifact in the manifest. Inputs: the
pinned held-out slice plus edge inputs at batch sizes 1, 7 and 64. Each candidate gets error statistics, top-1
agreement, label flips and accuracy (with a 95 % CI) against the tolerance of its precision class; a sweep of
runtime settings reports configurations that change results. Reports are written atomically to `<run>/parity/`
and the verdicts into the manifest.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasport.errors import ConversionError, UsageError
from kerasport.fsutil import atomic_path, sha256_file
from kerasport.manifest import artifact_entry, load_manifest, save_manifest, utc_now, verify_bundle
from kerasport.runtimes import RuntimeSettings, open_runtime

from .compare import classification_statistics, edge_batch, error_statistics, regression_statistics
from .tolerances import PRECISION_CLASS, load_policy

STAGE_DIR_NAME = "parity"
REPORT_ARTIFACT = "parity-report"
EDGE_BATCH_SIZES = (1, 7, 64)
EVAL_BATCH = 64
RUNTIME_FORMATS = ("onnx", "tflite")


@dataclass
class ParityOptions:
    run: str = "build"
    sweep: bool = True
    overrides: dict = field(default_factory=dict)


@dataclass
class ParityResult:
    run_dir: Path
    report: dict
    exit_code: int
    failures: list[str]


def candidate_names(manifest: dict) -> list[str]:
    artifacts = manifest["artifacts"]
    names = ["saved_model"] if "saved_model" in artifacts else []
    return names + [name for name, entry in artifacts.items() if entry.get("format") in RUNTIME_FORMATS]


def run_parity(options: ParityOptions, *, console=None) -> ParityResult:
    run_dir = Path(options.run)
    manifest = load_manifest(run_dir)
    if "keras" not in manifest["artifacts"] or "eval_sample" not in manifest["artifacts"]:
        raise UsageError(f"{run_dir}: the manifest lists no keras model or eval_sample; run `kerasport train`")
    names = candidate_names(manifest)
    if len(names) <= 1:
        raise UsageError(f"{run_dir}: no exported artifacts to check; run `kerasport export --run {run_dir}` first")
    # Refuse altered files before loading anything (exit 1); this stage's own previous report is about to be
    # replaced, so it is the one entry not required to be intact.
    verify_bundle(run_dir, [name for name in manifest["artifacts"] if name != REPORT_ARTIFACT])
    policy = load_policy(run_dir, options.overrides)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    task = manifest["model"]["task"]
    sample_path = run_dir / manifest["artifacts"]["eval_sample"]["path"]
    sample = np.load(sample_path)
    images, labels = sample["x"].astype(np.float32), sample["y"]
    edges = edge_batch()

    reference, keras_info = _keras_reference(run_dir / manifest["artifacts"]["keras"]["path"], images, edges)
    report_candidates: dict[str, dict] = {}
    findings: list[str] = []
    load_errors: list[str] = []
    for name in names:
        entry = manifest["artifacts"][name]
        precision = entry.get("precision", "fp32")
        tolerance = policy.for_precision(precision)
        candidate_started = time.perf_counter()
        try:
            runner = _open_candidate(run_dir, name, entry)
            outputs = _run_everything(runner, images, edges)
        except ConversionError as error:
            load_errors.append(name)
            report_candidates[name] = {"precision": precision, "runtime": entry.get("runtime"), "verdict": "error",
                                       "checks": [{"check": "loads_and_runs", "passed": False,
                                                   "message": str(error)}]}
            continue
        result = _judge(name, entry, precision, tolerance, task, reference, outputs, labels,
                        keras_info["noise_floor"])
        if options.sweep and entry.get("format") in RUNTIME_FORMATS:
            result["sweep"] = _sweep(run_dir / entry["path"], entry["format"], images, reference["eval"], labels,
                                     task, tolerance, keras_info["noise_floor"]["max_abs_diff"])
            for row in result["sweep"]:
                if "error" in row:
                    findings.append(f"{name} with {row['settings']}: does not run ({row['error']})")
                elif not row["within_tolerance"]:
                    findings.append(f"{name} with {row['settings']}: max|diff| {row['max_abs_diff']:.3g}, "
                                    f"agreement {row.get('top1_agreement', float('nan')):.4f} — beyond the "
                                    f"{PRECISION_CLASS.get(precision, 'fp32')} tolerance")
        result["seconds"] = round(time.perf_counter() - candidate_started, 3)
        report_candidates[name] = result
        if console is not None:
            console.print(f"parity {name:<15} {result['verdict'].upper():<5} "
                          f"max|diff| {result['eval']['max_abs_diff']:.2e}"
                          + (f"  agreement {result['eval']['top1_agreement']:.4f}" if task == "classification"
                             else f"  MAE Δ {result['eval']['mae_delta']:+.4f}"))

    failures = [f"{name}: {check['check']} — {check['message']}" for name, result in report_candidates.items()
                for check in result["checks"] if not check["passed"]]
    passed = not failures
    report = {
        "passed": passed, "finished": utc_now(), "seconds": round(time.perf_counter() - started, 2),
        "task": task, "reference": keras_info, "tolerances": policy.to_dict(),
        "inputs": {"eval_sample": {"path": manifest["artifacts"]["eval_sample"]["path"],
                                   "sha256": sha256_file(sample_path), "images": int(len(images))},
                   "edge": {"images": int(len(edges)), "batch_sizes": list(EDGE_BATCH_SIZES),
                            "sha256": _array_sha256(edges),
                            "kinds": ["all_0", "all_255", "uniform_noise", "single_bright_pixel", "checkerboard",
                                      "seeded gaussian noise"]}},
        "artifacts": {name: {key: manifest["artifacts"][name][key] for key in ("path", "sha256")} for name in names},
        "versions": manifest.get("versions", {}),
        "candidates": report_candidates, "findings": findings, "failures": failures,
    }
    from .reports import write_reports

    with atomic_path(run_dir / STAGE_DIR_NAME) as staging:
        staging.mkdir()
        write_reports(staging, report)

    manifest = load_manifest(run_dir)
    checked = report["finished"]
    for name, result in report_candidates.items():
        manifest["artifacts"][name]["parity"] = {
            "verdict": result["verdict"], "checked": checked, "report": f"{STAGE_DIR_NAME}/report.json",
            "failed_checks": [check["check"] for check in result["checks"] if not check["passed"]]}
    manifest["artifacts"][REPORT_ARTIFACT] = artifact_entry(run_dir, f"{STAGE_DIR_NAME}/report.json",
                                                            format="json", precision="n/a", role="parity report")
    manifest.setdefault("stages", {})["parity"] = {"finished": checked, "passed": passed,
                                                   "report": f"{STAGE_DIR_NAME}/report.json",
                                                   "tolerances": policy.to_dict()}
    save_manifest(run_dir, manifest)
    exit_code = 3 if load_errors else (0 if passed else 1)
    return ParityResult(run_dir=run_dir, report=report, exit_code=exit_code, failures=failures)


def _array_sha256(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _keras_reference(model_path: Path, images: np.ndarray, edges: np.ndarray) -> tuple[dict, dict]:
    import keras

    model = keras.saving.load_model(model_path, compile=False)

    def infer(x: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float32)

    reference = {"eval": np.concatenate([infer(images[i:i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)]),
                 "edge": {batch: infer(edges[:batch]) for batch in EDGE_BATCH_SIZES}}
    # The reference's own noise: the same inputs one at a time vs in one batch of 64 (a different summation order).
    probe = images[:EVAL_BATCH]
    one_by_one = np.concatenate([infer(probe[i:i + 1]) for i in range(len(probe))])
    floor = error_statistics(infer(probe), one_by_one)
    edge_one_by_one = np.concatenate([infer(edges[i:i + 1]) for i in range(len(edges))])
    edge_floor = error_statistics(reference["edge"][max(EDGE_BATCH_SIZES)], edge_one_by_one)
    info = {"runtime": f"keras {keras.__version__} (training=False)", "path": str(model_path.name),
            "noise_floor": {"what": "Keras batch 1 vs batch 64 on the same images", "images": int(len(probe)),
                            **floor, "edge_max_abs_diff": edge_floor["max_abs_diff"]}}
    return reference, info


class _SavedModelRunner:
    def __init__(self, path: Path, input_name: str, output_name: str):
        import tensorflow as tf

        try:
            self._signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        except Exception as error:  # noqa: BLE001
            raise ConversionError(f"TensorFlow cannot load the SavedModel {path}: {error}") from error
        self._tf, self._input, self._output = tf, input_name, output_name

    def run(self, images: np.ndarray) -> np.ndarray:
        return self._signature(**{self._input: self._tf.constant(images)})[self._output].numpy()


def _open_candidate(run_dir: Path, name: str, entry: dict):
    path = run_dir / entry["path"]
    if name == "saved_model":
        return _SavedModelRunner(path, entry["input"]["name"], entry["output"]["name"])
    return open_runtime(path, entry["format"])


def _run_everything(runner, images: np.ndarray, edges: np.ndarray) -> dict:
    try:
        eval_outputs = np.concatenate([runner.run(images[i:i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)])
        edge_outputs = {batch: runner.run(edges[:batch]) for batch in EDGE_BATCH_SIZES}
    except ConversionError:
        raise
    except Exception as error:  # noqa: BLE001 - a runtime failing at run time
        raise ConversionError(f"inference failed: {type(error).__name__}: {error}") from error
    return {"eval": eval_outputs, "edge": edge_outputs}


def _judge(name, entry, precision, tolerance, task, reference, outputs, labels, noise: dict) -> dict:
    checks = []

    def check(check_name: str, passed: bool, message: str) -> None:
        checks.append({"check": check_name, "passed": bool(passed), "message": message})

    shapes_ok = outputs["eval"].shape == reference["eval"].shape and all(
        outputs["edge"][batch].shape == reference["edge"][batch].shape for batch in EDGE_BATCH_SIZES)
    check("dynamic_batch", shapes_ok,
          f"batch sizes {list(EDGE_BATCH_SIZES)} and the eval slice gave shapes "
          f"{[tuple(outputs['edge'][b].shape) for b in EDGE_BATCH_SIZES]}; expected (batch, "
          f"{reference['eval'].shape[1]})")
    if not shapes_ok:
        return {"precision": precision, "runtime": entry.get("runtime"), "verdict": "fail", "checks": checks,
                "eval": {"max_abs_diff": float("nan"), "top1_agreement": 0.0, "mae_delta": float("nan")}}
    finite = np.isfinite(outputs["eval"]).all() and all(np.isfinite(v).all() for v in outputs["edge"].values())
    check("finite", finite, "every output is finite" if finite else "NaN or Inf in the outputs")

    eval_stats = error_statistics(reference["eval"], outputs["eval"])
    edge_stats = {batch: error_statistics(reference["edge"][batch], outputs["edge"][batch])
                  for batch in EDGE_BATCH_SIZES}
    if tolerance.atol is not None:
        allowed_eval = max(tolerance.atol, tolerance.noise_multiple * noise["max_abs_diff"])
        allowed_edge = max(tolerance.atol, tolerance.noise_multiple * noise["edge_max_abs_diff"])
        bounds = [(reference["eval"], outputs["eval"], allowed_eval)] + [
            (reference["edge"][b], outputs["edge"][b], allowed_edge) for b in EDGE_BATCH_SIZES]
        excess = max(float((np.abs(c - r) - (allowed + tolerance.rtol * np.abs(r))).max()) for r, c, allowed in bounds)
        worst_edge = max(s["max_abs_diff"] for s in edge_stats.values())
        check("max_abs_diff", excess <= 0,
              f"max |diff| {eval_stats['max_abs_diff']:.3g} on real images (allowed {allowed_eval:.3g}), "
              f"{worst_edge:.3g} on edge inputs (allowed {allowed_edge:.3g}); bound = max(atol {tolerance.atol:g}, "
              f"{tolerance.noise_multiple:g} x Keras' own batch-order noise)"
              + (f" + {tolerance.rtol:g}·|keras|" if tolerance.rtol else ""))
    result = {"precision": precision, "runtime": entry.get("runtime"), "path": entry["path"],
              "eval": dict(eval_stats), "edge": {str(batch): stats for batch, stats in edge_stats.items()}}
    if task == "classification":
        stats = classification_statistics(reference["eval"], outputs["eval"], labels, tolerance.tie_margin)
        result["eval"].update(stats)
        check("top1_agreement", stats["decisive_agreement"] >= tolerance.min_agreement,
              f"top-1 agreement {stats['decisive_agreement']:.4f} on {stats['decisive_images']} decisive images "
              f"(Keras top-2 margin >= {tolerance.tie_margin:g}); raw {stats['top1_agreement']:.4f} with "
              f"{stats['label_flips']} flips of {len(labels)}, {stats['near_tie_flips']} on near-ties; "
              f"required >= {tolerance.min_agreement:g}")
        if tolerance.max_accuracy_drop is not None:
            drop = -stats["accuracy_delta"]
            check("accuracy_drop", drop <= tolerance.max_accuracy_drop + 1e-12,
                  f"accuracy {stats['accuracy']:.4f} vs Keras {stats['reference_accuracy']:.4f} "
                  f"(Δ {stats['accuracy_delta'] * 100:+.2f} pp); allowed drop "
                  f"{tolerance.max_accuracy_drop * 100:.2f} pp")
    else:
        stats = regression_statistics(reference["eval"], outputs["eval"], labels)
        result["eval"].update(stats)
        if tolerance.max_mae_increase is not None:
            check("mae_increase", stats["mae_relative_increase"] <= tolerance.max_mae_increase + 1e-12,
                  f"MAE {stats['mae']:.4f} vs Keras {stats['reference_mae']:.4f} "
                  f"({stats['mae_relative_increase'] * 100:+.2f} %); allowed +{tolerance.max_mae_increase * 100:.1f} %")
    result["checks"] = checks
    result["verdict"] = "pass" if all(c["passed"] for c in checks) else "fail"
    return result


def _sweep(path: Path, artifact_format: str, images: np.ndarray, reference: np.ndarray, labels: np.ndarray,
           task: str, tolerance, noise: float) -> list[dict]:
    """Run the eval slice under each runtime configuration; report how far each moves from Keras."""
    if artifact_format == "onnx":
        settings = [RuntimeSettings(threads=t, ort_optimization=level) for level in ("disabled", "basic", "all")
                    for t in (1, 2)]
        runtime = "onnxruntime"
    else:
        settings = [RuntimeSettings(threads=t, xnnpack=x) for x in (True, False) for t in (1, 2)]
        runtime = "ai-edge-litert"
    rows = []
    for setting in settings:
        started = time.perf_counter()
        try:
            runner = open_runtime(path, artifact_format, setting)
            outputs = np.concatenate([runner.run(images[i:i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)])
        except Exception as error:  # noqa: BLE001 - a setting that cannot run is itself a finding, not a crash
            rows.append({"settings": setting.describe(runtime), "error": f"{type(error).__name__}: {error}",
                         "max_abs_diff": None, "seconds": 0.0, "within_tolerance": False})
            continue
        seconds = time.perf_counter() - started
        row = {"settings": setting.describe(runtime), **error_statistics(reference, outputs),
               "seconds": round(seconds, 3)}
        within = tolerance.atol is None or row["max_abs_diff"] <= max(
            tolerance.atol, tolerance.noise_multiple * noise) + tolerance.rtol * float(np.abs(reference).max())
        if task == "classification":
            stats = classification_statistics(reference, outputs, labels, tolerance.tie_margin)
            row["top1_agreement"] = stats["top1_agreement"]
            row["decisive_agreement"] = stats["decisive_agreement"]
            within = within and stats["decisive_agreement"] >= tolerance.min_agreement
        row["within_tolerance"] = bool(within)
        rows.append(row)
    return rows
