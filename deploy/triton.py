"""`kerasport package --target triton`: a Triton Inference Server model repository for the onnxruntime backend.

One repository entry per chosen ONNX variant: `onnx-fp32` is `<model>`, any other ONNX variant is
`<model>-<suffix>` (`onnx-int8` -> `<model>-int8`), each `<entry>/config.pbtxt` + `<entry>/<version>/model.onnx`.
The config's inputs and outputs come from the manifest's contract (Triton data types, dims without the batch
dimension, -1 for dynamic) and are checked against the ONNX graph itself, so Triton's own check at load time cannot
disagree. A dynamic batch dimension gives `max_batch_size` + `dynamic_batching`; a fixed one gives
`max_batch_size: 0` and the full shape. An output with labels gets a labels file (`label_filename`), which Triton's
classification extension returns as `score:index:label`.
"""

from __future__ import annotations

from pathlib import Path

from kerasport.contract import DYNAMIC, V2_DATATYPES, ModelContract, OutputSpec
from kerasport.errors import ConversionError
from kerasport.manifest import Artifact

from .base import PackageContext, TargetOutput, copy_verified

PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"
DEFAULT_VARIANT = "onnx-fp32"
# An example release; any whose onnxruntime backend runs the bundle's opset serves the repository.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"


def entry_name(model_name: str, artifact: Artifact) -> str:
    """The repository entry (Triton model name) of an ONNX artifact: `<model>` or `<model>-<suffix>`."""
    if artifact.name == DEFAULT_VARIANT:
        return model_name
    suffix = artifact.name.removeprefix("onnx-").lower()
    return f"{model_name}-{''.join(c if c.isalnum() else '-' for c in suffix).strip('-')}"


def triton_datatype(dtype: str) -> str:
    """Triton's `TYPE_*` name of a contract dtype (the V2 datatype with its prefix)."""
    return f"TYPE_{V2_DATATYPES[dtype]}"


def is_batched(contract: ModelContract) -> bool:
    """Whether every input and output has a dynamic first (batch) dimension."""
    return all(spec.shape[0] == DYNAMIC for spec in (*contract.input_specs(), *contract.output_specs()))


def label_filename(output: OutputSpec) -> str:
    return f"{output.name}_labels.txt"


def render_config(name: str, contract: ModelContract, max_batch: int) -> str:
    """The `config.pbtxt` text (protobuf text format of Triton's `ModelConfig`) for one repository entry.

    Args:
        name: the entry's model name (its directory name).
        contract: the bundle's contract: tensor names, dtypes and shapes.
        max_batch: `max_batch_size` when the contract's batch dimension is dynamic.

    Returns:
        The text of config.pbtxt.
    """
    batched = is_batched(contract)
    lines = [f"name: {_quote(name)}", f"platform: {_quote(PLATFORM)}", f"max_batch_size: {max_batch if batched else 0}"]
    lines += _tensors("input", contract.input_specs(), batched)
    lines += _tensors("output", contract.output_specs(), batched)
    if batched:
        lines += ["dynamic_batching {", "  max_queue_delay_microseconds: 0", "}"]
    lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_CPU", "  }", "]"]
    return "\n".join(lines) + "\n"


