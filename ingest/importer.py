"""Import a model trained elsewhere: its contract inferred from the Keras model, written as a bundle.

This module holds the library core (contract inference, writing the `<run>/model/` part of a bundle); loading
sources and data specs lives beside it and `kerasport import` is a thin shell over `import_model`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kerasport.bundle import Stage, forget_invalidated, remove_invalidated_folders
from kerasport.contract import (
    COLOR_MODES,
    DYNAMIC,
    ImageSpec,
    InputSpec,
    ModelContract,
    OutputSpec,
)
from kerasport.errors import UsageError
from kerasport.fsutil import atomic_path, remove_path, write_json_atomic
from kerasport.keras_bundle import (
    CALIBRATION_SAMPLE,
    EVAL_SAMPLE,
    SIGNATURE,
    export_saved_model,
    model_artifacts,
    save_keras_model,
    write_samples,
)
from kerasport.manifest import Manifest, artifact_entry, new_manifest, utc_now
from kerasport.samples import Samples

STAGE_DIR_NAME = Stage.IMPORT.folder
TASKS = ("auto", "classification", "regression")
INPUT_KINDS = ("auto", "image", "tensor")


@dataclass(frozen=True)
class ContractHints:
    """What the user told `kerasport import` about the model, beyond what Keras records."""

    task: str = "auto"
    input_kind: str = "auto"
    input_range: tuple[float, float] | None = None
    labels: tuple[str, ...] = ()


def _dtype_name(value) -> str:
    name = getattr(value, "name", None) or str(value)
    return str(np.dtype(name.replace("tf.", "")).name)


def _static_shape(shape) -> tuple[int, ...]:
    return tuple(DYNAMIC if d is None else int(d) for d in shape)


def output_activation(model, index: int) -> str | None:
    """The activation of the layer that produces output `index` ('softmax', 'sigmoid', 'linear'...), if visible."""
    try:
        layer = model.outputs[index]._keras_history.operation
    except (AttributeError, IndexError):
        return None
    activation = getattr(layer, "activation", None)
    if activation is not None:
        return getattr(activation, "__name__", str(activation))
    name = type(layer).__name__.lower()
    return "softmax" if name == "softmax" else None


def output_kind(activation: str | None, task: str, width: int) -> str:
    """probabilities (softmax, or sigmoid for one class), logits, or values — from the task and activation."""
    if task == "regression":
        return "values"
    if activation == "softmax" or (activation == "sigmoid" and width == 1):
        return "probabilities"
    if task == "classification":
        return "logits" if activation in (None, "linear") else "probabilities"
    return "values"


def input_spec_from_keras(name: str, dtype: str, shape: tuple[int, ...], hints: ContractHints,
                          data_range: tuple[float, float] | None) -> InputSpec:
    """An image when asked, or by default for rank-4 inputs with 1 or 3 channels and a known height/width."""
    channels = shape[-1] if len(shape) == 4 else None
    looks_like_image = len(shape) == 4 and channels in (1, 3) and shape[1] > 0 and shape[2] > 0
    kind = hints.input_kind if hints.input_kind != "auto" else ("image" if looks_like_image else "tensor")
    value_range = hints.input_range or data_range
    origin = "given" if hints.input_range else "inferred"
    if kind == "tensor":
        return InputSpec(name=name, dtype=dtype, shape=shape, kind="tensor", value_range=value_range,
                         range_origin=origin)
    if not looks_like_image:
        raise UsageError(f"--input-kind image: input {name!r} has shape {list(shape)}; expected "
                         f"[batch, height, width, 1 or 3] with a fixed height and width")
    color_mode = next(mode for mode, count in COLOR_MODES.items() if count == channels)
    return InputSpec(name=name, dtype=dtype, shape=shape, kind="image", value_range=value_range,
                     range_origin=origin, image=ImageSpec(height=shape[1], width=shape[2], color_mode=color_mode))


def contract_from_keras(model, hints: ContractHints = ContractHints(),
                        data_ranges: dict[str, tuple[float, float]] | None = None) -> ModelContract:
    """The contract of a built Keras model: its input and output names, dtypes and shapes, plus the hints.

    Args:
        model: a built Keras 3 model.
        hints: task, input kind, input range and labels given by the user.
        data_ranges: per input name, the value range seen in the eval data (recorded when no range is given).

    Returns:
        The contract; labels go to the first classification output whose width matches.

    Raises:
        UsageError: labels that fit no output, or an `image` kind that does not fit an input.
    """
    data_ranges = data_ranges or {}
    inputs = [input_spec_from_keras(name, _dtype_name(tensor.dtype), _static_shape(tensor.shape), hints,
                                    data_ranges.get(name))
              for name, tensor in zip(keras_tensor_names(model, "inputs"), model.inputs, strict=True)]
    outputs = []
    for index, (name, tensor) in enumerate(zip(keras_tensor_names(model, "outputs"), model.outputs, strict=True)):
        shape = _static_shape(tensor.shape)
        activation = output_activation(model, index)
        kind = output_kind(activation, hints.task, _width(shape))
        outputs.append(OutputSpec(name=name, dtype=_dtype_name(tensor.dtype), shape=shape, kind=kind,
                                  activation=activation))
    return ModelContract(inputs=tuple(inputs), outputs=attach_labels(tuple(outputs), hints.labels))


def _width(shape: tuple[int, ...]) -> int:
    return int(np.prod([d for d in shape[1:] if d > 0])) if len(shape) > 1 else 1


def keras_tensor_names(model, which: str) -> list[str]:
    """Contract names of a model's `inputs` or `outputs`: the Input layers' and output layers' names.

    A Functional model's `output_names` win for outputs; otherwise (a Sequential model, whose tensors are called
    `keras_tensor_<n>`) the name of the layer that produced the tensor is used.
    """
    tensors = getattr(model, which)
    declared = list(getattr(model, "output_names", None) or []) if which == "outputs" else []
    if len(declared) == len(tensors):
        return declared
    names = []
    for tensor in tensors:
        name = tensor.name.split(":")[0]
        operation = getattr(getattr(tensor, "_keras_history", None), "operation", None)
        if name.startswith("keras_tensor") and getattr(operation, "name", None):
            name = operation.name
        names.append(name)
    return names


def attach_labels(outputs: tuple[OutputSpec, ...], labels: tuple[str, ...]) -> tuple[OutputSpec, ...]:
    """Give `labels` to the first classification output of that width.

    Raises:
        UsageError: labels given but no classification output has that many classes.
    """
    if not labels:
        return outputs
    for index, spec in enumerate(outputs):
        if spec.is_classification and spec.width == len(labels):
            return (*outputs[:index], replace(spec, labels=tuple(labels)), *outputs[index + 1:])
    widths = {spec.name: f"{spec.kind} x{spec.width}" for spec in outputs}
    raise UsageError(f"--labels: {len(labels)} labels, but no classification output has that width "
                     f"(outputs: {widths})")


def looks_like_probabilities(values: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Rank-2 rows of non-negative values that sum to 1 (a softmax), the rule for signature outputs."""
    if values.ndim != 2 or values.shape[1] < 2 or not values.size:
        return False
    return bool((values >= -tolerance).all() and np.allclose(values.sum(axis=1), 1.0, atol=tolerance))


