"""`kerasport serve` as a real subprocess, for tests and benchmarks alike."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ServerProcess:
    """`kerasport serve` as a real subprocess on a free loopback port (it prints its URL when ready)."""

    def __init__(self, run: Path, *args: str, timeout: float = 60.0):
        script = Path(sys.executable).with_name("kerasport")
        # stderr (the access log) goes to a file: a full pipe would block the server
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen([str(script), "serve", "--run", str(run), "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("{") or self.process.poll() is not None:
                break
        if not line.startswith("{"):
            self.process.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.logs()[-3000:]}")
        self.ready = json.loads(line)
        self.url = self.ready["url"]
        self.pid = self.process.pid

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> int:
        """SIGTERM (a graceful drain), then the exit code; killed if it has not exited within 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def loopback_client(**kwargs):
    """An httpx.Client for a plain-HTTP loopback server. With no TLS there is no CA bundle to load: httpx loads
    certifi's for every default client (about 26 ms of CPU each, which the tests that open a connection per request
    to spread it over the workers would pay hundreds of times).

    Args:
        **kwargs: httpx.Client's own (base_url, timeout, headers, ...).

    Returns:
        The client; use it as a context manager.
    """
    import httpx

    return httpx.Client(verify=False, **kwargs)


def loopback_get(url: str, **kwargs):
    """One GET to a plain-HTTP loopback URL without loading a CA bundle (`loopback_client`)."""
    with loopback_client() as client:
        return client.get(url, **kwargs)
