"""A candidate's first load and first run, in an isolated child: a runtime that aborts costs that candidate only.

onnxruntime, LiteRT and TFLite Micro are C++ underneath; on a model they mishandle they can `abort()` instead of
raising, which would end `kerasport parity` with no report at all. Before parity loads a candidate in its own
process (where it runs every eval and edge input), the same runtime loads the same file in a child of
kerasport.isolation and runs its first eval example. A crash there becomes the candidate's `loads_and_runs`
failure (verdict `error`: `onnxruntime first load of onnx-fp32 crashed (SIGABRT)`), and parity goes on with the
other candidates. The child costs a fork and one inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kerasport.devices import invoke_zeros, measure_arena, open_tflm
from kerasport.isolation import run_isolated
from kerasport.runtimes import RuntimeSettings, open_runtime


def load_and_run_once(path: str, runtime_format: str, inputs: Mapping[str, np.ndarray]) -> list[str]:
    """Inside the child: open the runtime on `path` and run `inputs` once; the output names it answered."""
    return sorted(open_runtime(Path(path), runtime_format, RuntimeSettings()).run(inputs))


def first_load(path: Path, runtime_format: str, runtime: str, name: str, inputs: Mapping[str, np.ndarray]) -> None:
    """Load `path` in `runtime` and run the first example of `inputs`, in an isolated child.

    Args:
        path: the candidate's file.
        runtime_format: "onnx" or "tflite" (kerasport.runtimes).
        runtime: the runtime's name, for the message.
        name: the candidate's name, for the message.
        inputs: the eval inputs (only the first example travels to the child).

    Raises:
        ConversionError: the runtime could not load or run it (its own message).
        StepCrashed: the runtime crashed (a signal) or ran past the step's time limit.
    """
    first = {key: np.asarray(value)[:1] for key, value in inputs.items()}
    run_isolated(f"{runtime} first load of {name}", load_and_run_once, str(path), runtime_format, first)


def tflm_load_and_run_once(model: bytes, inputs: int) -> bool:
    """Inside the child: TFLite Micro prepares `model` and runs one inference on zeros."""
    invoke_zeros(open_tflm(model), inputs)
    return True


def tflm_first_load(model: bytes, inputs: int, name: str) -> None:
    """TFLite Micro's first load and inference of the C array's model, in an isolated child.

    Raises:
        ConversionError: TFLite Micro cannot prepare or run the model. StepCrashed: it aborted.
    """
    run_isolated(f"TFLite Micro first load of {name}", tflm_load_and_run_once, model, inputs)


def tflm_arena(model: bytes, inputs: int, name: str) -> dict:
    """kerasport.devices.measure_arena (TFLite Micro's first load, inference and arena search), in a child.

    Raises:
        ConversionError: TFLite Micro cannot prepare or run the model. StepCrashed: it aborted.
    """
    return run_isolated(f"TFLite Micro first load of {name}", measure_arena, model, inputs)
