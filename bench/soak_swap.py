"""`bench/soak.py --swap`: hot swap under load. 32 clients ask one model of a repository for a minute while
(a) a valid new version (other weights) is dropped in, (b) a tampered one, (c) an unsigned one, the server running
with --trusted-key.

Every answer is checked against its own `model_version`: each version's output on the probe input is computed
in-process beforehand and differs between versions. Pass when: 0 failed requests; every answer's numbers are its
version's; (a) answers within --poll-seconds + 5 s of being dropped in; (b) and (c) never answer and the repository
index shows them UNAVAILABLE with the reason; the server exits 0 on SIGTERM. Exit code 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

# What the figures depend on besides the runtimes, recorded with the machine.
SERVING_PACKAGES = ("kerasport", "model-signing", "uvicorn")
VALID, TAMPERED, UNSIGNED = 2, 3, 4
SWAP_SLACK_SECONDS = 5.0
TOLERANCE = 1e-4


def prepare(root: Path) -> dict:
    """Signed versions 1 and 2, a tampered and an unsigned copy of 2, the key pair and every version's answer."""
    from devtools.keys import write_key_pair
    from devtools.repository_bundles import expected_output, flip_byte, write_version
    from kerasport.signing import SIGNATURE_NAME, sign_bundle

    keys = write_key_pair(root / "keys")
    runs = {version: write_version(root / f"v{version}", seed=version) for version in (1, VALID)}
    for run in runs.values():
        sign_bundle(run, keys.private)
    tampered = Path(shutil.copytree(runs[VALID], root / "tampered"))
    flip_byte(tampered / "export" / "model.onnx")
    unsigned = Path(shutil.copytree(runs[VALID], root / "unsigned"))
    (unsigned / SIGNATURE_NAME).unlink()
    return {"keys": keys, "runs": {**runs, TAMPERED: tampered, UNSIGNED: unsigned},
            "answers": {version: expected_output(run) for version, run in runs.items()}}


