"""Measured speed and memory of a bundle's deployable artifacts, each in its own fresh child process.

TensorFlow-free (numpy and the runtimes of `runtimes.py` only), so `pip install kerasport[serve]` on a device can
re-measure a bundle there (`kerasport bench --run DIR`). Per candidate, in a child process started for it alone
(one runtime's memory and thread pools never colour the next):

- load time: opening the artifact in its runtime (threads at the runtime's default);
  (load, RSS and latency of every candidate first, each in its own process, then each one's throughput grid in
  another: a grid's threads never colour the next candidate's batch-1 figure)
- peak RSS of that fresh process once it has loaded the artifact and answered one batch-1 request;
- batch-1 latency p50 / p99 over LATENCY_RUNS warm runs (after WARMUP_RUNS);
- throughput (examples/s) at batch 1, the serving default `--max-batch` and 32, with 1..n intra-op threads;
- the file size.

Every figure is recorded with its machine (`host_info`): CPU model, cores, runtime versions. The whole block is
capped in time: candidates left when the cap is reached are recorded as not measured, with the reason.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import ConversionError
from .manifest import Manifest, load_manifest, utc_now

MEASURABLE_FORMATS = ("onnx", "tflite")
WARMUP_RUNS = 10
LATENCY_RUNS = 100
SERVE_MAX_BATCH = 8  # `kerasport serve --max-batch` default (serve/cli.py)
THROUGHPUT_BATCHES = (1, SERVE_MAX_BATCH, 32)
THROUGHPUT_SECONDS = 0.25  # per (threads, batch) cell, after two warm calls
THROUGHPUT_MIN_CALLS = 3
CHILD_TIMEOUT_S = 180
DEFAULT_BUDGET_S = 90.0
RUNTIME_PACKAGES = ("onnxruntime", "ai-edge-litert", "tflite-micro", "numpy")
INPUT_SEED = 0
# `KERASPORT_PERF=0` turns the measurement after the gate off by default (a CI runner shared with other jobs, where
# timings mean little); `--perf` still asks for it.
PERF_ENV = "KERASPORT_PERF"


def perf_by_default() -> bool:
    """Whether `kerasport parity` measures performance when neither --perf nor --no-perf is given."""
    return os.environ.get(PERF_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def host_info(extra_packages: tuple[str, ...] = ()) -> dict:
    """The machine a figure was measured on: CPU model, logical cores (and those this process may use), the OS,
    Python and the runtime versions (RUNTIME_PACKAGES, then `extra_packages`: what a benchmark also depends on)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    versions = {}
    for package in (*RUNTIME_PACKAGES, *extra_packages):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu_model": model, "cores": os.cpu_count(), "usable_cores": usable, "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "versions": versions}


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to `cores`, and `cores` itself."""
    counts, threads = [], 1
    while threads < cores:
        counts.append(threads)
        threads *= 2
    return [*counts, max(1, cores)]


def synthetic_inputs(manifest: Manifest, batch: int, seed: int = INPUT_SEED) -> dict[str, np.ndarray]:
    """Seeded inputs in each input's dtype, shape and value range (timing does not depend on the values)."""
    generator = np.random.default_rng(seed)
    inputs = {}
    for spec in manifest.contract.input_specs():
        low, high = spec.value_range or (0.0, 1.0)
        shape = spec.example_shape(batch)
        if np.dtype(spec.dtype).kind in "iub":
            values = generator.integers(int(low), int(high) + 1, size=shape)
        else:
            values = generator.uniform(low, high, size=shape)
        inputs[spec.name] = values.astype(spec.dtype)
    return inputs


