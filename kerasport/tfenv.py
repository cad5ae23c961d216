"""Keep TensorFlow's C++ start-up messages off the console, so a command shows kerasport's own lines.

TensorFlow 2.21 logs through absl, and some of its lines come out while `import tensorflow` loads its shared
libraries — before TensorFlow has read `TF_CPP_MIN_LOG_LEVEL` and before absl is initialised, so no environment
variable reaches them (`GLOG_minloglevel`, `TF_ENABLE_ONEDNN_OPTS=1` and the absl flags do not either):

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.

`quiet_tensorflow()` makes those lines obey `TF_CPP_MIN_LOG_LEVEL` as TensorFlow's later lines do: it sets the
level (unless the user did) and, for the one `import tensorflow` of the process, captures file descriptor 2 and
writes back every line except absl lines below that level. It imports nothing itself, so entry points that never
touch TensorFlow (serve, --help) pay nothing. The level defaults to 2 (errors) where an NVIDIA driver is present,
and to 3 where none is: there TensorFlow's only error line is the expected `failed call to cuInit`.
Set `TF_CPP_MIN_LOG_LEVEL=0` to see everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import tempfile
from collections.abc import Iterator

ENV_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_SEVERITIES = "IWEF"  # absl's INFO, WARNING, ERROR, FATAL: TF_CPP_MIN_LOG_LEVEL 0..3


def quiet_tensorflow() -> None:
    """Call before TensorFlow is first imported, in every entry point; cheap and safe to call again."""
    os.environ.setdefault(ENV_LEVEL, "2" if _nvidia_driver_present() else "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def is_noise(line: str, min_level: int) -> bool:
    """An absl line below `min_level` (or absl's pre-initialisation banner, unless everything is shown)."""
    if line.rstrip("\n") == _ABSL_BANNER:
        return min_level > 0
    match = _ABSL_LINE.match(line)
    return match is not None and _SEVERITIES.index(match.group(1)) < min_level


def _min_level() -> int:
    try:
        return int(os.environ.get(ENV_LEVEL, "0"))
    except ValueError:
        return 0


def _nvidia_driver_present() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


@contextlib.contextmanager
def _filtered_stderr(min_level: int) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly); afterwards write back all but the noise."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep quiet
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not is_noise(line, min_level))
            if kept:
                os.write(2, kept.encode("utf-8"))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """A one-shot import hook: the `tensorflow` package is loaded as usual, with its start-up lines filtered."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _FilteringLoader(spec.loader)
                return spec
        return None


class _FilteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Hand the module its real loader first: TensorFlow's own imports may inspect it.
        module.__loader__ = module.__spec__.loader = self.loader
        with _filtered_stderr(_min_level()):
            self.loader.exec_module(module)
