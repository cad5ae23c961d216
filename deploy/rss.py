"""Measure what `kerasport serve` needs in memory: a real server on the bundle, warmed up, read from /proc.

The server is started as a subprocess on a free loopback port (it prints a JSON ready line), sent one V2 request
of one example and one of `WARMUP_BATCH` examples (`kerasport serve`'s default `--max-batch`, the largest batch the
runtime then sees), and its `VmRSS` (resident now) and `VmHWM` (peak resident) are read from
`/proc/<pid>/status`. The memory request is 1.5 x the larger of the two, rounded up to a multiple of 32 MiB.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.errors import ConversionError, UsageError

WARMUP_BATCH = 8
HEADROOM = 1.5
ROUND_MIB = 32
START_TIMEOUT = 120.0
# Started through the console-script's function, so it works where the `kerasport` script is not on PATH.
SERVE = "from kerasport.app.cli import main; main()"


def memory_request_mib(measured_mib: float, headroom: float = HEADROOM, step: int = ROUND_MIB) -> int:
    """`headroom` x the measured MiB, rounded up to a multiple of `step`."""
    return int(math.ceil(measured_mib * headroom / step) * step)


def warmup_body(contract: ModelContract, batch: int) -> bytes:
    """A V2 inference request of `batch` examples, each input filled with its lowest allowed value (or 0)."""
    inputs = []
    for spec in contract.input_specs():
        low = spec.value_range[0] if spec.value_range else 0
        array = np.full(spec.example_shape(batch), low, dtype=spec.dtype)
        inputs.append({"name": spec.name, "shape": list(array.shape), "datatype": spec.v2_datatype,
                       "data": array.ravel().tolist()})
    return json.dumps({"inputs": inputs}).encode()


def read_status_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB, from /proc/<pid>/status (Linux).

    Raises:
        UsageError: there is no /proc entry for the process (not Linux, or it exited).
    """
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        raise UsageError(f"cannot read {status}; measuring the server's memory needs Linux's /proc")
    values = {}
    for line in status.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    return values


def measure_serve_rss(run_dir: Path, contract: ModelContract, serve_args: list[str]) -> dict:
    """Start `kerasport serve` on the bundle, warm it up, and read its resident memory.

    Args:
        run_dir: the bundle the server loads.
        contract: the bundle's contract (to build warm-up requests).
        serve_args: extra `kerasport serve` options (e.g. `--allow-unverified`).

    Returns:
        {"vm_rss_mib", "vm_hwm_mib", "variant", "runtime", "warmup", "how"}.

    Raises:
        UsageError: the server refused the bundle (its one-line error is quoted).
        ConversionError: the server did not start or answer within the timeout.
    """
    command = [sys.executable, "-c", SERVE, "serve", "--run", str(run_dir.resolve()), "--host", "127.0.0.1",
               "--port", "0", "--no-access-log", *serve_args]
    with tempfile.TemporaryFile("w+") as log:
        # cwd: not the repository, whose folders would shadow the installed package
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=tempfile.gettempdir())
        try:
            ready = _wait_ready(process, log)
            for batch in (1, WARMUP_BATCH):
                _infer(ready, warmup_body(contract, batch))
            memory = read_status_mib(process.pid)
        finally:
            _stop(process)
    return {"vm_rss_mib": round(memory["VmRSS"], 1), "vm_hwm_mib": round(memory["VmHWM"], 1),
            "variant": ready.get("variant"), "runtime": ready.get("runtime"), "warmup": [1, WARMUP_BATCH],
            "how": f"`{' '.join(['kerasport serve --run <bundle>', *serve_args])}` as a subprocess, one V2 request "
                   f"of 1 and one of {WARMUP_BATCH} examples, then VmRSS and VmHWM from /proc/<pid>/status"}


def _wait_ready(process: subprocess.Popen, log) -> dict:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("{"):
            return json.loads(line)
        if not line and process.poll() is not None:
            break
    log.seek(0)
    errors = [line for line in log.read().splitlines() if line.startswith("error:")]
    if errors:
        raise UsageError(f"`kerasport serve` refused the bundle while measuring its memory: {errors[-1][7:]}")
    raise ConversionError(f"`kerasport serve` did not become ready within {START_TIMEOUT:.0f} s (exit code "
                          f"{process.poll()}); expected a ready line to measure its memory")


def _infer(ready: dict, body: bytes) -> None:
    url = f"{ready['url']}/v2/models/{ready['model']}/infer"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    except OSError as error:
        raise ConversionError(f"the warm-up request to {url} failed ({error}); expected 200") from None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
