"""ASGI middleware in front of every route: request id, API key, body limit, metrics, one JSON access-log line
per request, and the catch-all for unexpected errors.

Refusals use the same typed errors as the routes (`errors.py` maps them to status codes); a body that exceeds the
limit while streaming raises `PayloadTooLarge` inside the route's read, where the app's exception handlers answer.
Any other exception a route raises ends here: it is logged once, with its traceback and the request id, and the
client gets 500 `{"error": ..., "request_id": ...}` — the process serves on.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
import traceback
import uuid

from starlette.requests import ClientDisconnect
from starlette.routing import Match

from .errors import BadRequest, PayloadTooLarge, ServeError, Unauthorized, error_response
from .metrics import Metrics

access_log = logging.getLogger("kerasport.access")
error_log = logging.getLogger("kerasport.error")
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")
ROUTE_LABEL_CACHE = 1024
CLIENT_CLOSED = 499  # recorded (nginx's convention) when the client left before its request was read
REQUEST_ID_HEADER = "x-request-id"
# A client's own request id is kept when it is short and plain; otherwise the server makes one.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(headers: dict) -> str:
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class Guard:
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
            if len(self._labels) < ROUTE_LABEL_CACHE:
                self._labels[key] = label
        return label

    def _refusal(self, scope, headers: dict) -> ServeError | None:
        """Why the request is refused before it reaches a route, if it is."""
        if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            return Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                return BadRequest(f"Content-Length {length[:40]!r} is not a number")
            if int(length) > self.max_body_bytes:
                return PayloadTooLarge(f"body of {int(length)} bytes exceeds the limit of {self.max_body_bytes} "
                                       f"bytes")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = self._route_label(scope)
        status = {"code": 500, "started": False}
        received = {"bytes": 0}
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        rid = request_id(headers)
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (REQUEST_ID_HEADER.encode(), rid.encode())

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), rid_header]}
            await send(message)

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > self.max_body_bytes:
                    raise PayloadTooLarge(f"body exceeds the limit of {self.max_body_bytes} bytes (cut off while "
                                          f"streaming)")
            return message

        self.metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send_wrapper)
            else:
                await self.app(scope, limited_receive, send_wrapper)
        except ServeError as error:  # raised while reading a body outside a route's exception handlers
            if not status["started"]:
                await error_response(error, rid)(scope, receive, send_wrapper)
        except ClientDisconnect:  # nobody is left to answer; not a server error
            if not status["started"]:
                status["code"] = CLIENT_CLOSED
        except Exception as error:  # noqa: BLE001 - the catch-all: log it, answer 500, keep serving
            self._log_error(scope, rid, error)
            if not status["started"]:
                await error_response(error, rid)(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, route, status["code"], received["bytes"], time.perf_counter() - started, rid)

    def _record(self, scope, route: str, status: int, bytes_in: int, seconds: float, rid: str) -> None:
        self.metrics.requests.labels(route, scope["method"], str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("", 0)
            access_log.info(json.dumps({"ts": time.time(), "method": scope["method"], "path": scope["path"],
                                        "route": route, "status": status, "ms": round(seconds * 1000, 3),
                                        "bytes_in": bytes_in, "client": client[0], "request_id": rid,
                                        "pid": os.getpid()}))

    @staticmethod
    def _log_error(scope, rid: str, error: Exception) -> None:
        error_log.error(json.dumps({"ts": time.time(), "event": "unhandled_error", "request_id": rid,
                                    "method": scope["method"], "path": scope["path"],
                                    "error": f"{type(error).__name__}: {error}",
                                    "traceback": "".join(traceback.format_exception(error))}))

    def _authorized(self, headers: dict) -> bool:
        bearer = headers.get("authorization", "")
        token = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("x-api-key")
        return token is not None and hmac.compare_digest(token.encode(), self.api_key.encode())
