"""The fp16 bound measured on the graph the converter stores, not only on the Keras layers.

TFLite's fp16 variant is the converted float32 graph with every float constant stored as float16. The converter
first folds what it can: a BatchNormalization after a convolution becomes part of that convolution's kernel and
bias (kernel x gamma / sqrt(variance + epsilon)), so the values rounded to float16 are the folded ones, not the
Keras weights. The reference's `fp16_weight_twin` rounds the Keras weights one by one, which can underestimate the
artifact's own error: on EfficientNetV2B0 (59 folded pairs) the twin moved a probability by 0.015 while the fp16
artifact moved it by 0.041, and the tflite-fp32 artifact with its float constants rounded to float16 moved it by
0.041 as well (2e-5 from the fp16 artifact: the same arithmetic).

So where the bundle has a tflite-fp32 artifact that answers like the reference (closer to it than float16 rounding
moves the reference), the fp16 candidate's bound follows that artifact's own rounding error: the tflite-fp32 model
against the same bytes with every float32 constant rounded to float16, both in LiteRT on the same eval and edge
inputs. The fp16 artifact itself never enters its own bound (a fault planted in it still fails). Otherwise the
bound follows the Keras twin as before, and the candidate's `fp16_error` record says which was used and why.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from kerasport.compare import error_statistics
from kerasport.errors import ConversionError
from kerasport.manifest import Artifact
from kerasport.runtimes import RuntimeSettings, open_runtime
from kerasport.tflite_flatbuffer import buffer_view

from .first_load import first_load
from .runners import EDGE_BATCH_SIZES, CandidateOutputs, Outputs, Reference, run_everything

STORED_GRAPH_SOURCE = "the tflite-fp32 graph with its float constants rounded to float16, against itself"
KERAS_TWIN_SOURCE = "the Keras reference with float16-rounded weights, against itself"
# The tflite-fp32 graph answers like the reference when it is within the fp32 gate's default bound of it
# (max(1e-5, 5 x the reference's own float32 error)) or within the Keras twin's fp16 error, whichever is larger.
FLOAT32_FLOOR = 1e-5
FLOAT32_MULTIPLE = 5.0


def round_float_constants(model: bytes) -> tuple[bytes, int]:
    """The TFLite flatbuffer `model` with every float32 constant tensor's values rounded to float16 and back.

    Returns:
        (the new flatbuffer, how many constant tensors were rounded). The graph, shapes and types are unchanged.
    """
    from ai_edge_litert import schema_py_generated as schema

    raw = bytearray(model)
    root = schema.Model.GetRootAsModel(raw, 0)
    rounded = set()
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if tensor.Type() != schema.TensorType.FLOAT32 or tensor.Buffer() in rounded:
                continue
            data = buffer_view(root.Buffers(tensor.Buffer()), raw)
            if data is None:
                continue
            values = data.view(np.float32)
            values[:] = values.astype(np.float16).astype(np.float32)
            rounded.add(tensor.Buffer())
    return bytes(raw), len(rounded)


def with_stored_fp16_error(shared: CandidateOutputs, fp32_graph: Artifact | None, reference: Reference,
                           data) -> tuple[Reference, dict]:
    """The reference an fp16 candidate is judged against, its fp16 error taken from the stored graph where it can.

    Args:
        shared: the candidates' default outputs (the tflite-fp32 graph as it is comes from there).
        fp32_graph: the bundle's tflite-fp32 artifact, or None.
        reference: the reference, with the Keras twin's fp16 error in its noise (`fp16_max_abs_diff`).
        data: the eval data (inputs and edge inputs).

    Returns:
        (the reference with `fp16_max_abs_diff`/`fp16_edge_max_abs_diff` replaced where the stored graph's error
        was measured, the record for the candidate's `fp16_error`: source, why, per output eval/edge error and the
        Keras twin's figure beside it).
    """
    twin = {name: {"eval": stats.get("fp16_max_abs_diff"), "edge": stats.get("fp16_edge_max_abs_diff")}
            for name, stats in reference.noise.items()}
    if fp32_graph is None:
        return reference, {"source": KERAS_TWIN_SOURCE, "why": "the bundle has no tflite-fp32 artifact",
                           "outputs": twin}
    try:
        measured = _stored_graph_error(shared, fp32_graph, reference, data)
    except ConversionError as error:
        return reference, {"source": KERAS_TWIN_SOURCE, "why": f"{fp32_graph.name} did not run: {error}",
                           "outputs": twin}
    if isinstance(measured, str):
        return reference, {"source": KERAS_TWIN_SOURCE, "why": measured, "outputs": twin}
    noise = {name: {**stats, "fp16_max_abs_diff": measured[name]["eval"],
                    "fp16_edge_max_abs_diff": measured[name]["edge"],
                    "fp16_source": f"the fp16 rounding error of the stored graph ({fp32_graph.name} with float16 "
                                   f"constants vs itself)"}
             for name, stats in reference.noise.items()}
    record = {"source": STORED_GRAPH_SOURCE, "artifact": fp32_graph.name,
              "why": "the converter folds layers (batch normalization into convolutions) before it rounds to "
                     "float16, so the stored graph's rounding is the fp16 artifact's own",
              "outputs": {name: {**measured[name], "keras_twin": twin[name]} for name in measured}}
    return dataclasses.replace(reference, noise=noise), record


def _stored_graph_error(shared: CandidateOutputs, fp32_graph: Artifact, reference: Reference,
                        data) -> dict[str, dict] | str:
    """Per output, the tflite-fp32 graph's max |rounded - itself| on the eval and edge inputs; a str (why not)
    when that graph does not answer like the reference."""
    plain = shared.get(fp32_graph)
    for name, noise in reference.noise.items():
        distance = error_statistics(reference.outputs.eval[name], plain.eval[name])["max_abs_diff"]
        float32 = FLOAT32_MULTIPLE * max(noise["max_abs_diff"], noise.get("float32_max_abs_diff", 0.0))
        allowed = max(noise.get("fp16_max_abs_diff") or 0.0, FLOAT32_FLOOR, float32)
        if distance > allowed:
            return (f"{fp32_graph.name} is {distance:.3g} from the reference on {name!r}, more than float16 "
                    f"rounding or float32 order move the reference ({allowed:.3g}): not the same model to "
                    f"measure rounding on")
    rounded = rounded_graph_outputs(shared, fp32_graph, data)
    return {name: {"eval": error_statistics(plain.eval[name], rounded.eval[name])["max_abs_diff"],
                   "edge": max(error_statistics(plain.edge[b][name], rounded.edge[b][name])["max_abs_diff"]
                               for b in EDGE_BATCH_SIZES)}
            for name in reference.noise}


def rounded_graph_outputs(shared: CandidateOutputs, fp32_graph: Artifact, data) -> Outputs:
    """The outputs of `fp32_graph` with its float constants rounded to float16, on the eval and edge inputs;
    computed once per gate (`shared`), its first load in an isolated child.

    Raises:
        ConversionError: the rounded graph would not load or run.
    """
    what = rounded_key(fp32_graph)

    def compute() -> Outputs:
        model, _ = round_float_constants(shared.path(fp32_graph).read_bytes())
        with tempfile.TemporaryDirectory(prefix="kerasport-fp16-") as scratch:
            path = Path(scratch) / "model_fp32_rounded.tflite"
            path.write_bytes(model)
            first_load(path, "tflite", "ai-edge-litert", what, data.inputs)
            return run_everything(open_runtime(path, "tflite", RuntimeSettings()), data.inputs, data.edges.inputs)

    return shared.once(what, compute)


def rounded_key(fp32_graph: Artifact) -> str:
    """What the rounded graph's run is called (in messages, and its key in CandidateOutputs)."""
    return f"{fp32_graph.name} with float16-rounded constants"
