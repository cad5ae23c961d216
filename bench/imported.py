"""Imported-model benchmark (issue 8's bars): a MobileNetV2 made elsewhere goes through `kerasport import`, `export`
(every variant) and `parity` as a user runs them (subprocesses), then is served by a real `kerasport serve` and
timed over HTTP side by side with the same runtime called in-process — all in one run.

    python bench/imported.py [--variants onnx-fp32,tflite-fp32] [--requests 200] [--rounds 2] [--threads 0]
                             [--eval-examples 64] [--calibration-examples 200] [--work DIR] [--json out.json]

Bars: export of every variant <= 120 s on 2 cores; every fp32 variant within the fp32 tolerance; served single-image
p50 latency over HTTP (V2 JSON) reported next to the in-process p50 of the same runtime and settings.
The model is keras.applications.MobileNetV2(weights=None, 96x96x3, alpha 0.35, 5 classes) with batch-norm
statistics set from noise (devtools/imported_models.py says why); pictures are uniform noise 0..255.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kerasport.tfenv import quiet_tensorflow  # noqa: E402
from kerasport.verdict import Verdict

quiet_tensorflow()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for devtools/, shared with the tests

import numpy as np  # noqa: E402

KERASPORT = str(Path(sys.executable).with_name("kerasport"))
EXPORT_BAR_SECONDS = 120.0
MODEL_NAME = "mobilenet-v2"


def timed_command(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one `kerasport` command in its own process (TensorFlow start-up included, as a user sees it)."""
    started = time.perf_counter()
    done = subprocess.run([KERASPORT, *args], capture_output=True, text=True)
    return time.perf_counter() - started, done


def build_bundle(work: Path, eval_examples: int, calibration_examples: int) -> dict:
    """Save the model and its data, then import, export and parity-check it; the seconds and answers of each step."""
    from devtools.imported_models import MOBILENET_LABELS, mobilenet_v2, noise_pictures

    model = mobilenet_v2()
    model.save(work / "mobilenet.keras")
    labels = np.random.default_rng(1).integers(0, len(MOBILENET_LABELS), eval_examples)
    np.savez(work / "eval.npz", x=noise_pictures(eval_examples, seed=1), y=labels)
    np.savez(work / "calibration.npz", x=noise_pictures(calibration_examples, seed=2))
    run = work / "run"
    import_seconds, done = timed_command(
        "import", str(work / "mobilenet.keras"), "--run", str(run), "--eval-data", f"npz:{work / 'eval.npz'}",
        "--calibration-data", f"npz:{work / 'calibration.npz'}", "--labels", ",".join(MOBILENET_LABELS),
        "--name", MODEL_NAME, "--calibration-samples", str(calibration_examples))
    if done.returncode:
        raise SystemExit(f"kerasport import failed: {done.stderr.strip()[-2000:]}")
    export_seconds, done = timed_command("export", "--run", str(run), "--calibration-samples",
                                         str(calibration_examples), "--json")
    if done.returncode:
        raise SystemExit(f"kerasport export failed: {done.stderr.strip()[-2000:]}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    # Default tolerances, no settings sweep: the verdicts a release would get. Exit 1 (a check failed) is a figure.
    parity_seconds, done = timed_command("parity", "--run", str(run), "--no-sweep")
    if done.returncode not in (0, 1):
        raise SystemExit(f"kerasport parity failed to run: {done.stderr.strip()[-2000:]}")
    report = json.loads((run / "parity" / "report.json").read_text())
    return {"run": run, "parameters": model.count_params(), "import_seconds": import_seconds,
            "export_seconds": export_seconds, "rows": rows, "parity_seconds": parity_seconds,
            "parity_exit": done.returncode, "report": report}


def parity_figures(report: dict) -> dict[str, dict]:
    """Per candidate: verdict, failing checks, and the largest |diff| from the reference over outputs and inputs."""
    figures = {}
    for name, result in report["candidates"].items():
        diffs = [stats["max_abs_diff"] for output in result.get("outputs", {}).values()
                 for stats in [output.get("eval", {}), *output.get("edge", {}).values()] if "max_abs_diff" in stats]
        precision_class = {"dynamic-int8": "int8"}.get(result["precision"], result["precision"])
        figures[name] = {"precision": result["precision"], "verdict": result["verdict"],
                         "max_abs_diff": max(diffs) if diffs else float("nan"),
                         "atol": report["tolerances"].get(precision_class, {}).get("atol"),
                         "failed_checks": [check["id"] for check in result["checks"] if not check["passed"]]}
    return figures


def v2_body(name: str, picture: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": list(picture.shape), "datatype": "FP32",
                                   "data": picture.ravel().tolist()}]}).encode()


