"""Compare two release bundles: which artifacts differ (sha256), and for models, how far apart each layer's weights are.

The tool a user runs when two "identical" releases disagree (`kerasport bundle diff RUN_A RUN_B`). Weights are read
straight from the files, without TensorFlow: a `.keras` zip's `model.weights.h5` (h5py), ONNX initializers (onnx),
TFLite constant buffers (the flatbuffer schema ai-edge-litert ships), npz sample arrays (numpy). Tensors are paired
by name, and the rest by shape and dtype, an equal tensor first (tf2onnx's generated names can change between
conversions). A JSON report (the parity report) counts as equivalent when only timings and timestamps differ.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kerasport.manifest import Artifact, Manifest, hash_artifact, load_manifest
from kerasport.tflite_flatbuffer import buffer_view

SAME, EQUIVALENT, DIFFERS, ONLY_A, ONLY_B = "same", "equivalent", "differs", "only in A", "only in B"
KERAS_WEIGHTS = "model.weights.h5"
# Keys of a JSON report (the parity report) that record when and how fast, not what: ignored when comparing.
VOLATILE_KEYS = frozenset({"seconds", "finished", "started", "checked", "created", "updated"})


@dataclass
class TensorDelta:
    """One layer / initializer / buffer / array: the largest |a - b| (None when they cannot be compared)."""

    name: str
    max_abs_diff: float | None
    note: str = ""


@dataclass
class ArtifactDiff:
    name: str
    status: str
    sha256_a: str | None = None
    sha256_b: str | None = None
    detail: str = ""
    tensors: list[TensorDelta] | None = None

    @property
    def differing_tensors(self) -> list[TensorDelta]:
        return [t for t in self.tensors or [] if t.max_abs_diff is None or t.max_abs_diff > 0]


@dataclass
class BundleDiff:
    run_a: str
    run_b: str
    artifacts: list[ArtifactDiff]
    context: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(artifact.status in (SAME, EQUIVALENT) for artifact in self.artifacts)

    def to_dict(self) -> dict:
        return {"run_a": self.run_a, "run_b": self.run_b, "identical": self.identical, "context": self.context,
                "artifacts": [asdict(artifact) for artifact in self.artifacts]}


def diff_bundles(run_a: str | Path, run_b: str | Path, *, weights: bool = True) -> BundleDiff:
    """Compare every artifact two bundles list: sha256 of the files on disk, then the weights of differing models.

    Args:
        run_a: the first run directory.
        run_b: the second run directory.
        weights: compare tensors of differing model/sample artifacts (False: hashes only).

    Returns:
        One ArtifactDiff per artifact name in either manifest (sorted), plus context lines (seeds, versions or
        contracts that differ).

    Raises:
        UsageError: a run directory has no manifest.
        CheckFailed: a manifest is malformed.
    """
    manifest_a, manifest_b = load_manifest(run_a), load_manifest(run_b)
    rows = []
    for name in sorted(set(manifest_a.artifact_names()) | set(manifest_b.artifact_names())):
        if not manifest_b.has(name):
            rows.append(ArtifactDiff(name, ONLY_A, sha256_a=manifest_a.artifact(name).sha256))
        elif not manifest_a.has(name):
            rows.append(ArtifactDiff(name, ONLY_B, sha256_b=manifest_b.artifact(name).sha256))
        else:
            rows.append(_diff_artifact(name, Path(run_a), manifest_a.artifact(name), Path(run_b),
                                       manifest_b.artifact(name), weights))
    return BundleDiff(str(run_a), str(run_b), rows, _context(manifest_a, manifest_b))


def _context(a: Manifest, b: Manifest) -> list[str]:
    """What else differs between the manifests, so a user sees why artifacts may differ."""
    lines = []
    if a.contract != b.contract:
        lines.append("the contracts differ (inputs/outputs of the two models)")
    for section, values_a, values_b in (("seeds", a.seeds, b.seeds), ("versions", a.versions, b.versions)):
        for key in sorted(set(values_a) | set(values_b)):
            if values_a.get(key) != values_b.get(key):
                lines.append(f"{section}.{key}: {values_a.get(key)} vs {values_b.get(key)}")
    return lines


def _diff_artifact(name: str, run_a: Path, a: Artifact, run_b: Path, b: Artifact, weights: bool) -> ArtifactDiff:
    path_a, path_b = a.resolve(run_a), b.resolve(run_b)
    missing = [str(path) for path in (path_a, path_b) if not path.exists()]
    if missing:
        if a.status != "ok" or b.status != "ok":
            status = SAME if a.status == b.status else DIFFERS
            return ArtifactDiff(name, status, detail=f"export status: {a.status} vs {b.status}")
        return ArtifactDiff(name, DIFFERS, detail=f"missing file(s): {', '.join(missing)}")
    sha_a, sha_b = hash_artifact(path_a)[0], hash_artifact(path_b)[0]
    altered = [side for side, sha, artifact in (("A", sha_a, a), ("B", sha_b, b)) if sha != artifact.sha256]
    detail = f"altered since its manifest: {', '.join(altered)}" if altered else ""
    if sha_a == sha_b:
        return ArtifactDiff(name, SAME, sha_a, sha_b, detail)
    row = ArtifactDiff(name, DIFFERS, sha_a, sha_b, detail)
    if a.format == "json" == b.format and _json_without_timings(path_a) == _json_without_timings(path_b) is not None:
        row.status = EQUIVALENT
        row.detail = "; ".join(filter(None, [detail, "equal apart from timings and timestamps"]))
    elif path_a.is_dir():
        row.detail = "; ".join(filter(None, [detail, "files that differ: " + ", ".join(_tree_differences(path_a,
                                                                                                          path_b))]))
    elif weights and a.format in READERS and a.format == b.format:
        row.tensors = compare_tensors(READERS[a.format](path_a), READERS[a.format](path_b))
        if row.tensors and not row.differing_tensors:
            row.detail = "; ".join(filter(None, [detail, "every weight is equal; only the encoding differs"]))
    return row


def _json_without_timings(path: Path):
    def strip(value):
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()
                    if key not in VOLATILE_KEYS and not key.endswith("_seconds")}
        return [strip(item) for item in value] if isinstance(value, list) else value

    try:
        return strip(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError):
        return None


def _tree_differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a).as_posix(): p for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b).as_posix(): p for p in b.rglob("*") if p.is_file()}
    return [name for name in sorted(set(files_a) | set(files_b))
            if name not in files_a or name not in files_b or hash_artifact(files_a[name]) != hash_artifact(
                files_b[name])]


def compare_tensors(a: list[tuple[str, np.ndarray]], b: list[tuple[str, np.ndarray]]) -> list[TensorDelta]:
    """Pair tensors by name, then the rest by shape and dtype (an equal one first); max |a - b| for each.

    Several tensors of one layer (a Keras layer's kernel and bias) share a name and are reduced to one row.
    """
    by_name_b = dict(b)
    paired = [(name, array, by_name_b[name]) for name, array in a if name in by_name_b]
    left_a = [(name, array) for name, array in a if name not in by_name_b]
    named_a = {name for name, _ in a}
    left_b = [(name, array) for name, array in b if name not in named_a]
    rows = [_delta(name, array_a, array_b) for name, array_a, array_b in paired]
    for name_a, array_a in list(left_a):
        candidates = [index for index, (_, array_b) in enumerate(left_b) if _same_kind(array_a, array_b)]
        if candidates:
            # An equal tensor under another name first, else the next one of the same shape and dtype.
            pick = next((i for i in candidates if np.array_equal(array_a, left_b[i][1])), candidates[0])
            name_b, array_b = left_b.pop(pick)
            left_a.remove((name_a, array_a))
            rows.append(_delta(f"{name_a} ~ {name_b}", array_a, array_b, note="paired by shape (names differ)"))
    rows += [TensorDelta(name, None, ONLY_A) for name, _ in left_a]
    rows += [TensorDelta(name, None, ONLY_B) for name, _ in left_b]
    return rows


def _same_kind(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype


def _delta(name: str, a: np.ndarray, b: np.ndarray, note: str = "") -> TensorDelta:
    if a.shape != b.shape:
        return TensorDelta(name, None, f"shape {list(a.shape)} vs {list(b.shape)}")
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        return TensorDelta(name, 0.0 if np.array_equal(a, b) else None, note or f"dtype {a.dtype}")
    if a.size == 0:
        return TensorDelta(name, 0.0, note)
    difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return TensorDelta(name, float(np.nanmax(difference)) if not np.isnan(difference).all() else None, note)


def _keras_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """One entry per layer (its name, e.g. `conv1`; `optimizer`): all its variables flattened into one array."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        payload = archive.read(KERAS_WEIGHTS)
    layers: dict[str, list[np.ndarray]] = {}
    labels: dict[str, str] = {}  # h5 group -> the name shown
    with h5py.File(io.BytesIO(payload), "r") as weights:
        for dataset in _h5_datasets(weights):
            # `layers/conv2d_1/vars/0`: a class-based path; the `vars` group records the layer's own name.
            group = dataset.parent.name.strip("/").removesuffix("/vars")
            if group not in labels:
                own = "optimizer" if group.startswith("optimizer") else str(dataset.parent.attrs.get("name") or "")
                labels[group] = own if own and own not in labels.values() else group
            layers.setdefault(labels[group], []).append(np.asarray(dataset).reshape(-1))
    return [(owner, np.concatenate(arrays) if len(arrays) > 1 else arrays[0]) for owner, arrays in layers.items()]


def _h5_datasets(group) -> Iterator:
    import h5py

    for key in group:  # h5py lists keys in name order, so both files are walked the same way
        item = group[key]
        if isinstance(item, h5py.Dataset):
            yield item
        else:
            yield from _h5_datasets(item)


def _onnx_initializers(path: Path) -> list[tuple[str, np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return [(tensor.name, numpy_helper.to_array(tensor)) for tensor in graph.initializer]


def _tflite_buffers(path: Path) -> list[tuple[str, np.ndarray]]:
    """Every tensor with constant data, dequantized where the tensor carries a scale (per tensor or per channel)."""
    from ai_edge_litert import schema_py_generated as schema

    raw = path.read_bytes()
    model = schema.Model.GetRootAsModel(raw, 0)
    dtypes = {value: name.lower() for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    tensors = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            view = buffer_view(model.Buffers(tensor.Buffer()), raw)
            data = None if view is None else view.tobytes()
            dtype = dtypes.get(tensor.Type(), "")
            if data is None or not _numpy_dtype(dtype):
                continue
            values = np.frombuffer(data, dtype=dtype).reshape(tensor.ShapeAsNumpy() if tensor.ShapeLength() else ())
            name = tensor.Name().decode() if tensor.Name() else f"tensor {t}"
            tensors.append((name if s == 0 else f"subgraph {s}/{name}", _dequantized(values, tensor)))
    return tensors


def _numpy_dtype(name: str) -> bool:
    try:
        return np.dtype(name).kind in "biuf"
    except TypeError:
        return False


def _dequantized(values: np.ndarray, tensor) -> np.ndarray:
    quantization = tensor.Quantization()
    if quantization is None or not quantization.ScaleLength() or values.dtype.kind not in "iu":
        return values
    scale, zero_point = quantization.ScaleAsNumpy(), quantization.ZeroPointAsNumpy()
    shape = [1] * values.ndim
    if scale.size > 1 and values.ndim:
        shape[quantization.QuantizedDimension()] = -1
    zero_point = zero_point.reshape(shape) if np.size(zero_point) == scale.size else 0
    return (values.astype(np.float64) - zero_point) * scale.reshape(shape)


def _npz_arrays(path: Path) -> list[tuple[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as archive:
        return [(name, archive[name]) for name in sorted(archive.files)]


READERS: dict[str, Callable[[Path], list[tuple[str, np.ndarray]]]] = {
    "keras": _keras_weights, "onnx": _onnx_initializers, "tflite": _tflite_buffers, "npz": _npz_arrays}
