"""Pinned data samples in a bundle: the held-out evaluation slice and the int8 calibration set.

A sample file is an `.npz` with one array per model input (`input:<name>`) and, when known, one per output's
targets (`target:<name>`: class indices for classification outputs, values for regression outputs). Bundles
written before multi-input contracts hold `x`/`y`; those map onto the single input and output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import ModelContract
from .errors import CheckFailed
from .fsutil import atomic_path

INPUT_PREFIX = "input:"
TARGET_PREFIX = "target:"


@dataclass
class Samples:
    """Inputs by name (each batch-first) and optional targets by output name."""

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def labelled(self) -> bool:
        return bool(self.targets)

    def take(self, count: int) -> Samples:
        return Samples({k: v[:count] for k, v in self.inputs.items()}, {k: v[:count] for k, v in self.targets.items()})

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: array[start:stop] for name, array in self.inputs.items()}

    def sha256(self) -> str:
        return inputs_sha256(self.inputs)


def inputs_sha256(inputs: dict[str, np.ndarray]) -> str:
    """One hash of named arrays (names and bytes, in name order): pins the exact inputs a report was made on."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(inputs[name]).tobytes())
    return digest.hexdigest()


def save_samples(path: Path, samples: Samples) -> None:
    """Write atomically; `np.savez_compressed` keeps the key names as given."""
    arrays = {f"{INPUT_PREFIX}{name}": array for name, array in samples.inputs.items()}
    arrays.update({f"{TARGET_PREFIX}{name}": array for name, array in samples.targets.items()})
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_samples(path: Path, contract: ModelContract) -> Samples:
    """Read a sample file written by `save_samples` (or the legacy `x`/`y` layout) against the contract.

    Raises:
        CheckFailed: an input the contract names is missing or has the wrong example shape.
    """
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        if any(key.startswith(INPUT_PREFIX) for key in keys):
            inputs = {key[len(INPUT_PREFIX):]: archive[key] for key in keys if key.startswith(INPUT_PREFIX)}
            targets = {key[len(TARGET_PREFIX):]: archive[key] for key in keys if key.startswith(TARGET_PREFIX)}
        elif "x" in keys and len(contract.inputs) == 1:
            inputs = {contract.inputs[0].name: archive["x"]}
            targets = {contract.outputs[0].name: archive["y"]} if "y" in keys and len(contract.outputs) == 1 else {}
        else:
            raise CheckFailed(f"{path}: arrays {sorted(keys)}; expected input:<name> for {contract.input_names}")
    for spec in contract.inputs:
        if spec.name not in inputs:
            raise CheckFailed(f"{path}: no array for input {spec.name!r}; it has {sorted(inputs)}")
        if not spec.accepts_item_shape(inputs[spec.name].shape[1:]):
            raise CheckFailed(f"{path}: input {spec.name!r} has shape {list(inputs[spec.name].shape)}; the contract "
                              f"says {list(spec.shape)}")
    return Samples({spec.name: inputs[spec.name] for spec in contract.inputs},
                   {name: targets[name] for name in contract.output_names if name in targets})
