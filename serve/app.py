"""The HTTP app: KServe V2 and TF Serving REST over a verified model, plus image classification and metrics.

Starlette (FastAPI's core) without per-request model validation: the protocol parsing in `protocol.py` does the
validation, and skipping pydantic keeps the per-request overhead well under a millisecond.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from kerasport import __version__
from kerasport.errors import UsageError
from kerasport.images import decode_image_bytes

from .batcher import MicroBatcher
from .model import ServedModel
from .protocol import BadRequest, parse_tfs_predict, parse_v2_infer

try:
    import orjson

    def _dumps(payload) -> bytes:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    def _loads(body: bytes):
        return orjson.loads(body)

    _JSON_ERRORS: tuple = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - orjson is in the serve extra
    def _dumps(payload) -> bytes:
        return json.dumps(payload, default=lambda v: v.tolist()).encode()

    def _loads(body: bytes):
        return json.loads(body)

    _JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)

access_log = logging.getLogger("kerasport.access")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")
BINARY_HEADER = "inference-header-content-length"


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return _dumps(content)


def error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status_code=status)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("kerasport_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("kerasport_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("kerasport_batch_size", "Images per runtime call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_time = Histogram("kerasport_queue_seconds", "Time the oldest request of a batch waited",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference_time = Histogram("kerasport_inference_seconds", "Runtime call duration",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("kerasport_images_total", "Images inferred", registry=self.registry)
        self.ready = Gauge("kerasport_ready", "1 when the model is ready to serve", registry=self.registry)
        self.in_flight = Gauge("kerasport_requests_in_flight", "Requests being handled", registry=self.registry)

    def observe_batch(self, size: int, queued: float, inference: float) -> None:
        self.batch_size.observe(size)
        self.queue_time.observe(queued)
        self.inference_time.observe(inference)
        self.images.inc(size)


class Guard:
    """ASGI middleware: body limit (413), API key (401), metrics and one JSON access-log line per request."""

    def __init__(self, app, *, routes, metrics: Metrics, api_key: str | None, max_body_bytes: int):
        self.app, self.routes, self.metrics = app, routes, metrics
        self.api_key, self.max_body_bytes = api_key, max_body_bytes
        self._labels: dict[tuple[str, str], str] = {}

    def _route_label(self, scope) -> str:
        # Clients repeat the same few paths: remember each one's route template (bounded, so odd paths can't
        # grow it without limit).
        key = (scope["method"], scope["path"])
        label = self._labels.get(key)
        if label is None:
            label = next((route.path for route in self.routes if route.matches(scope)[0] == Match.FULL), "unmatched")
            if len(self._labels) < 1024:
                self._labels[key] = label
        return label

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = self._route_label(scope)
        status = {"code": 500}
        received = {"bytes": 0}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        async def respond(response: Response) -> None:
            await response(scope, receive, send_wrapper)

        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        self.metrics.in_flight.inc()
        try:
            if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
                await respond(error(401, "missing or wrong API key; send 'Authorization: Bearer <key>' or "
                                         "'X-API-Key: <key>'"))
                return
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    await respond(error(400, f"Content-Length {length!r} is not a number"))
                    return
                if int(length) > self.max_body_bytes:
                    await respond(error(413, f"body of {int(length)} bytes exceeds the limit of "
                                             f"{self.max_body_bytes} bytes"))
                    return

            async def limited_receive():
                message = await receive()
                if message["type"] == "http.request":
                    received["bytes"] += len(message.get("body", b""))
                    if received["bytes"] > self.max_body_bytes:
                        raise _BodyTooLarge
                return message

            await self.app(scope, limited_receive, send_wrapper)
        except _BodyTooLarge:
            await respond(error(413, f"body exceeds the limit of {self.max_body_bytes} bytes (cut off while "
                                     f"streaming)"))
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({"ts": time.time(), "method": scope["method"], "path": scope["path"],
                                            "route": route, "status": status["code"],
                                            "ms": round(seconds * 1000, 3), "bytes_in": received["bytes"],
                                            "client": client[0]}))

    def _authorized(self, headers: dict) -> bool:
        bearer = headers.get("authorization", "")
        token = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("x-api-key")
        import hmac

        return token is not None and hmac.compare_digest(token.encode(), self.api_key.encode())


class _BodyTooLarge(Exception):
    pass


def create_app(model: ServedModel, *, max_batch: int = 32, max_delay_ms: float = 0.0, api_key: str | None = None,
               max_body_bytes: int = 8 * 1024 * 1024) -> Starlette:
    metrics = Metrics()
    batcher = MicroBatcher(model.predict, max_batch=max_batch, max_delay_ms=max_delay_ms,
                           observe=metrics.observe_batch)
    state = {"ready": False}
    versions = {model.version}

    def model_metadata() -> dict:
        return {"name": model.name, "versions": [model.version], "platform": f"kerasport/{model.entry['runtime']}",
                "inputs": [{"name": model.input_name, "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
                "outputs": [{"name": model.output_name, "datatype": "FP32", "shape": [-1, model.n_outputs]}],
                "parameters": {"variant": model.variant, "precision": model.entry["precision"],
                               "sha256": model.entry["sha256"], "task": model.task, "labels": model.labels,
                               "parity": (model.entry.get("parity") or {}).get("verdict", "unverified")}}

    def check_model(request: Request) -> JsonResponse | None:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != model.name:
            return error(404, f"unknown model {name!r}; this server serves {model.name!r}")
        if version is not None and version not in versions:
            return error(404, f"unknown version {version!r} of {model.name!r}; available: {sorted(versions)}")
        if not state["ready"]:
            return error(503, f"model {model.name!r} is not ready")
        return None

    async def read_json(request: Request, body: bytes | None = None):
        body = await request.body() if body is None else body
        if not body:
            raise BadRequest("empty body; expected a JSON object")
        try:
            return _loads(body)
        except _JSON_ERRORS as exc:
            # orjson rejects the NaN/Infinity tokens some clients emit; parse those leniently so the request
            # gets the precise "NaN or Inf in the data" answer instead of a vague syntax error.
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise BadRequest(f"malformed JSON: {exc}") from None

    async def infer(images: np.ndarray) -> np.ndarray:
        return await batcher.submit(images)

    # --- KServe V2 ------------------------------------------------------------------------------------------
    async def live(request: Request):
        return JsonResponse({"live": True})

    async def ready(request: Request):
        return JsonResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)

    async def server_metadata(request: Request):
        return JsonResponse({"name": "kerasport", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def v2_model(request: Request):
        if (problem := check_model(request)) is not None and problem.status_code != 503:
            return problem
        return JsonResponse(model_metadata())

    async def v2_model_ready(request: Request):
        if (problem := check_model(request)) is not None:
            return problem
        return JsonResponse({"name": model.name, "ready": True})

    async def v2_infer(request: Request):
        if (problem := check_model(request)) is not None:
            return problem
        try:
            raw = await request.body()
            header_length = request.headers.get(BINARY_HEADER)
            binary = b""
            if header_length is not None:  # the binary tensor data extension: JSON header, then raw tensors
                if not header_length.isdigit() or int(header_length) > len(raw):
                    raise BadRequest(f"{BINARY_HEADER} {header_length!r}; expected the JSON header's length in "
                                     f"bytes, at most the body's {len(raw)}")
                raw, binary = raw[:int(header_length)], raw[int(header_length):]
            images, context = parse_v2_infer(await read_json(request, raw), model.input_name, model.output_name,
                                             binary)
        except BadRequest as exc:
            return error(400, str(exc))
        outputs = await infer(images)
        tensor = {"name": model.output_name, "shape": list(outputs.shape), "datatype": "FP32"}
        response = {"model_name": model.name, "model_version": model.version, "outputs": [tensor]}
        if context["id"] is not None:
            response["id"] = context["id"]
        if not context["binary_output"]:
            tensor["data"] = outputs.ravel()
            return JsonResponse(response)
        payload = np.ascontiguousarray(outputs, dtype="<f4").tobytes()
        tensor["parameters"] = {"binary_data_size": len(payload)}
        header = _dumps(response)
        return Response(header + payload, media_type="application/octet-stream",
                        headers={BINARY_HEADER: str(len(header))})

    # --- TF Serving REST ------------------------------------------------------------------------------------
    async def tfs_status(request: Request):
        if (problem := check_model(request)) is not None and problem.status_code != 503:
            return problem
        state_name = "AVAILABLE" if state["ready"] else "UNAVAILABLE"
        return JsonResponse({"model_version_status": [{"version": model.version, "state": state_name,
                                                       "status": {"error_code": "OK", "error_message": ""}}]})

    async def tfs_metadata(request: Request):
        if (problem := check_model(request)) is not None and problem.status_code != 503:
            return problem

        def tensor(name: str, dims: list[int]) -> dict:
            return {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                          "unknown_rank": False}, "name": name}

        signature = {"inputs": {model.input_name: tensor(model.input_name, [-1, 28, 28, 1])},
                     "outputs": {model.output_name: tensor(model.output_name, [-1, model.n_outputs])},
                     "method_name": "tensorflow/serving/predict"}
        return JsonResponse({"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
                             "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}})

    async def tfs_predict(request: Request):
        if (problem := check_model(request)) is not None:
            return problem
        try:
            images, layout = parse_tfs_predict(await read_json(request), model.input_name)
        except BadRequest as exc:
            return error(400, str(exc))
        outputs = await infer(images)
        if layout == "row":
            return JsonResponse({"predictions": outputs})
        return JsonResponse({"outputs": outputs})

    # --- images ---------------------------------------------------------------------------------------------
    async def classify(request: Request):
        if (problem := check_model(request)) is not None:
            return problem
        top_k_text = request.query_params.get("top_k", "5")
        if not top_k_text.isdigit() or int(top_k_text) < 1:
            return error(400, f"top_k={top_k_text!r}; expected a positive integer")
        top_k = min(int(top_k_text), model.n_outputs)
        content_type = request.headers.get("content-type", "")
        try:
            if content_type.startswith("multipart/form-data"):
                form = await request.form(max_files=256, max_fields=256)
                uploads = [(key, value) for key, value in form.multi_items() if hasattr(value, "read")]
                if not uploads:
                    raise BadRequest("multipart body has no file parts; expected one or more image files")
                payloads = [(value.filename or key, await value.read()) for key, value in uploads]
            else:
                payloads = [("body", await request.body())]
            images = np.stack([decode_image_bytes(data, model.preprocessing, origin=name)
                               for name, data in payloads])[..., None]
        except UsageError as exc:
            return error(400, str(exc))
        outputs = await infer(images)
        results = []
        for (name, _), row in zip(payloads, outputs, strict=True):
            if model.task == "classification":
                order = np.argsort(row)[::-1][:top_k]
                results.append({"file": name, "top_k": [
                    {"label": model.labels[i] if i < len(model.labels) else str(i), "index": int(i),
                     "probability": float(row[i])} for i in order]})
            else:
                results.append({"file": name, "values": row.tolist()})
        return JsonResponse({"model_name": model.name, "model_version": model.version, "variant": model.variant,
                             "results": results})

    async def metrics_endpoint(request: Request):
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
        Route("/v2/models/{name}", v2_model), Route("/v2/models/{name}/versions/{version}", v2_model),
        Route("/v2/models/{name}/ready", v2_model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", v2_model_ready),
        Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"]),
        Route("/v1/models/{name}:predict", tfs_predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:predict", tfs_predict, methods=["POST"]),
        Route("/v1/models/{name}:classify", classify, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:classify", classify, methods=["POST"]),
        Route("/v1/models/{name}/metadata", tfs_metadata),
        Route("/v1/models/{name}/versions/{version}/metadata", tfs_metadata),
        Route("/v1/models/{name}", tfs_status), Route("/v1/models/{name}/versions/{version}", tfs_status),
        Route("/metrics", metrics_endpoint),
    ]

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        state["ready"] = True
        metrics.ready.set(1)
        try:
            yield
        finally:
            state["ready"] = False
            metrics.ready.set(0)
            await batcher.stop()

    async def not_found(request: Request, exc):
        return error(404, f"no route for {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc):
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def server_error(request: Request, exc):
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error})
    app.add_middleware(Guard, routes=routes, metrics=metrics, api_key=api_key, max_body_bytes=max_body_bytes)
    app.state.model, app.state.metrics, app.state.batcher = model, metrics, batcher
    return app
