"""The model contract: what a bundle's model takes and returns, as typed records every stage reads.

A contract is a list of named inputs and a list of named outputs. An input is an `image` (NHWC pixels with a
height, width, colour mode and value range, plus how a picture is decoded to reach the model exactly as training
saw it) or a plain `tensor`. An output holds `probabilities`, `logits` or `values`, with labels where known.
Shapes use -1 for the batch and any other dynamic dimension. The contract is parsed and validated once, when a
manifest loads; no stage re-reads shapes or names from raw dictionaries. No TensorFlow import here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CheckFailed, UsageError

INPUT_KINDS = ("image", "tensor")
RANGE_ORIGINS = ("given", "inferred")
OUTPUT_KINDS = ("probabilities", "logits", "values")
CLASSIFICATION_KINDS = ("probabilities", "logits")
COLOR_MODES = {"grayscale": 1, "rgb": 3}
PIL_MODES = {"grayscale": "L", "rgb": "RGB"}
RESAMPLE_FILTERS = ("bilinear", "nearest", "bicubic", "lanczos")
# numpy dtype name -> Open Inference Protocol (KServe V2 / Triton) datatype
V2_DATATYPES = {"bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}
DTYPE_OF_V2 = {datatype: dtype for dtype, datatype in V2_DATATYPES.items()}
DYNAMIC = -1


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: shape {value!r}; expected a non-empty list of integers (-1 for dynamic)")
    if not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == DYNAMIC) for d in value):
        raise ValueError(f"{where}: shape {list(value)}; expected positive integers or -1")
    return tuple(value)


def _dtype(value: Any, where: str) -> str:
    if value not in V2_DATATYPES:
        raise ValueError(f"{where}: dtype {value!r}; expected one of {', '.join(V2_DATATYPES)}")
    return value


@dataclass(frozen=True)
class ImageSpec:
    """How a picture reaches an image input: decoded with Pillow, converted to the colour mode, resized."""

    height: int
    width: int
    color_mode: str = "grayscale"
    layout: str = "NHWC"
    resample: str = "bilinear"
    # Domain knowledge worth recording when known, e.g. "light-on-dark" for MNIST-style digits.
    foreground: str | None = None

    @property
    def channels(self) -> int:
        return COLOR_MODES[self.color_mode]

    @property
    def pil_mode(self) -> str:
        return PIL_MODES[self.color_mode]

    def to_dict(self) -> dict:
        described = {"layout": self.layout, "height": self.height, "width": self.width,
                     "channels": self.channels, "color_mode": self.color_mode, "decoder": "Pillow",
                     "resize": [self.height, self.width], "resample": self.resample}
        if self.foreground:
            described["foreground"] = self.foreground
        return described

    @classmethod
    def from_dict(cls, raw: Mapping, where: str) -> ImageSpec:
        color_mode = raw.get("color_mode", "grayscale")
        if color_mode not in COLOR_MODES:
            raise ValueError(f"{where}: color_mode {color_mode!r}; expected {' or '.join(COLOR_MODES)}")
        resample = raw.get("resample", "bilinear")
        if resample not in RESAMPLE_FILTERS:
            raise ValueError(f"{where}: resample {resample!r}; expected one of {', '.join(RESAMPLE_FILTERS)}")
        if raw.get("layout", "NHWC") != "NHWC":
            raise ValueError(f"{where}: layout {raw.get('layout')!r}; kerasport images are NHWC")
        height, width = raw.get("height"), raw.get("width")
        if not all(isinstance(d, int) and d > 0 for d in (height, width)):
            raise ValueError(f"{where}: height {height!r} and width {width!r}; expected positive integers")
        return cls(height=height, width=width, color_mode=color_mode, resample=resample,
                   foreground=raw.get("foreground"))


@dataclass(frozen=True)
class InputSpec:
    """One named model input."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str = "tensor"
    value_range: tuple[float, float] | None = None
    image: ImageSpec | None = None
    # "given": declared by training or the user, enforced on requests. "inferred": observed in the eval data of an
    # import; recorded (parity draws edge inputs from it) but a tensor value outside it is not an error.
    range_origin: str = "given"

    @property
    def enforces_range(self) -> bool:
        return self.value_range is not None and (self.kind == "image" or self.range_origin == "given")

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one example (after the batch dimension)."""
        return self.shape[1:]

    @property
    def v2_datatype(self) -> str:
        return V2_DATATYPES[self.dtype]

    def example_shape(self, batch: int, dynamic_size: int = 1) -> tuple[int, ...]:
        """A concrete shape for `batch` examples; other dynamic dimensions become `dynamic_size`."""
        return (batch, *(d if d > 0 else dynamic_size for d in self.item_shape))

    def accepts_item_shape(self, shape: Iterable[int]) -> bool:
        shape = tuple(shape)
        return len(shape) == len(self.item_shape) and all(
            want == DYNAMIC or got == want for got, want in zip(shape, self.item_shape, strict=True))

    def check_values(self, array: np.ndarray, where: str) -> np.ndarray:
        """Validate a batch for this input (shape, finite, value range) and return it in the input's dtype.

        Raises:
            UsageError: naming `where`, what was received and what this input expects.
        """
        if array.ndim != len(self.shape) or not self.accepts_item_shape(array.shape[1:]):
            raise UsageError(f"{where}: shape {list(array.shape)}; input {self.name!r} expects "
                             f"{_shape_text(self.shape)}")
        if array.shape[0] < 1:
            raise UsageError(f"{where}: an empty batch; expected at least one example for input {self.name!r}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UsageError(f"{where}: NaN or Inf in the data; input {self.name!r} expects finite values")
        if self.enforces_range and array.size:
            low, high = float(array.min()), float(array.max())
            lo, hi = self.value_range
            if low < lo or high > hi:
                raise UsageError(f"{where}: values span {low:g}..{high:g}; input {self.name!r} expects "
                                 f"{_range_text(self.value_range)}")
        target = np.dtype(self.dtype)
        if target.kind in "iub" and array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise UsageError(f"{where}: non-integer values; input {self.name!r} is {self.dtype}")
        return np.ascontiguousarray(array, dtype=target)

    def to_dict(self) -> dict:
        described: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                                     "kind": self.kind}
        if self.value_range is not None:
            described["value_range"] = list(self.value_range)
            described["value_range_origin"] = self.range_origin
        if self.image is not None:
            described["image"] = self.image.to_dict()
        return described

    @classmethod
    def from_dict(cls, raw: Mapping, where: str) -> InputSpec:
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name {name!r}; expected a non-empty string")
        where = f"{where} {name!r}"
        kind = raw.get("kind", "tensor")
        if kind not in INPUT_KINDS:
            raise ValueError(f"{where}: kind {kind!r}; expected {' or '.join(INPUT_KINDS)}")
        shape = _shape(raw.get("shape"), where)
        value_range = raw.get("value_range")
        if value_range is not None:
            if (not isinstance(value_range, (list, tuple)) or len(value_range) != 2
                    or not all(isinstance(v, (int, float)) for v in value_range) or value_range[0] > value_range[1]):
                raise ValueError(f"{where}: value_range {value_range!r}; expected [low, high]")
            value_range = (float(value_range[0]), float(value_range[1]))
        image = None
        if kind == "image":
            image = ImageSpec.from_dict(raw.get("image") or {}, where)
            if len(shape) != 4 or shape[1:] != (image.height, image.width, image.channels):
                raise ValueError(f"{where}: an image input of shape {list(shape)} does not match its "
                                 f"{image.height}x{image.width} {image.color_mode} image spec")
        origin = raw.get("value_range_origin", "given")
        if origin not in RANGE_ORIGINS:
            raise ValueError(f"{where}: value_range_origin {origin!r}; expected {' or '.join(RANGE_ORIGINS)}")
        return cls(name=name, dtype=_dtype(raw.get("dtype"), where), shape=shape, kind=kind,
                   value_range=value_range, image=image, range_origin=origin)


@dataclass(frozen=True)
class OutputSpec:
    """One named model output."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str = "values"
    labels: tuple[str, ...] = ()
    activation: str | None = None

    @property
    def is_classification(self) -> bool:
        return self.kind in CLASSIFICATION_KINDS

    @property
    def width(self) -> int:
        return math.prod(d for d in self.shape[1:] if d > 0) if len(self.shape) > 1 else 1

    @property
    def v2_datatype(self) -> str:
        return V2_DATATYPES[self.dtype]

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    def to_dict(self) -> dict:
        described: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                                     "kind": self.kind, "labels": list(self.labels)}
        if self.activation:
            described["activation"] = self.activation
        return described

    @classmethod
    def from_dict(cls, raw: Mapping, where: str) -> OutputSpec:
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name {name!r}; expected a non-empty string")
        where = f"{where} {name!r}"
        kind = raw.get("kind", "values")
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"{where}: kind {kind!r}; expected one of {', '.join(OUTPUT_KINDS)}")
        labels = raw.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{where}: labels {labels!r}; expected a list of strings")
        spec = cls(name=name, dtype=_dtype(raw.get("dtype"), where), shape=_shape(raw.get("shape"), where),
                   kind=kind, labels=tuple(labels), activation=raw.get("activation"))
        if labels and len(labels) != spec.width:
            raise ValueError(f"{where}: {len(labels)} labels for an output of width {spec.width}")
        return spec


