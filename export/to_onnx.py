"""SavedModel -> ONNX with tf2onnx, and int8 ONNX with onnxruntime.quantization (static, QDQ)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.errors import ConversionError
from kerasport.int8_recipe import ONNX_REDUCE_RANGE, ONNX_WEIGHTS, onnx_static_quantization
from kerasport.samples import Samples

from .messages import first_line, ort_missing_op
from .tf2onnx_cli import ADDED_CONVERSIONS

BATCH_DIM = "batch"
# tf2onnx names what it inserts `<name>__<N>` (a tensor adds `:<output>`); see canonicalize_generated_names.
GENERATED_CONSTANT = "const__"
_GENERATED_NAME = re.compile(r"^(?P<base>.*__)(?P<number>\d+)(?P<output>:\d+)?$")


# tf2onnx logs what it cannot convert as "Unsupported ops: Counter({'Erfinv': 1})".
_UNSUPPORTED_OPS = re.compile(r"Unsupported ops: Counter\(\{(?P<ops>[^}]*)\}\)")
TF2ONNX_STEP = "tf2onnx"
# tf2onnx's command line plus conversions for ops it lacks (export/tf2onnx_cli.py).
TF2ONNX_CLI_MODULE = "kerasport.export.tf2onnx_cli"


def convert_saved_model_to_onnx(saved_model: Path, destination: Path, *, opset: int,
                                contract: ModelContract) -> dict:
    """tf2onnx's own command line (`tf2onnx.convert.main`, see tf2onnx_cli.py) with `--saved-model`, in a child.

    Its public route is both the conversion tf2onnx supports (transformer blocks and GELU convert there) and the
    isolation: a crash in the converter costs this conversion, not the export. The graph's inputs and outputs are
    the signature's, named as in the contract and put in the contract's order; every dynamic dimension gets a
    readable name (`batch` for the first).

    Raises:
        ConversionError: tf2onnx fails, crashes or has no conversion for an op, the names differ from the contract,
            or the ONNX checker rejects the graph.
    """
    import tempfile

    import onnx

    from kerasport.isolation import run_isolated

    from .tf2onnx_cli import convert_in_child

    with tempfile.TemporaryDirectory(prefix="kerasport-tf2onnx-") as scratch:
        converted = Path(scratch) / "model.onnx"
        completed = run_isolated(f"{TF2ONNX_STEP} opset {opset}", convert_in_child, [
            "--saved-model", str(saved_model), "--tag", "serve", "--signature_def", "serving_default",
            "--opset", str(opset), "--output", str(converted)])
        unmapped = _unsupported_ops(completed["log"])
        if unmapped:
            raise ConversionError(f"tf2onnx has no ONNX opset-{opset} conversion for op(s) {', '.join(unmapped)}")
        if completed["returncode"] != 0 or not converted.is_file():
            raise ConversionError(f"tf2onnx could not convert the SavedModel at opset {opset}: "
                                  f"{_last_error_line(completed['log'])}")
        proto = onnx.load(str(converted))
    _match_contract(proto.graph, contract)
    canonicalize_generated_names(proto.graph)
    # tf2onnx's command line writes "converted from <SavedModel path>" here: the same model exported from another
    # run directory must give the same bytes.
    proto.graph.doc_string = ""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as error:  # noqa: BLE001 - onnx raises ValidationError and shape-inference errors
        raise ConversionError(f"the ONNX checker rejects tf2onnx's graph: {first_line(error)}") from error
    onnx.save(proto, str(destination))
    return {"opset": opset, "onnx_checker": "passed", "producer": f"{proto.producer_name} {proto.producer_version}",
            "converter": f"tf2onnx's command line --saved-model (tf2onnx.convert.main via {TF2ONNX_CLI_MODULE}, in a "
                         f"child process; extra conversions: {ADDED_CONVERSIONS})",
            # bench/export.py: a pre-optimized model started no faster (76.7 vs 78.2 ms for `seed`), and
            # ORT_ENABLE_ALL output is tied to the CPU it was optimized on, so the portable graph ships.
            "offline_graph_optimization": False}


def _unsupported_ops(log: str) -> list[str]:
    found: list[str] = []
    for match in _UNSUPPORTED_OPS.finditer(log or ""):
        found += re.findall(r"'([^']+)'", match["ops"])
    return sorted(set(found))


def _last_error_line(log: str) -> str:
    """The exception line of tf2onnx's traceback (its last non-empty line), cut short."""
    lines = [line.strip() for line in (log or "").splitlines() if line.strip()]
    text = lines[-1] if lines else "no output"
    return text if len(text) <= 240 else text[:239] + "…"


