"""`kerasport serve --workers N`: N server processes on one port, supervised.

The parent binds the listening socket (so a port in use is still a one-line usage error), checks the bundle once,
then hands the socket to uvicorn's multiprocess supervisor, which spawns N workers that all accept on it, pings
them, restarts any that dies or hangs, and on SIGTERM/SIGINT sends each a SIGTERM — every worker drains its
in-flight requests — and waits for them all. `Supervisor` adds what a model server needs on top: the ready line
once every worker is serving, a JSON log line per restarted worker, and prometheus_client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, a fresh temporary folder) so `/metrics` and the Triton statistics count every
worker, with a dead worker's live gauges dropped.

Each worker is a fresh interpreter (spawned, so no runtime threads are forked) that loads its own runtime session
with `threads` intra-op threads: by default the cores split evenly, so N x threads ~ cores. Worker settings
travel in one environment variable, read by the app factory `worker_app`. With `--grpc-port` every worker also
runs the gRPC service in its app's lifespan, all listening on the one port (SO_REUSEPORT; the parent holds it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import uvicorn
from prometheus_client import multiprocess
from uvicorn.supervisors.multiprocess import Multiprocess

from kerasport.errors import ConversionError

from .offload import machine_cores
from .settings import ServeSettings

WORKER_ENV = "KERASPORT_SERVE_WORKER"
READY_TIMEOUT_SECONDS = 120
supervisor_log = logging.getLogger("kerasport.workers")


def default_workers(cores: int | None = None) -> int:
    """One worker per 2 cores (at least one): measured by bench/serve.py's processes x threads sweep."""
    return max(1, (cores or machine_cores()) // 2)


def threads_per_worker(workers: int, threads: int = 0, cores: int | None = None) -> int:
    """Runtime intra-op threads for each worker: `threads` if given, else the cores split evenly (at least 1)."""
    return threads or max(1, (cores or machine_cores()) // workers)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to build its app (JSON in `WORKER_ENV`).

    `settings` are the command's, resolved for one worker: `workers` the process count, `threads` each worker's
    share, and for a `--run` bundle the `variant` the parent chose.
    """

    settings: ServeSettings
    grpc_address: str | None = None  # host:port every worker's gRPC server joins (SO_REUSEPORT); None: no gRPC

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        values = json.loads(text)
        return cls(ServeSettings(**values["settings"]), values["grpc_address"])


def worker_app():
    """The app factory each worker process calls (uvicorn `factory=True`): load the model, build the app."""
    from .app import create_app
    from .offload import Offload
    from .process import configure_logs, tune_process
    from .repository_serving import configure_repository_log, preload_run, repository_config

    worker = WorkerSettings.from_json(os.environ[WORKER_ENV])
    settings = worker.settings
    tune_process()
    configure_logs(settings.access_log)
    configure_repository_log()
    config = repository_config(settings)
    model = preload_run(config)
    share = max(1, machine_cores() // settings.workers)
    app = create_app(model, max_batch=settings.max_batch, max_delay_ms=settings.max_delay_ms,
                     api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                     max_image_pixels=settings.image_pixel_limit, workers=settings.workers,
                     offload=Offload(threads=max(2, share), processes=share), repository=config)
    if worker.grpc_address is not None:
        from .grpc_server import GrpcFrontEnd
        from .process import GRACEFUL_SHUTDOWN_SECONDS

        GrpcFrontEnd(worker.grpc_address, api_key=settings.api_key, max_message_bytes=settings.max_body_bytes,
                     grace_seconds=GRACEFUL_SHUTDOWN_SECONDS).attach(app)
    return app


def _log(event: str, **fields) -> None:
    supervisor_log.warning(json.dumps({"ts": time.time(), "event": event, **fields}))


def serve_workers(sock: socket.socket, worker: WorkerSettings, *, announce, graceful_seconds: int,
                  backlog: int) -> None:
    """Run `worker.settings.workers` worker processes on `sock` until SIGTERM/SIGINT; every worker drains first.

    Args:
        sock: the bound, listening socket the workers share.
        worker: the workers' app settings.
        announce: called with the worker pids once every worker is serving (prints the ready line).
        graceful_seconds: how long each worker lets in-flight requests finish after SIGTERM.
        backlog: the socket's listen backlog.

    Raises:
        ConversionError: a worker could not start (its log says why).
    """
    from .metrics import MULTIPROC_ENV
    from .repository_control import CONTROL_ENV

    own_metrics_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = tempfile.mkdtemp(prefix="kerasport-metrics-") if own_metrics_dir else os.environ[MULTIPROC_ENV]
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ[WORKER_ENV] = worker.to_json()
    # The repository's shared control (repository_control.py): one folder for the server's lifetime.
    control_dir = tempfile.mkdtemp(prefix="kerasport-repository-")
    os.environ[CONTROL_ENV] = control_dir
    try:
        config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=worker.settings.workers,
                                log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=graceful_seconds, backlog=backlog)
        Supervisor(config, [sock], metrics_dir=metrics_dir, announce=announce).run()
    finally:
        os.environ.pop(CONTROL_ENV, None)
        shutil.rmtree(control_dir, ignore_errors=True)
        if own_metrics_dir:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor(Multiprocess):
    """uvicorn's supervisor, plus the ready line, restart logging and multiprocess-metrics clean-up."""

    def __init__(self, config, sockets, *, metrics_dir: str, announce):
        super().__init__(config, sockets)
        self.metrics_dir, self.announce = metrics_dir, announce

    def run(self) -> None:
        self.init_processes()
        if not self._wait_ready(READY_TIMEOUT_SECONDS):
            failed = not self.should_exit.is_set()
            self.terminate_all()
            self.join_all()
            if failed:
                raise ConversionError("a worker process could not start serving; its log above says why")
            return
        self.announce([process.pid for process in self.processes])
        while not self.should_exit.wait(0.5):
            self.handle_signals()
            self.keep_subprocess_alive()
        self.terminate_all()
        self.join_all()

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pending = list(self.processes)
        while pending and time.monotonic() < deadline:
            self.handle_signals()
            if self.should_exit.is_set():
                return False
            for process in list(pending):
                if not process.process.is_alive():
                    return False
                if process.is_ready(timeout=0.5):
                    pending.remove(process)
            time.sleep(0.05)
        return not pending

    def keep_subprocess_alive(self) -> None:
        before = {process.pid: process for process in self.processes}
        super().keep_subprocess_alive()
        now = {process.pid for process in self.processes}
        replacements = sorted(now - set(before))
        for pid, process in before.items():
            if pid not in now:
                multiprocess.mark_process_dead(pid, self.metrics_dir)
                _log("worker_restarted", pid=pid, exitcode=process.exitcode, replacements=replacements)


def log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    supervisor_log.handlers[:] = [handler]
    supervisor_log.propagate = False