def http_latency(url: str, path: str, body: bytes, requests: int) -> dict:
    """Sequential requests on one keep-alive connection after one warm-up: p50/p99 ms."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json"}

    def one() -> None:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")

    one()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        one()
        samples.append(time.perf_counter() - started)
    connection.close()
    ordered = sorted(samples)
    return {"requests": requests, "p50_ms": statistics.median(samples) * 1e3,
            "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3}


def in_process_latency(run: Path, variant: str, inputs: dict[str, np.ndarray], requests: int, threads: int) -> dict:
    """The runtime `kerasport serve` opens, with its settings, called directly: one warm-up, then p50/p99 ms."""
    from kerasport.manifest import load_manifest
    from kerasport.runtimes import RuntimeSettings, open_runtime

    artifact = load_manifest(run).artifact(variant)
    runtime = open_runtime(artifact.resolve(run), artifact.format,
                           RuntimeSettings(threads=threads, spinning=True, memory_pattern=False))
    runtime.run(inputs)
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        runtime.run(inputs)
        samples.append(time.perf_counter() - started)
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(samples) * 1e3,
            "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3}


def serving_figures(run: Path, variants: list[str], verdicts: dict[str, dict], requests: int, threads: int,
                    rounds: int) -> dict:
    """Per variant: HTTP and in-process p50/p99, each the best of `rounds` (this VM's neighbours add noise, never
    speed)."""
    from devtools.imported_models import noise_pictures
    from devtools.serving import ServerProcess
    from kerasport.manifest import load_manifest

    (name,) = load_manifest(run).contract.input_names
    picture = noise_pictures(1, seed=7)
    body = v2_body(name, picture)
    results = {}
    for variant in variants:
        unverified = verdicts.get(variant, {}).get("verdict") != Verdict.PASS
        server = ServerProcess(run, "--variant", variant, "--threads", str(threads), "--no-access-log",
                               *(["--allow-unverified"] if unverified else []))
        try:
            served = min((http_latency(server.url, f"/v2/models/{MODEL_NAME}/infer", body, requests)
                          for _ in range(rounds)), key=lambda r: r["p50_ms"])
        finally:
            server.stop()
        local = min((in_process_latency(run, variant, {name: picture}, requests, threads) for _ in range(rounds)),
                    key=lambda r: r["p50_ms"])
        results[variant] = {"http": served, "in_process": local, "unverified": unverified,
                            "added_ms": served["p50_ms"] - local["p50_ms"]}
    return results


def print_tables(built: dict, parity: dict, serving: dict, requests: int, rounds: int) -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"\n== MobileNetV2 96x96x3 alpha 0.35, 5 classes ({built['parameters']:,} parameters), {cores} cores; "
          f"import {built['import_seconds']:.1f} s, parity {built['parity_seconds']:.1f} s "
          f"(exit {built['parity_exit']})")
    print(f"{'variant':<16}{'size MB':>9}{'export s':>10}{'parity':>8}{'max|diff|':>12}{'atol':>8}  failing checks")
    for row in built["rows"]:
        figures = parity.get(row["variant"])  # tflm (a C array) has no runtime here, so no parity
        checked = (f"{figures['verdict']:>8}{figures['max_abs_diff']:>12.2e}"
                   f"{figures['atol'] if figures['atol'] is not None else '-':>8}  "
                   f"{', '.join(figures['failed_checks'])}") if figures else f"{'-':>8}{'-':>12}{'-':>8}"
        print(f"{row['variant']:<16}{row.get('bytes', 0) / 1e6:>9.2f}{row['seconds']:>10.2f}{checked}")
    variant_total = sum(row["seconds"] for row in built["rows"])
    verdict = "within" if built["export_seconds"] <= EXPORT_BAR_SECONDS else "OVER"
    print(f"{'all variants':<16}{'':>9}{variant_total:>10.2f}   `kerasport export` wall "
          f"{built['export_seconds']:.1f} s incl. start-up ({verdict} the {EXPORT_BAR_SECONDS:.0f} s bar)")
    fp32 = {name: f for name, f in parity.items() if f["precision"] == "fp32"}
    diffs = ", ".join(f"{name} {f['max_abs_diff']:.1e}" for name, f in fp32.items())
    print(f"fp32 variants within the fp32 tolerance: {all(f['verdict'] == 'pass' for f in fp32.values())} ({diffs})")
    print(f"\n== served single-image p50 over HTTP (V2 JSON, {requests} sequential requests, 1 warm-up, best "
          f"of {rounds}) vs the same runtime in-process")
    print(f"{'variant':<14}{'HTTP p50 ms':>12}{'HTTP p99 ms':>12}{'in-proc p50':>12}{'in-proc p99':>12}"
          f"{'added ms':>10}")
    for variant, r in serving.items():
        note = "  (unverified)" if r["unverified"] else ""
        print(f"{variant:<14}{r['http']['p50_ms']:>12.3f}{r['http']['p99_ms']:>12.3f}{r['in_process']['p50_ms']:>12.3f}"
              f"{r['in_process']['p99_ms']:>12.3f}{r['added_ms']:>10.3f}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="onnx-fp32,tflite-fp32", help="variants to serve and time")
    parser.add_argument("--requests", type=int, default=200, help="sequential timed requests per variant")
    parser.add_argument("--rounds", type=int, default=2, help="repeat each latency measurement, keep the best")
    parser.add_argument("--threads", type=int, default=0, help="runtime threads, server and in-process (0: default)")
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--calibration-examples", type=int, default=200)
    parser.add_argument("--work", help="scratch directory (default: a new temporary one)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kerasport-bench-imported-"))
    work.mkdir(parents=True, exist_ok=True)
    built = build_bundle(work, args.eval_examples, args.calibration_examples)
    parity = parity_figures(built["report"])
    serving = serving_figures(built["run"], args.variants.split(","), parity, args.requests, args.threads,
                              args.rounds)
    print_tables(built, parity, serving, args.requests, args.rounds)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "run": str(built["run"]), "parameters": built["parameters"], "cores": len(os.sched_getaffinity(0)),
            "import_seconds": built["import_seconds"], "export_seconds": built["export_seconds"],
            "export_bar_seconds": EXPORT_BAR_SECONDS, "export": built["rows"],
            "parity_seconds": built["parity_seconds"], "parity_exit": built["parity_exit"], "parity": parity,
            "serving": serving}, indent=2))


if __name__ == "__main__":
    main()
