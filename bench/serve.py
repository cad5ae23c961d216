"""Serving benchmark: the real `kerasport serve` driven from a separate load process over loopback keep-alive
connections, side by side with the same runtime called in-process and with Keras `model.predict` behind a minimal
HTTP handler — all in one run.

    python bench/serve.py [--run build] [--variants onnx-fp32,tflite-fp32,tflite-int8] [--requests 400]
                          [--seconds 4] [--rounds 2] [--json out.json]

--run must hold a bundle that passed parity (e.g. after `make all`). Without it, one is built (seed arch,
1 epoch: accuracy is irrelevant to timing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


async def _load(host: str, port: int, payload: bytes, concurrency: int, requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None

    async def client(count: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(3):  # warm the connection and the server's caches
            await _request(reader, writer, payload)
        done = 0
        while (deadline is None and done < count) or (deadline is not None and time.perf_counter() < deadline):
            started = time.perf_counter()
            await _request(reader, writer, payload)
            latencies.append(time.perf_counter() - started)
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[client(requests // concurrency) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(latencies), "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": ordered[len(ordered) // 2] * 1e3, "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1e3}


def load_worker(arguments: list[str]) -> None:
    spec = json.loads(arguments[0])
    body = Path(spec["body_file"]).read_bytes()
    extra = "".join(f"{name}: {value}\r\n" for name, value in spec.get("headers", {}).items())
    payload = (f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n{extra}\r\n").encode() + body
    result = asyncio.run(_load(spec["host"], spec["port"], payload, spec["concurrency"], spec["requests"],
                               spec["seconds"]))
    print(json.dumps(result))


def drive(url: str, path: str, body_file: Path, concurrency: int, requests: int = 0, seconds: float = 0,
          headers: dict | None = None) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    spec = {"host": host, "port": int(port), "path": path, "body_file": str(body_file), "concurrency": concurrency,
            "requests": requests, "seconds": seconds, "headers": headers or {}}
    output = subprocess.run([sys.executable, __file__, "--load-worker", json.dumps(spec)], capture_output=True,
                            text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


# --- the Keras baseline: model.predict behind a minimal HTTP handler (its own process) ----------------------

def keras_server(arguments: list[str]) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import keras

    model = keras.saving.load_model(arguments[0])
    model.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0)

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


# --- orchestration ----------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process(run: Path, variant: str, image: np.ndarray, batch32: np.ndarray, repeats: int) -> dict:
    from kerasport.manifest import load_manifest
    from kerasport.runtimes import open_runtime

    entry = load_manifest(run)["artifacts"][variant]
    runtime = open_runtime(run / entry["path"], entry["format"])
    for _ in range(20):
        runtime.run(image)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.run(image)
        samples.append(time.perf_counter() - started)
    for _ in range(5):
        runtime.run(batch32)
    started = time.perf_counter()
    rounds = max(20, repeats // 8)
    for _ in range(rounds):
        runtime.run(batch32)
    batch_seconds = (time.perf_counter() - started) / rounds
    return {"p50_ms": statistics.median(samples) * 1e3, "batch32_images_per_second": 32 / batch_seconds}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load-worker":
        return load_worker(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "--keras-server":
        return keras_server(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run")
    parser.add_argument("--variants", default="onnx-fp32,tflite-fp32,tflite-int8")
    parser.add_argument("--requests", type=int, default=400, help="sequential requests at concurrency 1")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of the 32-client throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="repeat each measurement, keep the best")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    from devtools.serving import ServerProcess

    scratch = Path(tempfile.mkdtemp(prefix="kerasport-bench-serve-"))
    run = Path(args.run) if args.run else scratch / "run"
    if not args.run:
        from kerasport.export.stage import ExportOptions, export_bundle
        from kerasport.parity.stage import ParityOptions, run_parity
        from kerasport.train.config import TrainConfig
        from kerasport.train.fit import train

        train(TrainConfig(epochs=1, run=str(run)))
        export_bundle(ExportOptions(run=str(run), formats=args.variants.split(",")))
        run_parity(ParityOptions(run=str(run), sweep=False))

    sample = np.load(run / "train" / "eval_sample.npz")["x"].astype(np.float32)
    image, batch32 = sample[:1], np.resize(sample, (32, 28, 28, 1)).astype(np.float32)
    body_file = scratch / "one_image.json"
    body_file.write_bytes(json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32",
                                                  "data": image.ravel().tolist()}]}).encode())
    # The same request under the binary tensor data extension, as tritonclient sends it by default.
    binary_file = scratch / "one_image.bin"
    binary_header = json.dumps({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32",
                                            "parameters": {"binary_data_size": image.nbytes}}],
                                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    binary_file.write_bytes(binary_header + image.astype("<f4").tobytes())
    binary_headers = {"Inference-Header-Content-Length": str(len(binary_header))}
    from kerasport.manifest import load_manifest

    model_name = load_manifest(run)["model"]["name"]
    path = f"/v2/models/{model_name}/infer"

    results: dict = {}
    for variant in args.variants.split(","):
        launched = time.perf_counter()
        server = ServerProcess(run, "--variant", variant, "--no-access-log")
        ready_seconds = time.perf_counter() - launched
        try:
            # best of `--rounds` for each figure: this VM's neighbours add noise, never speed
            single = min((drive(server.url, path, body_file, concurrency=1, requests=args.requests)
                          for _ in range(args.rounds)), key=lambda r: r["p50_ms"])
            crowd = max((drive(server.url, path, body_file, concurrency=32, seconds=args.seconds)
                         for _ in range(args.rounds)), key=lambda r: r["rps"])
            single_binary = min((drive(server.url, path, binary_file, concurrency=1, requests=args.requests,
                                       headers=binary_headers) for _ in range(args.rounds)),
                                key=lambda r: r["p50_ms"])
            crowd_binary = max((drive(server.url, path, binary_file, concurrency=32, seconds=args.seconds,
                                      headers=binary_headers) for _ in range(args.rounds)), key=lambda r: r["rps"])
            rss = rss_mb(server.pid)
        finally:
            server.stop()
        local = min((in_process(run, variant, image, batch32, args.requests) for _ in range(args.rounds)),
                    key=lambda r: r["p50_ms"])
        local["batch32_images_per_second"] = max(local["batch32_images_per_second"],
                                                 in_process(run, variant, image, batch32, args.requests)[
                                                     "batch32_images_per_second"])
        results[variant] = {"ready_seconds": ready_seconds, "server_reported_ready_seconds":
                            server.ready["ready_seconds"], "rss_mb": rss, "c1": single, "c32": crowd,
                            "in_process": local,
                            "added_latency_ms": single["p50_ms"] - local["p50_ms"],
                            "throughput_ratio": crowd["rps"] / local["batch32_images_per_second"],
                            "binary": {"c1": single_binary, "c32": crowd_binary,
                                       "added_latency_ms": single_binary["p50_ms"] - local["p50_ms"],
                                       "throughput_ratio": crowd_binary["rps"] / local["batch32_images_per_second"]}}

    keras_process = subprocess.Popen([sys.executable, __file__, "--keras-server", str(run / "train" / "model.keras")],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        keras_url = json.loads(keras_process.stdout.readline())["url"]
        keras_c1 = drive(keras_url, path, body_file, concurrency=1, requests=max(50, args.requests // 4))
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
    print("targets: added ms <= 1; c32/b32 ratio >= 0.8; onnx-fp32 RSS <= 150 MB, ready <= 1.5 s, "
          ">= 15x faster than Keras")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"variants": results, "keras": {"c1": keras_c1,
                                                                                    "rss_mb": keras_rss}}, indent=2))


if __name__ == "__main__":
    main()
