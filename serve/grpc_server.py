"""`kerasport serve --grpc-port`: the Open Inference Protocol's gRPC service, `inference.GRPCInferenceService`.

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, and Triton's ModelConfig and
ModelStatistics extensions, over the same `ServingState` as the HTTP routes: one micro-batcher, one set of metrics,
one readiness flag, one API key. Other methods of the service (streaming, repository, shared memory, trace, log
settings) answer UNIMPLEMENTED.

- grpc.aio on the event loop uvicorn already runs: gRPC requests are coroutines beside the HTTP ones, so they
  coalesce with them in the one micro-batcher, and no thread pool hops into the loop per request.
- The front end attaches to the app's lifespan: the gRPC server starts once the batcher runs and the model is
  ready, and on shutdown (SIGTERM) it stops taking new calls and lets in-flight ones finish (`server.stop(grace)`)
  before the batcher stops — after uvicorn has drained HTTP.
- The port is reserved by the parent process before the model loads (`reserve_port`: in use -> a one-line usage
  error, 0 -> a free one), bound with SO_REUSEPORT; each server process's gRPC listener joins it with SO_REUSEPORT,
  so with `--workers N` every worker serves gRPC on the one port and the kernel spreads connections across them.
- Errors map to status codes in one place (`grpc_code`, from the HTTP status `errors.status_of` gives each typed
  error): bad input INVALID_ARGUMENT naming the input, unknown model NOT_FOUND, not ready UNAVAILABLE, a missing
  key UNAUTHENTICATED; a message over `--max-body-bytes` is refused by gRPC itself with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from kerasport import __version__
from kerasport.errors import UsageError

from .errors import BadRequest, NotFound, NotReady, Unauthorized, status_of
from .grpc_protocol import decode_infer_request, encode_model_infer, parse_model_infer
from .guard import request_id
from .offload import PROCESS_BODY_BYTES, PROCESS_OUTPUT_VALUES
from .routes_v2 import model_config, model_metadata, model_statistics
from .state import ServingState

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Health stays open, as on HTTP; every other method needs the API key when one is set.
OPEN_METHODS = ("ServerLive", "ServerReady")
EXTENSIONS = ["model_configuration", "statistics"]
# The one mapping from a typed error (by the HTTP status errors.status_of gives it) to a gRPC status code.
GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
              503: grpc.StatusCode.UNAVAILABLE}
access_log = logging.getLogger("kerasport.access")
error_log = logging.getLogger("kerasport.error")


def grpc_code(error: Exception) -> grpc.StatusCode:
    """The status code for an error: a client's mistake by its kind, anything else INTERNAL."""
    return GRPC_CODES.get(status_of(error), grpc.StatusCode.INTERNAL)


@dataclass
class PortReservation:
    """A gRPC port held (bound, not listening, SO_REUSEPORT) by the process that starts the server(s)."""

    sock: socket.socket
    address: str  # host:port as gRPC binds it and clients dial it ([v6]:port for IPv6)

    def close(self) -> None:
        self.sock.close()


