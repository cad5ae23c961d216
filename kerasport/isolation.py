"""Native steps that can abort the process (a converter, TFLite Micro, a runtime's first load) run in a child.

TensorFlow's converters, tf2onnx, TFLite Micro and the runtimes are C++ underneath: on a model they mishandle
they can `abort()` or segfault instead of raising, which would take the whole `kerasport` process down (and with
it every variant already built). `run_isolated` calls one importable function in a child process and
returns its result (tf2onnx's own command line runs that way too). A crash becomes a ConversionError
that names the step and the signal — `TFLite Micro crashed (SIGABRT): <the child's last line>` — so the caller
decides, like for any failed conversion, whether it costs one variant (`--keep-going`) or the export (exit 3).

Inside the child, `announce(step)` names the native step about to run, so a crash is reported against the step
that was running (a conversion child that then loads its result in LiteRT names "LiteRT load", not the converter).

Test-only injection point: when the environment variable ABORT_STEP_ENV is set and a step's name starts with its
value, the child that reaches that step calls `os.abort()` (a real SIGABRT, as a native library would): e.g.
`KERASPORT_TEST_ABORT_STEP="TFLite converter int8"` crashes every rung of the tflite-int8 ladder. Nothing else
reads it, and the parent process never aborts.

A `run_isolated` child is forked from a fork server, a helper process that has imported the heavy libraries once
(`preload`), so each step costs a fork, not an interpreter start and a TensorFlow import; a crash still
takes only the child. Arguments and results travel as pickles in a private temporary folder outside any bundle,
which is removed whatever happens; the child's stdout and stderr go to a file there (its last line is the crash's
detail, `child_output()` reads it from inside).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from .errors import ConversionError, KerasportError

ABORT_STEP_ENV = "KERASPORT_TEST_ABORT_STEP"
TIMEOUT_ENV = "KERASPORT_STEP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0
# Where the child writes the step it is in, and its output (set by the parent for each child).
_STEP_FILE_ENV = "KERASPORT_STEP_FILE"
_OUTPUT_FILE_ENV = "KERASPORT_STEP_OUTPUT"
# Modules the fork server imports once, before it forks a child (`preload`).
_preloaded: list[str] = []
_SERVER_FLAG = "--fork-server"
_TAIL_CHARACTERS = 200


class StepCrashed(ConversionError):
    """A child step died from a signal (or timed out) instead of returning: exit code 3."""

    def __init__(self, step: str, how: str, detail: str = ""):
        super().__init__(f"{step} crashed ({how})" + (f": {detail}" if detail else ""))
        self.step = step
        self.how = how


def step_timeout_s() -> float:
    """The wall-clock limit of one child step: ENV TIMEOUT_ENV, else DEFAULT_TIMEOUT_S."""
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def announce(step: str) -> None:
    """Inside a child: the native step `step` starts now (a crash is reported against it).

    Outside a child this only honours the test-only abort hook, so code can announce unconditionally.
    """
    path = os.environ.get(_STEP_FILE_ENV)
    if path:
        Path(path).write_text(step)
    abort_prefix = os.environ.get(ABORT_STEP_ENV)
    if path and abort_prefix and step.startswith(abort_prefix):
        os.abort()


def run_isolated(step: str, function: Callable[..., Any], *args: Any, timeout_s: float | None = None,
                 **kwargs: Any) -> Any:
    """Call `function(*args, **kwargs)` in a fresh Python process and return what it returns.

    Args:
        step: what the child does, for messages ("TFLite converter (fp16)"); announced before the call.
        function: a module-level function (imported by name in the child); arguments and result must pickle.
        timeout_s: the wall-clock limit (default: `step_timeout_s()`).

    Returns:
        The function's return value.

    Raises:
        KerasportError: what the function raised, when it raised one (same class, same message).
        ConversionError: any other exception, as `<step> failed: <its first line>`.
        StepCrashed: the child died from a signal, exited without a result or ran past the limit.
    """
    with tempfile.TemporaryDirectory(prefix="kerasport-step-") as scratch:
        scratch = Path(scratch)
        request, reply, output = scratch / "request.pickle", scratch / "reply.pickle", scratch / "output.txt"
        step_file = scratch / "step.txt"
        step_file.write_text(step)
        with open(request, "wb") as handle:
            pickle.dump({"module": function.__module__, "name": function.__qualname__, "args": args,
                         "kwargs": kwargs, "step": step}, handle, protocol=pickle.HIGHEST_PROTOCOL)
        # The child is forked from a server process that imported the heavy libraries once, and takes this
        # process's environment as it is now (the server's is the one it started with).
        environment = {**os.environ, _STEP_FILE_ENV: str(step_file), _OUTPUT_FILE_ENV: str(output)}
        limit = timeout_s or step_timeout_s()
        exitcode = _fork_server().run(str(request), str(reply), str(output), environment, limit)
        if exitcode is None:
            raise StepCrashed(step_file.read_text() or step, f"timed out after {limit:g} s")
        detail = _last_line(output.read_text(errors="replace") if output.is_file() else "")
        if not reply.is_file():
            if exitcode < 0:
                raise StepCrashed(step_file.read_text() or step, signal_name(-exitcode), detail)
            raise StepCrashed(step, f"exit code {exitcode} without a result", detail)
        with open(reply, "rb") as handle:
            outcome = pickle.load(handle)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def signal_name(number: int) -> str:
    """SIGABRT for 6, or `signal N` for a number Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:_TAIL_CHARACTERS] if lines else ""


