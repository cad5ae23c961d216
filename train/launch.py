"""`kerasport launch`: run a multi-worker training job on this machine, for trying `--distributed` and for tests.

It starts N `kerasport train --distributed [train options]` processes, each with its own TF_CONFIG on a free
loopback port (worker 0 is the chief), lets the chief write to the terminal (progress, summary, `--json`) and
keeps the others' output in log files. It fails fast: when a worker exits with an error or is killed, the others
are stopped at once and the command ends with one line naming the worker. When all succeed it checks that every
worker finished with the same trained weights. No TensorFlow is imported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kerasport.bundle import Stage, stage_folder
from kerasport.errors import EXIT_RUNTIME, CheckFailed, KerasportError, UsageError

from .config import TrainConfig
from .distributed import local_cluster, parse_finished_line

LOOPBACK = "127.0.0.1"
SET_BY_LAUNCH = ("--distributed", "--workers", "--worker-index")
POLL_SECONDS = 0.1
FAILURE_GRACE_SECONDS = 3.0


@dataclass
class Worker:
    rank: int
    process: subprocess.Popen
    log: Path | None  # None for the chief, whose output goes to the terminal

    def error_line(self) -> str:
        """The worker's own `error: ...` line, if its log has one."""
        if self.log is None or not self.log.is_file():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()
        return next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")), "")


@dataclass
class LaunchResult:
    """What the job did: every worker's exit code, and the weights digest each reported."""

    exit_codes: dict[int, int] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports the OS reports free on `host` (held together while chosen, so never repeated)."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind((host, 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def check_train_args(train_args: list[str]):
    """Reject the options launch sets itself; the train command's parser checks the rest before any start.

    Returns:
        The `TrainConfig` every worker will build from these options.

    Raises:
        UsageError: an option launch sets, or one `kerasport train` does not accept or whose value is bad.
    """
    import typer

    from .cli import train_command

    for word in train_args:
        if word.split("=", 1)[0] in SET_BY_LAUNCH:
            raise UsageError(f"kerasport launch sets {word.split('=', 1)[0]} itself; expected only train options "
                             f"after --workers N")
        if word in ("--help", "-h"):
            raise UsageError("--help: see `kerasport train --help` for the train options launch passes on")
    probe = typer.Typer()
    probe.command()(train_command)
    try:
        context = typer.main.get_command(probe).make_context("kerasport train", list(train_args))
    except typer.TyperException as error:  # typer's (vendored) click usage errors
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        raise UsageError(f"train options: {message}") from None
    values = {field.name: context.params[field.name] for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**values, "distributed": True})  # value checks (one-line UsageError)


def launch(workers: int, train_args: list[str], *, out=None) -> LaunchResult:
    """Run `kerasport train --distributed` on `workers` local processes until all finish or one fails.

    Args:
        workers: how many worker processes (>= 1); worker 0 is the chief and writes the bundle.
        train_args: `kerasport train` options, passed to every worker unchanged.
        out: where launch's own lines go (default stderr).

    Returns:
        Every worker's exit code (all 0) and reported weights digest (all equal).

    Raises:
        UsageError: bad options, before any worker starts.
        KerasportError: a worker failed (the others were stopped); the exit code is the failed worker's.
        CheckFailed: every worker succeeded but they report different trained weights.
    """
    if workers < 1:
        raise UsageError(f"--workers {workers} must be >= 1")
    config = check_train_args(train_args)
    out = out or sys.stderr
    addresses = [f"{LOOPBACK}:{port}" for port in free_ports(workers)]
    scratch = Path(tempfile.mkdtemp(prefix="kerasport-launch-"))
    started: list[Worker] = []
    try:
        for rank in range(workers):
            started.append(_start(rank, addresses, train_args, scratch))
        pids = ", ".join(str(worker.process.pid) for worker in started)
        print(f"kerasport launch: {workers} worker(s) on {','.join(addresses)} (pids {pids}); worker 0 is the "
              f"chief", file=out, flush=True)
        result = _wait(started)
        _check_digests(result, started, Path(config.run))
        return result
    finally:
        _stop(started)
        shutil.rmtree(scratch, ignore_errors=True)


def _start(rank: int, addresses: list[str], train_args: list[str], scratch: Path) -> Worker:
    private = scratch / f"worker-{rank}"
    private.mkdir()
    # TMPDIR: a non-chief's temporary work directory lands in launch's scratch space, removed even if it is killed.
    env = {**os.environ, "TF_CONFIG": local_cluster(addresses, rank).tf_config(), "TMPDIR": str(private)}
    command = [sys.executable, "-m", "kerasport.app.cli", "train", "--distributed", *train_args]
    if rank == 0:
        return Worker(rank, subprocess.Popen(command, env=env), None)
    log = scratch / f"worker-{rank}.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT)
    return Worker(rank, process, log)


def _wait(workers: list[Worker]) -> LaunchResult:
    result = LaunchResult()
    while len(result.exit_codes) < len(workers):
        for worker in workers:
            if worker.rank in result.exit_codes:
                continue
            code = worker.process.poll()
            if code is None:
                continue
            result.exit_codes[worker.rank] = code
            if code != 0:
                raise _failure(worker, workers, code)
        time.sleep(POLL_SECONDS)
    return result


def _failure(failed: Worker, workers: list[Worker], code: int) -> KerasportError:
    """Stop the others; name the worker that failed first (a killed one over those that lost it as a peer)."""
    # The others usually notice the lost peer at once and stop with their own one-line error (the chief's says
    # what is backed up); give them a moment to print it, then stop the rest.
    deadline = time.monotonic() + FAILURE_GRACE_SECONDS
    while time.monotonic() < deadline and any(worker.process.poll() is None for worker in workers):
        time.sleep(POLL_SECONDS)
    killed = [worker for worker in workers if (worker.process.poll() or 0) < 0]
    if code >= 0 and killed:  # one killed by a signal is the cause; the others lost it as a peer
        failed, code = killed[0], killed[0].process.returncode
    _stop(workers)
    role = "the chief" if failed.rank == 0 else f"worker {failed.rank}"
    if code < 0:
        what = f"was killed by {_signal_name(-code)}"
    else:
        what = f"exited with code {code}"
        detail = failed.error_line()
        if detail:
            what += f" ({detail})"
    others = len(workers) - 1
    return KerasportError(f"{role} (pid {failed.process.pid}) {what}; stopped the other {others} worker(s)",
                          exit_code=code if code > 0 else EXIT_RUNTIME)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stop(workers: list[Worker]) -> None:
    # SIGKILL: a TensorFlow worker waiting in a collective does not act on SIGTERM (TensorFlow catches it).
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
    for worker in workers:
        worker.process.wait()


def _check_digests(result: LaunchResult, workers: list[Worker], run_dir: Path) -> None:
    """Every worker's trained-weights digest (the chief's from its metrics, the others' from their last line)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        metrics = json.loads((stage_folder(run_dir, Stage.TRAIN) / "metrics.json").read_text())
        result.digests[0] = metrics["trained_weights_sha256"]
    for worker in workers[1:]:
        for line in worker.log.read_text(errors="replace").splitlines():
            parsed = parse_finished_line(line)
            if parsed is not None:
                result.digests[parsed[0]] = parsed[1]
    if len(set(result.digests.values())) > 1:
        shown = ", ".join(f"worker {rank} {digest[:12]}" for rank, digest in sorted(result.digests.items()))
        raise CheckFailed(f"the workers finished with different trained weights ({shown}); expected identical")
