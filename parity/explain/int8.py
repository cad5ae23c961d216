"""`--explain` for the full-integer int8 artifacts: the fixes for the costliest layers, tried and measured.

The bundle is never changed: each fix re-quantizes in a temporary directory, from the bundle's own float model and
calibration sample, with the settings export uses (onnxruntime `quantize_static`, QDQ, per-channel 7-bit int8 weights,
uint8 activations, MinMax; the TFLite MLIR quantizer, full integer, per-channel), and the result runs on the eval
slice against the reference like the gate's candidates do. Trials, per int8 artifact:

- `control`: re-quantized exactly as exported (the baseline every fix is measured against);
- `keep <layer> in float`: the costliest layer (explain's ranking), then it with the layers reading its output,
  excluded from quantization (ORT `nodes_to_exclude`; TFLite `denylisted_nodes`);
- `per-channel`: only when the artifact was quantized per-tensor (export quantizes weights per channel);
- calibration data: all of the bundle's calibration sample when export used fewer examples; when it used all, the
  first half instead — a calibration that barely changes with half the data will not improve with more.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kerasport.compare import (
    accuracy_statistics,
    agreement_statistics,
    class_scores,
    error_statistics,
    regression_statistics,
)
from kerasport.contract import ModelContract
from kerasport.int8_recipe import onnx_static_quantization
from kerasport.layer_scopes import ScopeIndex
from kerasport.manifest import Artifact, Manifest
from kerasport.runtimes import RuntimeSettings, open_runtime
from kerasport.samples import Samples, load_samples

from ..results import ExplainCandidate
from ..runners import SIGNATURE, run_batched

FIX_LAYERS = 1  # the costliest layers each tried in float alone (then the costliest with its consumers)
ONNX_FP32 = "onnx-fp32"


class Int8Fixer:
    """Tries the fixes for one bundle's int8 artifacts; `__call__(artifact, explained, index) -> report dict`."""

    def __init__(self, run_dir: Path, manifest: Manifest, eval_inputs: dict[str, np.ndarray],
                 reference_outputs: dict[str, np.ndarray], targets: dict[str, np.ndarray]):
        self.run_dir, self.manifest, self.contract = run_dir, manifest, manifest.contract
        self.eval_inputs, self.reference, self.targets = eval_inputs, reference_outputs, targets
        self._calibration: Samples | None = None

    @property
    def calibration(self) -> Samples | None:
        if self._calibration is None and self.manifest.has("calibration_sample"):
            artifact = self.manifest.artifact("calibration_sample")
            self._calibration = load_samples(artifact.resolve(self.run_dir), self.contract)
        return self._calibration

    def __call__(self, artifact: Artifact, explained: ExplainCandidate, index: ScopeIndex) -> dict:
        if artifact.precision != "int8":
            return {"skipped": "fixes are tried for the full-integer int8 artifacts"}
        calibration = self.calibration
        if calibration is None or not len(calibration):
            return {"skipped": "the bundle has no calibration sample to re-quantize with"}
        layers = _float_candidates([row["layer"] for row in (explained.costliest or [])[:FIX_LAYERS]], index)
        started = time.perf_counter()
        try:
            if artifact.format == "onnx":
                report = self._onnx(artifact, layers, index, calibration)
            else:
                report = self._tflite(artifact, layers, index, calibration)
        except Exception as error:  # noqa: BLE001 - a fix that cannot be tried is reported, never fatal
            return {"error": f"{type(error).__name__}: {error}"}
        report["seconds"] = round(time.perf_counter() - started, 2)
        return report

    # -- measuring ----------------------------------------------------------------------------------------------
    def measure(self, path: Path, artifact_format: str) -> dict:
        """Agreement / accuracy / max |diff| (classification) or MAE (regression) on the eval slice."""
        outputs = run_batched(open_runtime(path, artifact_format, RuntimeSettings()), self.eval_inputs)
        return measure_outputs(self.contract, self.reference, outputs, self.targets)

    def _plan(self, artifact: Artifact, calibration: Samples) -> tuple[int, list[tuple[str, int]]]:
        used = int(artifact.get("calibration_samples") or len(calibration))
        used = min(used, len(calibration))
        if used < len(calibration):
            return used, [(f"more calibration data (all {len(calibration)} examples, export used {used})",
                           len(calibration))]
        return used, [(f"probe: half the calibration data ({used // 2} of {used}; export used all the sample has)",
                       max(1, used // 2))] if used > 1 else []

    def _report(self, shipped: dict, control: dict, trials: list[dict], not_tried: list[str]) -> dict:
        better = [trial for trial in trials if not trial.get("probe") and _score(trial) > _score(control)]
        best = max(better, key=_score) if better else None
        return {"shipped": shipped, "control": control, "trials": trials, "not_tried": not_tried,
                "best": (f"{best['fix']}: {_describe(control)} → {_describe(best)}" if best else None)}

    # -- onnxruntime ----------------------------------------------------------------------------------------------
    def _onnx(self, artifact: Artifact, layers: list[tuple[str, set[str]]], index: ScopeIndex,
              calibration: Samples) -> dict:
        if not self.manifest.has(ONNX_FP32) or self.manifest.artifact(ONNX_FP32).status != "ok":
            return {"skipped": f"re-quantizing needs the {ONNX_FP32} artifact, which the bundle lacks"}
        fp32 = self.manifest.artifact(ONNX_FP32).resolve(self.run_dir)
        per_channel = "per-tensor" not in str(artifact.get("quantization") or "")
        used, calibrations = self._plan(artifact, calibration)
        shipped = self.measure(artifact.resolve(self.run_dir), "onnx")
        with tempfile.TemporaryDirectory(prefix="kerasport-explain-") as scratch:
            scratch = Path(scratch)
            prepared = _onnx_prepared(fp32, scratch)
            build = _OnnxBuild(prepared, scratch, self.contract)
            control = self._trial("control: re-quantized as exported", "onnx",
                                  lambda: build(calibration.take(used), per_channel))
            trials = []
            for label, group in layers:
                nodes = _onnx_nodes_of(prepared, index, group)
                if nodes:
                    trials.append(self._trial(f"keep {label} in float ({len(nodes)} ONNX nodes excluded)", "onnx",
                                              lambda nodes=nodes: build(calibration.take(used), per_channel, nodes)))
            if not per_channel:
                trials.append(self._trial("per-channel weights", "onnx", lambda: build(calibration.take(used), True)))
            for label, count in calibrations:
                trials.append(self._trial(label, "onnx", lambda count=count: build(calibration.take(count),
                                                                                    per_channel),
                                          probe=count < used))
        not_tried = ["per-channel weights: already per-channel (export's setting)"] if per_channel else []
        return self._report(shipped, control, trials, not_tried)

    def _trial(self, label: str, artifact_format: str, build: Callable[[], Path], probe: bool = False) -> dict:
        started = time.perf_counter()
        try:
            path = build()
            measured = self.measure(path, artifact_format)
        except Exception as error:  # noqa: BLE001
            return {"fix": label, "error": f"{type(error).__name__}: {error}"}
        trial = {"fix": label, **measured, "seconds": round(time.perf_counter() - started, 2)}
        return {**trial, "probe": True} if probe else trial

    # -- LiteRT -------------------------------------------------------------------------------------------------
    def _tflite(self, artifact: Artifact, layers: list[tuple[str, set[str]]], index: ScopeIndex,
                calibration: Samples) -> dict:
        if not self.manifest.has("saved_model"):
            return {"skipped": "re-quantizing needs the bundle's SavedModel"}
        saved_model = self.manifest.artifact("saved_model").resolve(self.run_dir)
        used, calibrations = self._plan(artifact, calibration)
        shipped = self.measure(artifact.resolve(self.run_dir), "tflite")
        with tempfile.TemporaryDirectory(prefix="kerasport-explain-") as scratch:
            scratch = Path(scratch)
            calibrated = _tflite_calibrated(saved_model, calibration.take(used), self.contract)
            build = _TfliteBuild(scratch)
            control = self._trial("control: re-quantized as exported", "tflite", lambda: build(calibrated))
            trials = []
            for label, group in layers:
                nodes = _tflite_nodes_of(calibrated, index, group)
                if nodes:
                    trials.append(self._trial(f"keep {label} in float ({len(nodes)} TFLite tensors denylisted)",
                                              "tflite",
                                              lambda nodes=nodes: build(calibrated, nodes)))
            for label, count in calibrations:
                trials.append(self._trial(label, "tflite", lambda count=count: build(
                    _tflite_calibrated(saved_model, calibration.take(count), self.contract)), probe=count < used))
        return self._report(shipped, control, trials,
                            ["per-channel weights: already per-channel (the TFLite converter's default)"])


def _float_candidates(costliest: list[str], index: ScopeIndex) -> list[tuple[str, set[str]]]:
    """What to keep in float: each costly layer alone, then the costliest with the layers reading its output
    (a float layer's output is quantized again for an int8 consumer; keeping the consumer float avoids that)."""
    groups = [(layer, {layer}) for layer in costliest]
    if costliest:
        consumers = index.consumers(costliest[0])
        if consumers:
            groups.append((f"{costliest[0]} and {', '.join(consumers)}", {costliest[0], *consumers}))
    return groups


def measure_outputs(contract: ModelContract, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                    targets: dict[str, np.ndarray]) -> dict:
    """The summary figures of a re-quantized model against the reference on the eval slice."""
    agreements, deltas, differences, mae = [], [], [], []
    for spec in contract.output_specs():
        expected, received = reference[spec.name], outputs[spec.name]
        differences.append(error_statistics(expected, received)["max_abs_diff"])
        target = targets.get(spec.name)
        if spec.is_classification:
            ref_scores, cand_scores = class_scores(expected, spec.kind), class_scores(received, spec.kind)
            agreements.append(agreement_statistics(ref_scores, cand_scores)["top1_agreement"])
            if target is not None:
                deltas.append(accuracy_statistics(ref_scores, cand_scores, target)["accuracy_delta"])
        elif target is not None:
            mae.append(regression_statistics(expected, received, target)["mae_relative_increase"])
    measured = {"max_abs_diff": max(differences)}
    if agreements:
        measured["agreement"] = float(np.mean(agreements))
    if deltas:
        measured["accuracy_delta"] = float(np.mean(deltas))
    if mae:
        measured["mae_relative_increase"] = float(np.mean(mae))
    return measured


def _score(trial: dict) -> tuple:
    if "error" in trial:
        return (-np.inf,)
    return (trial.get("agreement", 0.0), trial.get("accuracy_delta", 0.0),
            -trial.get("mae_relative_increase", 0.0), -trial["max_abs_diff"])


def _describe(trial: dict) -> str:
    parts = []
    if "agreement" in trial:
        parts.append(f"agreement {trial['agreement']:.4f}")
    if "accuracy_delta" in trial:
        parts.append(f"accuracy Δ {trial['accuracy_delta'] * 100:+.2f} pp")
    if "mae_relative_increase" in trial:
        parts.append(f"MAE {trial['mae_relative_increase'] * 100:+.2f} %")
    parts.append(f"max|diff| {trial['max_abs_diff']:.3g}")
    return ", ".join(parts)


# -- onnxruntime quantization, as export does it ----------------------------------------------------------------
def _onnx_prepared(fp32: Path, scratch: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    return prepared


class _OnnxBuild:
    def __init__(self, prepared: Path, scratch: Path, contract: ModelContract):
        self.prepared, self.scratch, self.contract, self.count = prepared, scratch, contract, 0

    def __call__(self, calibration: Samples, per_channel: bool, exclude: list[str] | None = None) -> Path:
        from onnxruntime.quantization import quantize_static

        self.count += 1
        destination = self.scratch / f"trial_{self.count}.onnx"
        quantize_static(str(self.prepared), str(destination), _Reader(calibration, self.contract),
                        nodes_to_exclude=list(exclude or []), **onnx_static_quantization(per_channel=per_channel))
        return destination


class _Reader:
    def __init__(self, calibration: Samples, contract: ModelContract, batch: int = 16):
        inputs = {spec.name: np.asarray(calibration.inputs[spec.name], dtype=spec.dtype) for spec in contract.inputs}
        self._batches = iter([{name: array[start:start + batch] for name, array in inputs.items()}
                              for start in range(0, len(calibration), batch)])

    def get_next(self):
        return next(self._batches, None)


def _onnx_nodes_of(model_path: Path, index: ScopeIndex, layers: set[str]) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [node.name for node in graph.node if node.name and index.owner([node.name, *node.output]) in layers]


# -- TFLite quantization (MLIR quantizer, full integer), as export's converter does it ---------------------------
def _tflite_calibrated(saved_model: Path, calibration: Samples, contract: ModelContract) -> bytes:
    """The float model with calibration statistics, ready for `mlir_quantize` (calibrated once, quantized often)."""
    import tensorflow as tf

    inputs = {spec.name: np.asarray(calibration.inputs[spec.name], dtype=spec.dtype) for spec in contract.inputs}
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ({name: array[i:i + 1] for name, array in inputs.items()}
                                                for i in range(len(calibration)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        return converter.convert()


class _TfliteBuild:
    def __init__(self, scratch: Path):
        self.scratch, self.count = scratch, 0

    def __call__(self, calibrated: bytes, denylisted: list[str] | None = None) -> Path:
        from tensorflow.lite.python import convert

        self.count += 1
        destination = self.scratch / f"trial_{self.count}.tflite"
        destination.write_bytes(convert.mlir_quantize(calibrated, fully_quantize=True,
                                                      denylisted_nodes=list(denylisted or []) or None))
        return destination


def _tflite_nodes_of(calibrated: bytes, index: ScopeIndex, layers: set[str]) -> list[str]:
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        interpreter = Interpreter(model_content=calibrated,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    details = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    names = []
    for op in interpreter._get_ops_details():
        for tensor in op["outputs"]:
            name = details.get(int(tensor), "")
            parts = [part for part in name.split(";") if part]
            if index.owner(parts) in layers:
                names += [name, *parts]
    return list(dict.fromkeys(names))