def _match_contract(graph, contract: ModelContract) -> None:
    """Check the graph's I/O names are the contract's, order them as the contract does, name dynamic dims."""
    for kind, tensors, expected in (("inputs", graph.input, contract.input_names),
                                    ("outputs", graph.output, contract.output_names)):
        names = [tensor.name for tensor in tensors]
        if sorted(names) != sorted(expected):
            raise ConversionError(f"tf2onnx produced {kind} {names}; the contract names {expected}")
        by_name = {tensor.name: tensor for tensor in tensors}
        ordered = [type(by_name[name])() for name in expected]
        for copy, name in zip(ordered, expected, strict=True):
            copy.CopyFrom(by_name[name])
        del tensors[:]
        tensors.extend(ordered)
        for tensor in tensors:
            dims = tensor.type.tensor_type.shape.dim
            for index, dim in enumerate(dims):
                if not dim.HasField("dim_value"):
                    # tf2onnx names unknown dims `unk__NN`; the batch is `batch`, others `<tensor>_dim<i>`.
                    dim.dim_param = BATCH_DIM if index == 0 else f"{tensor.name}_dim{index}"


def canonicalize_generated_names(graph) -> int:
    """Give tf2onnx's generated names and initializer order a canonical form, so equal graphs get equal bytes.

    tf2onnx numbers what it inserts `<name>__<N>` from a process-global counter, and some of its optimizers walk
    sets of node objects (ordered by memory address): two conversions of one SavedModel in different processes
    number the names differently, list the initializers in another order and, when equal constants are merged,
    keep either one's name (`const_starts__2` or `const_axes__5`). Here the initializers are put in order of first
    use by the (deterministic) node list, and every generated name is renumbered 1, 2, ... in graph order; a
    generated initializer is named `const__<K>`. A node and its `:k` output tensors keep sharing their base name.
    The graph's inputs and outputs (the contract's names) are never renamed, and nothing is renamed when a new name
    would collide with an existing one.

    Returns:
        How many distinct names were renamed.
    """
    _initializers_in_first_use_order(graph)
    protected = {tensor.name for tensor in (*graph.input, *graph.output)}
    constants = {tensor.name for tensor in graph.initializer}
    names = list(_names_in_graph_order(graph))
    generated = {name: match for name in set(names) - protected if (match := _GENERATED_NAME.match(name))}
    numbers: dict[str, int] = {}  # `<base><N>` (a node and its `:k` outputs) -> its new number
    for name in names:
        if name in generated:
            numbers.setdefault(generated[name]["base"] + generated[name]["number"], len(numbers) + 1)

    def rename(name: str) -> str:
        match = generated.get(name)
        if match is None:
            return name
        base = GENERATED_CONSTANT if name in constants else match["base"]
        return f"{base}{numbers[match['base'] + match['number']]}{match['output'] or ''}"

    renamed = {name: rename(name) for name in set(names)}
    if len(set(renamed.values())) != len(renamed):
        return 0
    _rename_graph(graph, renamed)
    return len(numbers)


