"""Process-wide settings every server process applies, the single server and each worker alike: logging,
the GIL switch interval, the graceful-shutdown grace period."""

from __future__ import annotations

import logging
import sys
import warnings

GRACEFUL_SHUTDOWN_SECONDS = 30
# How long a thread may hold the GIL before one waiting for it gets a turn (Python's default: 5 ms). The event
# loop shares the GIL with the batcher's thread and the parser pool's feeder threads; at 1 ms it answers health
# checks and small requests promptly while those run (bench/serve.py, health section: p99 ~21 -> ~8 ms).
GIL_SWITCH_SECONDS = 0.001


def tune_process() -> None:
    """Process-wide settings for a server process: a short GIL switch interval, Pillow's bomb warning off."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    _quiet_pillow()


def _quiet_pillow() -> None:
    # Pictures over the pixel limit are refused from their header with a 413 naming their size; Pillow's own
    # warning for the larger of them would only add noise to the server's log.
    try:
        from PIL import Image
    except ImportError:
        return
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def configure_logs(access_log: bool) -> None:
    """JSON lines on stderr: the access log (when enabled) and unexpected errors with their request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name, level in (("kerasport.access", logging.INFO if access_log else logging.WARNING),
                        ("kerasport.error", logging.ERROR)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
