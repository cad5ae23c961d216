"""What parity runs: the reference (Keras, or the SavedModel of a SavedModel-source import) and each candidate.

Every runner takes a dict of named input arrays (the contract's names) and returns a dict of named outputs.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from kerasport.compare import error_statistics
from kerasport.contract import ModelContract
from kerasport.errors import ConversionError, UsageError
from kerasport.manifest import Artifact
from kerasport.runtimes import RuntimeSettings, open_runtime

from .first_load import first_load
from .results import NoiseFloor, ReferenceInfo

EVAL_BATCH = 64
EDGE_BATCH_SIZES = (1, 7, 64)
RUNTIME_FORMATS = ("onnx", "tflite")
SIGNATURE = "serving_default"
# The runtimes' default settings, except that onnxruntime's idle workers do not spin: the gate runs several
# sessions side by side on few cores, where spinning threads take the cores the others compute on (the outputs
# are the same either way).
GATE_SETTINGS = RuntimeSettings(spinning=False)
T = TypeVar("T")


class KerasRunner:
    """A Keras model called with `training=False`, inputs in the contract's order (the model's own order)."""

    def __init__(self, path: Path, contract: ModelContract, source: Mapping | None = None):
        import keras

        source = source or {}
        # An imported model may need its registered custom layers, or unsafe deserialization (a Lambda layer):
        # the bundle records what its import was allowed, and the reference loads the same way.
        module = source.get("custom_objects")
        if module:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise UsageError(f"the reference model needs the custom objects module {module!r}, which does not "
                                 f"import here ({error}); make it importable (e.g. PYTHONPATH)") from error
        try:
            self._model = keras.saving.load_model(path, compile=False, safe_mode=not source.get("unsafe", False))
        except Exception as error:  # noqa: BLE001 - any failure means the reference cannot run
            raise ConversionError(f"Keras cannot load the reference model {path}: {error}") from error
        self._keras, self._contract = keras, contract
        self.description = f"keras {keras.__version__} (training=False)"

    @property
    def model(self):
        """The loaded Keras model (read-only use: per-layer explanations)."""
        return self._model

    def fp16_weight_twin(self) -> KerasRunner:
        """The same model with every float weight rounded to float16 and back: what fp16 weight storage alone does.

        TFLite's fp16 variant stores weights as float16 and computes in float32 on this CPU, so the twin's distance
        from the reference is the error an fp16 artifact is expected to have on these inputs — deeper or
        ill-conditioned models get a larger bound, as the fp32 bound follows batch-order noise.
        """
        twin = object.__new__(KerasRunner)
        twin._keras, twin._contract = self._keras, self._contract
        twin._model = self._keras.models.clone_model(self._model)
        twin._model.set_weights([w.astype(np.float16).astype(w.dtype) if w.dtype.kind == "f" else w
                                 for w in self._model.get_weights()])
        twin.description = f"{self.description}, float16-rounded weights"
        return twin

    def float64_twin(self) -> KerasRunner:
        """The same model computing in float64 (every float32 layer policy and weight widened).

        Its distance from the reference on the same inputs is the reference's own float32 rounding error: an fp32
        runtime that computes in another order is expected to be about that far from Keras, so the fp32 bound
        follows it (deep or ill-conditioned models get a larger bound, as fp16's follows its weight rounding).

        Raises:
            Exception: whatever Keras raises when the widened configuration does not rebuild (custom layers).
        """
        twin = object.__new__(KerasRunner)
        twin._keras, twin._contract = self._keras, self._contract
        twin._model = type(self._model).from_config(float64_config(self._model.get_config()))
        twin._model.set_weights([w.astype(np.float64) if w.dtype == np.float32 else w
                                 for w in self._model.get_weights()])
        twin._input_dtype = np.float64
        twin.description = f"{self.description}, float64"
        return twin

    def _forward(self, arrays: list[np.ndarray]):
        """`model(arrays, training=False)`, traced once into a TensorFlow graph and reused for every batch size.

        The gate calls the reference about a hundred times (eval batches, one-by-one probes, edge batches, the fp16
        and float64 twins); called eagerly, a deep model pays Python dispatch per layer on every call (MobileNetV2
        at batch 1: 136 ms eagerly, 4 ms traced; tracing once: 0.85 s). A model that cannot be traced runs eagerly.
        """
        model = self._model

        def call(*values):
            return model(values[0] if len(values) == 1 else list(values), training=False)

        if getattr(self, "_traced", None) is None:  # the twins are built without __init__
            import tensorflow as tf

            # one trace per model: any batch size, the item shapes and dtypes of the first call
            self._traced = tf.function(call, input_signature=[tf.TensorSpec((None, *array.shape[1:]), array.dtype)
                                                              for array in arrays])
        if not getattr(self, "_eager", False):
            try:
                return self._traced(*arrays)
            except Exception:  # noqa: BLE001 - untraceable Python in a custom layer: the eager call still answers
                self._eager = True
        return call(*arrays)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        widen = getattr(self, "_input_dtype", None)
        arrays = [np.asarray(inputs[spec.name], dtype=widen if widen and np.dtype(spec.dtype) == np.float32
                             else spec.dtype) for spec in self._contract.input_specs()]
        outputs = self._forward(arrays)
        names = self._contract.output_names
        if isinstance(outputs, Mapping):
            outputs = [outputs[name] for name in names] if set(names) <= set(outputs) else list(outputs.values())
        elif not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return {name: self._keras.ops.convert_to_numpy(value) for name, value in zip(names, outputs, strict=True)}


def float64_config(config):
    """A Keras model config with every float32 dtype (a policy name or a DTypePolicy entry) made float64."""
    if isinstance(config, list):
        return [float64_config(value) for value in config]
    if not isinstance(config, dict):
        return config
    widened = {}
    for key, value in config.items():
        policy = value.get("config", {}).get("name") if isinstance(value, dict) else value
        widened[key] = "float64" if key == "dtype" and policy == "float32" else float64_config(value)
    return widened


class SavedModelRunner:
    """A TF SavedModel's `serving_default` signature: named tensors in, a dict keyed by output name out."""

    def __init__(self, path: Path, contract: ModelContract):
        import tensorflow as tf

        try:
            self._signature = tf.saved_model.load(str(path)).signatures[SIGNATURE]
        except Exception as error:  # noqa: BLE001
            raise ConversionError(f"TensorFlow cannot load the SavedModel {path}: {error}") from error
        self._tf, self._contract = tf, contract
        self.description = f"tensorflow {tf.__version__} (SavedModel {SIGNATURE})"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {spec.name: self._tf.constant(np.asarray(inputs[spec.name], dtype=spec.dtype))
                for spec in self._contract.input_specs()}
        return {name: value.numpy() for name, value in self._signature(**feed).items()}


def open_candidate(run_dir: Path, artifact: Artifact, contract: ModelContract,
                   settings: RuntimeSettings | None = None):
    """A runner for the SavedModel (TensorFlow) or an ONNX/TFLite artifact (onnxruntime / LiteRT).

    Raises:
        ConversionError: the runtime cannot load the file.
    """
    path = artifact.resolve(run_dir)
    if artifact.format in RUNTIME_FORMATS:
        return open_runtime(path, artifact.format, settings or GATE_SETTINGS)
    return SavedModelRunner(path, contract)


@dataclass
class Outputs:
    """Named outputs on the eval inputs and, per edge batch size, on the first edge examples."""

    eval: dict[str, np.ndarray]
    edge: dict[int, dict[str, np.ndarray]]


def run_batched(runner, inputs: Mapping[str, np.ndarray], batch: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Run `inputs` in batches of `batch` and concatenate each output."""
    total = len(next(iter(inputs.values())))
    parts = [runner.run({name: array[start:start + batch] for name, array in inputs.items()})
             for start in range(0, total, batch)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def run_everything(runner, eval_inputs: Mapping[str, np.ndarray], edge_inputs: Mapping[str, np.ndarray]) -> Outputs:
    """The eval inputs in batches of EVAL_BATCH, then the edge inputs at each of EDGE_BATCH_SIZES.

    Raises:
        ConversionError: the runtime failed at run time (message names the exception).
    """
    try:
        eval_outputs = run_batched(runner, eval_inputs)
        edge_outputs = {batch: runner.run({name: array[:batch] for name, array in edge_inputs.items()})
                        for batch in EDGE_BATCH_SIZES}
    except ConversionError:
        raise
    except Exception as error:  # noqa: BLE001 - a runtime failing at run time
        raise ConversionError(f"inference failed: {type(error).__name__}: {error}") from error
    return Outputs(eval_outputs, edge_outputs)


@dataclass
class Reference:
    """The reference's outputs, its own batch-order noise per output and a description for the report."""

    outputs: Outputs
    noise: dict[str, dict]
    info: ReferenceInfo


def measure_reference(runner, artifact: Artifact, contract: ModelContract, eval_inputs: Mapping[str, np.ndarray],
                      edge_inputs: Mapping[str, np.ndarray], *, fp16_noise: bool = False,
                      float32_noise: bool = False) -> Reference:
    """Run the reference on everything and measure its noise floors per output.

    The batch-order noise floor: the same inputs one at a time vs in one batch of EVAL_BATCH (another summation
    order), on the first eval examples and on the edge inputs; the fp32 bound scales with it. With `fp16_noise`
    (an fp16 candidate exists and the reference is a Keras model), also the fp16 weight-rounding noise: the
    reference vs its `fp16_weight_twin` on every eval and edge input; the fp16 bound scales with it (README,
    "Parity"). With `float32_noise` (an fp32 candidate's tolerance follows it; a Keras reference), also the
    reference's own float32 error: the reference vs its `float64_twin` on every eval and edge input.
    """
    try:
        outputs = run_everything(runner, eval_inputs, edge_inputs)
    except ConversionError as error:
        raise ConversionError(f"the reference ({artifact.name}) failed: {error}") from error
    probe = {name: array[:EVAL_BATCH] for name, array in eval_inputs.items()}
    probe_count = len(next(iter(probe.values())))
    one_by_one = run_batched(runner, probe, batch=1)
    widest = max(EDGE_BATCH_SIZES)
    edge_one_by_one = run_batched(runner, {name: array[:widest] for name, array in edge_inputs.items()}, batch=1)
    noise = {}
    for name in contract.output_names:
        floor = error_statistics(outputs.eval[name][:probe_count], one_by_one[name])
        edge_floor = error_statistics(outputs.edge[widest][name], edge_one_by_one[name])
        noise[name] = {**floor, "edge_max_abs_diff": edge_floor["max_abs_diff"]}
    if fp16_noise and hasattr(runner, "fp16_weight_twin"):
        twin = run_everything(runner.fp16_weight_twin(), eval_inputs, edge_inputs)
        for name in contract.output_names:
            noise[name]["fp16_max_abs_diff"] = error_statistics(outputs.eval[name], twin.eval[name])["max_abs_diff"]
            noise[name]["fp16_edge_max_abs_diff"] = max(
                error_statistics(outputs.edge[b][name], twin.edge[b][name])["max_abs_diff"] for b in EDGE_BATCH_SIZES)
    float32_error = _float32_error(runner, outputs, contract, eval_inputs, edge_inputs) if float32_noise else None
    for name, stats in (float32_error or {}).items():
        noise[name].update(stats)
    floor = NoiseFloor(f"reference batch 1 vs batch {EVAL_BATCH} on the same inputs", probe_count,
                       max_abs_diff=max(stats["max_abs_diff"] for stats in noise.values()),
                       edge_max_abs_diff=max(stats["edge_max_abs_diff"] for stats in noise.values()), outputs=noise)
    info = ReferenceInfo(artifact.name, runner.description, artifact.path, floor)
    if float32_noise:
        info.float32_error = ({"what": "reference in float32 vs the same model in float64 on the same inputs"}
                              if float32_error else {"what": "not measured (no Keras reference, or its float64 "
                                                             "twin does not build); the fp32 bound uses the "
                                                             "batch-order noise"})
    return Reference(outputs, noise, info)


def _float32_error(runner, outputs: Outputs, contract: ModelContract, eval_inputs: Mapping[str, np.ndarray],
                   edge_inputs: Mapping[str, np.ndarray]) -> dict[str, dict] | None:
    """Per output, the reference's max |float32 - float64| on the eval and edge inputs; None when unmeasurable."""
    if not hasattr(runner, "float64_twin"):
        return None
    try:
        twin = run_everything(runner.float64_twin(), eval_inputs, edge_inputs)
    except Exception:  # noqa: BLE001 - a model whose config does not rebuild in float64: no measurement, say so
        return None
    return {name: {"float32_max_abs_diff": error_statistics(outputs.eval[name], twin.eval[name])["max_abs_diff"],
                   "float32_edge_max_abs_diff": max(
                       error_statistics(outputs.edge[b][name], twin.edge[b][name])["max_abs_diff"]
                       for b in EDGE_BATCH_SIZES)}
            for name in contract.output_names}


class CandidateOutputs:
    """Each candidate's runs that do not depend on the reference (its outputs under the default settings, its
    settings sweep, the fp16 bound's rounded graph), computed once for whichever asks first.

    The fp16 candidate's bound runs the tflite-fp32 graph as it is (`fp16_error.py`), which is the tflite-fp32
    candidate's own run: the checks run side by side, so the first to ask computes it and the other waits for it.
    A prefetch thread (`prefetch`) computes them while the reference loads.
    """

    def __init__(self, run_dir: Path, contract: ModelContract, eval_inputs: Mapping[str, np.ndarray],
                 edge_inputs: Mapping[str, np.ndarray]):
        self.run_dir, self.contract = run_dir, contract
        self.eval_inputs, self.edge_inputs = eval_inputs, edge_inputs
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._results: dict[str, object] = {}
        self._spent: dict[str, float] = {}
        self._local = threading.local()

    def get(self, artifact: Artifact) -> Outputs:
        """The artifact's outputs on every eval and edge input: its first load in an isolated child (an abort
        costs this candidate, not the report), then the run here.

        Raises:
            ConversionError: it would not load or run (raised to every caller).
        """
        return self.once(artifact.name, lambda: self._compute(artifact))

    def once(self, key: str, compute: Callable[[], T]) -> T:
        """`compute()` the first time `key` is asked for (callers asking meanwhile wait for it), then its result.

        Raises:
            ConversionError: what `compute` raised, to every caller.
        """
        local = self._local
        enclosing = getattr(local, "inside", 0.0)
        local.inside, entered = 0.0, time.perf_counter()
        try:
            with self._lock:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                if key not in self._results:
                    try:
                        self._results[key] = compute()
                    except ConversionError as error:
                        self._results[key] = error
                    # its own seconds: not those of the runs it asked for (they count under their own keys)
                    self._spent[key] = time.perf_counter() - entered - local.inside
        finally:
            local.inside = enclosing + time.perf_counter() - entered
        result = self._results[key]
        if isinstance(result, ConversionError):
            raise result
        return result

    def start_timing(self) -> float:
        """Start timing a check on this thread; returns the start for `own_seconds`."""
        self._local.inside = 0.0
        return time.perf_counter()

    def own_seconds(self, started: float) -> float:
        """Seconds since `start_timing` that this thread spent outside `once` (judging, not computing or waiting)."""
        return time.perf_counter() - started - getattr(self._local, "inside", 0.0)

    def spent(self, *keys: str) -> float:
        """Seconds the computations of `keys` took, whichever thread ran them (0 for one not computed)."""
        return sum(self._spent.get(key, 0.0) for key in keys)

    def prefetch(self, jobs: list[Callable[[], object]]) -> threading.Thread:
        """Run `jobs` (calls of `get`/`once`) one after another on a background thread, so their results are
        ready when the checks ask; a job that fails is left for its check to run again and report."""
        def run_all():
            for job in jobs:
                with contextlib.suppress(Exception):
                    job()

        thread = threading.Thread(target=run_all, name="parity-prefetch", daemon=True)
        thread.start()
        return thread

    def _compute(self, artifact: Artifact) -> Outputs:
        if artifact.format in RUNTIME_FORMATS:
            first_load(artifact.resolve(self.run_dir), artifact.format, artifact.runtime, artifact.name,
                       self.eval_inputs)
        return run_everything(open_candidate(self.run_dir, artifact, self.contract), self.eval_inputs,
                              self.edge_inputs)

    def under(self, artifact: Artifact, settings: RuntimeSettings) -> Outputs:
        """The artifact's outputs on every eval and edge input under other runtime settings (after its first
        load), computed once.

        Raises:
            ConversionError: it would not load or run.
        """
        def compute() -> Outputs:
            self.get(artifact)
            return run_everything(open_candidate(self.run_dir, artifact, self.contract, settings), self.eval_inputs,
                                  self.edge_inputs)

        return self.once(self.under_key(artifact, settings), compute)

    @staticmethod
    def under_key(artifact: Artifact, settings: RuntimeSettings) -> str:
        """The key of `under(artifact, settings)` (for `spent`)."""
        return f"{artifact.name} with {settings}"

    def path(self, artifact: Artifact) -> Path:
        """The artifact's file in the bundle."""
        return artifact.resolve(self.run_dir)
