"""Run the app under uvicorn: load and verify first (exit 2 on a bad bundle), then serve until SIGTERM/SIGINT.

uvicorn's shutdown stops accepting connections and lets in-flight requests finish (up to the grace period)
before the lifespan closes the batcher, which is the drain SIGTERM needs.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time

GRACEFUL_SHUTDOWN_SECONDS = 30


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM after draining; a completed drain is a clean exit (code 0)."""

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    return DrainingServer


def serve(*, run, variant, model_name, host, port, max_batch, max_delay_ms, threads, api_key, max_body_bytes,
          allow_unverified, access_log) -> None:
    started = time.perf_counter()
    import uvicorn

    from .app import create_app
    from .model import load_served_model

    model = load_served_model(run, variant=variant, model_name=model_name, threads=threads,
                              allow_unverified=allow_unverified)
    app = create_app(model, max_batch=max_batch, max_delay_ms=max_delay_ms, api_key=api_key,
                     max_body_bytes=max_body_bytes)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("kerasport.access")
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO if access_log else logging.WARNING)
    access.propagate = False

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, lifespan="on",
                            loop="auto", http="auto")
    server = _server_class()(config)
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
        # One machine-readable line on stdout: clients and tests wait for it.
        print(json.dumps({"event": "ready", "url": f"http://{bound[0]}:{bound[1]}", "model": model.name,
                          "variant": model.variant, "runtime": model.entry["runtime"],
                          "ready_seconds": round(time.perf_counter() - started, 3)}), flush=True)

    server.startup = startup
    server.run()
