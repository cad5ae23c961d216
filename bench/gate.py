"""The parity gate's wall time: today's full TFLM run against the sampled one, side by side in one run.

    python bench/gate.py --run build [--rounds 1] [--json out.json]

Each round copies the bundle twice and runs, as real `kerasport parity` processes:
- `--tflm full --no-perf`: every eval and edge example in TFLite Micro (the gate before sampling);
- the defaults: TFLM on a bounded sample (LiteRT's built-in kernels on the rest where bit-identical), then the
  performance measurement of every passing candidate (its time reported beside the gate's, not inside it).
Prints the gate's own seconds (report.json `seconds`), the process wall time, the tflm candidate's seconds, the
performance block's seconds and the ratio full / sampled, with the machine (CPU model, cores, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kerasport.perf import host_info


def one_gate(bundle: Path, scratch: Path, label: str, options: list[str]) -> dict:
    run = scratch / label
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(bundle, run)
    started = time.perf_counter()
    child = subprocess.run([str(Path(sys.executable).with_name("kerasport")), "parity", "--run", str(run), *options],
                           capture_output=True, text=True)
    wall = time.perf_counter() - started
    report = json.loads((run / "parity" / "report.json").read_text())
    tflm = report["candidates"].get("tflm", {})
    checks = sorted(f"{name}/{check['id']}" for name, result in report["candidates"].items()
                    for check in result["checks"])
    return {"label": label, "options": options, "exit": child.returncode, "wall_s": round(wall, 2),
            "gate_s": report["seconds"], "tflm_s": tflm.get("seconds"),
            "tflm_inferences": (tflm.get("tflm_sample") or {}).get("tflm_inferences"),
            "perf_s": (report.get("performance") or {}).get("seconds"), "checks": checks,
            "passed": report["passed"], "load_average": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="build")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kerasport-bench-gate-"))
    rows = []
    try:
        for _ in range(args.rounds):
            rows.append(one_gate(Path(args.run), scratch, "full", ["--tflm", "full", "--no-perf"]))
            rows.append(one_gate(Path(args.run), scratch, "sampled", []))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    host = host_info()
    print(f"host: {host['cpu_model']}, {host['cores']} cores, {host['versions']}")
    print(f"{'mode':<9}{'gate s':>8}{'wall s':>8}{'tflm s':>8}{'tflm inferences':>17}{'perf s':>8}{'checks':>8}"
          f"{'load avg (1 min)':>18}")
    for row in rows:
        perf = f"{row['perf_s']:.1f}" if row["perf_s"] is not None else "–"
        print(f"{row['label']:<9}{row['gate_s']:>8.1f}{row['wall_s']:>8.1f}{row['tflm_s']:>8.1f}"
              f"{row['tflm_inferences'] or 0:>17}{perf:>8}{len(row['checks']):>8}{row['load_average'][0]:>18.2f}")
    full = [row for row in rows if row["label"] == "full"]
    sampled = [row for row in rows if row["label"] == "sampled"]
    ratio = sum(row["gate_s"] for row in full) / sum(row["gate_s"] for row in sampled)
    same_checks = all(a["checks"] == b["checks"] for a, b in zip(full, sampled, strict=True))
    print(f"gate time full / sampled: {ratio:.2f}x; the same {len(full[0]['checks'])} checks in both: {same_checks}; "
          f"bar: the sampled gate <= 30 s on 2 cores")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"host": host, "rows": rows, "ratio": ratio,
                                                    "same_checks": same_checks}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
