"""Serving benchmark: the real `kerasport serve` driven from a separate load process over loopback keep-alive
connections, side by side with the same runtime called in-process — all in one run.

    python bench/serve.py [--run build] [--variants onnx-fp32,tflite-fp32,tflite-int8]
                          [--scale-variants onnx-fp32,onnx-int8] [--sections basic,sweep,workers,health,grpc]
                          [--requests 400] [--seconds 4] [--rounds 2] [--json out.json]
                          [--load-cpus 8-15 --load-processes 8]   (run under `taskset -c 0-7`)

Sections:
- basic: per variant, latency at 1 client and throughput at 32 (JSON and binary tensors) against the runtime
  in-process, and Keras `model.predict` behind a minimal HTTP handler.
- sweep: the runtime in-process at batch 32 in P processes x T threads (P x T <= cores): the best configuration
  is the bar the server is held to.
- workers: `kerasport serve --workers N` (threads split so N x T ~ cores) at 32 and 64 clients, JSON and binary,
  as a ratio of the best in-process configuration; RSS of the supervisor and of each worker.
- health: `/v2/health/live` latency from a separate prober while 8 clients send the largest allowed bodies.
- grpc: one `kerasport serve --grpc-port` process, the same image over gRPC (ModelInfer, raw_input_contents), HTTP
  JSON and HTTP binary, side by side with the runtime in-process: p50/p99 at 1 client, throughput at 32 clients
  (each on its own connection).

On a small machine the load generator shares the server's cores, so the ratios there understate the server; on
a bigger one, run the whole benchmark under `taskset` on half the cores and nothing else there (the server's
cores are its CPU affinity; the load processes inherit it too, so give them their own cores by hand if needed).
--run must hold a bundle that passed parity; without it one is built (seed arch on digits, 1 epoch: accuracy is
irrelevant to timing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kerasport.tfenv import quiet_tensorflow  # noqa: E402

quiet_tensorflow()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for devtools/, shared with the tests

import numpy as np  # noqa: E402

MAX_BODY_BYTES = 8 * 1024 * 1024

# --- the load generator (runs in its own process) -----------------------------------------------------------


async def _request(reader, writer, payload: bytes) -> None:
    writer.write(payload)
    await writer.drain()
    header = await reader.readuntil(b"\r\n\r\n")
    status = header[9:12]
    length = 0
    for line in header.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"HTTP {status.decode()}: {header[:200]!r}")


def _summary(latencies: list[float], elapsed: float) -> dict:
    ordered = sorted(latencies) or [float("nan")]
    return {"requests": len(latencies), "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": ordered[len(ordered) // 2] * 1e3, "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1e3,
            "max_ms": ordered[-1] * 1e3}


async def _load(host: str, port: int, payload: bytes, concurrency: int, requests: int, seconds: float,
                pause: float = 0.0, warmup: int = 3) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None

    async def client(count: int) -> None:
        reader, writer = await asyncio.open_connection(host, port, limit=2**24)
        for _ in range(warmup):  # warm the connection and the server's caches
            await _request(reader, writer, payload)
        done = 0
        while (deadline is None and done < count) or (deadline is not None and time.perf_counter() < deadline):
            started = time.perf_counter()
            await _request(reader, writer, payload)
            latencies.append(time.perf_counter() - started)
            done += 1
            if pause:
                await asyncio.sleep(pause)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[client(requests // concurrency) for _ in range(concurrency)])
    return _summary(latencies, time.perf_counter() - started)


LOAD_CPUS_ENV = "KERASPORT_BENCH_LOAD_CPUS"


def cpu_list(text: str) -> set[int]:
    """`0-3,8` -> {0, 1, 2, 3, 8} (taskset's list syntax)."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def pin_load_generator() -> None:
    """With --load-cpus, the load processes move to their own cores (the server keeps the bench's affinity)."""
    if os.environ.get(LOAD_CPUS_ENV):
        os.sched_setaffinity(0, cpu_list(os.environ[LOAD_CPUS_ENV]))


def load_worker(arguments: list[str]) -> None:
    pin_load_generator()
    spec = json.loads(arguments[0])
    body = Path(spec["body_file"]).read_bytes() if spec.get("body_file") else b""
    extra = "".join(f"{name}: {value}\r\n" for name, value in spec.get("headers", {}).items())
    method = "POST" if body else "GET"
    payload = (f"{method} {spec['path']} HTTP/1.1\r\nHost: {spec['host']}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n{extra}\r\n").encode() + body
    result = asyncio.run(_load(spec["host"], spec["port"], payload, spec["concurrency"], spec["requests"],
                               spec["seconds"], spec.get("pause", 0.0), spec.get("warmup", 3)))
    print(json.dumps(result))


def _load_command(url: str, path: str, body_file: Path | None, concurrency: int, requests: int = 0,
                  seconds: float = 0, headers: dict | None = None, pause: float = 0.0, warmup: int = 3) -> list[str]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    spec = {"host": host, "port": int(port), "path": path, "body_file": str(body_file) if body_file else None,
            "concurrency": concurrency, "requests": requests, "seconds": seconds, "headers": headers or {},
            "pause": pause, "warmup": warmup}
    return [sys.executable, __file__, "--load-worker", json.dumps(spec)]


LOAD_PROCESSES_ENV = "KERASPORT_BENCH_LOAD_PROCESSES"


def drive(url: str, path: str, body_file: Path | None, concurrency: int, requests: int = 0, seconds: float = 0,
          headers: dict | None = None) -> dict:
    """`concurrency` keep-alive clients, in one load process or (--load-processes P) split over P processes: one
    asyncio process tops out near one core's worth of requests, below what a many-core server answers."""
    processes = max(1, min(concurrency, int(os.environ.get(LOAD_PROCESSES_ENV, "1"))))
    if processes == 1:
        output = subprocess.run(_load_command(url, path, body_file, concurrency, requests, seconds, headers),
                                capture_output=True, text=True, check=True)
        return json.loads(output.stdout.strip().splitlines()[-1])
    shares = [concurrency // processes + (1 if index < concurrency % processes else 0) for index in range(processes)]
    children = [subprocess.Popen(_load_command(url, path, body_file, share, requests * share // concurrency,
                                               seconds, headers), stdout=subprocess.PIPE, text=True)
                for share in shares]
    results = []
    for child in children:
        output, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a load process failed (exit {child.returncode})")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return {"requests": sum(r["requests"] for r in results), "seconds": max(r["seconds"] for r in results),
            "rps": sum(r["rps"] for r in results), "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results), "max_ms": max(r["max_ms"] for r in results),
            "load_processes": processes}


GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


async def _grpc_load(address: str, payload: bytes, concurrency: int, requests: int, seconds: float,
                     warmup: int = 3) -> dict:
    """Like `_load`, over gRPC: `concurrency` clients, each on its own channel (connection), sending the same
    serialized ModelInferRequest and reading the response bytes (no client-side tensor work, as the HTTP load)."""
    import grpc

    latencies: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None

    async def client(count: int) -> None:
        async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            infer = channel.unary_unary(GRPC_INFER)  # bytes in, bytes out
            for _ in range(warmup):
                await infer(payload)
            done = 0
            while (deadline is None and done < count) or (deadline is not None and time.perf_counter() < deadline):
                started = time.perf_counter()
                await infer(payload)
                latencies.append(time.perf_counter() - started)
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*[client(requests // concurrency) for _ in range(concurrency)])
    return _summary(latencies, time.perf_counter() - started)


def grpc_load_worker(arguments: list[str]) -> None:
    pin_load_generator()
    spec = json.loads(arguments[0])
    payload = Path(spec["request_file"]).read_bytes()
    print(json.dumps(asyncio.run(_grpc_load(spec["address"], payload, spec["concurrency"], spec["requests"],
                                            spec["seconds"]))))


def drive_grpc(address: str, request_file: Path, concurrency: int, requests: int = 0, seconds: float = 0) -> dict:
    spec = {"address": address, "request_file": str(request_file), "concurrency": concurrency, "requests": requests,
            "seconds": seconds}
    output = subprocess.run([sys.executable, __file__, "--grpc-load-worker", json.dumps(spec)], capture_output=True,
                            text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


# --- in-process runtime: one process, and the processes x threads sweep -------------------------------------


def _open(run: Path, variant: str, threads: int = 0):
    from kerasport.manifest import load_manifest
    from kerasport.runtimes import RuntimeSettings, open_runtime

    artifact = load_manifest(run).artifact(variant)
    return open_runtime(artifact.resolve(run), artifact.format, RuntimeSettings(threads=threads))


def in_process(run: Path, variant: str, name: str, image: np.ndarray, batch32: np.ndarray, repeats: int) -> dict:
    runtime = _open(run, variant)
    for _ in range(20):
        runtime.run({name: image})
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.run({name: image})
        samples.append(time.perf_counter() - started)
    for _ in range(5):
        runtime.run({name: batch32})
    rounds = max(20, repeats // 8)
    started = time.perf_counter()
    for _ in range(rounds):
        runtime.run({name: batch32})
    return {"p50_ms": statistics.median(samples) * 1e3,
            "batch32_images_per_second": 32 * rounds / (time.perf_counter() - started)}


def sweep_worker(arguments: list[str]) -> None:
    """One process of the sweep: warm up, then run batch 32 from start_at to end_at; print the images done."""
    spec = json.loads(arguments[0])
    runtime = _open(Path(spec["run"]), spec["variant"], spec["threads"])
    batch = {spec["input"]: np.load(spec["batch_file"])}
    for _ in range(3):
        runtime.run(batch)
    while time.time() < spec["start_at"]:
        time.sleep(0.001)
    done = 0
    while time.time() < spec["end_at"]:
        runtime.run(batch)
        done += len(batch[spec["input"]])
    print(json.dumps({"images": done}))


def sweep(run: Path, variant: str, name: str, batch_file: Path, seconds: float, cores: int) -> list[dict]:
    configurations = [(p, t) for p in range(1, cores + 1) for t in range(1, cores + 1) if p * t <= cores
                      and (p * t == cores or (p == 1 and t == 1))]
    results = []
    for processes, threads in configurations:
        start_at = time.time() + 6.0  # every process loaded and warm before the clock starts
        spec = {"run": str(run), "variant": variant, "threads": threads, "input": name,
                "batch_file": str(batch_file), "start_at": start_at, "end_at": start_at + seconds}
        children = [subprocess.Popen([sys.executable, __file__, "--sweep-worker", json.dumps(spec)],
                                     stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        images = sum(json.loads(child.communicate()[0].strip().splitlines()[-1])["images"] for child in children)
        results.append({"processes": processes, "threads": threads, "images_per_second": images / seconds})
    return results


# --- orchestration helpers ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def batch_totals(url: str) -> tuple[float, float]:
    """(examples, runtime calls) the server has run so far, from its /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("kerasport_batch_size_"))
    return float(values.get("kerasport_batch_size_sum", 0)), float(values.get("kerasport_batch_size_count", 0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


class Bodies:
    """The request bodies every section sends, written once to files the load processes read."""

    def __init__(self, scratch: Path, name: str, sample: np.ndarray):
        image = sample[:1].astype(np.float32)
        self.name = name
        self.image, self.batch32 = image, np.resize(sample, (32, *sample.shape[1:])).astype(np.float32)
        self.json = scratch / "one_image.json"
        self.json.write_bytes(json.dumps({"inputs": [{"name": name, "shape": list(image.shape), "datatype": "FP32",
                                                      "data": image.ravel().tolist()}]}).encode())
        header = json.dumps({"inputs": [{"name": name, "shape": list(image.shape), "datatype": "FP32",
                                         "parameters": {"binary_data_size": image.nbytes}}],
                             "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
        self.binary = scratch / "one_image.bin"
        self.binary.write_bytes(header + image.astype("<f4").tobytes())
        self.binary_headers = {"Inference-Header-Content-Length": str(len(header))}
        self.batch_file = scratch / "batch32.npy"
        np.save(self.batch_file, self.batch32)
        self.largest = scratch / "largest.json"
        self.largest_images = self._largest(sample)

    def _largest(self, sample: np.ndarray) -> int:
        """The largest V2 JSON body under the default limit: pixels as full-precision floats (what a client that
        preprocesses sends), as many images as fit."""
        noise = np.random.default_rng(0).random(sample.shape, dtype=np.float32)
        pixels = np.clip(sample + noise, 0, 255).astype(np.float32)
        per_image = len(json.dumps(pixels[:1].ravel().tolist())) + 1
        count = (MAX_BODY_BYTES - 200) // per_image
        while True:
            images = np.resize(pixels, (count, *pixels.shape[1:]))
            body = json.dumps({"inputs": [{"name": self.name, "shape": list(images.shape), "datatype": "FP32",
                                           "data": images.ravel().tolist()}]}).encode()
            if len(body) <= MAX_BODY_BYTES:
                self.largest.write_bytes(body)
                return count
            count -= 8


# --- the Keras baseline: model.predict behind a minimal HTTP handler (its own process) ----------------------


def keras_server(arguments: list[str]) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import keras

    model = keras.saving.load_model(arguments[0])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            tensor = body["inputs"][0]
            images = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
            outputs = model.predict(images, verbose=0)
            payload = json.dumps({"outputs": [{"name": "probabilities", "shape": list(outputs.shape),
                                               "datatype": "FP32", "data": outputs.ravel().tolist()}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(json.dumps({"url": f"http://127.0.0.1:{server.server_address[1]}"}), flush=True)
    server.serve_forever()


# --- sections -------------------------------------------------------------------------------------------------


def basic_section(run: Path, variants: list[str], bodies: Bodies, path: str, args) -> dict:
    from devtools.serving import ServerProcess

    results = {}
    binary = {"headers": bodies.binary_headers}
    for variant in variants:
        launched = time.perf_counter()
        server = ServerProcess(run, "--variant", variant, "--no-access-log")
        ready_seconds = time.perf_counter() - launched
        try:
            # best of `--rounds` for each figure: this VM's neighbours add noise, never speed
            single = min((drive(server.url, path, bodies.json, 1, requests=args.requests)
                          for _ in range(args.rounds)), key=lambda r: r["p50_ms"])
            crowd = max((drive(server.url, path, bodies.json, 32, seconds=args.seconds)
                         for _ in range(args.rounds)), key=lambda r: r["rps"])
            single_binary = min((drive(server.url, path, bodies.binary, 1, requests=args.requests, **binary)
                                 for _ in range(args.rounds)), key=lambda r: r["p50_ms"])
            crowd_binary = max((drive(server.url, path, bodies.binary, 32, seconds=args.seconds, **binary)
                                for _ in range(args.rounds)), key=lambda r: r["rps"])
            rss = rss_mb(server.pid)
        finally:
            server.stop()
        local = min((in_process(run, variant, bodies.name, bodies.image, bodies.batch32, args.requests)
                     for _ in range(args.rounds)), key=lambda r: r["p50_ms"])
        b32 = local["batch32_images_per_second"]
        results[variant] = {"ready_seconds": ready_seconds, "rss_mb": rss, "c1": single, "c32": crowd,
                            "in_process": local, "added_latency_ms": single["p50_ms"] - local["p50_ms"],
                            "throughput_ratio": crowd["rps"] / b32,
                            "binary": {"c1": single_binary, "c32": crowd_binary,
                                       "added_latency_ms": single_binary["p50_ms"] - local["p50_ms"],
                                       "throughput_ratio": crowd_binary["rps"] / b32}}
    keras_process = subprocess.Popen([sys.executable, __file__, "--keras-server", str(run / "train" / "model.keras")],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        keras_url = json.loads(keras_process.stdout.readline())["url"]
        keras_c1 = drive(keras_url, path, bodies.json, 1, requests=max(50, args.requests // 4))
        keras_rss = rss_mb(keras_process.pid)
    finally:
        keras_process.terminate()
        keras_process.wait()
    print(f"\n== kerasport serve vs in-process runtime vs Keras predict behind http.server ({run})")
    print(f"{'variant':<13}{'ready s':>8}{'RSS MB':>8}{'c1 p50 ms':>11}{'c1 p99 ms':>11}{'in-proc ms':>11}"
          f"{'added ms':>10}{'c32 img/s':>11}{'b32 img/s':>11}{'ratio':>7}{'vs keras':>10}")
    for variant, r in results.items():
        print(f"{variant:<13}{r['ready_seconds']:>8.2f}{r['rss_mb']:>8.0f}{r['c1']['p50_ms']:>11.3f}"
              f"{r['c1']['p99_ms']:>11.3f}{r['in_process']['p50_ms']:>11.3f}{r['added_latency_ms']:>10.3f}"
              f"{r['c32']['rps']:>11.0f}{r['in_process']['batch32_images_per_second']:>11.0f}"
              f"{r['throughput_ratio']:>7.2f}{keras_c1['p50_ms'] / r['c1']['p50_ms']:>9.1f}x")
    print(f"{'keras':<13}{'':>8}{keras_rss:>8.0f}{keras_c1['p50_ms']:>11.3f}{keras_c1['p99_ms']:>11.3f}")
    print("\n== the same with the V2 binary tensor data extension (no JSON numbers)")
    print(f"{'variant':<13}{'c1 p50 ms':>11}{'c1 p99 ms':>11}{'added ms':>10}{'c32 img/s':>11}{'ratio':>7}")
    for variant, r in results.items():
        b = r["binary"]
        print(f"{variant:<13}{b['c1']['p50_ms']:>11.3f}{b['c1']['p99_ms']:>11.3f}{b['added_latency_ms']:>10.3f}"
              f"{b['c32']['rps']:>11.0f}{b['throughput_ratio']:>7.2f}")
    return {"variants": results, "keras": {"c1": keras_c1, "rss_mb": keras_rss}}


def sweep_section(run: Path, variants: list[str], bodies: Bodies, args, cores: int) -> dict:
    results = {variant: sweep(run, variant, bodies.name, bodies.batch_file, args.seconds, cores)
               for variant in variants}
    print(f"\n== in-process runtime at batch 32: processes x threads on {cores} cores")
    print(f"{'variant':<13}{'P x T':>7}{'img/s':>10}")
    for variant, rows in results.items():
        for row in rows:
            print(f"{variant:<13}{row['processes']:>3} x {row['threads']:<2}{row['images_per_second']:>10.0f}")
    return results


def drive_observed(server, path: str, body_file: Path, clients: int, seconds: float, cores: int) -> dict:
    """`drive`, plus what the server did meanwhile: the share of its cores its processes kept busy, and the mean
    examples per runtime call (is it waiting for work, or saturated?)."""
    pids = server.ready.get("pids") or [server.pid]
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    examples_before, calls_before = batch_totals(server.url)
    window = time.perf_counter()
    result = drive(server.url, path, body_file, clients, seconds=seconds)
    window = time.perf_counter() - window  # the CPU figures' own window: load start-up and warm-up included
    examples, calls = batch_totals(server.url)
    busy = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    result["server_cpu_share"] = busy / (window * cores)
    result["server_cpu_ms_per_request"] = busy * 1e3 / max(1.0, examples - examples_before)  # one example each
    result["mean_batch"] = (examples - examples_before) / max(1.0, calls - calls_before)
    return result


def workers_section(run: Path, variants: list[str], bodies: Bodies, path: str, args, cores: int,
                    best: dict) -> dict:
    from devtools.serving import ServerProcess

    counts = [int(n) for n in args.worker_counts.split(",")] if args.worker_counts else sorted({1, max(1, cores)})
    results: dict = {}
    for variant in variants:
        for workers in counts:
            server = ServerProcess(run, "--variant", variant, "--workers", str(workers), "--max-batch", "32",
                                   "--no-access-log")
            try:
                row = {"workers": workers, "threads": server.ready.get("threads_per_worker", cores)}
                for clients in (32, 64):
                    row[f"json_c{clients}"] = drive_observed(server, path, bodies.json, clients, args.seconds,
                                                             cores)
                    row[f"binary_c{clients}"] = drive(server.url, path, bodies.binary, clients, seconds=args.seconds,
                                                      headers=bodies.binary_headers)
                pids = child_pids(server.pid) if workers > 1 else []
                worker_pids = server.ready.get("pids", [])
                row["rss_mb"] = {"supervisor": rss_mb(server.pid),
                                 "workers": [rss_mb(pid) for pid in worker_pids] or [rss_mb(server.pid)],
                                 "other_children": [rss_mb(pid) for pid in pids if pid not in worker_pids]}
            finally:
                server.stop()
            for key in ("json_c32", "json_c64", "binary_c32", "binary_c64"):
                row[f"{key}_ratio"] = row[key]["rps"] / best[variant]["images_per_second"]
            results.setdefault(variant, []).append(row)
    print(f"\n== kerasport serve --workers N at 32 and 64 clients vs the best in-process configuration ({cores} cores, "
          f"load generator on the same cores)")
    print(f"{'variant':<13}{'N x T':>7}{'json c32':>10}{'json c64':>10}{'bin c32':>10}{'bin c64':>10}"
          f"{'best b32':>10}{'ratios (json32/json64/bin32/bin64)':>38}{'worker MB':>11}")
    for variant, rows in results.items():
        for r in rows:
            ratios = "/".join(f"{r[k + '_ratio']:.2f}" for k in ("json_c32", "json_c64", "binary_c32", "binary_c64"))
            print(f"{variant:<13}{r['workers']:>3} x {r['threads']:<2}{r['json_c32']['rps']:>10.0f}"
                  f"{r['json_c64']['rps']:>10.0f}{r['binary_c32']['rps']:>10.0f}{r['binary_c64']['rps']:>10.0f}"
                  f"{best[variant]['images_per_second']:>10.0f}{ratios:>38}"
                  f"{statistics.mean(r['rss_mb']['workers']):>11.0f}")
            print(f"{'':<20}json: server CPU busy {r['json_c32']['server_cpu_share']:.0%} / "
                  f"{r['json_c64']['server_cpu_share']:.0%} of its cores, mean batch "
                  f"{r['json_c32']['mean_batch']:.1f} / {r['json_c64']['mean_batch']:.1f} (32 / 64 clients); CPU "
                  f"{r['json_c32']['server_cpu_ms_per_request']:.3f} ms per request vs "
                  f"{cores * 1e3 / best[variant]['images_per_second']:.3f} ms per image in-process")
    return results


def health_section(run: Path, variant: str, bodies: Bodies, path: str, args) -> dict:
    """/v2/health/live latency (a lone prober, every 10 ms) while 8 clients send the largest allowed bodies."""
    from devtools.serving import ServerProcess

    server = ServerProcess(run, "--variant", variant, "--no-access-log")
    try:
        idle = drive_probe(server.url, args.seconds)
        load = subprocess.Popen(_load_command(server.url, path, bodies.largest, 8, seconds=args.seconds * 3,
                                              warmup=0), stdout=subprocess.PIPE, text=True)
        time.sleep(args.seconds / 2)  # every client's first big body is in
        probe = drive_probe(server.url, args.seconds * 2)
        heavy = json.loads(load.communicate()[0].strip().splitlines()[-1])
        rss = rss_mb(server.pid)
    finally:
        server.stop()
    result = {"idle": idle, "under_load": probe, "load": heavy, "body_bytes": bodies.largest.stat().st_size,
              "images_per_body": bodies.largest_images, "rss_mb": rss}
    print(f"\n== /v2/health/live while 8 clients send {result['body_bytes'] / 2**20:.1f} MiB JSON bodies "
          f"({bodies.largest_images} images each), {variant}")
    print(f"idle: p50 {idle['p50_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms; under load: p50 {probe['p50_ms']:.2f} "
          f"ms, p99 {probe['p99_ms']:.2f} ms, max {probe['max_ms']:.1f} ms ({probe['requests']} probes); "
          f"{heavy['requests']} big bodies answered in {heavy['seconds']:.1f} s; server RSS {rss:.0f} MB "
          f"(target: p99 < 10 ms)")
    return result


def grpc_section(run: Path, variant: str, bodies: Bodies, path: str, model_name: str, args) -> dict:
    """One server with --grpc-port: the same single image over gRPC, HTTP JSON and HTTP binary, and in-process."""
    from tritonclient.grpc import service_pb2

    from devtools.serving import ServerProcess

    request = service_pb2.ModelInferRequest(model_name=model_name)
    request.inputs.add(name=bodies.name, datatype="FP32", shape=bodies.image.shape)
    request.raw_input_contents.append(bodies.image.astype("<f4").tobytes())
    request_file = bodies.batch_file.with_name("one_image.grpc")
    request_file.write_bytes(request.SerializeToString())
    binary = {"headers": bodies.binary_headers}
    server = ServerProcess(run, "--variant", variant, "--grpc-port", "0", "--no-access-log")
    address = server.ready["grpc"]
    runs = {
        "http_json": (lambda c, **kw: drive(server.url, path, bodies.json, c, **kw)),
        "http_binary": (lambda c, **kw: drive(server.url, path, bodies.binary, c, **kw, **binary)),
        "grpc": (lambda c, **kw: drive_grpc(address, request_file, c, **kw)),
    }
    results: dict = {}
    try:
        # interleaved and best of `--rounds`, so a noisy neighbour does not favour one protocol
        for _ in range(args.rounds):
            for protocol, measure in runs.items():
                single = measure(1, requests=args.requests)
                cpu, (examples, calls) = cpu_seconds(server.pid), batch_totals(server.url)
                crowd = measure(32, seconds=args.seconds)
                # the server's own CPU per request (warm-up requests included), whatever the client costs, and
                # how well the requests coalesced
                crowd["server_cpu_ms"] = (cpu_seconds(server.pid) - cpu) * 1e3 / (crowd["requests"] + 32 * 3)
                after = batch_totals(server.url)
                crowd["mean_batch"] = (after[0] - examples) / max(1.0, after[1] - calls)
                best = results.setdefault(protocol, {"c1": single, "c32": crowd})
                if single["p50_ms"] < best["c1"]["p50_ms"]:
                    best["c1"] = single
                if crowd["rps"] > best["c32"]["rps"]:
                    best["c32"] = crowd
        rss = rss_mb(server.pid)
    finally:
        server.stop()
    local = min((in_process(run, variant, bodies.name, bodies.image, bodies.batch32, args.requests)
                 for _ in range(args.rounds)), key=lambda r: r["p50_ms"])
    print(f"\n== one image: gRPC vs HTTP JSON vs HTTP binary vs in-process ({variant}, one server process, RSS "
          f"{rss:.0f} MB; the load generator shares the machine's cores)")
    print(f"{'path':<13}{'c1 p50 ms':>11}{'c1 p99 ms':>11}{'added ms':>10}{'c32 img/s':>11}{'vs b32':>8}"
          f"{'server CPU ms/req':>19}{'mean batch':>12}")
    b32 = local["batch32_images_per_second"]
    for protocol, r in results.items():
        r["added_latency_ms"] = r["c1"]["p50_ms"] - local["p50_ms"]
        r["throughput_ratio"] = r["c32"]["rps"] / b32
        print(f"{protocol:<13}{r['c1']['p50_ms']:>11.3f}{r['c1']['p99_ms']:>11.3f}{r['added_latency_ms']:>10.3f}"
              f"{r['c32']['rps']:>11.0f}{r['throughput_ratio']:>8.2f}{r['c32']['server_cpu_ms']:>19.3f}"
              f"{r['c32']['mean_batch']:>12.1f}")
    print(f"{'in-process':<13}{local['p50_ms']:>11.3f}{'':>11}{'':>10}{b32:>11.0f}{'(b32)':>8}")
    return {"variant": variant, "rss_mb": rss, "in_process": local, **results}


def drive_probe(url: str, seconds: float) -> dict:
    command = _load_command(url, "/v2/health/live", None, 1, seconds=seconds, pause=0.01, warmup=1)
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def build_bundle(run: Path, variants: list[str]) -> None:
    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity
    from kerasport.train.config import TrainConfig
    from kerasport.train.fit import train

    train(TrainConfig(epochs=1, run=str(run)))
    export_bundle(ExportOptions(run=str(run), formats=variants))
    run_parity(ParityOptions(run=str(run), sweep=False))


def main() -> None:
    modes = {"--load-worker": load_worker, "--keras-server": keras_server, "--sweep-worker": sweep_worker,
             "--grpc-load-worker": grpc_load_worker}
    if len(sys.argv) > 1 and sys.argv[1] in modes:
        return modes[sys.argv[1]](sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run")
    parser.add_argument("--variants", default="onnx-fp32,tflite-fp32,tflite-int8")
    parser.add_argument("--scale-variants", default="onnx-fp32,onnx-int8", help="for the sweep and workers sections")
    parser.add_argument("--sections", default="basic,sweep,workers,health,grpc")
    parser.add_argument("--grpc-variant", default="onnx-fp32", help="variant served in the grpc section")
    parser.add_argument("--health-variant", default="onnx-int8",
                        help="variant served while the health section sends the largest bodies")
    parser.add_argument("--worker-counts", help="comma-separated --workers values (default: 1 and the cores)")
    parser.add_argument("--requests", type=int, default=400, help="sequential requests at concurrency 1")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="repeat each basic measurement, keep the best")
    parser.add_argument("--load-cpus", help="cores for the load generator processes, e.g. 8-15 (run the bench "
                        "itself under `taskset -c 0-7`: the server and the in-process sweep keep that affinity)")
    parser.add_argument("--load-processes", type=int, default=1,
                        help="split each load run's clients over this many processes (give them --load-cpus)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    os.environ[LOAD_PROCESSES_ENV] = str(args.load_processes)
    if args.load_cpus:
        os.environ[LOAD_CPUS_ENV] = args.load_cpus
    sections = set(args.sections.split(","))
    variants, scale = args.variants.split(","), args.scale_variants.split(",")

    from kerasport.manifest import load_manifest
    from kerasport.samples import load_samples
    from kerasport.serve.offload import machine_cores

    scratch = Path(tempfile.mkdtemp(prefix="kerasport-bench-serve-"))
    run = Path(args.run) if args.run else scratch / "run"
    if not args.run:
        build_bundle(run, sorted(set(variants) | set(scale)))
    manifest = load_manifest(run)
    name = manifest.contract.input_names[0]
    sample = load_samples(manifest.artifact("eval_sample").resolve(run), manifest.contract).inputs[name]
    bodies = Bodies(scratch, name, sample.astype(np.float32))
    path = f"/v2/models/{manifest.name}/infer"
    cores = machine_cores()
    from kerasport.perf import host_info

    report: dict = {"cores": cores, "run": str(run), "load_cpus": args.load_cpus, "host": host_info()}
    if "basic" in sections:
        report["basic"] = basic_section(run, variants, bodies, path, args)
    if "sweep" in sections or "workers" in sections:
        report["sweep"] = sweep_section(run, scale, bodies, args, cores)
        best = {variant: max(rows, key=lambda row: row["images_per_second"])
                for variant, rows in report["sweep"].items()}
        report["best_in_process"] = best
    if "workers" in sections:
        report["workers"] = workers_section(run, scale, bodies, path, args, cores, best)
    if "health" in sections:
        report["health"] = health_section(run, args.health_variant, bodies, path, args)
    if "grpc" in sections:
        report["grpc"] = grpc_section(run, args.grpc_variant, bodies, path, manifest.name, args)
    print("\ntargets: added ms <= 1; server/in-process ratio >= 0.8 (with the load generator on other cores); "
          "health p99 < 10 ms under the largest bodies")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
