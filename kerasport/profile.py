"""Where the time goes inside one artifact: the slowest ops, with their share, named after the Keras layers.

onnxruntime profiles through `SessionOptions.enable_profiling` (a Chrome-trace JSON with one `Node` event per kernel
run). LiteRT's Python `Interpreter` has no per-op profiler (the op profiling of LiteRT's `benchmark_model` tool is
C++ only), so a TFLite artifact gets a plain statement of that instead of a table; the fastest ONNX candidate's
profile stands beside it. Node names keep the TensorFlow name scope tf2onnx converted them from
(`StatefulPartitionedCall/<model>_1/conv2_1/Relu`): the scope under the model is the Keras layer, less the `_<n>`
suffix every scope of one trace gets. TensorFlow-free.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

PROFILE_RUNS = 30
TOP_OPS = 10
_TRACE_SUFFIX = re.compile(r"_\d+$")
_WRAPPER_SCOPES = ("StatefulPartitionedCall", "PartitionedCall")
LITERT_UNAVAILABLE = ("LiteRT's Python Interpreter exposes no per-op timing (op profiling lives in the C++ "
                      "`benchmark_model --enable_op_profiling=true` tool), so kerasport cannot profile a TFLite "
                      "artifact from Python")


def keras_layer(node_name: str) -> str | None:
    """The Keras layer a tf2onnx node came from (`.../<model>_1/conv2_1/Relu` -> `conv2`); None for nodes the
    converter added outside any layer (`Transpose__8`)."""
    # onnxruntime names a node it fused "fused <first node's name>"
    segments = [segment for segment in node_name.split(" ")[-1].split("/") if segment not in _WRAPPER_SCOPES]
    if len(segments) < 3:
        return None
    return _TRACE_SUFFIX.sub("", segments[1])


def profile_onnx(path: str | Path, inputs: Mapping[str, np.ndarray], runs: int = PROFILE_RUNS,
                 top: int = TOP_OPS) -> dict:
    """Run an ONNX model `runs` times under onnxruntime's profiler; the `top` slowest nodes by total time.

    Returns:
        {"runtime", "runs", "total_us_per_run", "ops": [{"node", "op_type", "layer", "us_per_run", "share"}],
        "layers": {layer: share}}: per node its median kernel time over the runs; shares of their sum.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort_profile")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {item.name: np.ascontiguousarray(inputs[item.name]) for item in session.get_inputs()}
        for _ in range(runs):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, tuple[list[float], str]] = {}
    for event in trace:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        per_node.setdefault(node, ([], event.get("args", {}).get("op_name", "?")))[0].append(float(event["dur"]))
    # The median run of each node: a run preempted on a shared machine does not inflate one kernel's share.
    typical = {node: (float(np.median(durations)), op_type) for node, (durations, op_type) in per_node.items()}
    total = sum(duration for duration, _ in typical.values()) or 1.0
    ranked = sorted(typical.items(), key=lambda item: -item[1][0])
    layers: dict[str, float] = {}
    for node, (duration, _) in typical.items():
        layer = keras_layer(node) or "(added by the converter)"
        layers[layer] = layers.get(layer, 0.0) + duration / total
    return {"runtime": f"onnxruntime {ort.__version__} (SessionOptions.enable_profiling)", "runs": runs,
            "total_us_per_run": round(total, 2),
            "ops": [{"node": node, "op_type": op_type, "layer": keras_layer(node), "us_per_run": round(d, 2),
                     "share": round(d / total, 4)} for node, (d, op_type) in ranked[:top]],
            "layers": {name: round(share, 4) for name, share in sorted(layers.items(), key=lambda kv: -kv[1])}}
