"""What a bundle's model part is made of, shared by training and import: the Keras model, a SavedModel with a
`serving_default` signature named after the contract, and the pinned eval/calibration samples.
"""

from __future__ import annotations

from pathlib import Path

from kerasport.canonical import canonicalize_saved_model, normalize_keras_archive
from kerasport.contract import DYNAMIC, ModelContract
from kerasport.manifest import artifact_entry
from kerasport.samples import Samples, save_samples

SIGNATURE = "serving_default"
EVAL_SAMPLE = "eval_sample.npz"
CALIBRATION_SAMPLE = "calibration_sample.npz"


def call_model(model, inputs: list):
    """Call a Keras model on positional inputs in `model.inputs` order; always returns a list of outputs."""
    outputs = model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def save_keras_model(model, path: Path) -> None:
    """`model.save(path)`, normalised so that the same model gives the same bytes (see `canonical.py`).

    Args:
        model: the Keras model.
        path: the `.keras` file to write.
    """
    raw = path.with_name(f".{path.stem}.raw.keras")
    try:
        model.save(raw)
        normalize_keras_archive(raw, path)
    finally:
        raw.unlink(missing_ok=True)


def export_saved_model(model, path: Path, contract: ModelContract) -> None:
    """A TF SavedModel whose `serving_default` signature takes and returns the contract's named tensors.

    The same model gives the same bytes: the variables are saved in the model's order (TensorFlow lists the ones a
    function uses in a set keyed by memory address) and the function names and fingerprint are canonical.

    Args:
        model: a built Keras model whose inputs/outputs are, in order, the contract's.
        path: the SavedModel directory to write.
        contract: names, dtypes and shapes for the signature.
    """
    import keras
    import tensorflow as tf

    output_names = contract.output_names
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda *tensors: dict(zip(output_names, call_model(model, list(tensors)), strict=True)),
        input_signature=[tf.TensorSpec(shape=tuple(None if d == DYNAMIC else d for d in spec.shape),
                                       dtype=tf.as_dtype(spec.dtype), name=spec.name) for spec in contract.inputs],
    )
    _track_variables_in_model_order(archive, model)
    archive.write_out(str(path), verbose=False)
    canonicalize_saved_model(path)


def _track_variables_in_model_order(archive, model) -> None:
    """Make the archive's `_all_variables` follow `model.variables`, not the order of a set of object ids.

    ExportArchive collects the variables its endpoint uses from `ConcreteFunction.variables`, an
    ObjectIdentityWeakSet: its order (and so the checkpoint's `_all_variables/<i>` keys and the SavedModel graph)
    changes from process to process. Variables outside the model (none for a plain model) go last, by name.
    """
    rank: dict[int, int] = {}
    for index, variable in enumerate(model.variables):
        rank.setdefault(id(variable), index)
        rank.setdefault(id(getattr(variable, "_value", variable)), index)  # Keras 3 wraps a tf.Variable
    collect = getattr(archive, "_filter_and_track_resources", None)
    if collect is None:  # a Keras without this hook: its own order (the SavedModel may then vary run to run)
        return

    def collect_in_model_order() -> None:
        collect()
        found = list(getattr(archive._tf_trackable, "_all_variables", []))
        if not found:
            return
        archive._tf_trackable._all_variables = sorted(
            found, key=lambda v: (rank.get(id(v), len(rank)), str(getattr(v, "name", "")), str(v.shape)))

    archive._filter_and_track_resources = collect_in_model_order


def write_samples(staging: Path, eval_samples: Samples, calibration: Samples) -> None:
    save_samples(staging / EVAL_SAMPLE, eval_samples)
    save_samples(staging / CALIBRATION_SAMPLE, calibration)


def model_artifacts(run_dir: Path, stage: str, *, eval_role: str, calibration_role: str,
                    saved_model: bool = True) -> dict:
    """Manifest entries for what `stage/` holds: model.keras, saved_model/, the two samples."""
    artifacts = {"keras": artifact_entry(run_dir, f"{stage}/model.keras", format="keras", precision="fp32",
                                         runtime="keras")}
    if saved_model:
        artifacts["saved_model"] = artifact_entry(run_dir, f"{stage}/saved_model", format="tf_saved_model",
                                                  precision="fp32", runtime="tensorflow", signature=SIGNATURE)
    artifacts["eval_sample"] = artifact_entry(run_dir, f"{stage}/{EVAL_SAMPLE}", format="npz", precision="fp32",
                                              role=eval_role)
    artifacts["calibration_sample"] = artifact_entry(run_dir, f"{stage}/{CALIBRATION_SAMPLE}", format="npz",
                                                     precision="fp32", role=calibration_role)
    return artifacts
