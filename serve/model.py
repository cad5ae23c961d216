"""The served model: a verified, parity-checked artifact opened in its TensorFlow-free runtime."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.bundle import Bundle
from kerasport.contract import ModelContract
from kerasport.errors import UsageError
from kerasport.manifest import Artifact, Manifest
from kerasport.runtimes import RuntimeSettings, open_runtime
from kerasport.selection import FALLBACK_ORDER, SERVABLE_FORMATS, Choice, choose

# The fixed order of bundles without measured speed now lives in the core's one selection policy.
SPEED_ORDER = FALLBACK_ORDER


@dataclass
class ServedModel:
    """One artifact of a bundle, opened in its runtime, with the bundle's contract."""

    run_dir: Path
    manifest: Manifest
    artifact: Artifact
    runtime: object
    name: str
    load_seconds: float
    served_version: str | None = None  # a model repository's folder name, which wins over the manifest's version
    choice: Choice | None = None  # which variant and why (None: built by hand)

    @property
    def contract(self) -> ModelContract:
        return self.manifest.contract

    @property
    def variant(self) -> str:
        return self.artifact.name

    @property
    def version(self) -> str:
        return self.served_version or self.manifest.version

    @property
    def task(self) -> str:
        return self.contract.task

    @property
    def runtime_name(self) -> str:
        return self.artifact.runtime or getattr(self.runtime, "name", self.artifact.format)

    @property
    def entry(self) -> dict:
        """The artifact's manifest entry (read-only use: the ready line names its runtime)."""
        return {**self.artifact.entry, "runtime": self.runtime_name}

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: arrays keyed by the contract's input names -> arrays keyed by its output names."""
        return self.runtime.run(inputs)


def choose_variant(manifest: Manifest, requested: str | None, allow_unverified: bool) -> str:
    """The artifact to serve: the requested one, else the server recommendation (`explain_choice`)."""
    return explain_choice(manifest, requested, allow_unverified).variant


def explain_choice(manifest: Manifest, requested: str | None, allow_unverified: bool) -> Choice:
    """The artifact to serve and why: `--variant NAME`, else (None or "auto") the core's selection policy —
    the lowest measured batch-1 p50 that passed parity, or the fixed order when the bundle has no measurements.

    Variants export could not build (`failed: ...`) are never chosen; with `allow_unverified`, a servable artifact
    is chosen when none passed parity.

    Raises:
        UsageError: the requested artifact is not servable, or nothing is.
    """
    return choose(manifest, formats=SERVABLE_FORMATS, requested=requested, allow_unverified=allow_unverified)


def load_served_model(run: str | Path, *, variant: str | None = None, model_name: str | None = None,
                      threads: int = 0, allow_unverified: bool = False, spinning: bool = True) -> ServedModel:
    """Choose an artifact, verify it (sha256 and parity verdict) and open it in its runtime.

    Args:
        run: the run directory holding `manifest.json`.
        variant: the artifact to serve; None or "auto": the core's selection (kerasport.selection).
        model_name: the name clients use in URLs; default: the manifest's model name.
        threads: the runtime's intra-op threads (0: its default).
        allow_unverified: serve an artifact whose parity verdict is missing or failed.
        spinning: let onnxruntime's idle worker threads spin (fastest for a lone client).

    Returns:
        The ServedModel, whose `predict` takes and returns arrays keyed by the contract's names.

    Raises:
        UsageError: no bundle, no servable or verified artifact, an altered artifact (exit 2).
        CheckFailed: the manifest is invalid (exit 1).
        ConversionError: the runtime cannot load the artifact (exit 3).
    """
    started = time.perf_counter()
    bundle = Bundle.open(run)
    run_dir, manifest = bundle.run_dir, bundle.manifest
    choice, artifact = bundle.select(formats=SERVABLE_FORMATS, requested=variant, allow_unverified=allow_unverified)
    chosen = choice.variant
    runtime = open_runtime(artifact.resolve(run_dir), artifact.format,
                           RuntimeSettings(threads=threads, spinning=spinning, memory_pattern=False))
    contract = manifest.contract
    if set(runtime.input_names) != set(contract.input_names) or set(runtime.output_names) != set(
            contract.output_names):
        raise UsageError(f"artifact {chosen!r} takes {runtime.input_names} and returns {runtime.output_names}; the "
                         f"contract names {contract.input_names} and {contract.output_names} (re-run `kerasport "
                         f"export`)")
    return ServedModel(run_dir=run_dir, manifest=manifest, artifact=artifact, runtime=runtime,
                       name=model_name or manifest.name, load_seconds=time.perf_counter() - started,
                       choice=choice)