def reserve_port(host: str, port: int) -> PortReservation:
    """Check host:port is free (0: pick a free one) and hold it for gRPC listeners that bind it with SO_REUSEPORT.

    Raises:
        UsageError: the host does not resolve, or something already listens on the port.
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r}: cannot resolve it ({error.strerror})") from None
    ip = address[0]
    probe = socket.socket(family, kind, protocol)
    try:
        # Without SO_REUSEPORT the probe fails on a port any listener holds, SO_REUSEPORT ones included.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        port = probe.getsockname()[1]
    except OSError as error:
        raise UsageError(f"--host {host} --grpc-port {port}: cannot listen there ({error.strerror}); pick another "
                         f"--grpc-port, or 0 for a free one") from None
    finally:
        probe.close()
    holder = socket.socket(family, kind, protocol)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((ip, port, *address[2:]))
    except OSError as error:
        holder.close()
        raise UsageError(f"--host {host} --grpc-port {port}: cannot listen there ({error.strerror})") from None
    return PortReservation(holder, f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")


class GrpcFrontEnd:
    """The gRPC server of one server process, started and drained with its app's lifespan.

    Args:
        address: host:port to listen on (reserved by `reserve_port`; joined with SO_REUSEPORT).
        api_key: when set, every method but ServerLive/ServerReady needs metadata `authorization: Bearer KEY` or
            `x-api-key: KEY`.
        max_message_bytes: larger request messages are refused with RESOURCE_EXHAUSTED (`--max-body-bytes`).
        grace_seconds: how long in-flight calls may finish on shutdown.
    """

    def __init__(self, address: str, *, api_key: str | None, max_message_bytes: int, grace_seconds: float):
        self.address, self.api_key = address, api_key
        self.max_message_bytes, self.grace_seconds = max_message_bytes, grace_seconds
        self.server: grpc.aio.Server | None = None

    def attach(self, app) -> None:
        """Run the gRPC server inside `app`'s lifespan (a Starlette app from `create_app`), after its startup."""
        original = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(application):
            async with original(application) as value:
                await self.start(application.state.serving)
                try:
                    yield value
                finally:
                    await self.stop()

        app.router.lifespan_context = lifespan

    async def start(self, state: ServingState) -> None:
        """Listen on the address and serve `state`'s model.

        Raises:
            UsageError: the address cannot be bound.
        """
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_message_bytes),
                                          ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((InferenceService(state, self.api_key).handler(),))
        try:
            server.add_insecure_port(self.address)
        except RuntimeError:
            raise UsageError(f"gRPC: cannot listen on {self.address}; pick another --grpc-port") from None
        await server.start()
        self.server = server

    async def stop(self) -> None:
        """Refuse new calls, let in-flight ones finish (up to the grace period), close."""
        if self.server is not None:
            await self.server.stop(self.grace_seconds)
            self.server = None


