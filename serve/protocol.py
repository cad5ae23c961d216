"""Request parsing for the KServe V2 (Open Inference Protocol) and TF Serving REST formats.

Every malformed request raises `BadRequest` with a precise message; the app turns it into a 400.
"""

from __future__ import annotations

import math

import numpy as np

from kerasport.errors import UsageError

PIXELS = 28 * 28
# Shapes (after the batch dimension) a client may use for the [batch, 28, 28, 1] image tensor.
ACCEPTED_TRAILING_SHAPES = ((28, 28, 1), (28, 28), (PIXELS,))
V2_DATATYPES = {"FP32": np.float32, "UINT8": np.uint8}


class BadRequest(UsageError):
    """A client error: answered with HTTP 400 and {"error": message}."""


def _images_from(data, shape: list[int] | None, where: str) -> np.ndarray:
    """Nested or flat numbers -> float32 [n, 28, 28, 1], validated."""
    try:
        array = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise BadRequest(f"{where}: data is not a (nested) list of numbers ({error})") from None
    if array.dtype == object:
        raise BadRequest(f"{where}: data is ragged; expected equally long rows")
    if shape is not None:
        expected = math.prod(shape)
        if array.size != expected:
            raise BadRequest(f"{where}: data holds {array.size} values but shape {shape} needs {expected}")
        array = array.reshape(shape)
    if array.ndim >= 1 and array.shape[1:] in ACCEPTED_TRAILING_SHAPES and array.shape[0] >= 1:
        images = array.reshape(array.shape[0], 28, 28, 1)
    elif array.shape in ACCEPTED_TRAILING_SHAPES:  # one image without a batch dimension
        images = array.reshape(1, 28, 28, 1)
    else:
        raise BadRequest(f"{where}: shape {list(array.shape)}; expected [batch, 28, 28, 1], [batch, 28, 28] or "
                         f"[batch, 784] raw pixels")
    if not np.isfinite(images).all():
        raise BadRequest(f"{where}: NaN or Inf in the data; expected finite pixel values 0..255")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise BadRequest(f"{where}: values span {low:g}..{high:g}; expected raw pixels in 0..255")
    return images.astype(np.float32)


def parse_v2_infer(body, input_name: str, output_name: str, binary: bytes = b"") -> tuple[np.ndarray, dict]:
    """A V2 inference request -> images and the response context (id, binary output wanted).

    `binary` is what followed the JSON header under the binary tensor data extension
    (`Inference-Header-Content-Length`); an input then carries `parameters.binary_data_size` instead of `data`.
    """
    if not isinstance(body, dict):
        raise BadRequest(f"request body is {type(body).__name__}; expected a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        received = f"{len(inputs)} items" if isinstance(inputs, list) else type(inputs).__name__
        raise BadRequest(f"'inputs' must be a list with exactly one tensor object named {input_name!r}; "
                         f"received {received}")
    tensor = inputs[0]
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"input 'parameters' is {type(parameters).__name__}; expected an object")
    binary_size = parameters.get("binary_data_size")
    for key in ("name", "shape", "datatype") + (() if binary_size is not None else ("data",)):
        if key not in tensor:
            raise BadRequest(f"input tensor is missing '{key}'; expected name, shape, datatype and data "
                             f"(or parameters.binary_data_size with a binary body)")
    if tensor["name"] != input_name:
        raise BadRequest(f"input tensor is named {tensor['name']!r}; this model's input is {input_name!r}")
    datatype = tensor["datatype"]
    if datatype not in V2_DATATYPES:
        raise BadRequest(f"datatype {datatype!r} is not supported; expected FP32 or UINT8")
    shape = tensor["shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise BadRequest(f"shape {shape!r}; expected a list of positive integers such as [1, 28, 28, 1]")
    if binary_size is not None:
        images = _images_from_binary(binary, binary_size, shape, datatype, input_name)
        return images, _response_context(body, output_name)
    data = tensor["data"]
    if not isinstance(data, list):
        raise BadRequest(f"'data' is {type(data).__name__}; expected a flat or nested list of numbers")
    if datatype == "UINT8":
        flat = np.asarray(data, dtype=object).ravel() if data else np.asarray([])
        if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 255 for v in flat):
            raise BadRequest("UINT8 data must be integers in 0..255")
    images = _images_from(data, shape, f"input {input_name!r}")
    return images, _response_context(body, output_name)


def _images_from_binary(binary: bytes, size, shape: list[int], datatype: str, input_name: str) -> np.ndarray:
    dtype = np.dtype("<f4") if datatype == "FP32" else np.dtype(np.uint8)
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(size, int) or size != expected:
        raise BadRequest(f"binary_data_size {size!r} for shape {shape} {datatype}; expected {expected} bytes")
    if len(binary) != size:
        raise BadRequest(f"the binary part of the body holds {len(binary)} bytes; binary_data_size says {size}")
    return _images_from(np.frombuffer(binary, dtype=dtype), shape, f"input {input_name!r}")


def _response_context(body: dict, output_name: str) -> dict:
    binary_output = bool((body.get("parameters") or {}).get("binary_data_output", False))
    requested = body.get("outputs")
    if requested is not None:
        if not isinstance(requested, list) or not all(isinstance(o, dict) and "name" in o for o in requested):
            raise BadRequest("'outputs' must be a list of objects with a 'name'")
        unknown = [o["name"] for o in requested if o["name"] != output_name]
        if unknown:
            raise BadRequest(f"unknown output(s) {unknown}; this model has {output_name!r}")
        binary_output = binary_output or any((o.get("parameters") or {}).get("binary_data", False)
                                             for o in requested)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' is {type(request_id).__name__}; expected a string")
    return {"id": request_id, "binary_output": binary_output}


def parse_tfs_predict(body, input_name: str) -> tuple[np.ndarray, str]:
    """A TF Serving :predict request -> images and the response format ('row' or 'columnar')."""
    if not isinstance(body, dict):
        raise BadRequest(f"request body is {type(body).__name__}; expected a JSON object with 'instances' or "
                         f"'inputs'")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest("the request needs exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list of images")
        rows = []
        for index, instance in enumerate(instances):
            if isinstance(instance, dict):
                if input_name not in instance:
                    raise BadRequest(f"instance {index} has keys {sorted(instance)}; expected {input_name!r}")
                instance = instance[input_name]
            rows.append(_images_from(instance, None, f"instance {index}"))
        return np.concatenate(rows), "row"
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        if input_name not in inputs:
            raise BadRequest(f"'inputs' has keys {sorted(inputs)}; expected {input_name!r}")
        inputs = inputs[input_name]
    return _images_from(inputs, None, "'inputs'"), "columnar"
