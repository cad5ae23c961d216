"""Soak: a real `kerasport serve` under 32 clients sending a mix of good and hostile requests for a minute.

    python bench/soak.py [--run build] [--variant V] [--workers N] [--seconds 60] [--clients 32]
                         [--good-share 0.4] [--json out.json]
    python bench/soak.py --swap [--poll-seconds 1] [--seconds 60] [--clients 32] [--json out.json]

`--swap` is the hot-swap soak instead (bench/soak_swap.py: a model repository with signed versions, a valid, a
tampered and an unsigned one dropped in under load, with --workers 1 and 2).

Hostile requests come from devtools/hostile.py (decompression bombs, truncated pictures, lying binary headers,
deep nesting, wrong shapes and dtypes, bodies over the limit, random bytes to every endpoint). Pass when:
0 errors on good requests, 0 5xx answers, server RSS (the whole process tree) grows < 10 % from the first to the
last 10 s, and at least 10,000 hostile requests were tried (scaled down with --seconds). Exit code 1 otherwise.
Without --run a tiny bundle is built first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from kerasport.tfenv import quiet_tensorflow  # noqa: E402

quiet_tensorflow()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.hostile import Hostile, catalogue, png_bomb, random_garbage  # noqa: E402

BODY_LIMIT = 1_000_000
HOSTILE_PER_MINUTE = 10_000


class Connection:
    """One keep-alive connection that sends requests byte for byte and reads whatever comes back."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def request(self, case: Hostile) -> int:
        """The status code; 0 when the server closed the connection without answering."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**22)
        headers = {"Host": self.host, **case.headers}
        if not any(name.lower() == "content-length" for name in headers):
            headers["Content-Length"] = str(len(case.body))
        head = f"{case.method} {case.path} HTTP/1.1\r\n".encode()
        for name, value in headers.items():
            head += name.encode() + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")) + b"\r\n"
        try:
            self.writer.write(head + b"\r\n" + case.body)
            await self.writer.drain()
            header = await self.reader.readuntil(b"\r\n\r\n")
            status, length, close = int(header[9:12]), 0, False
            for line in header.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"connection" and value.strip().lower() == b"close":
                    close = True
            await self.reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            return 0
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def good_request(model: str, name: str, rng: random.Random, item_shape: tuple[int, ...]) -> Hostile:
    values = 1
    for dim in item_shape:
        values *= dim
    pixels = [rng.randrange(256) for _ in range(values)]
    body = json.dumps({"inputs": [{"name": name, "shape": [1, *item_shape], "datatype": "FP32", "data": pixels}],
                       "id": str(rng.random())}).encode()
    return Hostile("good", "POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})


async def soak(url: str, model: str, name: str, item_shape, seconds: float, clients: int, good_share: float,
               seed: int) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    cases = catalogue(model, name, item_shape, max_body_bytes=BODY_LIMIT, big_bomb=png_bomb(13000, 13000))
    goods = [good_request(model, name, random.Random(i), item_shape) for i in range(64)]
    counts = {"good": 0, "good_errors": 0, "hostile": 0, "hostile_4xx": 0, "closed": 0, "5xx": 0}
    failures: list[str] = []
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        rng = random.Random(seed + index)
        connection = Connection(host, int(port))
        while time.monotonic() < deadline:
            good = rng.random() < good_share
            case = rng.choice(goods) if good else (rng.choice(cases) if rng.random() < 0.8
                                                   else random_garbage(rng, model))
            started = time.perf_counter()
            status = await connection.request(case)
            if good:
                counts["good"] += 1
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    counts["good_errors"] += 1
                    failures.append(f"good request answered {status}")
            else:
                counts["hostile"] += 1
                counts["hostile_4xx"] += 400 <= status < 500
                counts["closed"] += status == 0
            if status >= 500:
                counts["5xx"] += 1
                failures.append(f"{case.label}: {status}")
        connection.close()

    await asyncio.gather(*[client(i) for i in range(clients)])
    ordered = sorted(latencies) or [float("nan")]
    return {**counts, "good_p50_ms": ordered[len(ordered) // 2] * 1e3,
            "good_p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1e3, "failures": failures[:20]}


def tree_rss_mb(pid: int) -> float:
    """RSS of the server and every process below it (workers, parser processes)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return total


def sample_rss(pid: int, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(1.0):
        samples.append((time.monotonic() - started, tree_rss_mb(pid)))


def build_tiny_bundle(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import trained_bundle

    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity

    run = trained_bundle(root)
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "onnx-int8"]))
    run_parity(ParityOptions(run=str(run), sweep=False))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run")
    parser.add_argument("--variant", default="onnx-fp32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--good-share", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--swap", action="store_true", help="the hot-swap soak (bench/soak_swap.py)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="--swap: the server's --poll-seconds")
    args = parser.parse_args()
    if args.swap:
        from soak_swap import main as swap_main

        return swap_main(args)

    from devtools.serving import ServerProcess
    from kerasport.manifest import load_manifest

    run = Path(args.run) if args.run else build_tiny_bundle(Path(tempfile.mkdtemp(prefix="kerasport-soak-")))
    contract = load_manifest(run).contract
    spec = contract.inputs[0]
    server = ServerProcess(run, "--variant", args.variant, "--workers", str(args.workers), "--max-body-bytes",
                           str(BODY_LIMIT), "--no-access-log")
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(server.pid, samples, stop), daemon=True)
    try:
        sampler.start()
        result = asyncio.run(soak(server.url, server.ready["model"], spec.name, spec.item_shape, args.seconds,
                                  args.clients, args.good_share, args.seed))
        stop.set()
        sampler.join()
        alive = server.process.poll() is None
    finally:
        stop.set()
        code = server.stop()
    window = min(10.0, args.seconds / 6)
    first = [rss for t, rss in samples if t <= window] or [samples[0][1]]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window] or [samples[-1][1]]
    growth = statistics.mean(last) / statistics.mean(first) - 1
    needed = int(HOSTILE_PER_MINUTE * args.seconds / 60)
    checks = {"0 errors on good requests": result["good_errors"] == 0, "0 5xx": result["5xx"] == 0,
              f"RSS growth < 10 % (first vs last {window:.0f} s)": growth < 0.10,
              f">= {needed} hostile requests": result["hostile"] >= needed,
              "server alive, then exit 0 on SIGTERM": alive and code == 0}
    report = {**result, "seconds": args.seconds, "clients": args.clients, "workers": args.workers,
              "variant": args.variant, "rss_first_mb": statistics.mean(first), "rss_last_mb": statistics.mean(last),
              "rss_peak_mb": max(rss for _, rss in samples), "rss_growth": growth, "checks": checks}
    print(f"== soak: {args.seconds:.0f} s, {args.clients} clients, {args.variant}, --workers {args.workers}")
    print(f"good requests   {result['good']:>8}  errors {result['good_errors']}  p50 {result['good_p50_ms']:.1f} ms  "
          f"p99 {result['good_p99_ms']:.1f} ms")
    print(f"hostile tried   {result['hostile']:>8}  4xx {result['hostile_4xx']}  connection closed by the server "
          f"{result['closed']}")
    print(f"5xx answers     {result['5xx']:>8}")
    print(f"server RSS      first {window:.0f} s {statistics.mean(first):.0f} MB, last {window:.0f} s "
          f"{statistics.mean(last):.0f} MB ({growth:+.1%}), peak {report['rss_peak_mb']:.0f} MB")
    for label, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    for failure in result["failures"]:
        print(f"  failure: {failure}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
