"""onnxruntime opened with the default thread count stays on the cores its process may use (a taskset, a
container's CPU set): left to its own default, onnxruntime pins pool threads to cores of its choosing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from kerasport.runtimes import default_intra_op_threads

CHILD = textwrap.dedent("""
    import json, os, sys
    os.sched_setaffinity(0, {0})  # confined to one core before any runtime thread exists
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from pathlib import Path
    from kerasport.runtimes import OnnxRuntime, RuntimeSettings

    weights = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.ones(64 * 64, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [weights])
    path = Path(sys.argv[1])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    runtime = OnnxRuntime(path, RuntimeSettings())
    runtime.run({"x": np.ones((256, 64), np.float32)})
    tasks = Path(f"/proc/{os.getpid()}/task")
    print(json.dumps(sorted({(task / "status").read_text().split("Cpus_allowed_list:")[1].split()[0]
                             for task in tasks.iterdir()})))
""")


def test_default_threads_counted_within_the_affinity():
    assert 1 <= default_intra_op_threads() <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or 0 not in os.sched_getaffinity(0),
                    reason="needs core 0 and another core to tell a pinned thread from a confined one")
def test_every_onnxruntime_thread_stays_on_the_process_cores(tmp_path):
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "matmul.onnx")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["0"]