def peak_rss_bytes() -> int:
    """This process's peak resident set: VmHWM (Linux), which starts afresh at exec — unlike getrusage's maxrss,
    which a child inherits from the parent it was forked from — else getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _percentile(samples: list[float], share: float) -> float:
    return float(np.percentile(np.asarray(samples), share * 100))


def _throughput(runtime, inputs: dict[str, np.ndarray]) -> float:
    batch = len(next(iter(inputs.values())))
    for _ in range(2):
        runtime.run(inputs)
    calls, started = 0, time.perf_counter()
    while calls < THROUGHPUT_MIN_CALLS or time.perf_counter() - started < THROUGHPUT_SECONDS:
        runtime.run(inputs)
        calls += 1
    return batch * calls / (time.perf_counter() - started)


PARTS = ("latency", "throughput")


def measure_here(run_dir: str | Path, name: str, part: str = "latency", *,
                 threads: list[int] | None = None) -> dict:
    """Measure one artifact in this process (call it in a fresh process: the RSS figure is this process's peak).

    Args:
        run_dir: the bundle. name: the artifact (onnx or tflite).
        part: "latency" (load time, peak RSS after one answer, batch-1 p50/p99) or "throughput" (the grid).
        threads: the intra-op thread counts of the throughput grid (default: 1..the usable cores).

    Returns:
        latency: {"load_seconds", "peak_rss_bytes_first_answer", "latency_ms": {"batch": 1, "runs", "p50", "p99",
        "mean"}, "file_bytes", "runtime"}; throughput: {"throughput": [{"threads", "batch", "examples_per_second"}]}.

    Raises:
        ConversionError: the runtime cannot load or run it. UsageError: an unknown part.
    """
    from .errors import UsageError
    from .runtimes import RuntimeSettings, open_runtime

    if part not in PARTS:
        raise UsageError(f"part {part!r}; expected one of {', '.join(PARTS)}")
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    artifact = manifest.artifact(name)
    path = artifact.resolve(run_dir)
    if part == "throughput":
        grid = []
        for count in threads or thread_counts(host_info()["usable_cores"]):
            runtime = open_runtime(path, artifact.format, RuntimeSettings(threads=count))
            for batch in THROUGHPUT_BATCHES:
                rate = _throughput(runtime, synthetic_inputs(manifest, batch))
                grid.append({"threads": count, "batch": batch, "examples_per_second": round(rate, 1)})
            del runtime
        return {"throughput": grid}
    one = synthetic_inputs(manifest, 1)
    started = time.perf_counter()
    runtime = open_runtime(path, artifact.format, RuntimeSettings())
    load_seconds = time.perf_counter() - started
    runtime.run(one)
    peak_rss = peak_rss_bytes()
    for _ in range(WARMUP_RUNS):
        runtime.run(one)
    samples = []
    for _ in range(LATENCY_RUNS):
        begun = time.perf_counter()
        runtime.run(one)
        samples.append((time.perf_counter() - begun) * 1e3)
    return {"load_seconds": round(load_seconds, 4), "peak_rss_bytes_first_answer": int(peak_rss),
            "latency_ms": {"batch": 1, "runs": LATENCY_RUNS, "warmup": WARMUP_RUNS,
                           "p50": round(_percentile(samples, 0.5), 4), "p99": round(_percentile(samples, 0.99), 4),
                           "mean": round(float(np.mean(samples)), 4)},
            "file_bytes": artifact.bytes,
            "runtime": artifact.runtime or {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}[artifact.format]}


def measure_in_child(run_dir: str | Path, name: str, part: str = "latency", *,
                     timeout: float = CHILD_TIMEOUT_S) -> dict:
    """`measure_here` in a fresh Python process (`python -m kerasport.perf RUN NAME PART`).

    Raises:
        ConversionError: the child failed, crashed or ran past `timeout` (its last words in the message).
    """
    command = [sys.executable, "-m", "kerasport.perf", str(run_dir), name, part]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise ConversionError(f"measuring {name} ({part}) ran past {timeout:.0f} s") from error
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        said = (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1]
        raise ConversionError(f"measuring {name} ({part}) failed in its child process (exit {child.returncode}): "
                              f"{said}")
    return json.loads(lines[-1])


def not_measured(artifact, reason: str) -> dict:
    return {"measured": False, "why": reason, "file_bytes": artifact.bytes}


def measure_bundle(run_dir: str | Path, names: list[str], *, budget_seconds: float = DEFAULT_BUDGET_S,
                   manifest: Manifest | None = None, console=None) -> dict:
    """The `performance` block: every named candidate measured in its own child process, within a time cap.

    Args:
        run_dir: the bundle. names: the candidates to measure (those that passed the gate).
        budget_seconds: the cap; candidates not started before it are recorded as not measured.
        manifest: the manifest to read formats from (default: the run's).
        console: a rich console for one line per candidate; None is silent.

    Returns:
        {"host", "measured", "seconds", "settings", "candidates": {name: figures or {"measured": False, "why"}}}.
    """
    manifest = manifest or load_manifest(run_dir)
    started = time.perf_counter()
    candidates = {}
    for name in names:
        artifact = manifest.artifact(name)
        if artifact.format not in MEASURABLE_FORMATS:
            why = ("a microcontroller artifact: its figures are flash and tensor arena (the parity report); host "
                   "timing of TFLite Micro's reference kernels says nothing of a part's speed"
                   if artifact.format == "c-array" else
                   f"format {artifact.format!r} has no TensorFlow-free runtime (measured: onnx, tflite)")
            candidates[name] = not_measured(artifact, why)
            continue
        if time.perf_counter() - started > budget_seconds:
            candidates[name] = not_measured(artifact, f"the performance time cap ({budget_seconds:g} s) was reached")
            continue
        try:
            candidates[name] = {"measured": True, **measure_in_child(run_dir, name, "latency")}
        except ConversionError as error:
            candidates[name] = not_measured(artifact, str(error))
    # Throughput after every latency: a grid's many threads leave the CPU (clock, caches) unlike an idle one, which
    # would colour the next candidate's batch-1 figure.
    for name, figures in candidates.items():
        if figures.get("measured"):
            if time.perf_counter() - started > budget_seconds:
                figures.update(throughput=[], throughput_why=f"the performance time cap ({budget_seconds:g} s) "
                                                             f"was reached")
            else:
                try:
                    figures.update(measure_in_child(run_dir, name, "throughput"))
                except ConversionError as error:
                    figures.update(throughput=[], throughput_why=str(error))
        if console is not None:
            console.print(performance_line(name, figures))
    return {"host": host_info(), "measured": utc_now(), "seconds": round(time.perf_counter() - started, 2),
            "settings": {"warmup_runs": WARMUP_RUNS, "latency_runs": LATENCY_RUNS,
                         "throughput_batches": list(THROUGHPUT_BATCHES), "throughput_seconds": THROUGHPUT_SECONDS,
                         "budget_seconds": budget_seconds,
                         "how": "each candidate in its own fresh child process; threads at the runtime's default "
                                "for load and latency"},
            "candidates": candidates}


def best_throughput(figures: dict) -> dict | None:
    """The throughput cell with the most examples per second (None: not measured)."""
    grid = figures.get("throughput") or []
    return max(grid, key=lambda row: row["examples_per_second"]) if grid else None


def performance_line(name: str, figures: dict) -> str:
    """One console line per candidate."""
    if not figures.get("measured"):
        return f"perf   {name:<15} not measured: {figures['why']}"
    latency, best = figures["latency_ms"], best_throughput(figures)
    rate = (f"best {best['examples_per_second']:.0f}/s (batch {best['batch']}, {best['threads']} threads)" if best
            else f"throughput not measured ({figures.get('throughput_why')})")
    return (f"perf   {name:<15} p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} ms, load "
            f"{figures['load_seconds'] * 1e3:.0f} ms, RSS {figures['peak_rss_bytes_first_answer'] / 2**20:.0f} MiB, "
            f"{rate}, {figures['file_bytes'] / 2**20:.2f} MiB")


def remeasure_bundle(run_dir: str | Path, *, budget_seconds: float = DEFAULT_BUDGET_S,
                     max_accuracy_drop: float | None = None, console=None) -> dict:
    """`kerasport bench`: measure every candidate that passed parity again, here, and recommend anew.

    The accuracy Δ of each candidate comes from the previous measurement (parity recorded it); the verdicts are the
    manifest's. Writes `performance` and `recommendation` into the manifest (atomically).

    Args:
        run_dir: a bundle that went through `kerasport parity`.
        budget_seconds: the measurement's time cap.
        max_accuracy_drop: the server recommendation's accuracy limit (0.01 = 1 pp).
        console: a rich console for one line per candidate; None is silent.

    Returns:
        {"performance": ..., "recommendation": ...} as written into the manifest.

    Raises:
        UsageError: no bundle, or no candidate passed parity. CheckFailed: a candidate was altered.
    """
    from .errors import UsageError
    from .manifest import verify_bundle
    from .selection import recommend

    if not budget_seconds > 0:
        raise UsageError(f"--seconds {budget_seconds}; expected a time cap > 0")
    manifest = load_manifest(run_dir)
    passed = [artifact.name for artifact in manifest.artifacts() if artifact.passed_parity and artifact.status == "ok"]
    if not passed:
        raise UsageError(f"{run_dir}: no artifact passed parity; run `kerasport parity --run {run_dir}` first")
    verify_bundle(run_dir, [name for name in passed if manifest.artifact(name).format in MEASURABLE_FORMATS])
    previous = manifest.performance.get("candidates") or {}
    performance = measure_bundle(run_dir, passed, budget_seconds=budget_seconds, manifest=manifest, console=console)
    for name, figures in performance["candidates"].items():
        figures["accuracy_delta"] = (previous.get(name) or {}).get("accuracy_delta")
        figures["sha256"] = manifest.artifact(name).sha256
    manifest.set_performance(performance)
    recommendation = recommend(manifest, max_accuracy_drop)
    manifest.set_recommendation(recommendation)
    manifest.save(run_dir)
    return {"performance": performance, "recommendation": recommendation}


def _child(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(f"usage: python -m kerasport.perf RUN_DIR ARTIFACT [{'|'.join(PARTS)}]", file=sys.stderr)
        return 2
    try:
        figures = measure_here(*argv)
    except Exception as error:  # noqa: BLE001 - reported to the parent in one line
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 3
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
