"""The export stage: every requested variant, smoke-run in its runtime, recorded in the manifest.

All variants are built in a staging copy of `<run>/export/` that replaces the old directory only when every
conversion succeeded, so a failed export leaves the previous bundle intact.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from kerasport.errors import CheckFailed, ConversionError, UsageError
from kerasport.fsutil import atomic_path, sha256_file
from kerasport.manifest import artifact_entry, load_manifest, save_manifest, utc_now, verify_bundle

from .variants import DEFAULT_OPSET, VARIANTS

STAGE_DIR_NAME = "export"
TFLM_HEADER = "model_int8.h"
SMOKE_BATCHES = (1, 7)


@dataclass
class ExportOptions:
    run: str = "build"
    formats: list[str] = field(default_factory=lambda: list(VARIANTS))
    opset: int = DEFAULT_OPSET
    calibration_samples: int = 200
    int8_io: bool = False
    allow_select_tf_ops: bool = False


@dataclass
class ExportResult:
    run_dir: Path
    rows: list[dict]
    manifest: dict


def tool_versions() -> dict:
    versions = {}
    for package in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def export_bundle(options: ExportOptions, *, console=None) -> ExportResult:
    run_dir = Path(options.run)
    if options.calibration_samples < 1:
        raise UsageError(f"--calibration-samples {options.calibration_samples} must be >= 1")
    if not 7 <= options.opset <= 18:
        raise UsageError(f"--opset {options.opset} is outside what tf2onnx 1.17 emits; expected 7..18")
    load_manifest(run_dir)  # exit 2 when there is no bundle at all
    try:
        manifest = verify_bundle(run_dir, ["saved_model", "calibration_sample", "eval_sample"])
    except CheckFailed as error:
        raise UsageError(f"cannot export: {error}") from error

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    artifacts = manifest["artifacts"]
    saved_model = run_dir / artifacts["saved_model"]["path"]
    _check_saved_model_loads(saved_model)
    calibration = np.load(run_dir / artifacts["calibration_sample"]["path"])["x"][:options.calibration_samples]
    smoke_inputs = np.load(run_dir / artifacts["eval_sample"]["path"])["x"][:max(SMOKE_BATCHES)]
    input_name, output_name = manifest["input"]["name"], manifest["output"]["name"]
    n_outputs = manifest["output"]["shape"][-1]

    requested = list(options.formats)
    rows: list[dict] = []
    details: dict[str, dict] = {}
    export_dir = run_dir / STAGE_DIR_NAME
    with atomic_path(export_dir) as staging:
        _stage_previous_export(export_dir, staging)
        scratch = staging / ".scratch"
        scratch.mkdir()

        def target(name: str) -> Path:
            # Prerequisites that were not requested are built in scratch and not kept.
            path = (staging if name in requested else scratch) / VARIANTS[name].filename
            path.unlink(missing_ok=True)  # never write through a hard link into the previous export
            return path

        needed = _with_prerequisites(requested)
        for name in VARIANTS:  # fixed order: prerequisites first
            if name not in needed:
                continue
            variant = VARIANTS[name]
            path = target(name)
            started = time.perf_counter()
            if name == "onnx-fp32":
                from .to_onnx import convert_saved_model_to_onnx

                info = convert_saved_model_to_onnx(saved_model, path, opset=options.opset, input_name=input_name,
                                                   output_name=output_name)
            elif name == "onnx-int8":
                from .to_onnx import quantize_onnx_static

                fp32 = _built_path(staging, scratch, "onnx-fp32")
                info = quantize_onnx_static(fp32, path, calibration, input_name=input_name, scratch=scratch)
            elif name == "tflm":
                from .tflm import device_report, write_c_array

                int8_model = _built_path(staging, scratch, "tflite-int8")
                header = staging / TFLM_HEADER
                header.unlink(missing_ok=True)
                write_c_array(int8_model, path, header, sha256=sha256_file(int8_model))
                info = device_report(details["tflite-int8"]["ops"], int8_model.stat().st_size)
            else:
                from .to_tflite import convert_saved_model_to_tflite, tflite_io_details

                info = convert_saved_model_to_tflite(
                    saved_model, path, precision=variant.precision, calibration=calibration,
                    int8_io=options.int8_io and name == "tflite-int8", allow_select_tf_ops=options.allow_select_tf_ops)
                info.update(tflite_io_details(path))
            seconds = time.perf_counter() - started
            if variant.runtime != "tflite-micro":
                _smoke_run(name, path, smoke_inputs, input_name, n_outputs)
            details[name] = {**info, "conversion_seconds": round(seconds, 2)}
            if name in requested:
                rows.append({"variant": name, "file": f"{STAGE_DIR_NAME}/{path.name}", "bytes": path.stat().st_size,
                             "seconds": round(seconds, 2)})
                if console is not None:
                    console.print(f"exported {name:<15} {path.stat().st_size / 1e6:8.2f} MB in {seconds:6.2f} s")
        shutil.rmtree(scratch)

    manifest = load_manifest(run_dir)
    contract_in = {key: manifest["input"][key] for key in ("name", "dtype", "shape")}
    contract_out = {key: manifest["output"][key] for key in ("name", "dtype", "shape")}
    for name in requested:
        variant = VARIANTS[name]
        info = dict(details[name])
        tensor_in, tensor_out = dict(contract_in), dict(contract_out)
        if variant.format == "tflite" or name == "tflm":
            io = details["tflite-int8" if name == "tflm" else name]
            tensor_in.update(io["input"])
            tensor_out.update(io["output"])
            for key in ("input", "output"):
                info.pop(key, None)
        entry = artifact_entry(run_dir, f"{STAGE_DIR_NAME}/{variant.filename}", format=variant.format,
                               precision=variant.precision, runtime=variant.runtime, input=tensor_in,
                               output=tensor_out, **info)
        manifest["artifacts"][name] = entry
        if name == "tflm":
            manifest["artifacts"]["tflm-header"] = artifact_entry(
                run_dir, f"{STAGE_DIR_NAME}/{TFLM_HEADER}", format="c-header", precision="int8",
                runtime="tflite-micro")
    versions = tool_versions()
    manifest.setdefault("versions", {}).update(versions)
    stages = manifest.setdefault("stages", {})
    previous = stages.get("export", {}).get("variants", {})
    stages["export"] = {"finished": utc_now(), "opset": options.opset, "tools": versions,
                        "calibration_images": int(len(calibration)), "int8_io": options.int8_io,
                        "variants": {**previous, **{row["variant"]: {"seconds": row["seconds"], "bytes": row["bytes"]}
                                                    for row in rows}}}
    # A re-export changes artifacts, so earlier parity verdicts no longer apply to them.
    stages.pop("parity", None)
    save_manifest(run_dir, manifest)
    return ExportResult(run_dir=run_dir, rows=rows, manifest=manifest)


def _with_prerequisites(requested: list[str]) -> set[str]:
    needed = set(requested)
    if "onnx-int8" in needed:
        needed.add("onnx-fp32")
    if "tflm" in needed:
        needed.add("tflite-int8")
    return needed


def _built_path(staging: Path, scratch: Path, name: str) -> Path:
    filename = VARIANTS[name].filename
    return scratch / filename if (scratch / filename).exists() else staging / filename


def _stage_previous_export(export_dir: Path, staging: Path) -> None:
    """Start from the previous export (hard links: no copy of 100+ MB) so a --formats subset keeps the rest."""
    if export_dir.is_dir():
        shutil.copytree(export_dir, staging, copy_function=os.link)
    else:
        staging.mkdir()


def _check_saved_model_loads(saved_model: Path) -> None:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(saved_model))
        loaded.signatures["serving_default"]
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable SavedModel
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot export: {saved_model} is not a loadable SavedModel with a serving_default "
                         f"signature ({first[:200]})") from error


def _smoke_run(name: str, path: Path, inputs: np.ndarray, input_name: str, n_outputs: int) -> None:
    """Load the artifact in its runtime and run batches 1 and 7: finite outputs of the right shape."""
    try:
        for batch in SMOKE_BATCHES:
            outputs = run_artifact(path, inputs[:batch], input_name)
            if outputs.shape != (batch, n_outputs) or not np.isfinite(outputs).all():
                raise ConversionError(f"{name}: batch {batch} gave shape {outputs.shape} (finite: "
                                      f"{bool(np.isfinite(outputs).all())}); expected ({batch}, {n_outputs}) finite")
    except ConversionError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ConversionError(f"{name}: {path.name} does not run in its runtime: {type(error).__name__}: "
                              f"{error}") from error


def run_artifact(path: Path, x: np.ndarray, input_name: str) -> np.ndarray:
    """One inference in the artifact's own runtime (onnxruntime or LiteRT), float32 in and out."""
    from kerasport.runtimes import open_runtime

    return open_runtime(path, "onnx" if path.suffix == ".onnx" else "tflite").run(x)
