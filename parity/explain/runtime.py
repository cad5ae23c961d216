"""The candidate side of `--explain`: every intermediate tensor of an ONNX or TFLite artifact on the explain inputs.

ONNX Runtime: every node output the caller keeps is added to the graph's outputs, and the session runs with graph
optimizations disabled, so no tensor is fused away (the run shows the converter's graph, not ORT's rewrite of it;
QDQ int8 models run as explicit Quantize/Dequantize pairs, which is the arithmetic the fused kernels implement).
LiteRT: the interpreter keeps every tensor (`experimental_preserve_all_tensors=True`) and runs the built-in kernels
(no XNNPACK delegate, whose internal tensors are not visible); one example at a time. Integer tensors are
dequantized with their stored scale and zero point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.runtimes import quantize_input

SIGNATURE = "serving_default"
ONNX_SETTINGS = "onnxruntime, graph optimizations disabled, every kept tensor marked as an output"
TFLITE_SETTINGS = "LiteRT built-in kernels (no XNNPACK), experimental_preserve_all_tensors=True, batch 1"


@dataclass
class Tensor:
    """One intermediate tensor of a candidate, batch-first, as float64-comparable values."""

    name: str
    scopes: list[str]  # the names that carry TF name scopes: node name and tensor name (ONNX), fused parts (TFLite)
    values: np.ndarray
    order: int  # execution order of the op that produced it
    output: str | None = None  # the contract output it is, when it is a graph/signature output


def onnx_tensors(path: Path, inputs: Mapping[str, np.ndarray], contract: ModelContract,
                 keep: Callable[[list[str]], bool]) -> list[Tensor]:
    """Run the ONNX model with the kept node outputs as extra graph outputs; return them in node order."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    outputs = {tensor.name for tensor in graph.output}
    wanted: list[tuple[str, list[str], int]] = []
    for order, node in enumerate(graph.node):
        for name in node.output:
            scopes = [node.name, name]
            if name and (name in outputs or keep(scopes)):
                wanted.append((name, scopes, order))
                if name not in outputs:
                    graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed_types = {item.name: item.type for item in session.get_inputs()}
    feed = {name: np.ascontiguousarray(inputs[name], dtype=_ORT_FEED.get(feed_types[name], np.float32))
            for name in feed_types}
    names = [item.name for item in session.get_outputs()]
    values = dict(zip(names, session.run(names, feed), strict=True))
    contract_outputs = set(contract.output_names)
    return [Tensor(name, scopes, values[name], order, name if name in contract_outputs else None)
            for name, scopes, order in wanted if _is_float(values.get(name))]


_ORT_FEED = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _is_float(value) -> bool:
    return value is not None and isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim >= 1


def tflite_tensors(path: Path, inputs: Mapping[str, np.ndarray], contract: ModelContract,
                   keep: Callable[[list[str]], bool]) -> list[Tensor]:
    """Invoke the TFLite model once per example, keeping every op output; return them stacked, in op order."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    signature = interpreter._get_full_signature_list().get(SIGNATURE)
    if signature:
        input_index, output_index = signature["inputs"], signature["outputs"]
    else:
        input_index = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        output_index = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    output_of = {index: name for name, index in output_index.items()}
    count = len(next(iter(inputs.values())))
    collected: dict[int, list[np.ndarray]] = {}
    order: dict[int, int] = {}
    for example in range(count):
        for name, index in input_index.items():
            interpreter.resize_tensor_input(index, list(np.shape(inputs[name][example:example + 1])))
        interpreter.allocate_tensors()
        details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
        for name, index in input_index.items():
            interpreter.set_tensor(index, quantize_input(inputs[name][example:example + 1], details[index]))
        interpreter.invoke()
        for position, op in enumerate(interpreter._get_ops_details()):
            for index in op["outputs"]:
                detail = details.get(int(index))
                if detail is None or not (int(index) in output_of or keep(_tflite_scopes(detail["name"]))):
                    continue
                value = _dequantize(interpreter.get_tensor(int(index)), detail)
                if value is None:
                    continue
                collected.setdefault(int(index), []).append(value)
                order.setdefault(int(index), position)
    names = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    tensors = []
    for index, parts in sorted(collected.items(), key=lambda item: order[item[0]]):
        if len(parts) != count or len({part.shape for part in parts}) != 1:
            continue
        tensors.append(Tensor(names[index], _tflite_scopes(names[index]), np.concatenate(parts), order[index],
                              output_of.get(index)))
    return tensors


def _tflite_scopes(name: str) -> list[str]:
    # A fused op's output is named after every TF op it replaced: "m/conv/Relu;m/conv/BiasAdd;m/bn/mul_1".
    return [part for part in name.split(";") if part]


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray | None:
    dtype = np.dtype(detail["dtype"])
    if value.ndim == 0:
        return None
    if dtype.kind == "f":
        return value.astype(np.float32, copy=True)
    scales = detail.get("quantization_parameters", {}).get("scales", np.zeros(0))
    scale, zero_point = detail["quantization"]
    if dtype.kind in "iu" and scale and len(scales) <= 1:
        return (value.astype(np.float32) - zero_point) * scale
    return None