class InferenceService:
    """`inference.GRPCInferenceService` over a `ServingState`; each method raises typed errors (`grpc_code`)."""

    def __init__(self, state: ServingState, api_key: str | None):
        self.state, self.api_key = state, api_key

    # --- health and metadata ---------------------------------------------------------------------------------

    async def server_live(self, request):
        return service_pb2.ServerLiveResponse(live=True)

    async def server_ready(self, request):
        return service_pb2.ServerReadyResponse(ready=self.state.ready)

    async def model_ready(self, request):
        try:
            self.state.check_name(request.name, request.version or None)
        except (NotFound, NotReady):  # a readiness probe's answer, as Triton gives it: not ready, no error
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def server_metadata(self, request):
        extensions = EXTENSIONS + (["model_repository"] if self.state.repository is not None else [])
        return service_pb2.ServerMetadataResponse(name="kerasport", version=__version__, extensions=extensions)

    async def model_metadata(self, request):
        metadata = model_metadata(self.state.check_name(request.name, request.version or None, need_ready=False))
        return service_pb2.ModelMetadataResponse(
            name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
            inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in metadata["inputs"]],
            outputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in metadata["outputs"]])

    async def model_config(self, request):
        state = self.state.check_name(request.name, request.version or None, need_ready=False)
        config = json_format.ParseDict(model_config(state), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def model_statistics(self, request):
        state = self.state.described()
        if request.name:
            state = self.state.check_name(request.name, request.version or None, need_ready=False)
        return json_format.ParseDict(model_statistics(state), service_pb2.ModelStatisticsResponse())

    # --- inference ---------------------------------------------------------------------------------------------

    async def model_infer(self, data: bytes) -> bytes:
        """Serialized ModelInferRequest in, serialized ModelInferResponse out.

        Decoding is a copy of the tensors' bytes, done inline; converting and checking them runs in a thread for
        a request over PROCESS_BODY_BYTES, as a large binary body does on HTTP.
        """
        request = decode_infer_request(data)
        # The version this call runs on; no await before run_inference counts it in flight (hot swap).
        state = self.state.check_name(request.model_name, request.model_version or None)
        model = state.model
        contract = model.contract

        async def parse():
            if len(data) > PROCESS_BODY_BYTES:
                parsed = await state.offload.thread(parse_model_infer, request, contract)
            else:
                parsed = parse_model_infer(request, contract)
            return parsed.inputs, parsed

        async def respond(outputs, parsed):
            if sum(array.size for array in outputs.values()) > PROCESS_OUTPUT_VALUES:
                return await state.offload.thread(encode_model_infer, outputs, parsed, contract, model.name,
                                                  model.version)
            return encode_model_infer(outputs, parsed, contract, model.name, model.version)

        return await state.run_inference(parse, respond)

    # --- the model repository extension (a server started with a repository) --------------------------------------

    async def repository_index(self, request):
        rows = self.state.repository.index(request.ready)
        return service_pb2.RepositoryIndexResponse(
            models=[service_pb2.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def repository_model_load(self, request):
        if any(key == "config" or key.startswith("file:") for key in request.parameters):
            raise BadRequest(f"load parameters {sorted(request.parameters)} override the model's files or "
                             f"configuration, which this server does not do; expected a model folder in the repository")
        await self.state.repository.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request):
        await self.state.repository.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # --- registration --------------------------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's implemented methods, each behind `_guarded` (auth, errors, metrics, access log)."""
        methods = {"ServerLive": self.server_live, "ServerReady": self.server_ready, "ModelReady": self.model_ready,
                   "ServerMetadata": self.server_metadata, "ModelMetadata": self.model_metadata,
                   "ModelConfig": self.model_config, "ModelStatistics": self.model_statistics}
        if self.state.repository is not None:
            methods |= {"RepositoryIndex": self.repository_index, "RepositoryModelLoad": self.repository_model_load,
                        "RepositoryModelUnload": self.repository_model_unload}
        handlers = {}
        for name, method in methods.items():
            descriptor = SERVICE.methods_by_name[name]
            request_class = getattr(service_pb2, descriptor.input_type.name)
            response_class = getattr(service_pb2, descriptor.output_type.name)
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(name, method), request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString)
        # ModelInfer takes and returns bytes: a large request is parsed off the event loop.
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(self._guarded("ModelInfer", self.model_infer))
        return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)

    def _guarded(self, name: str, method):
        route = f"/{SERVICE.full_name}/{name}"
        metrics = self.state.metrics

        async def call(request, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()
                        if isinstance(value, str)}
            rid = request_id(metadata)
            context.set_trailing_metadata((("x-request-id", rid),))
            code = grpc.StatusCode.CANCELLED  # unless it ends otherwise: the client went away
            metrics.in_flight.inc()
            try:
                if self.api_key and name not in OPEN_METHODS and not self._authorized(metadata):
                    raise Unauthorized("missing or wrong API key; send metadata 'authorization: Bearer <key>' or "
                                       "'x-api-key: <key>'")
                response = await method(request)
                code = grpc.StatusCode.OK
                return response
            except Exception as error:  # noqa: BLE001 - every error becomes a status code, the server serves on
                code = grpc_code(error)
                message = str(error)
                if code == grpc.StatusCode.INTERNAL:
                    _log_error(route, rid, error)
                    message = f"internal error: {type(error).__name__}: {error} (request id {rid})"
                await context.abort(code, message, trailing_metadata=(("x-request-id", rid),))
            finally:
                metrics.in_flight.dec()
                seconds = time.perf_counter() - started
                metrics.requests.labels(route, "GRPC", code.name).inc()
                metrics.latency.labels(route).observe(seconds)
                if access_log.isEnabledFor(logging.INFO):
                    access_log.info(json.dumps({
                        "ts": time.time(), "method": "GRPC", "path": route, "route": route, "status": code.name,
                        "ms": round(seconds * 1000, 3), "bytes_in": len(request) if isinstance(request, bytes)
                        else request.ByteSize(), "client": context.peer(), "request_id": rid, "pid": os.getpid()}))

        return call

    def _authorized(self, metadata: dict) -> bool:
        bearer = metadata.get("authorization", "")
        token = bearer[7:] if bearer.lower().startswith("bearer ") else metadata.get("x-api-key")
        return token is not None and hmac.compare_digest(token.encode(), self.api_key.encode())


def _log_error(route: str, rid: str, error: Exception) -> None:
    error_log.error(json.dumps({"ts": time.time(), "event": "unhandled_error", "request_id": rid, "method": "GRPC",
                                "path": route, "error": f"{type(error).__name__}: {error}",
                                "traceback": "".join(traceback.format_exception(error))}))