def child_output() -> str:
    """Inside a `run_isolated` child: everything it has written to stdout and stderr so far (native libraries'
    logs included); outside a child, an empty string."""
    path = os.environ.get(_OUTPUT_FILE_ENV)
    if not path:
        return ""
    sys.stdout.flush()
    sys.stderr.flush()
    return Path(path).read_text(errors="replace")


def preload(*modules: str) -> None:
    """Have the forkserver import `modules` once when it starts, so each child starts warm (a stage names the heavy
    libraries its children use: the export stage, TensorFlow and tf2onnx, ~4 s of CPU per child otherwise).
    Effective until the forkserver has started."""
    _preloaded.extend(module for module in modules if module not in _preloaded)


class _ForkServer:
    """A helper process (`python -P -m kerasport.isolation --fork-server MODULE...`) that imported the preloaded
    modules once and forks one child per step: JSON lines in on its stdin, the child's pid then its exit status
    (negative: the signal that killed it) out on its stdout. It exits when this process closes its stdin.

    Not multiprocessing's forkserver: that one re-runs the caller's `__main__` script in every child, which a
    script calling kerasport without an `if __name__ == "__main__"` guard does not survive.
    """

    def __init__(self, modules: list[str]):
        self.modules = list(modules)
        self.process = subprocess.Popen([sys.executable, "-P", "-m", __name__, _SERVER_FLAG, *modules],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()
        self.pending = b""  # bytes read from its stdout that do not end a line yet

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, request: str, reply: str, output: str, environment: dict, limit: float) -> int | None:
        """Fork one child for the step; its exit code (negative: killed by that signal), None when it ran past
        `limit` seconds (it is killed)."""
        with self.lock:
            self.process.stdin.write(json.dumps([request, reply, output, environment]) + "\n")
            self.process.stdin.flush()
            pid = int(self._line(None))
            try:
                return int(self._line(limit))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._line(None)  # the killed child's status
                return None

    def _line(self, limit: float | None) -> str:
        # Read the pipe's bytes ourselves: a buffered readline can take the pid and the exit status in one read,
        # and a select() on the descriptor would then wait for a line already read (a child that ends before
        # this process asks for its status, e.g. while two parity checks share the server).
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.process.stdout], [], [], limit)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                raise ConversionError(f"the isolation helper process exited ({self.process.poll()}); expected it "
                                      f"to report its child's exit status")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()


_server: _ForkServer | None = None
# Threads of one process (parity checks two candidates at once) share one fork server.
_server_lock = threading.Lock()


def _fork_server() -> _ForkServer:
    """The running fork server, started (again) when there is none or it lacks a module asked for since."""
    global _server
    with _server_lock:
        if _server is None or not _server.alive or set(_preloaded) - set(_server.modules):
            if _server is not None and _server.alive:
                _server.process.stdin.close()
            _server = _ForkServer(_preloaded)
        return _server


def _serve_forks(modules: list[str]) -> None:
    """The fork server's side: import `modules`, then fork a child per request line until stdin closes."""
    for module in modules:
        import_module(module)
    for line in sys.stdin:
        request, reply, output, environment = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _forked_child(request, reply, output, environment)
            except BaseException:  # noqa: BLE001 - the child must never return into the server's loop
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


def _forked_child(request_path: str, reply_path: str, output_path: str, environment: dict) -> None:
    """The child's side in the forked process: the parent's environment, output into a file, then `_child`."""
    os.environ.clear()
    os.environ.update(environment)
    descriptor = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the child's whole life; never the server's request pipe
    _child(request_path, reply_path)



def _child(request_path: str, reply_path: str) -> None:
    """The child's side: load the request, announce the step, call the function, write the reply."""
    from .tfenv import quiet_tensorflow

    quiet_tensorflow()
    with open(request_path, "rb") as handle:
        request = pickle.load(handle)
    announce(request["step"])
    try:
        target = import_module(request["module"])
        for part in request["name"].split("."):
            target = getattr(target, part)
        outcome = {"value": target(*request["args"], **request["kwargs"])}
    except KerasportError as error:
        # The same class when it takes (message, exit_code) like KerasportError, else a ConversionError.
        same = type(error) if type(error).__init__ is KerasportError.__init__ else ConversionError
        outcome = {"error": same(str(error), error.exit_code)}
    except Exception as error:  # noqa: BLE001 - anything else: one line naming the step
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = (lines[0] if lines else type(error).__name__)[:_TAIL_CHARACTERS]
        outcome = {"error": ConversionError(f"{request['step']} failed: {reason}")}
    try:
        payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # noqa: BLE001 - an exception or result that does not pickle
        payload = pickle.dumps({"error": ConversionError(f"{request['step']}: its result does not pickle "
                                                         f"({type(error).__name__})")})
    with open(reply_path, "wb") as handle:
        handle.write(payload)


if __name__ == "__main__" and sys.argv[1:2] == [_SERVER_FLAG]:
    _serve_forks(sys.argv[2:])
