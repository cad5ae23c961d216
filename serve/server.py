"""Run the app under uvicorn: bind the port, load and verify the bundle, then serve until SIGTERM/SIGINT.

The listening socket is bound here, before the model loads, so a port in use is a one-line usage error (exit 2)
and the ready line can name the real port when `--port 0` picks one. uvicorn is handed the socket
(`Server.serve(sockets=...)`); a task beside it prints the ready line once `server.started` is true, which is
after the app's lifespan has started (the batcher is running).

Shutdown is uvicorn's: it stops accepting connections and lets in-flight requests finish (up to the grace
period) before the lifespan closes the batcher — the drain SIGTERM needs. While serving, uvicorn handles SIGINT
and SIGTERM itself; afterwards it restores the handlers that were installed before it started and re-raises the
signal it caught, so the handler installed here decides what the process does then: after a SIGTERM drain,
return normally (exit 0). SIGINT keeps Python's default, KeyboardInterrupt, which the CLI reports as exit 130.

With `--workers N` > 1 the bundle is checked here, then `workers.py` supervises N worker processes on the same
socket; the ready line comes once every worker serves, and names their pids.

With `--grpc-port` the gRPC port is reserved here too, before the model loads (`grpc_server.reserve_port`), and
every server process runs the gRPC service in its app's lifespan (`GrpcFrontEnd`); the ready line names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from dataclasses import replace

from kerasport.errors import UsageError

from .process import GRACEFUL_SHUTDOWN_SECONDS, configure_logs, tune_process
from .settings import ServeSettings

BACKLOG = 2048


def bind_listening_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A TCP socket listening on host:port (port 0: a free one); an address in use is a UsageError."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r}: cannot resolve it ({error.strerror})") from None
    sock = socket.socket(family, kind, protocol)
    try:
        # SO_REUSEADDR lets a restarted server take over a port whose old connections sit in TIME_WAIT; on Linux it
        # does not let two servers listen on one port, so a live server on the port still fails below.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); pick another "
                         f"--port, or 0 for a free one") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def serve(settings: ServeSettings) -> None:
    """Bind, load, serve until SIGTERM (exit 0 after draining).

    Args:
        settings: `kerasport serve`'s options (`grpc_port` None: no gRPC; `repository` None: the one bundle `run` is
            a repository of one; `workers` 0: one per 2 cores; `max_image_pixels` 0: sized from the model).

    Raises:
        UsageError: the port or host is unusable, or the bundle cannot be served as asked (exit 2).
        CheckFailed: an invalid manifest, or a signature that does not verify with `trusted_key` (exit 1).
        ConversionError: the runtime cannot load the artifact, or a worker cannot start (exit 3).
    """
    started = time.perf_counter()
    sock = bind_listening_socket(settings.host, settings.port)
    with contextlib.closing(sock), contextlib.ExitStack() as held:
        grpc_address = None
        if settings.grpc_port is not None:
            from .grpc_server import reserve_port

            grpc_address = held.enter_context(contextlib.closing(reserve_port(settings.host,
                                                                              settings.grpc_port))).address
        tune_process()
        from .repository_serving import repository_config
        from .workers import default_workers

        config = repository_config(settings)
        workers = settings.workers or default_workers()
        if workers > 1:
            return _serve_workers(sock, started, replace(settings, workers=workers), grpc_address, config)
        import uvicorn

        from .app import create_app
        from .repository_serving import configure_repository_log, describe_served, preload_run

        configure_repository_log()
        model = preload_run(config)
        app = create_app(model, max_batch=settings.max_batch, max_delay_ms=settings.max_delay_ms,
                         api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                         max_image_pixels=settings.image_pixel_limit, repository=config)
        if grpc_address is not None:
            from .grpc_server import GrpcFrontEnd

            GrpcFrontEnd(grpc_address, api_key=settings.api_key, max_message_bytes=settings.max_body_bytes,
                         grace_seconds=GRACEFUL_SHUTDOWN_SECONDS).attach(app)
        configure_logs(settings.access_log)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", loop="auto", http="auto",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, backlog=BACKLOG)
        server = uvicorn.Server(config)

        def announce() -> None:
            # One machine-readable line on stdout: clients and tests wait for it.
            print(json.dumps({"event": "ready", "url": url_of(sock), **describe_served(app.state.serving),
                              **({"grpc": grpc_address} if grpc_address else {}),
                              "ready_seconds": round(time.perf_counter() - started, 3)}), flush=True)

        def stop(signum, frame) -> None:
            # Runs for a SIGTERM before uvicorn has taken over the signal (the server then exits as soon as it
            # has started) and again when uvicorn re-raises the SIGTERM it drained for: returning is exit 0.
            server.should_exit = True

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                runner.run(_serve_and_announce(server, sock, announce))
        finally:
            signal.signal(signal.SIGTERM, previous)


def _serve_workers(sock: socket.socket, started: float, settings: ServeSettings, grpc_address: str | None,
                   config) -> None:
    """`settings.workers` (> 1) worker processes on `sock`; `config` is the repository the settings describe."""
    from .workers import WorkerSettings, log_to_stderr, serve_workers, threads_per_worker

    per_worker = threads_per_worker(settings.workers, settings.threads)
    if config.source.root is not None:
        configure_logs(settings.access_log)
        log_to_stderr()

        def announce_repository(pids: list[int]) -> None:
            print(json.dumps({"event": "ready", "url": url_of(sock), "repository": str(config.source.root),
                              "workers": settings.workers, "threads_per_worker": per_worker, "pids": pids,
                              **({"grpc": grpc_address} if grpc_address else {}),
                              "ready_seconds": round(time.perf_counter() - started, 3)}), flush=True)

        return serve_workers(sock, WorkerSettings(replace(settings, threads=per_worker), grpc_address),
                             announce=announce_repository, graceful_seconds=GRACEFUL_SHUTDOWN_SECONDS,
                             backlog=BACKLOG)
    from kerasport.bundle import Bundle
    from kerasport.selection import SERVABLE_FORMATS

    # Checked once here, so a bundle that cannot be served is one error line, not N failing workers.
    if settings.trusted_key is not None:
        from kerasport.signing import verify_signature

        verify_signature(settings.run, settings.trusted_key)
    bundle = Bundle.open(settings.run)
    manifest = bundle.manifest
    # an altered artifact is the user's to fix (exit 2), as when one process loads
    choice, artifact = bundle.select(formats=SERVABLE_FORMATS, requested=settings.variant,
                                     allow_unverified=settings.allow_unverified)
    configure_logs(settings.access_log)
    log_to_stderr()

    def announce(pids: list[int]) -> None:
        print(json.dumps({"event": "ready", "url": url_of(sock), "model": settings.model_name or manifest.name,
                          "variant": choice.variant, "variant_why": choice.why,
                          "runtime": artifact.runtime or artifact.format, "workers": settings.workers,
                          "threads_per_worker": per_worker, "pids": pids,
                          **({"grpc": grpc_address} if grpc_address else {}),
                          "ready_seconds": round(time.perf_counter() - started, 3)}), flush=True)

    serve_workers(sock, WorkerSettings(replace(settings, variant=choice.variant, threads=per_worker), grpc_address),
                  announce=announce, graceful_seconds=GRACEFUL_SHUTDOWN_SECONDS, backlog=BACKLOG)


async def _serve_and_announce(server, sock: socket.socket, announce) -> None:
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not (server.started or serving.done()):
        await asyncio.sleep(0.005)
    if server.started and not server.should_exit:
        announce()
    await serving