async def ask(host: str, port: int, body: bytes, path: str, state: dict) -> None:
    """One client: keep-alive requests until the deadline, each answer checked against its version."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        while time.monotonic() < state["deadline"]:
            writer.write(head + body)
            await writer.drain()
            header = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in header.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            payload = await reader.readexactly(length)
            state["requests"] += 1
            if header[9:12] != b"200":
                state["failed"].append(payload.decode()[:200])
                continue
            answer = json.loads(payload)
            version, value = int(answer["model_version"]), answer["outputs"][0]["data"][0]
            state["versions"][version] = state["versions"].get(version, 0) + 1
            state["first_seen"].setdefault(version, time.monotonic())
            expected = state["answers"].get(version)
            if expected is None or abs(value - expected) > TOLERANCE:
                state["mismatched"].append(f"version {version} answered {value}, expected {expected}")
    finally:
        writer.close()


def schedule(repository: Path, versions: dict, seconds: float, state: dict, model: str) -> None:
    """Drop the versions in at fixed fractions of the run (a release tool's way: copy beside, rename in place)."""
    from devtools.repository_bundles import drop_in

    started = time.monotonic()
    for fraction, version in ((1 / 6, VALID), (0.4, TAMPERED), (0.65, UNSIGNED)):
        time.sleep(max(0.0, started + seconds * fraction - time.monotonic()))
        drop_in(versions[version], repository, model, version)
        state["dropped"][version] = time.monotonic()


def run_swap(*, workers: int, seconds: float, clients: int, poll_seconds: float, root: Path, prepared: dict) -> dict:
    """One soak of `seconds` with `workers` server processes; the figures and the checks."""
    import httpx

    from devtools.repository_bundles import MODEL_NAME, PROBE, drop_in
    from devtools.serving import ServerProcess

    repository = root / f"repository-w{workers}"
    drop_in(prepared["runs"][1], repository, MODEL_NAME, 1)
    server = ServerProcess(repository, "--repository", str(repository), "--poll-seconds", str(poll_seconds),
                           "--trusted-key", str(prepared["keys"].public), "--workers", str(workers),
                           "--no-access-log")
    state = {"deadline": time.monotonic() + seconds, "requests": 0, "failed": [], "mismatched": [], "versions": {},
             "first_seen": {}, "dropped": {}, "answers": prepared["answers"]}
    body = json.dumps({"inputs": [{"name": "row", "datatype": "FP32", "shape": list(PROBE.shape),
                                   "data": PROBE.ravel().tolist()}]}).encode()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    dropper = threading.Thread(target=schedule, args=(repository, prepared["runs"], seconds, state, MODEL_NAME))
    try:
        dropper.start()

        async def everyone():
            await asyncio.gather(*[ask(host, int(port), body, f"/v2/models/{MODEL_NAME}/infer", state)
                                   for _ in range(clients)])

        asyncio.run(everyone())
        dropper.join()
        with httpx.Client(timeout=10) as client:
            rows = {(row["name"], row["version"]): row for row in client.post(f"{server.url}/v2/repository/index")
                    .json()}
            refused_metric = [line for line in client.get(f"{server.url}/metrics").text.splitlines()
                              if line.startswith("kerasport_repository_refused_total{")]
    finally:
        dropper.join()
        code = server.stop()
    swap_seconds = state["first_seen"].get(VALID, float("inf")) - state["dropped"].get(VALID, 0.0)
    refused = {version: rows.get((MODEL_NAME, str(version)), {}) for version in (TAMPERED, UNSIGNED)}
    checks = {"0 failed requests": not state["failed"],
              "every answer's numbers are its version's": not state["mismatched"],
              f"(a) new version answers within --poll-seconds + {SWAP_SLACK_SECONDS:.0f} s":
                  swap_seconds <= poll_seconds + SWAP_SLACK_SECONDS,
              "(b) tampered never answers, refused with its reason":
                  TAMPERED not in state["versions"] and refused[TAMPERED].get("state") == "UNAVAILABLE"
                  and "changed since signing" in refused[TAMPERED].get("reason", ""),
              "(c) unsigned never answers, refused with its reason":
                  UNSIGNED not in state["versions"] and refused[UNSIGNED].get("state") == "UNAVAILABLE"
                  and "not signed" in refused[UNSIGNED].get("reason", ""),
              "server exits 0 on SIGTERM": code == 0}
    return {"workers": workers, "seconds": seconds, "clients": clients, "poll_seconds": poll_seconds,
            "requests": state["requests"], "failed": len(state["failed"]), "mismatched": len(state["mismatched"]),
            "answers_per_version": {str(k): v for k, v in sorted(state["versions"].items())},
            "swap_seconds": swap_seconds, "refused": {str(k): v for k, v in refused.items()},
            "refused_metric": refused_metric, "failures": (state["failed"] + state["mismatched"])[:10],
            "checks": checks}


def print_result(result: dict) -> None:
    print(f"== soak --swap: {result['seconds']:.0f} s, {result['clients']} clients, --workers {result['workers']}, "
          f"--poll-seconds {result['poll_seconds']}")
    print(f"requests {result['requests']}  failed {result['failed']}  mismatched {result['mismatched']}  "
          f"answers per version {result['answers_per_version']}")
    print(f"(a) version {VALID} answered {result['swap_seconds']:.2f} s after it was dropped in")
    for version, row in result["refused"].items():
        print(f"refused version {version}: {row.get('state')} - {row.get('reason')}")
    for line in result["refused_metric"]:
        print(f"metric: {line}")
    for label, ok in result["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    for failure in result["failures"]:
        print(f"  failure: {failure}")


def main(args) -> int:
    """Run the swap soak for --workers 1 and, unless --workers says otherwise, 2; print and return the exit code."""
    from kerasport.perf import host_info

    root = Path(tempfile.mkdtemp(prefix="kerasport-swap-"))
    prepared = prepare(root)
    results = []
    for workers in sorted({1, args.workers if args.workers > 1 else 2}):
        result = run_swap(workers=workers, seconds=args.seconds, clients=args.clients,
                          poll_seconds=args.poll_seconds, root=root, prepared=prepared)
        print_result(result)
        results.append(result)
    report = {"machine": host_info(SERVING_PACKAGES), "runs": results}
    print(f"machine: {report['machine']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(all(result["checks"].values()) for result in results) else 1
