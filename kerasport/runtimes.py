"""TensorFlow-free runtimes for the deployed artifacts: onnxruntime for ONNX, LiteRT for TFLite.

Shared by the export stage (smoke runs), the parity stage (which also sweeps their settings) and the serving stage.
Each runtime takes a dict of named input arrays of any batch size and returns a dict of named outputs, keyed by the
names in the model contract. Inputs are cast to the dtype the artifact declares; int8-quantized input/output
tensors are quantized and dequantized with the parameters stored in the model, so callers always see the
contract's dtypes. onnxruntime and ai_edge_litert are imported only when a runtime is opened.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError, UsageError

ORT_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
TFLITE_SIGNATURE = "serving_default"
# onnxruntime's type strings -> numpy
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class RuntimeSettings:
    threads: int = 0  # 0: the runtime's default
    ort_optimization: str = "all"
    xnnpack: bool = True
    # onnxruntime's worker threads spin while idle by default: fastest for one caller, but in a server they burn
    # the cores the event loop needs (bench/serve.py measures both).
    spinning: bool = True
    # Memory patterns cache one activation plan per input shape; with a dynamic batch that is mostly memory.
    memory_pattern: bool = True

    def describe(self, runtime: str) -> str:
        threads = self.threads or "default"
        if runtime == "onnxruntime":
            return f"optimization={self.ort_optimization}, threads={threads}"
        return f"xnnpack={'on' if self.xnnpack else 'off'}, threads={threads}"


def default_intra_op_threads() -> int:
    """onnxruntime's default intra-op thread count (one per physical core), counted among the cores this process
    may run on (its CPU affinity); 0 (the runtime's own default) where the affinity cannot be read."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return 0
    physical = set()
    for cpu in allowed:  # hyper-threads of one core share a sibling list
        try:
            physical.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            physical.add(str(cpu))
    return max(1, len(physical))


def _check_names(given: Mapping[str, np.ndarray], expected: list[str], artifact: str) -> None:
    if set(given) != set(expected):
        raise UsageError(f"{artifact}: inputs {sorted(given)}; expected exactly {sorted(expected)}")


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path: Path, settings: RuntimeSettings = RuntimeSettings()):
        import onnxruntime as ort

        if settings.ort_optimization not in ORT_OPTIMIZATION_LEVELS:
            raise UsageError(f"ORT optimization level {settings.ort_optimization!r}; expected one of "
                             f"{', '.join(ORT_OPTIMIZATION_LEVELS)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[settings.ort_optimization]
        if settings.threads:
            options.intra_op_num_threads = settings.threads
            options.inter_op_num_threads = 1
        else:
            # onnxruntime's own default pins its pool threads to cores of its choosing, outside a taskset or a
            # container's CPU set: measured here, a pool thread on core 1 of a server confined to core 0. Its
            # default thread count, counted within this process's cores and set explicitly, leaves them unpinned.
            options.intra_op_num_threads = default_intra_op_threads()
        options.log_severity_level = 3
        if not settings.memory_pattern:
            options.enable_mem_pattern = False
        if not settings.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
            raise ConversionError(f"onnxruntime cannot load {path}: {error}") from error
        self._path = path
        self._input_dtypes = {i.name: ORT_DTYPES.get(i.type, np.float32) for i in self._session.get_inputs()}
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_names(inputs, self.input_names, self._path.name)
        feed = {name: np.ascontiguousarray(value, dtype=self._input_dtypes[name]) for name, value in inputs.items()}
        # onnxruntime's run is thread-safe and releases the GIL.
        return dict(zip(self.output_names, self._session.run(self.output_names, feed), strict=True))


class LiteRtRuntime:
    """A TFLite model run through its `serving_default` signature's tensors, with cached allocations per shape.

    The signature maps the contract's names to tensor indices; driving the interpreter directly (instead of the
    SignatureRunner, which re-allocates on every call) keeps a steady-shape serving loop allocation-free.
    """

    name = "ai-edge-litert"

    def __init__(self, path: Path, settings: RuntimeSettings = RuntimeSettings()):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.AUTO if settings.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=settings.threads or None,
                                            experimental_op_resolver_type=resolver)
            self._interpreter.allocate_tensors()
        except Exception as error:  # noqa: BLE001
            raise ConversionError(f"LiteRT cannot load {path}: {error}") from error
        self._path = path
        self._inputs, self._outputs = self._signature_tensors()
        self.input_names, self.output_names = list(self._inputs), list(self._outputs)
        # An artifact converted with a fixed batch of 1 (export's TFLite ladder) takes one row at a time.
        self.fixed_batch = 1 if self._inputs and all(
            int(detail["shape_signature"][0]) == 1 for detail in self._inputs.values()
            if len(detail["shape_signature"])) else None
        # An interpreter must never be invoked from two threads at once.
        self._lock = threading.Lock()
        self._shapes: dict[str, tuple[int, ...]] = {}

    def _signature_tensors(self) -> tuple[dict[str, dict], dict[str, dict]]:
        interpreter = self._interpreter
        if TFLITE_SIGNATURE in interpreter.get_signature_list():
            runner = interpreter.get_signature_runner(TFLITE_SIGNATURE)
            return runner.get_input_details(), runner.get_output_details()
        # A model without signatures (not one kerasport writes): tensor names stand in for contract names.
        return ({d["name"]: d for d in interpreter.get_input_details()},
                {d["name"]: d for d in interpreter.get_output_details()})

    def input_details(self) -> dict[str, dict]:
        return dict(self._inputs)

    def output_details(self) -> dict[str, dict]:
        return dict(self._outputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_names(inputs, self.input_names, self._path.name)
        batch = {len(value) for value in inputs.values() if np.ndim(value)}
        if self.fixed_batch and batch and max(batch) != self.fixed_batch:
            # A batch-1 artifact: run row by row and stack the answers in order.
            rows = [self._run_once({name: value[row:row + 1] for name, value in inputs.items()})
                    for row in range(max(batch))]
            return {name: np.concatenate([answer[name] for answer in rows]) for name in self.output_names}
        return self._run_once(inputs)

    def _run_once(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = self._interpreter
        with self._lock:
            shapes = {name: tuple(np.shape(value)) for name, value in inputs.items()}
            if shapes != self._shapes:
                for name, shape in shapes.items():
                    interpreter.resize_tensor_input(self._inputs[name]["index"], list(shape))
                interpreter.allocate_tensors()
                self._shapes = shapes
            for name, value in inputs.items():
                interpreter.set_tensor(self._inputs[name]["index"], quantize_input(value, self._inputs[name]))
            interpreter.invoke()
            return {name: dequantize_output(interpreter.get_tensor(detail["index"]), detail)
                    for name, detail in self._outputs.items()}


def quantize_input(value: np.ndarray, detail: dict) -> np.ndarray:
    """A float array as a TFLite input tensor wants it: quantized with its scale/zero point, else just cast."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if scale and dtype.kind in "iu":
        limits = np.iinfo(dtype)
        quantized = np.round(np.asarray(value, dtype=np.float32) / scale + zero_point)
        return np.ascontiguousarray(np.clip(quantized, limits.min, limits.max), dtype=dtype)
    return np.ascontiguousarray(value, dtype=dtype)


def dequantize_output(value: np.ndarray, detail: dict) -> np.ndarray:
    """A TFLite output tensor as float32 when it is quantized (a copy otherwise)."""
    scale, zero_point = detail["quantization"]
    if scale and np.dtype(detail["dtype"]).kind in "iu":
        return (value.astype(np.float32) - zero_point) * scale
    return value.copy()


def open_runtime(path: str | Path, artifact_format: str, settings: RuntimeSettings = RuntimeSettings()):
    """Open an ONNX or TFLite artifact in its runtime.

    Args:
        path: the artifact file.
        artifact_format: "onnx" or "tflite" (the manifest's `format`).
        settings: threads, ORT optimization level, XNNPACK on/off.

    Returns:
        A runtime with `input_names`, `output_names` and `run(dict) -> dict`.

    Raises:
        UsageError: an unknown format. ConversionError: the runtime cannot load the file.
    """
    path = Path(path)
    if artifact_format == "onnx":
        return OnnxRuntime(path, settings)
    if artifact_format == "tflite":
        return LiteRtRuntime(path, settings)
    raise UsageError(f"no TensorFlow-free runtime for format {artifact_format!r} ({path.name}); expected onnx or "
                     f"tflite")