def _initializers_in_first_use_order(graph) -> None:
    first_use: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            first_use.setdefault(name, len(first_use))
    ordered = sorted(graph.initializer, key=lambda tensor: first_use.get(tensor.name, len(first_use)))
    copies = [type(tensor)() for tensor in ordered]
    for copy, tensor in zip(copies, ordered, strict=True):
        copy.CopyFrom(tensor)
    del graph.initializer[:]
    graph.initializer.extend(copies)


def _names_in_graph_order(graph) -> Iterator[str]:
    yield from (tensor.name for tensor in graph.initializer)
    yield from (tensor.values.name for tensor in graph.sparse_initializer)
    for node in graph.node:
        yield node.name
        yield from node.input
        yield from node.output
        for subgraph in _subgraphs(node):
            yield from _names_in_graph_order(subgraph)
    yield from (info.name for info in graph.value_info)


def _rename_graph(graph, renamed: dict[str, str]) -> None:
    for tensor in graph.initializer:
        tensor.name = renamed.get(tensor.name, tensor.name)
    for tensor in graph.sparse_initializer:
        tensor.values.name = renamed.get(tensor.values.name, tensor.values.name)
    for node in graph.node:
        node.name = renamed.get(node.name, node.name)
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
        for subgraph in _subgraphs(node):
            _rename_graph(subgraph, renamed)
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)


def _subgraphs(node) -> Iterator:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def onnx_io_details(model_path: Path) -> dict:
    """The graph's inputs and outputs as onnxruntime sees them: name, numpy dtype, shape (named dynamic dims)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def describe(tensor) -> dict:
        tensor_type = tensor.type.tensor_type
        return {"name": tensor.name,
                "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name,
                "shape": [dim.dim_param or dim.dim_value for dim in tensor_type.shape.dim]}

    return {"inputs": [describe(tensor) for tensor in graph.input],
            "outputs": [describe(tensor) for tensor in graph.output]}


class _CalibrationReader:
    """Feeds the calibration sample to onnxruntime.quantization: one dict of every input per step."""

    def __init__(self, calibration: Samples, contract: ModelContract, batch_size: int = 16):
        inputs = {spec.name: np.asarray(calibration.inputs[spec.name], dtype=spec.dtype) for spec in contract.inputs}
        self._batches = iter([{name: array[start:start + batch_size] for name, array in inputs.items()}
                              for start in range(0, len(calibration), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_onnx_static(fp32_model: Path, destination: Path, calibration: Samples, *, contract: ModelContract,
                         scratch: Path) -> dict:
    """Static int8 quantization in QDQ format, per-channel weights, calibrated on the bundle's calibration sample.

    Every input is fed from the sample in its contract dtype; only float tensors are quantized (integer ids and
    booleans pass through unchanged, as onnxruntime's QDQ quantizer handles only float tensors).

    Raises:
        ConversionError: the quantizer fails (naming the op onnxruntime lacks a kernel for, when it says so).
    """
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / f"{destination.stem}_prepared.onnx"
    try:
        quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(destination), _CalibrationReader(calibration, contract),
                        **onnx_static_quantization())
    except Exception as error:  # noqa: BLE001
        op = ort_missing_op(error)
        missing = f" (op {op} has no onnxruntime kernel)" if op else ""
        raise ConversionError(f"onnxruntime static quantization of {fp32_model.name} failed{missing}: "
                              f"{first_line(error)}") from error
    finally:
        prepared.unlink(missing_ok=True)
    return {"quantization": f"static QDQ, {ONNX_WEIGHTS}, uint8 activations, MinMax",
            "calibration_samples": len(calibration)}


def quantize_onnx_dynamic(fp32_model: Path, destination: Path) -> dict:
    """Dynamic (weights-only ahead of time) int8 quantization; measured against static in bench/export.py."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_model), str(destination), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=ONNX_REDUCE_RANGE)
    return {"quantization": f"dynamic, {ONNX_WEIGHTS}"}
