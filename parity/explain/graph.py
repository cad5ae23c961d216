"""The Keras side of `--explain`: every layer's output on the explain inputs, walking the functional graph.

The walk is Keras' own (`Functional._run_through_graph`, the code `Model.__call__` runs) with each operation
wrapped, so the values are exactly what the model computes (`training=False`). The same walk, with a layer's output
replaced by the candidate's counterpart, gives each layer's *local* error: the Keras layer run in float on the
candidate's own inputs to it, against the candidate's output — the error that layer adds by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from kerasport.contract import ModelContract

TRACE_DYNAMIC_SIZE = 8  # a dynamic dimension's size in the zeros the graph is traced with


class ExplainUnavailable(Exception):
    """Per-layer comparison is impossible for this reference (a subclassed model, no Keras model)."""


@dataclass
class LayerNode:
    """One call of a layer (an operation) in the model's graph, in execution order."""

    index: int
    name: str  # the layer's name; `name#k` for the k-th call of a shared layer
    layer_name: str
    kind: str  # the layer's class name
    producers: list[int] = field(default_factory=list)  # indices of the nodes whose outputs it reads (-1: input)
    output: str | None = None  # the contract output it produces, if any
    multiple_outputs: bool = False


def _functional(model):
    import keras

    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_run_through_graph") or not hasattr(graph, "_nodes_by_depth"):
        raise ExplainUnavailable(f"{type(model).__name__} is not a functional Keras model: its layers' outputs "
                                 f"cannot be read one by one")
    return graph


def _numpy(value):
    import keras

    if isinstance(value, (list, tuple)):
        return [_numpy(item) for item in value]
    return np.asarray(keras.ops.convert_to_numpy(value))


class KerasGraph:
    """A functional Keras model's layers, run on named inputs with every layer's output recorded."""

    def __init__(self, model, contract: ModelContract, example: Mapping[str, np.ndarray] | None = None):
        self.model = model
        self.contract = contract
        self._graph = _functional(model)
        self.nodes: list[LayerNode] = []
        self._trace(example)

    # -- the walk ---------------------------------------------------------------------------------------------
    def _walk(self, inputs: Mapping[str, np.ndarray], visit: Callable) -> list:
        """Run the graph; `visit(position, operation, call)` returns the node's output (call() computes it)."""
        arrays = [np.asarray(inputs[spec.name], dtype=spec.dtype) for spec in self.contract.input_specs()]
        position = [0]

        def operation_fn(operation):
            def call(*args, **kwargs):
                if "training" in getattr(operation, "_call_context_args", {}):
                    kwargs["training"] = False
                index = position[0]
                position[0] += 1
                return visit(index, operation, lambda: operation(*args, **kwargs), args)

            return call

        outputs = self._graph._run_through_graph(arrays, operation_fn=operation_fn)
        return outputs if isinstance(outputs, (list, tuple)) else [outputs]

    def _trace(self, example: Mapping[str, np.ndarray] | None) -> None:
        """Name the nodes and find which node feeds which, from one call on one example (default: zeros)."""
        if example is None:
            example = {spec.name: np.zeros(spec.example_shape(1, TRACE_DYNAMIC_SIZE), dtype=spec.dtype)
                       for spec in self.contract.input_specs()}
        else:
            example = {name: np.asarray(array[:1]) for name, array in example.items()}
        produced: dict[int, int] = {}  # id(value) -> node index
        calls: dict[str, int] = {}
        records = []

        def visit(index, operation, compute, args):
            value = compute()
            flat = value if isinstance(value, (list, tuple)) else [value]
            readers = {produced.get(id(arg), -1) for arg in _flatten(args) if _is_tensor(arg)}
            for item in flat:
                produced[id(item)] = index
            calls[operation.name] = calls.get(operation.name, 0) + 1
            records.append((operation, calls[operation.name], sorted(readers), len(flat) > 1 or not flat))
            return value

        outputs = self._walk(example, visit)
        shared = {name for name, count in calls.items() if count > 1}
        for index, (operation, call, producers, multiple) in enumerate(records):
            name = f"{operation.name}#{call}" if operation.name in shared else operation.name
            self.nodes.append(LayerNode(index, name, operation.name, type(operation).__name__, producers,
                                        multiple_outputs=multiple))
        for output_name, value in zip(self.contract.output_names, outputs, strict=False):
            index = produced.get(id(value))
            if index is not None:
                self.nodes[index].output = output_name

    # -- values -------------------------------------------------------------------------------------------------
    def values(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every single-output node's value on `inputs` (batch-first numpy), keyed by node name."""
        recorded: dict[str, np.ndarray] = {}

        def visit(index, operation, compute, args):
            value = compute()
            node = self.nodes[index]
            if not node.multiple_outputs:
                recorded[node.name] = _numpy(value)
            return value

        self._walk(inputs, visit)
        return recorded

    def local_values(self, inputs: Mapping[str, np.ndarray],
                     substitutes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each node run in float on the substituted outputs of the nodes before it.

        A node with a substitute (the candidate's counterpart, in Keras layout) passes the substitute on; the value
        recorded for it is what the Keras layer computes from its (substituted) inputs. Nodes without one pass on
        their own float output.
        """
        recorded: dict[str, np.ndarray] = {}

        def visit(index, operation, compute, args):
            value = compute()
            node = self.nodes[index]
            if node.multiple_outputs:
                return value
            recorded[node.name] = _numpy(value)
            replacement = substitutes.get(node.name)
            return replacement if replacement is not None else value

        self._walk(inputs, visit)
        return recorded


    def outputs_with_error(self, inputs: Mapping[str, np.ndarray], node_name: str,
                           error: np.ndarray) -> list[np.ndarray]:
        """The model's outputs when one node's output is off by `error` (everything else in float)."""

        def visit(index, operation, compute, args):
            value = compute()
            if self.nodes[index].name != node_name:
                return value
            return (_numpy(value) + error).astype(_numpy(value).dtype)

        return [_numpy(value) for value in self._walk(inputs, visit)]


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _flatten(args) -> list:
    flat = []
    for arg in args:
        if isinstance(arg, (list, tuple)):
            flat.extend(_flatten(arg))
        elif isinstance(arg, dict):
            flat.extend(_flatten(list(arg.values())))
        else:
            flat.append(arg)
    return flat


def batch_order_noise(graph: KerasGraph, inputs: Mapping[str, np.ndarray],
                      batched: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per node: max |batch-of-all - one example at a time| — the reference's own noise at that layer."""
    count = len(next(iter(inputs.values())))
    singles = [graph.values({name: array[i:i + 1] for name, array in inputs.items()}) for i in range(count)]
    noise = {}
    for name, value in batched.items():
        stacked = np.concatenate([single[name] for single in singles]) if all(
            name in single for single in singles) else None
        if stacked is None or stacked.shape != value.shape:
            noise[name] = 0.0
            continue
        noise[name] = float(np.max(np.abs(stacked.astype(np.float64) - value))) if value.size else 0.0
    return noise


def fp16_twin(model):
    """The model with every float weight rounded to float16 and back (what fp16 weight storage alone does)."""
    import keras

    twin = keras.models.clone_model(model)
    twin.set_weights([w.astype(np.float16).astype(w.dtype) if w.dtype.kind == "f" else w
                      for w in model.get_weights()])
    return twin
