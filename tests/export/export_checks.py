"""Helpers for the export tests: bundles of any Keras model, and each artifact run in its raw runtime.

The artifacts are run through onnxruntime's and LiteRT's own APIs (not kerasport.runtimes, which the stage's smoke
run uses), so these tests check what a user of the runtimes sees: the contract's names and a dynamic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devtools.tiny_models import write_imported
from kerasport.contract import ModelContract
from kerasport.manifest import load_manifest
from kerasport.samples import Samples, load_samples


def imported_bundle(run: Path, model, eval_inputs: dict, calibration_inputs: dict, *, task: str = "auto",
                    labels: tuple[str, ...] = (), ranges: dict | None = None, name: str = "test-model") -> Path:
    """Write an imported bundle of `model` (as `kerasport import` would) into `run`, from plain input arrays."""
    return write_imported(run, model, Samples(eval_inputs), Samples(calibration_inputs), name=name, labels=labels,
                          task=task, ranges=ranges)


def eval_inputs(run: Path, count: int) -> dict[str, np.ndarray]:
    """The first `count` examples of the bundle's eval sample, every input in its contract dtype."""
    manifest = load_manifest(run)
    sample = load_samples(manifest.artifact("eval_sample").resolve(run), manifest.contract).take(count)
    return {spec.name: sample.inputs[spec.name].astype(spec.dtype) for spec in manifest.contract.inputs}


def run_onnx(path: Path, inputs: dict[str, np.ndarray], contract: ModelContract) -> dict[str, np.ndarray]:
    """One onnxruntime run; checks the graph's names and order are the contract's and its batch is `batch`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == contract.input_names
    assert [o.name for o in session.get_outputs()] == contract.output_names
    assert all(tensor.shape[0] == "batch" for tensor in (*session.get_inputs(), *session.get_outputs()))
    return dict(zip(contract.output_names, session.run(contract.output_names, inputs), strict=True))


def run_litert(path: Path, inputs: dict[str, np.ndarray], contract: ModelContract) -> dict[str, np.ndarray]:
    """One LiteRT run through the `serving_default` signature (float I/O); checks its names and dynamic batch."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signature = interpreter.get_signature_runner("serving_default")
    details = signature.get_input_details()
    assert sorted(details) == sorted(contract.input_names)
    assert sorted(signature.get_output_details()) == sorted(contract.output_names)
    assert all(detail["shape_signature"][0] == -1 for detail in details.values())
    outputs = signature(**inputs)
    return {name: outputs[name] for name in contract.output_names}


def keras_outputs(model, inputs: dict[str, np.ndarray], contract: ModelContract) -> dict[str, np.ndarray]:
    """The Keras model's outputs by contract name (positional inputs in the contract's order)."""
    import keras

    arguments = [inputs[name] for name in contract.input_names]
    outputs = model(arguments[0] if len(arguments) == 1 else arguments, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: keras.ops.convert_to_numpy(value) for name, value in zip(contract.output_names, outputs,
                                                                          strict=True)}
