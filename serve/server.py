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

from kerasport.errors import UsageError

from .process import GRACEFUL_SHUTDOWN_SECONDS, configure_logs, tune_process

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


def serve(*, run, variant, model_name, host, port, max_batch, max_delay_ms, threads, api_key, max_body_bytes,
          allow_unverified, access_log, workers: int = 1, max_image_pixels: int | None = None,
          grpc_port: int | None = None, repository: str | None = None, version_policy: str = "latest:1",
          model_control: str = "poll", poll_seconds: float = 5.0, trusted_key: str | None = None) -> None:
    """Bind, load, serve until SIGTERM (exit 0 after draining). Arguments are `kerasport serve`'s options
    (`grpc_port` None: no gRPC; `repository` None: the one bundle `run` is a repository of one)."""
    started = time.perf_counter()
    sock = bind_listening_socket(host, port)
    with contextlib.closing(sock), contextlib.ExitStack() as held:
        grpc_address = None
        if grpc_port is not None:
            from .grpc_server import reserve_port

            grpc_address = held.enter_context(contextlib.closing(reserve_port(host, grpc_port))).address
        tune_process()
        from .repository_serving import repository_config

        config = repository_config(run=run, repository=repository, model_name=model_name, variant=variant,
                                   threads=threads, allow_unverified=allow_unverified, trusted_key=trusted_key,
                                   version_policy=version_policy, model_control=model_control,
                                   poll_seconds=poll_seconds)
        if workers > 1:
            return _serve_workers(sock, started, run=run, variant=variant, model_name=model_name,
                                  max_batch=max_batch, max_delay_ms=max_delay_ms, threads=threads, api_key=api_key,
                                  max_body_bytes=max_body_bytes, allow_unverified=allow_unverified,
                                  access_log=access_log, workers=workers, max_image_pixels=max_image_pixels,
                                  grpc_address=grpc_address, repository_args=config)
        import uvicorn

        from .app import create_app
        from .repository_serving import configure_repository_log, describe_served, preload_run

        configure_repository_log()
        model = preload_run(config)
        app = create_app(model, max_batch=max_batch, max_delay_ms=max_delay_ms, api_key=api_key,
                         max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels, repository=config)
        if grpc_address is not None:
            from .grpc_server import GrpcFrontEnd

            GrpcFrontEnd(grpc_address, api_key=api_key, max_message_bytes=max_body_bytes,
                         grace_seconds=GRACEFUL_SHUTDOWN_SECONDS).attach(app)
        configure_logs(access_log)
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


def _serve_workers(sock: socket.socket, started: float, *, run, variant, model_name, threads, workers,
                   grpc_address: str | None = None, repository_args=None, **settings) -> None:
    from .workers import WorkerSettings, log_to_stderr, serve_workers, threads_per_worker

    source, load = repository_args.source, repository_args.settings
    repository_options = {"version_policy": load.policy_text, "model_control": load.control,
                          "poll_seconds": load.poll_seconds, "trusted_key": load.trusted_key}
    if source.root is not None:
        configure_logs(settings["access_log"])
        log_to_stderr()
        per_worker = threads_per_worker(workers, threads)

        def announce_repository(pids: list[int]) -> None:
            print(json.dumps({"event": "ready", "url": url_of(sock), "repository": str(source.root),
                              "workers": workers, "threads_per_worker": per_worker, "pids": pids,
                              **({"grpc": grpc_address} if grpc_address else {}),
                              "ready_seconds": round(time.perf_counter() - started, 3)}), flush=True)

        return serve_workers(sock, WorkerSettings(run=str(run), variant=variant, model_name=None,
                                                  threads=per_worker, workers=workers, grpc_address=grpc_address,
                                                  repository=str(source.root), **repository_options, **settings),
                             announce=announce_repository, graceful_seconds=GRACEFUL_SHUTDOWN_SECONDS,
                             backlog=BACKLOG)
    from kerasport.bundle import Bundle
    from kerasport.selection import SERVABLE_FORMATS


    # Checked once here, so a bundle that cannot be served is one error line, not N failing workers.
    if load.trusted_key is not None:
        from kerasport.signing import verify_signature

        verify_signature(run, load.trusted_key)
    bundle = Bundle.open(run)
    manifest = bundle.manifest
    # an altered artifact is the user's to fix (exit 2), as when one process loads
    choice, artifact = bundle.select(formats=SERVABLE_FORMATS, requested=variant,
                                     allow_unverified=settings["allow_unverified"])
    chosen = choice.variant
    configure_logs(settings["access_log"])
    log_to_stderr()
    per_worker = threads_per_worker(workers, threads)

    def announce(pids: list[int]) -> None:
        print(json.dumps({"event": "ready", "url": url_of(sock), "model": model_name or manifest.name,
                          "variant": chosen, "variant_why": choice.why,
                          "runtime": artifact.runtime or artifact.format, "workers": workers,
                          "threads_per_worker": per_worker, "pids": pids,
                          **({"grpc": grpc_address} if grpc_address else {}),
                          "ready_seconds": round(time.perf_counter() - started, 3)}), flush=True)

    serve_workers(sock, WorkerSettings(run=str(run), variant=chosen, model_name=model_name, threads=per_worker,
                                       workers=workers, grpc_address=grpc_address, **repository_options,
                                       **settings),
                  announce=announce, graceful_seconds=GRACEFUL_SHUTDOWN_SECONDS, backlog=BACKLOG)


async def _serve_and_announce(server, sock: socket.socket, announce) -> None:
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not (server.started or serving.done()):
        await asyncio.sleep(0.005)
    if server.started and not server.should_exit:
        announce()
    await serving