def _tensors(kind: str, specs, batched: bool) -> list[str]:
    lines = [f"{kind} ["]
    for index, spec in enumerate(specs):
        dims = list(spec.shape[1:] if batched else spec.shape)
        lines += ["  {", f"    name: {_quote(spec.name)}", f"    data_type: {triton_datatype(spec.dtype)}"]
        # Triton needs at least one dim: a per-example scalar is [1], reshaped to [] for the model
        if dims:
            lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
        else:
            lines += ["    dims: [ 1 ]", "    reshape { shape: [ ] }"]
        if kind == "output" and spec.labels:
            lines.append(f"    label_filename: {_quote(label_filename(spec))}")
        lines.append("  }," if index < len(specs) - 1 else "  }")
    return [*lines, "]"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_onnx_graph(path: Path, contract: ModelContract, variant: str) -> None:
    """Check that the ONNX graph's inputs and outputs are the contract's: names, element types, ranks, fixed dims.

    Raises:
        ConversionError: one line naming the first tensor that differs (Triton would refuse the config).
    """
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    sides = (("input", contract.input_specs(), {v.name: v for v in graph.input if v.name not in initializers}),
             ("output", contract.output_specs(), {v.name: v for v in graph.output}))
    for kind, specs, found in sides:
        if set(found) != {spec.name for spec in specs}:
            raise ConversionError(f"{variant}: the ONNX graph's {kind}s are {sorted(found)}; the contract names "
                                  f"{[spec.name for spec in specs]} (re-run `kerasport export`)")
        for spec in specs:
            tensor = found[spec.name].type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            dims = [dim.dim_value if dim.HasField("dim_value") else DYNAMIC for dim in tensor.shape.dim]
            fits = len(dims) == len(spec.shape) and all(
                want == DYNAMIC or got in (want, DYNAMIC) for got, want in zip(dims, spec.shape, strict=True))
            if dtype != spec.dtype or not fits:
                raise ConversionError(f"{variant}: ONNX {kind} {spec.name!r} is {dtype} {dims}; the contract says "
                                      f"{spec.dtype} {list(spec.shape)} (re-run `kerasport export`)")


def write_repository(context: PackageContext, root: Path) -> dict[str, dict]:
    """Write one repository entry per chosen ONNX variant under `root`.

    Args:
        context: the verified bundle, chosen variants, model name, version and `max_batch`.
        root: the model repository directory (created).

    Returns:
        {entry name: {"variant", "config_sha256"...}} for the manifest record.

    Raises:
        UsageError: `max_batch` below 1.
        ConversionError: a graph disagrees with the contract.
    """
    from kerasport.errors import UsageError
    from kerasport.fsutil import sha256_file

    if context.options.max_batch < 1:
        raise UsageError(f"--max-batch {context.options.max_batch}; expected at least 1")
    contract, entries = context.manifest.contract, {}
    for artifact in context.chosen:
        name = entry_name(context.model_name, artifact)
        check_onnx_graph(artifact.resolve(context.run_dir), contract, artifact.name)
        copy_verified(context, artifact, root / name / str(context.version) / MODEL_FILE)
        config = root / name / "config.pbtxt"
        config.write_text(render_config(name, contract, context.options.max_batch))
        for output in contract.output_specs():
            if output.labels:
                labels = [output.label(index) for index in range(output.width)]
                (root / name / label_filename(output)).write_text("\n".join(labels) + "\n")
        entries[name] = {"variant": artifact.name, "config_sha256": sha256_file(config)}
    return entries


def triton_command(repository: str) -> str:
    return (f"docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"{repository}\":/models:ro "
            f"{TRITON_IMAGE} tritonserver --model-repository=/models")


def write_triton(context: PackageContext, staging: Path) -> TargetOutput:
    """The `triton` target: the model repository at the top of `--out`.

    Args:
        context: the verified bundle and the chosen ONNX variants.
        staging: the directory that becomes `--out`.

    Returns:
        The docker command that serves the repository, notes for DEPLOY.md and the manifest record.

    Raises:
        ConversionError: a graph disagrees with the contract.
    """
    entries = write_repository(context, staging)
    first = next(iter(entries))
    max_batch = context.options.max_batch if is_batched(context.manifest.contract) else 0
    opsets = sorted({str(artifact.get("opset")) for artifact in context.chosen if artifact.get("opset")})
    notes = ["## Repository", "",
             "| Triton model | variant | config.pbtxt sha256 |", "|---|---|---|",
             *[f"| `{name}` | {entry['variant']} | `{entry['config_sha256']}` |" for name, entry in entries.items()],
             "",
             f"Platform `{PLATFORM}`; `max_batch_size` {max_batch} "
             f"with `dynamic_batching` (no added queue delay, like `kerasport serve`); one CPU instance "
             f"(`instance_group` KIND_CPU: change to KIND_GPU on a GPU node). The image tag is an example: any Triton "
             f"release whose onnxruntime backend runs ONNX opset {', '.join(opsets) or 'of the bundle'} serves it.",
             f"Check it: `curl -s localhost:8000/v2/models/{first}/ready -o /dev/null -w '%{{http_code}}\\n'` (200); "
             f"outputs with labels answer the classification extension (`class_count` in the request)."]
    return TargetOutput(command=triton_command(str(Path(context.options.out).resolve())), notes=["\n".join(notes)],
                        record={"repository": ".", "entries": entries, "platform": PLATFORM})
