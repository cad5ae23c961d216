"""TensorFlow-free runtimes for the deployed artifacts: onnxruntime for ONNX, LiteRT for TFLite.

Shared by the parity stage (which also sweeps their settings) and the serving stage. Each runtime takes raw
float32 NHWC pixels of any batch size and returns float32 outputs; int8 input/output tensors are quantized and
dequantized with the parameters stored in the model. onnxruntime and ai_edge_litert are imported only when a
runtime is opened.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError, UsageError

ORT_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


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
        options.log_severity_level = 3
        if not settings.memory_pattern:
            options.enable_mem_pattern = False
        if not settings.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
            raise ConversionError(f"onnxruntime cannot load {path}: {error}") from error
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        # onnxruntime's run is thread-safe and releases the GIL.
        return self._session.run([self._output], {self._input: np.ascontiguousarray(images, dtype=np.float32)})[0]


class LiteRtRuntime:
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
        # An interpreter must never be invoked from two threads at once.
        self._lock = threading.Lock()
        self._batch = None

    def run(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            interpreter = self._interpreter
            detail = interpreter.get_input_details()[0]
            if self._batch != len(images):
                interpreter.resize_tensor_input(detail["index"], [len(images), *detail["shape"][1:]])
                interpreter.allocate_tensors()
                self._batch = len(images)
                detail = interpreter.get_input_details()[0]
            value = np.ascontiguousarray(images, dtype=np.float32)
            if detail["dtype"] != np.float32:
                scale, zero_point = detail["quantization"]
                limits = np.iinfo(detail["dtype"])
                value = np.clip(np.round(value / scale + zero_point), limits.min, limits.max).astype(detail["dtype"])
            interpreter.set_tensor(detail["index"], value)
            interpreter.invoke()
            output = interpreter.get_output_details()[0]
            result = interpreter.get_tensor(output["index"])
            if output["dtype"] != np.float32:
                scale, zero_point = output["quantization"]
                result = (result.astype(np.float32) - zero_point) * scale
            return result.copy()


def open_runtime(path: str | Path, artifact_format: str, settings: RuntimeSettings = RuntimeSettings()):
    """Open an ONNX or TFLite artifact in its runtime."""
    path = Path(path)
    if artifact_format == "onnx":
        return OnnxRuntime(path, settings)
    if artifact_format == "tflite":
        return LiteRtRuntime(path, settings)
    raise UsageError(f"no TensorFlow-free runtime for format {artifact_format!r} ({path.name}); expected onnx or "
                     f"tflite")
