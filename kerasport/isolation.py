"""Native steps that can abort the process (a converter, TFLite Micro, a runtime's first load) run in a child.

TensorFlow's converters, tf2onnx, TFLite Micro and the runtimes are C++ underneath: on a model they mishandle
they can `abort()` or segfault instead of raising, which would take the whole `kerasport` process down (and with
it every variant already built). `run_isolated` calls one importable function in a fresh Python process and
returns its result; `run_command` runs a command line (tf2onnx's own CLI). A crash becomes a ConversionError
that names the step and the signal — `TFLite Micro crashed (SIGABRT): <the child's last line>` — so the caller
decides, like for any failed conversion, whether it costs one variant (`--keep-going`) or the export (exit 3).

Inside the child, `announce(step)` names the native step about to run, so a crash is reported against the step
that was running (a conversion child that then loads its result in LiteRT names "LiteRT load", not the converter).

Test-only injection point: when the environment variable ABORT_STEP_ENV is set and a step's name starts with its
value, the child that reaches that step calls `os.abort()` (a real SIGABRT, as a native library would): e.g.
`KERASPORT_TEST_ABORT_STEP="TFLite converter int8"` crashes every rung of the tflite-int8 ladder. Nothing else
reads it, and the parent process never aborts.

The child is `python -m kerasport.isolation REQUEST REPLY`; arguments and results travel as pickles in a private
temporary folder outside any bundle, which is removed whatever happens.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from .errors import ConversionError, KerasportError

ABORT_STEP_ENV = "KERASPORT_TEST_ABORT_STEP"
TIMEOUT_ENV = "KERASPORT_STEP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0
# Where the child writes the step it is in (set by the parent for each child).
_STEP_FILE_ENV = "KERASPORT_STEP_FILE"
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
        request, reply = Path(scratch) / "request.pickle", Path(scratch) / "reply.pickle"
        with open(request, "wb") as handle:
            pickle.dump({"module": function.__module__, "name": function.__qualname__, "args": args,
                         "kwargs": kwargs, "step": step}, handle, protocol=pickle.HIGHEST_PROTOCOL)
        completed = run_command(step, [*python_command(), __name__, str(request), str(reply)],
                                timeout_s=timeout_s, scratch=Path(scratch), check=False)
        if not reply.is_file():
            raise StepCrashed(step, f"exit code {completed.returncode} without a result", _tail(completed))
        with open(reply, "rb") as handle:
            outcome = pickle.load(handle)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def python_command() -> list[str]:
    """`python -P -m`: this interpreter, without the working directory on sys.path (`-P`, Python 3.11+).

    A child started with plain `-m` imports from the working directory first, so a user's `random.py` or
    `bisect.py` there would replace the standard library in the child (as it would not in the `kerasport`
    console script, whose sys.path has no working directory).
    """
    return [sys.executable, "-P", "-m"]


def run_command(step: str, argv: Sequence[str], *, timeout_s: float | None = None, scratch: Path | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run `argv` as a child process; a signal or a timeout becomes StepCrashed naming the step.

    Args:
        step: what the command does, for messages.
        argv: the command line.
        timeout_s: the wall-clock limit (default: `step_timeout_s()`).
        scratch: a folder for the child's step file (a private temporary one when None).
        check: raise ConversionError (`<step> failed: <last line of its output>`) on a non-zero exit code.

    Returns:
        The completed process (stdout and stderr captured as text).

    Raises:
        StepCrashed: the child died from a signal or ran past the limit.
        ConversionError: `check` and the child exited with a non-zero code.
    """
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="kerasport-step-") as private:
            return run_command(step, argv, timeout_s=timeout_s, scratch=Path(private), check=check)
    step_file = scratch / "step.txt"
    step_file.write_text(step)
    environment = {**os.environ, _STEP_FILE_ENV: str(step_file)}
    limit = timeout_s or step_timeout_s()
    try:
        completed = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", env=environment,
                                   timeout=limit)
    except subprocess.TimeoutExpired as expired:
        raise StepCrashed(step_file.read_text() or step, f"timed out after {limit:g} s") from expired
    if completed.returncode < 0:
        raise StepCrashed(step_file.read_text() or step, signal_name(-completed.returncode), _tail(completed))
    if check and completed.returncode != 0:
        raise ConversionError(f"{step} failed (exit code {completed.returncode}): {_tail(completed)}")
    return completed


def signal_name(number: int) -> str:
    """SIGABRT for 6, or `signal N` for a number Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(completed: subprocess.CompletedProcess) -> str:
    """The child's last non-empty line of output (stderr first), cut short: usually the native library's reason."""
    for text in (completed.stderr, completed.stdout):
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if lines:
            return lines[-1][:_TAIL_CHARACTERS]
    return ""


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


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
