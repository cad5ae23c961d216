"""int8 recipes benchmark: full vs auto on one trained bundle, every figure measured side by side in this run.

Trains `--epochs 1 --limit 500 --seed 42` (what `kerasport run` does first; where full int8 fails the gate), then:

- exports it twice, `--int8-recipe full` and `--int8-recipe auto` (wall seconds of each `kerasport export`, and
  the search seconds auto recorded), and runs the parity gate on both: the verdicts of every int8 variant;
- per auto int8 variant: the layers its recipe keeps in float, its size over its fp32 twin's, and its batch-1
  speed-up over the fp32 twin (median of --repeats interleaved runs in the same runtime);
- exports a third copy with `--int8-recipe <auto's export/ folder>`: the int8 bytes must equal auto's.

    python bench/int8_recipes.py [--work DIR] [--trained DIR] [--repeats 200] [--json out.json]

Bars (issue 19): every int8 variant passes with auto; at most 3 float layers; size <= 0.4x and batch-1 speed >=
2x the fp32 twin; the search adds at most 60 s to the export.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

INT8 = {"onnx-int8": ("onnx-fp32", "onnx"), "tflite-int8": ("tflite-fp32", "tflite"), "tflm": (None, None)}
TRAIN = ["--epochs", "1", "--limit", "500", "--seed", "42"]
BARS = {"max_float_layers": 3, "max_size_ratio": 0.4, "min_speedup": 2.0, "max_search_seconds": 60.0}
PACKAGES = ("tensorflow", "onnxruntime", "ai-edge-litert", "tflite-micro", "tf2onnx")


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else \
        platform.processor()
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "versions": versions}


def kerasport(*args: str) -> tuple[int, float]:
    """Run the CLI in a child process; (exit code, wall seconds)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kerasport.app.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"kerasport {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.returncode, seconds


def verdicts(run: Path) -> dict[str, str]:
    report = json.loads((run / "parity" / "report.json").read_text())
    return {name: report["candidates"][name]["verdict"] for name in INT8 if name in report["candidates"]}


def speedup(run: Path, int8: str, fp32: str, artifact_format: str, repeats: int) -> dict:
    """Batch-1 median seconds of the fp32 twin and the int8 variant, interleaved so both see the same machine."""
    from kerasport.manifest import load_manifest
    from kerasport.runtimes import RuntimeSettings, open_runtime
    from kerasport.samples import load_samples

    manifest = load_manifest(run)
    sample = load_samples(manifest.artifact("tuning_sample").resolve(run), manifest.contract)
    example = {name: array[:1] for name, array in sample.inputs.items()}
    runtimes = {name: open_runtime(manifest.artifact(name).resolve(run), artifact_format, RuntimeSettings())
                for name in (fp32, int8)}
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(3):
        for runtime in runtimes.values():
            runtime.run(example)
    for _ in range(repeats):
        for name, runtime in runtimes.items():
            started = time.perf_counter()
            runtime.run(example)
            times[name].append(time.perf_counter() - started)
    fp32_ms, int8_ms = (statistics.median(times[name]) * 1e3 for name in (fp32, int8))
    return {"fp32_ms": round(fp32_ms, 3), "int8_ms": round(int8_ms, 3), "speedup": round(fp32_ms / int8_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--trained", help="an existing bundle trained with " + " ".join(TRAIN))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="kerasport-int8-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    trained = Path(args.trained) if args.trained else work / "trained"
    if not args.trained:
        kerasport("train", *TRAIN, "--run", str(trained))
    from kerasport.manifest import load_manifest

    results: dict = {"machine": machine(), "trained_with": " ".join(TRAIN), "bars": BARS, "modes": {}}
    for mode in ("full", "auto"):
        run = work / mode
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(trained, run)
        _, export_seconds = kerasport("export", "--run", str(run), "--int8-recipe", mode)
        gate, parity_seconds = kerasport("parity", "--run", str(run))
        manifest = load_manifest(run)
        variants = {}
        for name, (twin, artifact_format) in INT8.items():
            entry = manifest.artifact(name)
            recipe = entry.get("int8_recipe") or {}
            row = {"verdict": verdicts(run).get(name), "float_layers": recipe.get("recipe", {}).get("float_layers"),
                   "search_seconds": recipe.get("search_seconds"), "outcome": recipe.get("outcome"),
                   "bytes": entry.get("bytes")}
            if twin is not None:
                row["size_ratio"] = round(entry.get("bytes") / manifest.artifact(twin).get("bytes"), 3)
                row.update(speedup(run, name, twin, artifact_format, args.repeats))
            variants[name] = row
        results["modes"][mode] = {"export_seconds": round(export_seconds, 1), "gate_exit": gate,
                                  "parity_seconds": round(parity_seconds, 1), "variants": variants}
    auto, full = results["modes"]["auto"], results["modes"]["full"]
    results["search_seconds"] = round(sum(auto["variants"][name]["search_seconds"] or 0.0
                                          for name in ("onnx-int8", "tflite-int8")), 1)
    results["export_added_seconds"] = round(auto["export_seconds"] - full["export_seconds"], 1)
    results["export_ratio"] = round(auto["export_seconds"] / full["export_seconds"], 2)
    reproduced = work / "file"
    shutil.rmtree(reproduced, ignore_errors=True)
    shutil.copytree(trained, reproduced)
    kerasport("export", "--run", str(reproduced), "--formats", ",".join(INT8), "--int8-recipe",
              str(work / "auto" / "export"))
    same = {}
    for name in INT8:
        paths = [load_manifest(run).artifact(name).resolve(run) for run in (work / "auto", reproduced)]
        same[name] = paths[0].read_bytes() == paths[1].read_bytes()
    results["recipe_file_reproduces_bytes"] = same
    report(results)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict) -> None:
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; {m['versions']}")
    print(f"bundle: kerasport train {results['trained_with']}")
    print(f"{'variant':<12}{'full':>7}{'auto':>7}  {'float layers':<22}{'size/fp32':>10}{'fp32 ms':>9}"
          f"{'int8 ms':>9}{'speed-up':>9}")
    for name in INT8:
        full, auto = (results["modes"][mode]["variants"][name] for mode in ("full", "auto"))
        layers = ", ".join(auto["float_layers"] or []) or "none"
        size = f"{auto['size_ratio']:.3f}" if "size_ratio" in auto else "–"
        timing = (f"{auto['fp32_ms']:>9.3f}{auto['int8_ms']:>9.3f}{auto['speedup']:>8.2f}x" if "speedup" in auto
                  else f"{'–':>9}{'–':>9}{'–':>9}")
        print(f"{name:<12}{full['verdict'] or '–':>7}{auto['verdict'] or '–':>7}  {layers:<22}{size:>10}{timing}")
    modes = results["modes"]
    print(f"export: full {modes['full']['export_seconds']:.1f} s, auto {modes['auto']['export_seconds']:.1f} s "
          f"(+{results['export_added_seconds']:.1f} s, x{results['export_ratio']:.2f}); search "
          f"{results['search_seconds']:.1f} s (bar <= {BARS['max_search_seconds']:.0f} s)")
    print(f"--int8-recipe <auto's export/> reproduces the bytes: {results['recipe_file_reproduces_bytes']}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
