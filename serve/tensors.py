"""Request values -> the model's input arrays, checked against the contract; shared by every protocol.

JSON numbers and binary buffers become numpy arrays in the datatype the client declared (V2) or the input's own
dtype (TF Serving), are reshaped from the legacy image layouts clients already send, and then pass the core's one
check, `InputSpec.check_values` (shape, finite values, value range, integer values for integer inputs), which also
casts to the input's dtype. Every error names the offending input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from kerasport.contract import DTYPE_OF_V2, InputSpec, ModelContract, OutputSpec
from kerasport.errors import UsageError

from .errors import BadRequest

# numpy dtype name -> TensorFlow DataType (TF Serving metadata)
TF_DATATYPES = {"bool": "DT_BOOL", "uint8": "DT_UINT8", "int8": "DT_INT8", "int16": "DT_INT16",
                "int32": "DT_INT32", "int64": "DT_INT64", "float16": "DT_HALF", "float32": "DT_FLOAT",
                "float64": "DT_DOUBLE"}


def accepted_datatypes(spec: InputSpec) -> tuple[str, ...]:
    """V2 datatypes an input takes: its own, and for a float input any numeric type (e.g. UINT8 pixels)."""
    kind = np.dtype(spec.dtype).kind
    if kind == "f":
        others = [d for d, name in DTYPE_OF_V2.items() if np.dtype(name).kind in "iuf"]
    elif kind in "iu":
        others = [d for d, name in DTYPE_OF_V2.items() if np.dtype(name).kind in "iu"]
    else:
        others = []
    return (spec.v2_datatype, *sorted(set(others) - {spec.v2_datatype}))


def check_datatype(spec: InputSpec, datatype: object, where: str) -> np.dtype:
    """The numpy dtype of a V2 datatype this input accepts.

    Raises:
        BadRequest: an unknown datatype, or one the input does not take.
    """
    accepted = accepted_datatypes(spec)
    if datatype not in accepted:
        raise BadRequest(f"{where}: datatype {datatype!r} is not supported; input {spec.name!r} takes "
                         f"{', '.join(accepted)}")
    return np.dtype(DTYPE_OF_V2[datatype])


def array_from_json(data: object, dtype: np.dtype, where: str) -> np.ndarray:
    """A (nested) JSON list -> an array of `dtype`; integers must be integers within the dtype's range.

    Raises:
        BadRequest: not a list, ragged, non-numbers, non-integers for an integer type, out of the type's range.
    """
    if not isinstance(data, list):
        raise BadRequest(f"{where}: 'data' is {type(data).__name__}; expected a flat or nested list of values")
    try:
        array = np.asarray(data, dtype=np.float64) if dtype.kind == "f" else np.asarray(data)
    except (ValueError, TypeError) as error:
        raise BadRequest(f"{where}: data is not a (nested) list of numbers of equal length ({error})") from None
    if array.dtype == object:
        raise BadRequest(f"{where}: data is ragged or mixed; expected equally long rows of numbers")
    if dtype.kind == "b":
        if array.size and array.dtype.kind != "b":
            raise BadRequest(f"{where}: data holds {array.dtype.name} values; BOOL data must be true/false")
        return array.astype(np.bool_)
    if dtype.kind in "iu":
        if array.size and array.dtype.kind not in "iu":
            raise BadRequest(f"{where}: data holds {_kind_text(array)}; {dtype.name} data must be integers")
        return cast_checked(array, dtype, where)
    return array


def array_from_binary(buffer: memoryview | bytes, dtype: np.dtype, shape: list[int], where: str) -> np.ndarray:
    """Little-endian raw tensor bytes (the V2 binary tensor data extension) -> an array of `shape`."""
    expected = math.prod(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise BadRequest(f"{where}: binary_data_size {len(buffer)} for shape {shape} "
                         f"{np.dtype(dtype).name}; expected {expected} bytes")
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)


def cast_checked(array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """`array` as integer `dtype`, refusing values outside the type's range (no silent wrap-around)."""
    if array.size and array.dtype.kind in "iuf":
        limits = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < limits.min or high > limits.max:
            raise BadRequest(f"{where}: values span {low}..{high}; {dtype.name} holds {limits.min}..{limits.max}")
    return array.astype(dtype, copy=False)


def _kind_text(array: np.ndarray) -> str:
    return {"f": "non-integer numbers", "b": "true/false values"}.get(array.dtype.kind, f"{array.dtype} values")


# Larger dimensions (and more of them) than any array numpy can hold are refused outright.
MAX_DIMENSION = 2**31 - 1
MAX_RANK = 32