@dataclass(frozen=True)
class ModelContract:
    """Every named input and output of a bundle's model."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    _by_name: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            if not specs:
                raise ValueError(f"the contract has no {kind}s; expected at least one")
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names {names} repeat; expected unique names")
        object.__setattr__(self, "_by_name", {"input": {s.name: s for s in self.inputs},
                                              "output": {s.name: s for s in self.outputs}})

    def input_specs(self) -> tuple[InputSpec, ...]:
        return self.inputs

    def output_specs(self) -> tuple[OutputSpec, ...]:
        return self.outputs

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def input(self, name: str) -> InputSpec:
        try:
            return self._by_name["input"][name]
        except KeyError:
            raise UsageError(f"unknown input {name!r}; this model's inputs are {self.input_names}") from None

    def output(self, name: str) -> OutputSpec:
        try:
            return self._by_name["output"][name]
        except KeyError:
            raise UsageError(f"unknown output {name!r}; this model's outputs are {self.output_names}") from None

    @property
    def image_input(self) -> InputSpec | None:
        """The input pictures go to, when the model has exactly one input and it is an image."""
        return self.inputs[0] if len(self.inputs) == 1 and self.inputs[0].kind == "image" else None

    @property
    def classification_output(self) -> OutputSpec | None:
        """The first probabilities/logits output, if any."""
        return next((spec for spec in self.outputs if spec.is_classification), None)

    @property
    def task(self) -> str:
        kinds = {spec.is_classification for spec in self.outputs}
        if kinds == {True}:
            return "classification"
        return "regression" if kinds == {False} else "mixed"

    def to_dict(self) -> dict:
        return {"inputs": [spec.to_dict() for spec in self.inputs],
                "outputs": [spec.to_dict() for spec in self.outputs]}

    @classmethod
    def from_dict(cls, raw: Mapping) -> ModelContract:
        """Parse and validate `{"inputs": [...], "outputs": [...]}`.

        Raises:
            CheckFailed: one line naming the first problem.
        """
        try:
            inputs, outputs = raw.get("inputs"), raw.get("outputs")
            for key, value in (("inputs", inputs), ("outputs", outputs)):
                if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
                    raise ValueError(f"'{key}' is {type(value).__name__}; expected a list of objects")
            return cls(inputs=tuple(InputSpec.from_dict(item, f"input {i}") for i, item in enumerate(inputs)),
                       outputs=tuple(OutputSpec.from_dict(item, f"output {i}") for i, item in enumerate(outputs)))
        except ValueError as error:
            raise CheckFailed(f"invalid model contract: {error}") from None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("batch" if i == 0 else ("?" if d == DYNAMIC else str(d)) for i, d in enumerate(shape)) + "]"


def _range_text(value_range: tuple[float, float]) -> str:
    return f"values in {value_range[0]:g}..{value_range[1]:g}"


def check_pixel_range(array: np.ndarray, where: str, value_range: tuple[float, float] = (0.0, 255.0)) -> None:
    """Raw pixels must be finite and inside `value_range`; pixels that look pre-scaled to 0..1 are refused.

    One check shared by training data loaders and the serving request parsers.

    Raises:
        UsageError: naming `where`, the values received and the range expected.
    """
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UsageError(f"{where}: NaN or Inf in the data; expected finite pixel values "
                         f"{value_range[0]:g}..{value_range[1]:g}")
    if not array.size:
        return
    low, high = float(array.min()), float(array.max())
    if low < value_range[0] or high > value_range[1]:
        raise UsageError(f"{where}: values span {low:g}..{high:g}; expected raw pixels in "
                         f"{value_range[0]:g}..{value_range[1]:g}")
    if value_range[1] > 1.0 and array.dtype.kind == "f" and 0 < high <= 1.0:
        raise UsageError(f"{where}: values span {low:g}..{high:g}, which looks already scaled to 0..1; expected "
                         f"raw {value_range[0]:g}..{value_range[1]:g} pixels (the model rescales inside)")


def image_input_spec(name: str, height: int, width: int, color_mode: str = "grayscale", *,
                     value_range: tuple[float, float] = (0.0, 255.0), foreground: str | None = None,
                     dtype: str = "float32") -> InputSpec:
    """An NHWC image input of raw pixels: the reference models' input."""
    image = ImageSpec(height=height, width=width, color_mode=color_mode, foreground=foreground)
    return InputSpec(name=name, dtype=dtype, shape=(DYNAMIC, height, width, image.channels), kind="image",
                     value_range=value_range, image=image)
