"""`kerasport predict`: TensorFlow-free batch inference over image files (image models) or an `.npz` of named
arrays (any model), with one row per example and, per output, top-k labels or values."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract, OutputSpec
from kerasport.errors import UsageError
from kerasport.images import decode_image_bytes
from kerasport.samples import INPUT_PREFIX

from .model import ServedModel
from .tensors import pictures_to_input, top_k

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BATCH = 64
NPZ_PREFIX = "npz:"


def collect_images(paths: list[str]) -> list[Path]:
    """Image files, and the PNG/JPEG files under folders (sorted).

    Raises:
        UsageError: a path that does not exist, or a folder without images.
    """
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder; expected image files or folders of images")
    return files


def load_input_arrays(spec_text: str, contract: ModelContract) -> dict[str, np.ndarray]:
    """`npz:FILE` -> one checked batch per input: arrays named after the inputs (or `input:<name>`, as in a bundle's
    sample files), or `x` for a single-input model.

    Raises:
        UsageError: not `npz:`, an unreadable file, a missing input, a shape/range/dtype the input refuses.
    """
    if not spec_text.startswith(NPZ_PREFIX):
        raise UsageError(f"--inputs {spec_text!r}; expected npz:FILE")
    path = Path(spec_text[len(NPZ_PREFIX):])
    if not path.is_file():
        raise UsageError(f"--inputs {spec_text!r}: {path} is not a file; expected an .npz of arrays per input name")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise UsageError(f"--inputs {spec_text!r}: cannot read {path} as .npz ({error})") from None
    inputs = {}
    for spec in contract.inputs:
        keys = [spec.name, f"{INPUT_PREFIX}{spec.name}"] + (["x"] if len(contract.inputs) == 1 else [])
        key = next((key for key in keys if key in arrays), None)
        if key is None:
            raise UsageError(f"{path}: no array for input {spec.name!r} (it has {sorted(arrays)}); expected one of "
                             f"{keys}")
        inputs[spec.name] = spec.check_values(arrays[key], f"{path} array {key!r}")
    sizes = {name: len(array) for name, array in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise UsageError(f"{path}: arrays hold {sizes} examples; expected the same count for every input")
    return inputs


def describe(spec: OutputSpec, row: np.ndarray, k: int) -> dict:
    """One example's output: the best label and top-k for a classification output, the values otherwise."""
    if spec.is_classification:
        best = top_k(np.asarray(row).ravel(), spec, k)
        score = "probability" if "probability" in best[0] else "score"
        return {"label": best[0]["label"], score: best[0][score], "top_k": best}
    return {"values": np.asarray(row, dtype=np.float64).ravel().tolist()}


def _rows(model: ServedModel, outputs: dict[str, np.ndarray], ids: list[tuple[str, object]], k: int) -> list[dict]:
    specs = model.contract.outputs
    rows = []
    for index, (key, value) in enumerate(ids):
        described = {spec.name: describe(spec, outputs[spec.name][index], k) for spec in specs}
        rows.append({key: value, **described[specs[0].name]} if len(specs) == 1 else {key: value,
                                                                                    "outputs": described})
    return rows


def predict_images(model: ServedModel, files: list[Path], top_k: int = 3) -> list[dict]:
    """Decode each file as the model's image input says and run it, in batches.

    Raises:
        UsageError: the model has no single image input, or a file does not decode.
    """
    image = model.contract.image_input
    if image is None:
        raise UsageError(f"image files given, but model {model.name!r} takes {model.contract.input_names} "
                         f"(not one image input); pass --inputs npz:FILE with an array per input name")
    rows: list[dict] = []
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        pictures = np.stack([decode_image_bytes(f.read_bytes(), image.image, origin=str(f)) for f in chunk])
        batch = pictures_to_input(image, pictures, f"{chunk[0]}" + (f" .. {chunk[-1].name}" if len(chunk) > 1 else ""))
        rows.extend(_rows(model, model.predict({image.name: batch}), [("file", str(f)) for f in chunk], top_k))
    return rows


def predict_arrays(model: ServedModel, inputs: dict[str, np.ndarray], top_k: int = 3) -> list[dict]:
    """Run checked named input arrays (see `load_input_arrays`) in batches; one row per example (`index`)."""
    count = len(next(iter(inputs.values())))
    rows: list[dict] = []
    for start in range(0, count, BATCH):
        batch = {name: array[start:start + BATCH] for name, array in inputs.items()}
        stop = min(start + BATCH, count)
        rows.extend(_rows(model, model.predict(batch), [("index", i) for i in range(start, stop)], top_k))
    return rows


def flat_columns(row: dict, digits: int) -> dict[str, str]:
    """A row as text columns (CSV, table): per output label and score, or values; names prefixed when several."""
    key = "file" if "file" in row else "index"
    columns = {key: str(row[key])}
    described = row.get("outputs", {"": row})
    for name, output in described.items():
        prefix = f"{name}." if name else ""
        if "label" in output:
            score = "probability" if "probability" in output else "score"
            columns[f"{prefix}label"] = output["label"]
            columns[f"{prefix}{score}"] = f"{output[score]:.{digits}f}"
        else:
            columns[f"{prefix}values"] = " ".join(f"{v:.{digits}f}" for v in output["values"])
    return columns


def render_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for index, row in enumerate(rows):
        columns = flat_columns(row, 6)
        if index == 0:
            writer.writerow(columns)
        writer.writerow(columns.values())
    return buffer.getvalue()


def render_table(rows: list[dict], title: str, k: int):
    from rich.table import Table

    table = Table(title=title)
    for index, row in enumerate(rows):
        columns = flat_columns(row, 4)
        if "file" in columns:
            columns["file"] = os.path.relpath(columns["file"])
        if "top_k" in row:
            columns[f"top {k}"] = ", ".join(f"{t['label']}:{t.get('probability', t.get('score')):.3f}"
                                            for t in row["top_k"])
        if index == 0:
            for name in columns:
                table.add_column(name, justify="right" if name.endswith(("probability", "score")) else "left")
        table.add_row(*columns.values())
    return table