def signature_output_kind(task: str, predictions: np.ndarray | None) -> str:
    """A SavedModel records no activation: rows that look like a softmax are probabilities, else values (auto),
    logits (classification) or values (regression)."""
    if task == "regression":
        return "values"
    if predictions is not None and looks_like_probabilities(predictions):
        return "probabilities"
    return "logits" if task == "classification" else "values"


def contract_from_signature(input_specs: dict, output_specs: dict, hints: ContractHints = ContractHints(),
                            data_ranges: dict[str, tuple[float, float]] | None = None,
                            predictions: dict[str, np.ndarray] | None = None) -> ModelContract:
    """The contract of a SavedModel `serving_default` signature: its input and output names become the contract's.

    Args:
        input_specs: input name -> tf.TensorSpec (`structured_input_signature[1]`).
        output_specs: output name -> tf.TensorSpec (`structured_outputs`), in the order the contract lists them.
        hints: task, input kind, input range and labels given by the user.
        data_ranges: per input name, the value range seen in the eval data.
        predictions: per output name, the signature's outputs on the eval inputs (decides probabilities).

    Returns:
        The contract.

    Raises:
        UsageError: a tensor of unknown rank, labels that fit no output, an `image` kind that fits no input.
    """
    data_ranges, predictions = data_ranges or {}, predictions or {}
    for name, spec in {**input_specs, **output_specs}.items():
        if spec.shape.rank is None:
            raise UsageError(f"SavedModel signature tensor {name!r} has an unknown rank; expected a fixed rank")
    inputs = tuple(input_spec_from_keras(name, _dtype_name(spec.dtype), _static_shape(spec.shape), hints,
                                         data_ranges.get(name)) for name, spec in input_specs.items())
    outputs = tuple(OutputSpec(name=name, dtype=_dtype_name(spec.dtype), shape=_static_shape(spec.shape),
                               kind=signature_output_kind(hints.task, predictions.get(name)))
                    for name, spec in output_specs.items())
    return ModelContract(inputs=inputs, outputs=attach_labels(outputs, hints.labels))


