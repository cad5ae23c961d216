"""Function calls a SavedModel marks for XLA compilation, and a copy without the marks for tf2onnx to inline.

Keras 3's TensorFlow backend runs some ops as a nested `tf.function(jit_compile=True)`: a grouped convolution
(`Conv2D(groups=...)`, which is how ConvNeXt writes its depthwise convolution) and a channels-first 3-D convolution
(keras/src/backend/tensorflow/nn.py, `conv`: TensorFlow's CPU kernels get them wrong without XLA). In the SavedModel
each such call is a `StatefulPartitionedCall` node carrying `_XlaMustCompile: true`, calling a function that carries
the same mark and `_noinline`. tf2onnx freezes the signature and inlines its function calls with grappler, whose
function inliner skips every call marked for XLA compilation ("Skip function calls that we plan to compile later",
tensorflow/core/grappler/optimizers/function_optimizer.cc): the call reaches tf2onnx whole, as a
`StatefulPartitionedCall` it has no ONNX mapping for, at every opset.

The mark says only how TensorFlow must run the body (as one XLA cluster); the ops inside are ordinary TensorFlow
ops tf2onnx maps (a grouped Conv2D becomes an ONNX Conv with `group`). So tf2onnx is given a copy of the SavedModel
without the marks, and grappler inlines those calls like any other. The bundle's own SavedModel keeps them:
TensorFlow itself still needs XLA to run these ops on a CPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The call-node and function attribute `tf.function(jit_compile=True)` sets (tensorflow/compiler/jit/defs.h).
XLA_MUST_COMPILE = "_XlaMustCompile"
# Set with it on the called function (tf.function never inlines a jit-compiled function); dropped with it.
NO_INLINE = "_noinline"
SAVED_MODEL_FILE = "saved_model.pb"
# Written from the original files' checksums: the copy's would be stale, and loading does not need one.
FINGERPRINT_FILE = "fingerprint.pb"
# Bookkeeping ops every function body has; the rest say what the compiled calls compute.
_PLUMBING_OPS = frozenset({"Identity", "ReadVariableOp", "NoOp", "Const"})


def _marked(holder) -> bool:
    value = holder.attr.get(XLA_MUST_COMPILE)
    return value is not None and value.b


def _call_nodes(meta_graph):
    """Every node of the graph and of its function bodies."""
    yield from meta_graph.graph_def.node
    for function in meta_graph.graph_def.library.function:
        yield from function.node_def


def _read(saved_model: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model / SAVED_MODEL_FILE).read_bytes())
    return proto


def xla_marked_calls(saved_model: Path) -> dict:
    """The SavedModel's calls marked for XLA compilation.

    Returns:
        `calls` (how many call nodes carry the mark; 0 when none do) and `ops` (the op types the called functions
        compute, bookkeeping ops left out), e.g. {"calls": 18, "ops": ["Conv2D"]} for ConvNeXtTiny.
    """
    proto = _read(saved_model)
    calls, called = 0, set()
    for meta_graph in proto.meta_graphs:
        for node in _call_nodes(meta_graph):
            if _marked(node):
                calls += 1
                called.add(node.attr["f"].func.name if "f" in node.attr else node.op)  # a direct call: op = name
    ops = {node.op for meta_graph in proto.meta_graphs for function in meta_graph.graph_def.library.function
           if function.signature.name in called for node in function.node_def}
    return {"calls": calls, "ops": sorted(ops - _PLUMBING_OPS)}


def write_without_xla_marks(saved_model: Path, destination: Path) -> int:
    """Copy the SavedModel to `destination` (a new directory) with its XLA-compilation marks removed.

    Only `saved_model.pb` is rewritten: the variables and assets are hard links to the originals where the file
    system allows (a ConvNeXtXLarge checkpoint is 1.4 GB), copies otherwise; neither is ever written through.

    Returns:
        How many call nodes lost their mark.

    Raises:
        FileExistsError: `destination` exists (a copy is never merged into another directory).
    """
    shutil.copytree(saved_model, destination, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns(SAVED_MODEL_FILE, FINGERPRINT_FILE))
    proto = _read(saved_model)
    unmarked = 0
    for meta_graph in proto.meta_graphs:
        for node in _call_nodes(meta_graph):
            if _marked(node):
                unmarked += 1
            node.attr.pop(XLA_MUST_COMPILE, None)
        for function in meta_graph.graph_def.library.function:
            if _marked(function):
                function.attr.pop(NO_INLINE, None)
            function.attr.pop(XLA_MUST_COMPILE, None)
    (destination / SAVED_MODEL_FILE).write_bytes(proto.SerializeToString(deterministic=True))
    return unmarked


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, destination)
