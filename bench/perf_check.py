"""An independent check of the batch-1 latency kerasport recorded: imports nothing from kerasport.

For every candidate with a measured `performance` entry in `<run>/manifest.json`, this script times the artifact's
runtime (onnxruntime or LiteRT, default settings, as kerasport measures) in a fresh Python process of its own,
three times, and compares the median of the three p50s with the recorded p50: within 25 % passes.

    python bench/perf_check.py --run build [--rounds 3] [--tolerance 0.25] [--json out.json]

Exit 0 when every candidate agrees, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

TOLERANCE = 0.25
ROUNDS = 3
WARMUP, RUNS = 10, 100

# The timing child: the artifact in its runtime, a batch-1 input of the right dtype and shape, p50 of RUNS calls.
TIMER = r"""
import json, sys, time
import numpy as np
path, fmt, specs, warmup, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)

def example(shape, dtype, value_range):
    shape = [1] + [d if d > 0 else 1 for d in shape[1:]]
    low, high = value_range or (0.0, 1.0)
    if np.dtype(dtype).kind in "iub":
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        low, high = (max(low, info.min), min(high, info.max)) if info else (0, 1)
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)

if fmt == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(float16)": "float16", "tensor(double)": "float64"}
    feed = {i.name: example(specs[i.name]["shape"], types.get(i.type, "float32"), specs[i.name].get("value_range"))
            for i in session.get_inputs()}
    call = lambda: session.run(None, feed)
else:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path)
    signature = interpreter.get_signature_runner().get_input_details()
    for name, detail in signature.items():
        interpreter.resize_tensor_input(detail["index"], [1] + [d if d > 0 else 1 for d in specs[name]["shape"][1:]])
    interpreter.allocate_tensors()
    values = {detail["index"]: example(specs[name]["shape"], np.dtype(detail["dtype"]).name,
                                       specs[name].get("value_range") if np.dtype(detail["dtype"]).kind == "f"
                                       else None)
              for name, detail in signature.items()}
    outputs = [detail["index"] for detail in interpreter.get_output_details()]
    def call():
        for index, value in values.items():
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in outputs]
for _ in range(warmup):
    call()
samples = []
for _ in range(runs):
    started = time.perf_counter()
    call()
    samples.append((time.perf_counter() - started) * 1e3)
print(json.dumps({"p50_ms": float(np.percentile(samples, 50))}))
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_in_fresh_process(path: Path, artifact_format: str, specs: dict) -> float:
    child = subprocess.run([sys.executable, "-c", TIMER, str(path), artifact_format, json.dumps(specs), str(WARMUP),
                            str(RUNS)], capture_output=True, text=True, timeout=300)
    if child.returncode != 0:
        raise RuntimeError(f"{path.name}: {(child.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads(child.stdout.strip().splitlines()[-1])["p50_ms"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="build")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    performance = manifest.get("performance") or {}
    if not performance:
        print(f"error: {run}/manifest.json has no performance block; run `kerasport parity` or `kerasport bench`",
              file=sys.stderr)
        return 2
    specs = {spec["name"]: {"shape": spec["shape"], "value_range": spec.get("value_range")}
             for spec in manifest["inputs"]}
    rows, agree = [], True
    recorded_host = performance.get("host", {})
    print(f"host now: {cpu_model()}, {os.cpu_count()} cores; recorded on: {recorded_host.get('cpu_model')}, "
          f"{recorded_host.get('cores')} cores")
    print(f"{'candidate':<16}{'recorded p50 ms':>16}{'check p50 ms (3 runs)':>26}{'median':>9}{'ratio':>8}  ok")
    for name, figures in performance.get("candidates", {}).items():
        if not figures.get("measured"):
            continue
        artifact = manifest["artifacts"][name]
        timings = [time_in_fresh_process(run / artifact["path"], artifact["format"], specs)
                   for _ in range(args.rounds)]
        median = statistics.median(timings)
        recorded = figures["latency_ms"]["p50"]
        ratio = median / recorded
        ok = abs(ratio - 1) <= args.tolerance
        agree &= ok
        rows.append({"candidate": name, "recorded_p50_ms": recorded, "check_p50_ms": timings, "median_ms": median,
                     "ratio": ratio, "within": ok})
        print(f"{name:<16}{recorded:>16.3f}{' / '.join(f'{t:.3f}' for t in timings):>26}{median:>9.3f}"
              f"{ratio:>8.2f}  {'yes' if ok else 'NO'}")
    print(f"bar: the median of {args.rounds} fresh-process p50s within {args.tolerance:.0%} of the recorded p50")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"host": {"cpu_model": cpu_model(), "cores": os.cpu_count(),
                                                             "python": platform.python_version()},
                                                    "recorded_host": recorded_host, "rows": rows,
                                                    "tolerance": args.tolerance}, indent=2))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