def write_imported_bundle(run_dir: Path, model, contract: ModelContract, *, eval_samples: Samples,
                          calibration: Samples, name: str, version: str, source: dict,
                          stage_record: dict | None = None, artifact_details: dict[str, dict] | None = None,
                          saved_model_source: Path | None = None, parameters: int | None = None) -> Manifest:
    """Write `<run>/model/` (model.keras, saved_model/, samples, config.json) and a fresh manifest, atomically.

    Later stages' outputs describe another model, so `export/`, `parity/` and `train/` of an earlier run are removed.

    Args:
        run_dir: the run directory (created when missing).
        model: the built Keras model, or None when `saved_model_source` is the model (no `keras` artifact then).
        contract: the model's contract; the written SavedModel's signature uses its names.
        eval_samples: the pinned held-out slice (targets optional).
        calibration: representative inputs for int8 calibration.
        name: model name.
        version: model version.
        source: where the model came from, recorded as `model.source`.
        stage_record: extra details for `<run>/model/config.json`.
        artifact_details: per artifact name, extra keys for its manifest entry (e.g. `{"eval_sample":
            {"synthetic": True}}`).
        saved_model_source: a SavedModel directory to copy as the `saved_model` artifact instead of exporting one.
        parameters: the parameter count to record (default: the Keras model's).

    Returns:
        The new Manifest.
    """
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / STAGE_DIR_NAME) as staging:
            staging.mkdir()
            if model is not None:
                save_keras_model(model, staging / "model.keras")
            if saved_model_source is not None:
                shutil.copytree(saved_model_source, staging / "saved_model")
            else:
                export_saved_model(model, staging / "saved_model", contract)
            write_samples(staging, eval_samples, calibration)
            write_json_atomic(staging / "config.json", {"source": source, "finished": utc_now(),
                                                        **(stage_record or {})})
    except BaseException:
        if created:
            remove_path(run_dir)
        raise
    artifacts = _bundle_artifacts(run_dir, keras=model is not None)
    for artifact, details in (artifact_details or {}).items():
        artifacts[artifact].update(details)
    if parameters is None:
        parameters = int(model.count_params()) if model is not None else 0
    manifest = new_manifest(
        model={"name": name, "version": version, "task": contract.task, "source": source, "parameters": parameters},
        contract=contract, stages={Stage.IMPORT: {"finished": utc_now(), "config": f"{STAGE_DIR_NAME}/config.json",
                                              "labelled_eval_data": eval_samples.labelled}},
        artifacts=artifacts)
    forget_invalidated(manifest, Stage.IMPORT)
    manifest.save(run_dir)
    remove_invalidated_folders(run_dir, Stage.IMPORT)
    return manifest


def _bundle_artifacts(run_dir: Path, *, keras: bool) -> dict:
    roles = {"eval_role": "held-out parity and evaluation slice",
             "calibration_role": "representative inputs for int8 calibration"}
    if keras:
        return model_artifacts(run_dir, STAGE_DIR_NAME, **roles)
    # A SavedModel source: the SavedModel itself is the reference, there is no model.keras.
    stage = STAGE_DIR_NAME
    return {"saved_model": artifact_entry(run_dir, f"{stage}/saved_model", format="tf_saved_model", precision="fp32",
                                          runtime="tensorflow", signature=SIGNATURE),
            "eval_sample": artifact_entry(run_dir, f"{stage}/{EVAL_SAMPLE}", format="npz", precision="fp32",
                                          role=roles["eval_role"]),
            "calibration_sample": artifact_entry(run_dir, f"{stage}/{CALIBRATION_SAMPLE}", format="npz",
                                                 precision="fp32", role=roles["calibration_role"])}
