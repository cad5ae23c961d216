"""Smoke-run a freshly built artifact in its own runtime: every input from the eval sample, batches 1 and 7.

It proves the file loads, takes the contract's inputs by name at a dynamic batch, and returns every contract
output with shape (batch, *item shape) and finite values. Numerical agreement with Keras is the parity stage's job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.contract import DYNAMIC, ModelContract, OutputSpec
from kerasport.errors import ConversionError
from kerasport.samples import Samples

from .messages import first_line, litert_missing_op, ort_missing_op

SMOKE_BATCHES = (1, 7)


def smoke_batch(sample: Samples, contract: ModelContract, batch: int) -> dict[str, np.ndarray]:
    """`batch` examples of every input in its contract dtype (the sample's rows repeat if it has fewer)."""
    rows = np.arange(batch) % len(sample)
    return {spec.name: np.ascontiguousarray(np.take(sample.inputs[spec.name], rows, axis=0), dtype=spec.dtype)
            for spec in contract.inputs}


def output_problem(spec: OutputSpec, value: np.ndarray, batch: int) -> str | None:
    """Why one output of a smoke run is wrong (shape or non-finite values), or None."""
    expected = (batch, *spec.shape[1:])
    if len(value.shape) != len(expected) or any(
            want not in (DYNAMIC, got) for got, want in zip(value.shape, expected, strict=True)):
        return f"output {spec.name!r} has shape {list(value.shape)}; expected {list(expected)} (-1: any)"
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        return f"output {spec.name!r} holds NaN or Inf at batch {batch}"
    return None


def smoke_run(path: Path, artifact_format: str, runtime_name: str, contract: ModelContract, sample: Samples) -> None:
    """Load `path` in its runtime and run batches 1 and 7 of the eval sample.

    Raises:
        ConversionError: one line naming the runtime and what went wrong (a missing op when the runtime says so).
    """
    from kerasport.runtimes import open_runtime

    try:
        runtime = open_runtime(path, artifact_format)
    except Exception as error:  # noqa: BLE001 - runtimes raise their own types; all mean "does not load"
        raise _failure(f"{path.name} does not load in {runtime_name}", error) from error
    if sorted(runtime.input_names) != sorted(contract.input_names) or \
            sorted(runtime.output_names) != sorted(contract.output_names):
        raise ConversionError(f"{runtime_name} sees inputs {runtime.input_names} and outputs {runtime.output_names}; "
                              f"the contract names {contract.input_names} and {contract.output_names}")
    for batch in SMOKE_BATCHES:
        try:
            outputs = runtime.run(smoke_batch(sample, contract, batch))
        except Exception as error:  # noqa: BLE001
            raise _failure(f"{path.name} does not run in {runtime_name} at batch {batch}", error) from error
        for spec in contract.outputs:
            problem = output_problem(spec, np.asarray(outputs[spec.name]), batch)
            if problem:
                raise ConversionError(f"smoke run in {runtime_name} at batch {batch}: {problem}")


def _failure(what: str, error: BaseException) -> ConversionError:
    """`what`, the op the runtime lacks when its message names one, and the runtime's own first line."""
    cause = error.__cause__ or error  # kerasport.runtimes wraps the runtime's exception; its text is the useful part
    op = ort_missing_op(cause) or litert_missing_op(cause)
    missing = f" (op {op} is not supported)" if op else ""
    return ConversionError(f"{what}{missing}: {first_line(cause)}")
