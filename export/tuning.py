"""The tuning sample the int8 recipe search judges candidates on: never the eval sample the gate judges.

`train` writes one from its validation split (inputs and labels); `import --tuning-data` pins one. A bundle without
one is tuned on its calibration inputs with the reference's own answers as targets, so only agreement counts there.
The reference's outputs come from the bundle's SavedModel (the graph every variant is converted from).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.errors import CheckFailed, UsageError
from kerasport.int8_recipe import TUNING_ARTIFACT
from kerasport.manifest import Manifest, verify_bundle
from kerasport.samples import Samples, load_samples
from kerasport.tolerances import Tolerance, load_policy

REFERENCE_BATCH = 64
# The search counts every tuning example, near-ties included (the gate's `tie_margin` spares those): the tuning
# sample is smaller than the eval sample, and on `run --epochs 1 --limit 500` the gate's own rule let a recipe
# pass 250 tuning examples that lost 1.1 pp on the 359 eval ones (its flips were all near-ties).
SEARCH_TIE_MARGIN = 0.0
SIGNATURE = "serving_default"


@dataclass
class TuningSet:
    """Inputs (+ targets when labelled), the reference's outputs on them and the gate's int8 tolerance."""

    samples: Samples
    reference: dict[str, np.ndarray]
    tolerance: Tolerance
    source: str
    tolerance_source: list[str]

    def describe(self) -> dict:
        return {"source": self.source, "examples": len(self.samples), "labelled": self.samples.labelled,
                "inputs_sha256": self.samples.sha256(), "tolerance": dataclasses.asdict(self.tolerance),
                "tolerance_source": self.tolerance_source}


def load_tuning(run_dir: Path, manifest: Manifest, saved_model: Path, calibration: Samples) -> TuningSet:
    """The bundle's tuning sample (or its calibration inputs), the SavedModel's answers and the int8 tolerance.

    Args:
        run_dir: the bundle; its parity.toml, if any, sets the tolerance as it does for the gate.
        manifest: its manifest (the `tuning_sample` artifact, when there is one).
        saved_model: the reference SavedModel.
        calibration: the bundle's whole calibration sample (the fallback).

    Raises:
        UsageError: the tuning sample is altered (sha256) or unreadable, or parity.toml is invalid.
    """
    policy = load_policy(run_dir)
    if manifest.has(TUNING_ARTIFACT):
        try:
            verify_bundle(run_dir, [TUNING_ARTIFACT])
            samples = load_samples(manifest.artifact(TUNING_ARTIFACT).resolve(run_dir), manifest.contract)
        except CheckFailed as error:
            raise UsageError(f"cannot search an int8 recipe: {error}") from error
        role = manifest.artifact(TUNING_ARTIFACT).get("role") or "the bundle's tuning sample"
        source = f"{TUNING_ARTIFACT}: {role}"
    else:
        samples = Samples(dict(calibration.inputs))
        source = "calibration inputs with the reference's answers as targets (agreement only)"
    if not len(samples):
        raise UsageError(f"cannot search an int8 recipe: the {TUNING_ARTIFACT} is empty; expected examples")
    reference = reference_outputs(saved_model, manifest, samples)
    tolerance = dataclasses.replace(policy.for_precision("int8"), tie_margin=SEARCH_TIE_MARGIN)
    return TuningSet(samples, reference, tolerance, source, list(policy.source))


def reference_outputs(saved_model: Path, manifest: Manifest, samples: Samples) -> dict[str, np.ndarray]:
    """The SavedModel's `serving_default` outputs on the samples, by contract output name."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(saved_model)).signatures[SIGNATURE]
    contract = manifest.contract
    parts: dict[str, list[np.ndarray]] = {name: [] for name in contract.output_names}
    for start in range(0, len(samples), REFERENCE_BATCH):
        feed = {spec.name: tf.constant(np.asarray(samples.inputs[spec.name][start:start + REFERENCE_BATCH],
                                                  dtype=spec.dtype)) for spec in contract.inputs}
        outputs = signature(**feed)
        for name in contract.output_names:
            parts[name].append(np.asarray(outputs[name]))
    return {name: np.concatenate(values) for name, values in parts.items()}
