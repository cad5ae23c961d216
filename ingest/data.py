"""Eval and calibration data for `kerasport import`, read and checked against the model's contract.

Two forms, for `--eval-data` and `--calibration-data`:

- `npz:FILE`: one array per input, named after the input (or `input:<name>`, or `x` for a single-input model),
  and optionally targets: `y` for a single-output model, `y:<output>` or `target:<output>` for any output.
  Targets are class indices (or one-hot rows) for classification outputs and values for the others.
- `images:DIR` for a model with one image input: one sub-folder per class (labels in sorted folder order, the
  folder names become the labels unless `--labels` names them) or a flat folder of pictures (unlabelled). Pictures
  are decoded with `kerasport.images.decode_image` to the contract's image spec.

Every array a user gives must match an input or output by name, shape and dtype; anything else is a one-line
`UsageError`. Without eval data, `synthetic_inputs` draws seeded uniform noise inside each input's value range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.contract import InputSpec, ModelContract, OutputSpec
from kerasport.errors import UsageError
from kerasport.samples import INPUT_PREFIX, TARGET_PREFIX, Samples

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPEC_FORMS = "npz:FILE or images:DIR"
SYNTHETIC_EXAMPLES = 64
# Size given to dynamic non-batch dimensions (e.g. a sequence length) in generated inputs.
SYNTHETIC_DYNAMIC_SIZE = 8
PIXEL_RANGE = (0.0, 255.0)
NUMERIC_KINDS = "biuf"


@dataclass
class RawData:
    """Arrays read from a data spec, selected (`limit`, seeded) but not yet cast to the contract."""

    origin: str  # e.g. "--eval-data npz:/data/eval.npz", the prefix of every error about it
    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    classes: tuple[str, ...] = ()  # images:DIR class folders, in label order
    class_indices: np.ndarray | None = None
    # Every example given (before `limit`), for inferring value ranges; the selection when not kept.
    observed: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def read_data(spec: str, contract: ModelContract, *, option: str, limit: int, seed: int) -> RawData:
    """Read `npz:FILE` or `images:DIR` for `contract`'s inputs (and targets), keeping at most `limit` examples.

    Args:
        spec: the data spec as given.
        contract: names, shapes and image spec to read for (value ranges are not checked here).
        option: the option name, for messages (`--eval-data`).
        limit: the most examples to keep; a larger set is subsampled with `seed`, in its original order.
        seed: subsampling seed.

    Returns:
        The selected arrays.

    Raises:
        UsageError: an unknown form, a missing or unreadable file, arrays that do not match the model.
    """
    form, _, location = spec.partition(":")
    origin = f"{option} {spec}"
    if form not in ("npz", "images") or not location:
        raise UsageError(f"{option} {spec!r}: unknown data spec; expected {SPEC_FORMS}")
    path = Path(location)
    if form == "npz":
        if not path.is_file():
            raise UsageError(f"{origin}: no such file; expected an .npz file")
        raw = _read_npz(path, contract, origin, limit, seed)
    else:
        if not path.is_dir():
            raise UsageError(f"{origin}: no such directory; expected a folder of pictures or of class folders")
        raw = _read_images(path, contract, origin, limit, seed)
    _check_inputs(raw, contract)
    return raw


def _select(count: int, limit: int, seed: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def _npz_role(key: str, contract: ModelContract) -> tuple[str, str] | None:
    """('input'|'target', name) for an array name, or None when it names nothing of this model."""
    if key in contract.input_names:
        return "input", key
    if key.startswith(INPUT_PREFIX) and key[len(INPUT_PREFIX):] in contract.input_names:
        return "input", key[len(INPUT_PREFIX):]
    if key == "x" and len(contract.inputs) == 1:
        return "input", contract.input_names[0]
    if key == "y" and len(contract.outputs) == 1:
        return "target", contract.output_names[0]
    for prefix in ("y:", TARGET_PREFIX):
        if key.startswith(prefix) and key[len(prefix):] in contract.output_names:
            return "target", key[len(prefix):]
    return None


def _read_npz(path: Path, contract: ModelContract, origin: str, limit: int, seed: int) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise UsageError(f"{origin}: cannot read it as .npz ({error})") from None
    found: dict[str, dict[str, np.ndarray]] = {"input": {}, "target": {}}
    for key, array in arrays.items():
        role = _npz_role(key, contract)
        if role is None:
            targets = "y" if len(contract.outputs) == 1 else "y:<output>"
            raise UsageError(f"{origin}: array {key!r} names no input or output of this model; expected inputs "
                             f"{contract.input_names} (or x) and targets {targets} for outputs "
                             f"{contract.output_names}")
        kind, name = role
        if name in found[kind]:
            raise UsageError(f"{origin}: two arrays give {kind} {name!r} (e.g. 'x' and {name!r}); expected one")
        found[kind][name] = array
    missing = [name for name in contract.input_names if name not in found["input"]]
    if missing:
        raise UsageError(f"{origin}: no array for input {missing[0]!r}; it has {sorted(arrays)}, the model takes "
                         f"{contract.input_names}")
    lengths = {name: len(array) if array.ndim else 0 for kind in found for name, array in found[kind].items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise UsageError(f"{origin}: arrays of different or zero lengths {lengths}; expected one example per row "
                         f"in every array")
    picks = _select(next(iter(lengths.values())), limit, seed)
    return RawData(origin, {name: found["input"][name][picks] for name in contract.input_names},
                   {name: array[picks] for name, array in found["target"].items()}, observed=found["input"])


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_images(directory: Path, contract: ModelContract, origin: str, limit: int, seed: int) -> RawData:
    spec = contract.image_input
    if spec is None:
        kinds = {s.name: s.kind for s in contract.inputs}
        raise UsageError(f"{origin}: picture folders need a model with one image input; its inputs are {kinds} "
                         f"(use npz:FILE, or --input-kind image)")
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(index, file) for index, folder in enumerate(folders) for file in _image_files(folder)]
    if not folders:
        groups = [(-1, file) for file in _image_files(directory)]
    if not groups:
        raise UsageError(f"{origin}: no pictures ({', '.join(IMAGE_SUFFIXES)}); expected pictures or one "
                         f"sub-folder of pictures per class")
    picks = _select(len(groups), limit, seed)
    pixels = np.stack([_decode(groups[i][1], spec, origin) for i in picks])
    raw = RawData(origin, {spec.name: pixels}, {})
    if folders:
        raw.classes = tuple(folder.name for folder in folders)
        raw.class_indices = np.array([groups[i][0] for i in picks], dtype=np.int64)
    return raw


def _decode(file: Path, spec: InputSpec, origin: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from kerasport.images import decode_image

    try:
        with Image.open(file) as image:
            image.load()
            return decode_image(image, spec.image)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UsageError(f"{origin}: cannot decode {file} ({error}); expected PNG or JPEG pictures") from None


def _check_inputs(raw: RawData, contract: ModelContract) -> None:
    """Shapes and dtypes of the input arrays (values are checked against the final contract later)."""
    for spec in contract.inputs:
        array = raw.inputs[spec.name]
        if array.dtype.kind not in NUMERIC_KINDS:
            raise UsageError(f"{raw.origin}: input {spec.name!r} has dtype {array.dtype}; the model takes "
                             f"{spec.dtype}")
        if array.ndim != len(spec.shape) or not spec.accepts_item_shape(array.shape[1:]):
            raise UsageError(f"{raw.origin}: input {spec.name!r} has shape {list(array.shape)}; the model takes "
                             f"{list(spec.shape)} (-1: any size)")
        target = np.dtype(spec.dtype)
        if target.kind in "iu" and array.size:
            info = np.iinfo(target)
            if array.min() < info.min or array.max() > info.max:
                raise UsageError(f"{raw.origin}: input {spec.name!r} spans {array.min():g}..{array.max():g}; the "
                                 f"model takes {spec.dtype}")


def data_range(arrays: list[np.ndarray], kind: str) -> tuple[float, float] | None:
    """The value range to record for an input, from the data it was given.

    Integers in 0..255 are raw pixels: [0, 255] (for tensors only when some value exceeds 1). Data within [0, 1]
    gives [0, 1], within [-1, 1] gives [-1, 1]; anything else records the observed min and max.
    """
    arrays = [array for array in arrays if array.size]
    if not arrays:
        return None
    low = float(min(array.min() for array in arrays))
    high = float(max(array.max() for array in arrays))
    integral = all(array.dtype.kind in "biu" or np.array_equal(array, np.round(array)) for array in arrays)
    if integral and low >= 0 and high <= PIXEL_RANGE[1] and (kind == "image" or high > 1):
        return PIXEL_RANGE
    for bounds in ((0.0, 1.0), (-1.0, 1.0)):
        if bounds[0] <= low and high <= bounds[1]:
            return bounds
    return low, high


def infer_ranges(datasets: list[RawData], contract: ModelContract) -> dict[str, tuple[float, float]]:
    """Per input, `data_range` over every example of every data set given (before subsampling)."""
    ranges = {}
    for spec in contract.inputs:
        found = data_range([(raw.observed or raw.inputs)[spec.name] for raw in datasets], spec.kind)
        if found is not None:
            ranges[spec.name] = found
    return ranges


def to_samples(raw: RawData, contract: ModelContract, *, with_targets: bool) -> Samples:
    """Inputs checked and cast to the final contract (dtype, value range), targets normalised per output.

    Raises:
        UsageError: values outside the input range, non-integer values for an integer input, bad targets.
    """
    inputs = {spec.name: spec.check_values(raw.inputs[spec.name], raw.origin)
              for spec in contract.inputs}
    if not with_targets:
        return Samples(inputs)
    targets = {name: _target(values, contract.output(name), raw.origin, len(raw))
               for name, values in raw.targets.items()}
    if raw.class_indices is not None:
        output = next((spec for spec in contract.outputs if spec.labels), contract.classification_output)
        if output is None:
            raise UsageError(f"{raw.origin}: class folders give labels, but the model has no classification "
                             f"output ({_output_kinds(contract)}); use a flat folder or --task classification")
        targets[output.name] = _class_targets(raw, output)
    return Samples(inputs, targets)


def _output_kinds(contract: ModelContract) -> str:
    return ", ".join(f"{spec.name}: {spec.kind}" for spec in contract.outputs)


def _class_targets(raw: RawData, output: OutputSpec) -> np.ndarray:
    if not output.labels or tuple(output.labels) == raw.classes:
        return raw.class_indices
    unknown = [name for name in raw.classes if name not in output.labels]
    if unknown:
        raise UsageError(f"{raw.origin}: class folder {unknown[0]!r} is not one of the labels "
                         f"{list(output.labels)}; expected folders named after labels")
    mapping = np.array([output.labels.index(name) for name in raw.classes], dtype=np.int64)
    return mapping[raw.class_indices]


def _target(values: np.ndarray, spec: OutputSpec, origin: str, count: int) -> np.ndarray:
    where = f"{origin}: targets for output {spec.name!r}"
    if values.dtype.kind not in NUMERIC_KINDS:
        raise UsageError(f"{where} have dtype {values.dtype}; expected numbers")
    if spec.is_classification:
        indices = values
        if values.ndim == 2 and values.shape[1] == spec.width and spec.width > 1:
            indices = values.argmax(axis=1)  # one-hot rows
        elif values.ndim == 2 and values.shape[1] == 1:
            indices = values[:, 0]
        classes = max(spec.width, 2)
        if (indices.ndim != 1 or not np.array_equal(indices, np.round(indices)) or indices.min() < 0
                or indices.max() >= classes):
            raise UsageError(f"{where} have shape {list(values.shape)} and span {values.min():g}..{values.max():g};"
                             f" expected class indices 0..{classes - 1} or one-hot rows of width {spec.width}")
        return indices.astype(np.int64)
    item = spec.shape[1:]
    if all(d > 0 for d in item):
        if values.size != count * int(np.prod(item, dtype=np.int64)):
            raise UsageError(f"{where} have shape {list(values.shape)}; expected [{count}, "
                             f"{', '.join(map(str, item))}] like the output")
        values = values.reshape((count, *item))
    elif values.ndim != len(spec.shape):
        raise UsageError(f"{where} have shape {list(values.shape)}; expected rank {len(spec.shape)} like the output")
    return values.astype(spec.dtype if np.dtype(spec.dtype).kind == "f" else np.float32)


def fallback_range(spec: InputSpec) -> tuple[float, float]:
    """The range noise is drawn from when none is known: raw pixels for images, 0..1 otherwise."""
    if spec.value_range is not None:
        return spec.value_range
    return PIXEL_RANGE if spec.kind == "image" else (0.0, 1.0)


def synthetic_inputs(contract: ModelContract, count: int, seed: int) -> Samples:
    """Seeded uniform noise inside each input's value range (integers for integer inputs), without targets."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in contract.inputs:
        low, high = fallback_range(spec)
        shape = spec.example_shape(count, SYNTHETIC_DYNAMIC_SIZE)
        dtype = np.dtype(spec.dtype)
        if dtype.kind in "biu":
            values = rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1, size=shape)
        else:
            values = rng.uniform(low, high, size=shape)
        inputs[spec.name] = values.astype(dtype)
    return Samples(inputs)
