"""`kerasport serve --workers 2`: two server processes on one port, supervised — both answer, a killed worker is
replaced (and logged), /metrics counts every worker's requests, and SIGTERM drains them all with exit 0."""

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import ServerProcess, loopback_client, loopback_get

from kerasport.errors import EXIT_OK
from kerasport.serve.workers import default_workers, threads_per_worker

MODEL = "kerasport-seed"
BODY = {"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def infer_count(url: str) -> float:
    text = loopback_get(f"{url}/metrics").text
    found = re.search(r'^kerasport_requests_total\{method="POST",route="/v2/models/\{name\}/infer",status="200"\} '
                      r'(\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def access_pids(server) -> set[int]:
    return {json.loads(line)["pid"] for line in server.logs().splitlines()
            if line.startswith("{") and '"route"' in line}


def send(url: str, count: int) -> list[int]:
    def one(_):
        with loopback_client(base_url=url, timeout=30) as http:  # a new connection each: spread over the workers
            return http.post(f"/v2/models/{MODEL}/infer", json=BODY).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(count)))


def test_default_split_of_cores():
    assert default_workers(2) == 1 and default_workers(16) == 8 and default_workers(1) == 1
    assert threads_per_worker(4, cores=16) == 4 and threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(2, threads=3, cores=16) == 3


@pytest.fixture(scope="module")
def server(verified):
    process = ServerProcess(verified, "--variant", "onnx-fp32", "--workers", "2")
    yield process
    if process.process.poll() is None:
        process.stop()


def test_two_workers_answer_and_metrics_aggregate(server):
    ready = server.ready
    assert ready["workers"] == 2 and ready["threads_per_worker"] >= 1
    assert set(ready["pids"]) <= children(server.pid) and len(set(ready["pids"])) == 2
    statuses = send(server.url, 60)
    assert statuses == [200] * 60
    assert access_pids(server) == set(ready["pids"])  # both workers answered
    # whichever worker answers /metrics reports every worker's requests
    assert {infer_count(server.url) for _ in range(6)} == {60.0}
    stats = loopback_get(f"{server.url}/v2/models/{MODEL}/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 60 and stats["inference_count"] == 60


def test_a_killed_worker_is_replaced(server):
    victim = server.ready["pids"][0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    replacement = set()
    while time.monotonic() < deadline:
        replacement = {pid for pid in children(server.pid) - set(server.ready["pids"]) if alive(pid)}
        logged = '"event": "worker_restarted"' in server.logs()
        if replacement and logged:
            break
        time.sleep(0.2)
    assert logged and replacement, server.logs()[-2000:]
    restarted = [json.loads(line) for line in server.logs().splitlines() if '"worker_restarted"' in line]
    assert restarted[0]["pid"] == victim and restarted[0]["exitcode"] == -signal.SIGKILL
    # the survivor serves throughout; once the replacement is up, both serve again
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and loopback_get(f"{server.url}/v2/health/ready").status_code == 200:
        if restarted[0]["replacements"][0] in access_pids(server):
            break
        send(server.url, 8)
    assert restarted[0]["replacements"][0] in access_pids(server)
    assert infer_count(server.url) >= 60  # the dead worker's counts are kept


def test_sigterm_drains_every_worker_and_exits_0(verified):
    process = ServerProcess(verified, "--variant", "onnx-fp32", "--workers", "2", "--max-delay-ms", "1500",
                            "--max-batch", "64", "--no-access-log")
    workers = set(process.ready["pids"])
    images = np.zeros((1, 28, 28, 1))
    body = {"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": images.ravel().tolist()}]}

    def call(_):
        with loopback_client(base_url=process.url, timeout=30) as http:
            return http.post(f"/v2/models/{MODEL}/infer", json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(call, i) for i in range(8)]
        deadline, in_flight = time.monotonic() + 10, 0.0
        while time.monotonic() < deadline and in_flight < 8:  # summed over both workers, less this /metrics call
            text = loopback_get(f"{process.url}/metrics").text
            in_flight = float(re.search(r"^kerasport_requests_in_flight (\S+)", text, re.M).group(1)) - 1
        assert in_flight >= 8  # all eight are inside the workers, none answered yet
        code = process.stop()
        statuses = [future.result() for future in futures]
    assert code == EXIT_OK
    assert statuses == [200] * 8
    assert not any(alive(pid) for pid in workers)
