"""The served model: a verified, parity-checked artifact opened in its TensorFlow-free runtime."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.errors import UsageError
from kerasport.manifest import load_manifest, require_verified, verify_bundle
from kerasport.runtimes import RuntimeSettings, open_runtime

# Fastest first, from bench/export.py on the `seed` arch (batch-1 latency per image, 2 cores):
# tflite-int8 0.15 ms, tflite-dynamic 0.18, onnx-int8 0.27, tflite-fp32 0.95, tflite-fp16 1.0, onnx-fp32 1.1.
SPEED_ORDER = ("tflite-int8", "tflite-dynamic", "onnx-int8", "tflite-fp32", "tflite-fp16", "onnx-fp32")
SERVABLE_FORMATS = ("onnx", "tflite")


@dataclass
class ServedModel:
    run_dir: Path
    variant: str
    name: str
    version: str
    manifest: dict
    entry: dict
    runtime: object
    load_seconds: float

    @property
    def labels(self) -> list[str]:
        return self.manifest["model"].get("labels") or []

    @property
    def task(self) -> str:
        return self.manifest["model"]["task"]

    @property
    def n_outputs(self) -> int:
        return int(self.manifest["output"]["shape"][-1])

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    @property
    def output_name(self) -> str:
        return self.manifest["output"]["name"]

    @property
    def preprocessing(self) -> dict:
        return self.manifest.get("preprocessing", {})

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.runtime.run(images)


def choose_variant(manifest: dict, requested: str | None, allow_unverified: bool) -> str:
    artifacts = manifest["artifacts"]
    if requested:
        if requested not in artifacts or artifacts[requested].get("format") not in SERVABLE_FORMATS:
            servable = [n for n, e in artifacts.items() if e.get("format") in SERVABLE_FORMATS]
            raise UsageError(f"--variant {requested!r} is not a servable artifact of this bundle; expected one of "
                             f"{', '.join(servable) or '(none: run kerasport export)'}")
        return requested
    passed = [name for name in SPEED_ORDER if (artifacts.get(name, {}).get("parity") or {}).get("verdict") == "pass"]
    if passed:
        return passed[0]
    if allow_unverified:
        present = [name for name in SPEED_ORDER if name in artifacts]
        if present:
            return present[0]
    raise UsageError("no artifact of this bundle passed parity; run `kerasport parity`, or pick one with "
                     "--variant and --allow-unverified")


def load_served_model(run: str | Path, *, variant: str | None = None, model_name: str | None = None,
                      threads: int = 0, allow_unverified: bool = False, spinning: bool = True) -> ServedModel:
    """Verify the bundle's chosen artifact (hash + parity verdict) and open it in its runtime."""
    started = time.perf_counter()
    run_dir = Path(run)
    manifest = load_manifest(run_dir)
    chosen = choose_variant(manifest, variant, allow_unverified)
    require_verified(manifest, chosen, allow_unverified=allow_unverified)
    try:
        verify_bundle(run_dir, [chosen])
    except Exception as error:
        raise UsageError(str(error)) from error
    entry = manifest["artifacts"][chosen]
    runtime = open_runtime(run_dir / entry["path"], entry["format"], RuntimeSettings(
        threads=threads, spinning=spinning, memory_pattern=False))
    name = model_name or manifest["model"]["name"]
    return ServedModel(run_dir=run_dir, variant=chosen, name=name, version=str(manifest["model"].get("version", "1")),
                       manifest=manifest, entry=entry, runtime=runtime,
                       load_seconds=time.perf_counter() - started)