def check_shape(shape: object, where: str) -> list[int]:
    """A client-declared tensor shape (V2 `shape`): a list of non-negative integers numpy can hold."""
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIMENSION for d in shape)):
        text = repr(shape)
        text = text if len(text) <= 80 else text[:80] + "..."
        raise BadRequest(f"{where}: shape {text}; expected a list of at most {MAX_RANK} integers in "
                         f"0..{MAX_DIMENSION}")
    return shape


def reshape(array: np.ndarray, shape: list[int], where: str) -> np.ndarray:
    """Data to the shape the client declared."""
    expected = math.prod(shape)
    if array.size != expected:
        raise BadRequest(f"{where}: data holds {array.size} values but shape {shape} needs {expected}")
    return array.reshape(shape)


def legacy_image_shapes(spec: InputSpec) -> list[tuple[int, ...]]:
    """Per-example shapes an image input also takes: [H, W] for grayscale and flat [H*W*C]."""
    if spec.image is None:
        return []
    height, width, channels = spec.item_shape
    shapes = [(height, width)] if channels == 1 else []
    return [*shapes, (height * width * channels,)]


def to_input(spec: InputSpec, array: np.ndarray, where: str) -> np.ndarray:
    """A batch for `spec`: legacy image layouts reshaped, then the core's check (shape, finite, range, dtype).

    Raises:
        BadRequest: naming `where` (the offending input), what was received and what the input expects.
    """
    legacy = legacy_image_shapes(spec)
    if array.ndim >= 1 and array.shape[1:] in legacy:
        array = array.reshape(len(array), *spec.item_shape)
    elif legacy and (array.ndim != len(spec.shape) or not spec.accepts_item_shape(array.shape[1:])):
        shapes = [_shape_text(shape) for shape in (spec.item_shape, *legacy)]
        raise BadRequest(f"{where}: shape {list(array.shape)}; input {spec.name!r} expects {', '.join(shapes[:-1])} "
                         f"or {shapes[-1]}")
    try:
        return spec.check_values(array, where)
    except UsageError as error:
        raise BadRequest(str(error)) from None


# Value ranges a decoded picture (raw 0..255 pixels) maps onto linearly: raw pixels, x/255, x/127.5 - 1.
PICTURE_RANGES = ((0.0, 255.0), (0.0, 1.0), (-1.0, 1.0))


def pictures_to_input(spec: InputSpec, pixels: np.ndarray, where: str) -> np.ndarray:
    """Decoded pictures (float32 [n, H, W, C] in 0..255) as a batch for an image input, scaled to its value range.

    Raises:
        UsageError: the input's range is not one a picture maps onto (send tensors instead).
    """
    low, high = spec.value_range or PICTURE_RANGES[0]
    if (low, high) not in PICTURE_RANGES:
        raise UsageError(f"{where}: input {spec.name!r} takes values in {low:g}..{high:g}, which pictures (0..255 "
                         f"pixels) do not map onto; send tensors (V2 infer, :predict, --inputs npz:FILE) instead")
    if (low, high) != PICTURE_RANGES[0]:
        pixels = low + pixels * np.float32((high - low) / 255.0)
    return spec.check_values(pixels, where)


def _shape_text(item_shape: tuple[int, ...]) -> str:
    return "[batch, " + ", ".join(str(d) for d in item_shape) + "]"


def check_names(given: Mapping[str, object], contract: ModelContract, where: str) -> None:
    """Exactly the contract's inputs, by name.

    Raises:
        BadRequest: naming the first unknown or missing input.
    """
    unknown = [name for name in given if name not in contract.input_names]
    if unknown:
        raise BadRequest(f"{where}: unknown input {unknown[0]!r}; this model's inputs are {contract.input_names}")
    missing = [name for name in contract.input_names if name not in given]
    if missing:
        raise BadRequest(f"{where}: missing input {missing[0]!r}; this model's inputs are {contract.input_names}")


def check_batch(inputs: Mapping[str, np.ndarray]) -> None:
    """Every input holds the same number of examples, at least one.

    Raises:
        BadRequest: batch sizes that differ, or an empty batch.
    """
    sizes = {name: len(array) for name, array in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise BadRequest(f"inputs have batch sizes {sizes}; expected the same number of examples for every input")
    if sizes and not any(sizes.values()):
        raise BadRequest("the batch holds 0 examples; expected at least one")


def top_k(row: np.ndarray, spec: OutputSpec, k: int) -> list[dict]:
    """The k best classes of one example's classification output, with their labels."""
    score = "probability" if spec.kind == "probabilities" else "score"
    order = np.argsort(-row, kind="stable")[:k]
    return [{"label": spec.label(int(i)), "index": int(i), score: float(row[i])} for i in order]
