"""Inputs generated from the model contract: edge cases for every input, and a stand-in eval set.

Per input, from its spec and value range (rows pair up across inputs by index, then seeded noise fills the batch):

- image inputs: `min` (every pixel at the low end, e.g. all 0), `max` (e.g. all 255), `uniform_noise`,
  `single_bright_pixel` (one centre pixel at the high end on a low background) and `checkerboard` (low/high);
- tensor inputs: `min`, `max`, `zeros` (only when 0 lies strictly inside the range), `uniform_noise` and
  `alternating` (min, max, min, ... along the flattened example).

The range is the contract's `value_range`; without one, the range the eval sample spans; without either, a
default: image inputs 0..255 (raw pixels, kerasport's convention), integer and boolean inputs 0..1, float tensors
standard-normal noise with the min/max edges at -3/+3 (three standard deviations). Integer inputs get integers in
range; other dynamic dimensions than the batch become `DYNAMIC_SIZE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kerasport.contract import InputSpec, ModelContract
from kerasport.samples import inputs_sha256

EDGE_SEED = 0
EDGE_EXAMPLES = 64
DYNAMIC_SIZE = 8
DEFAULT_IMAGE_RANGE = (0.0, 255.0)
DEFAULT_INTEGER_RANGE = (0.0, 1.0)
DEFAULT_NORMAL_SPREAD = 3.0  # float tensors without a range: N(0, 1) noise, edges at -3 and +3


@dataclass(frozen=True)
class InputRange:
    low: float
    high: float
    source: str  # "contract", "eval sample" or "default"
    normal: bool = False  # noise drawn from a standard normal (no known range) instead of uniform in range

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "source": self.source,
                "noise": "standard normal" if self.normal else "uniform in range"}


@dataclass(frozen=True)
class GeneratedInputs:
    """Arrays per input name (batch-first, in each input's dtype), what each leading row is, and the ranges used."""

    inputs: dict[str, np.ndarray]
    kinds: dict[str, list[str]]
    ranges: dict[str, InputRange]

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sha256(self) -> str:
        return inputs_sha256(self.inputs)

    def describe(self) -> dict:
        return {name: {"kinds": self.kinds[name], "range": self.ranges[name].to_dict()} for name in self.inputs}


def input_range(spec: InputSpec, observed: np.ndarray | None = None) -> InputRange:
    """The range generated values of `spec` stay in: the contract's, else the eval sample's, else the default."""
    integer = np.dtype(spec.dtype).kind in "iub"
    if spec.value_range is not None:
        low, high = spec.value_range
        source = "contract"
    elif observed is not None and observed.size:
        low, high = float(np.min(observed)), float(np.max(observed))
        source = "eval sample"
    elif spec.kind == "image":
        (low, high), source = DEFAULT_IMAGE_RANGE, "default"
    elif integer:
        (low, high), source = DEFAULT_INTEGER_RANGE, "default"
    else:
        return InputRange(-DEFAULT_NORMAL_SPREAD, DEFAULT_NORMAL_SPREAD, "default", normal=True)
    if integer:
        low, high = float(np.ceil(low)), float(np.floor(high))
    return InputRange(float(low), float(high), source)


def _noise(rng: np.random.Generator, value_range: InputRange, shape: tuple[int, ...]) -> np.ndarray:
    if value_range.normal:
        return rng.normal(0.0, 1.0, shape)
    return rng.uniform(value_range.low, value_range.high, shape)


def _patterns(spec: InputSpec, value_range: InputRange, shape: tuple[int, ...],
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    low, high = value_range.low, value_range.high
    patterns = {"min": np.full(shape, low), "max": np.full(shape, high)}
    if spec.kind == "image":
        height, width = shape[0], shape[1]
        patterns["uniform_noise"] = _noise(rng, value_range, shape)
        bright = np.full(shape, low)
        bright[height // 2, width // 2, ...] = high
        patterns["single_bright_pixel"] = bright
        squares = (np.indices((height, width)).sum(axis=0) % 2).astype(bool)
        patterns["checkerboard"] = np.broadcast_to(np.where(squares, high, low)[..., None], shape).copy()
        return patterns
    if low < 0 < high:
        patterns["zeros"] = np.zeros(shape)
    patterns["uniform_noise"] = _noise(rng, value_range, shape)
    patterns["alternating"] = np.where(np.arange(int(np.prod(shape))).reshape(shape) % 2, high, low)
    return patterns


def _fill_noise(rng: np.random.Generator, value_range: InputRange, shape: tuple[int, ...]) -> np.ndarray:
    """Noise of varying level and strength: a random centre in range, a spread of a quarter of the range."""
    if value_range.normal:
        return rng.normal(0.0, rng.uniform(0.25, 2.0), shape)
    centre = rng.uniform(value_range.low, value_range.high)
    spread = (value_range.high - value_range.low) / 4
    return np.clip(rng.normal(centre, spread, shape), value_range.low, value_range.high)


def _as_input_dtype(values: np.ndarray, spec: InputSpec, value_range: InputRange) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iub":
        values = np.clip(np.round(values), value_range.low, value_range.high)
    return np.ascontiguousarray(values, dtype=dtype)


def edge_inputs(contract: ModelContract, *, size: int = EDGE_EXAMPLES, seed: int = EDGE_SEED,
                observed: Mapping[str, np.ndarray] | None = None, patterns: bool = True) -> GeneratedInputs:
    """`size` generated examples per input: the edge patterns first (when `patterns`), then seeded noise.

    Args:
        contract: the model's inputs.
        size: examples per input.
        seed: the same seed gives the same arrays.
        observed: per input name, real data whose range stands in for a missing contract range.
        patterns: False gives noise only (a stand-in eval set).

    Returns:
        The arrays, the kind of each leading row per input, and the ranges used.
    """
    arrays, kinds, ranges = {}, {}, {}
    for index, spec in enumerate(contract.input_specs()):
        rng = np.random.default_rng([seed, index])
        value_range = input_range(spec, (observed or {}).get(spec.name))
        shape = spec.example_shape(1, DYNAMIC_SIZE)[1:]
        rows = _patterns(spec, value_range, shape, rng) if patterns else {}
        examples = list(rows.values())[:size]
        while len(examples) < size:
            examples.append(_fill_noise(rng, value_range, shape))
        arrays[spec.name] = _as_input_dtype(np.stack(examples), spec, value_range)
        kinds[spec.name] = list(rows)[:size]
        ranges[spec.name] = value_range
    return GeneratedInputs(arrays, kinds, ranges)
