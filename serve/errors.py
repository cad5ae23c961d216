"""Typed HTTP errors and the one table that maps every error to its status code.

Endpoints raise; they never build error responses themselves. `EXCEPTION_HANDLERS` is handed to Starlette (as
KServe's server registers its exception handlers) for the errors a client causes; the ASGI guard uses
`error_response` for what it refuses before a route runs and, as the catch-all, for anything unexpected a route
raises (500 with the request id, logged with its traceback). So each error gets the same status and
`{"error": message}` body wherever it is raised.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request

from kerasport.errors import ConversionError, UsageError
from kerasport.images import ImageTooLarge

from .jsonio import JsonResponse


class ServeError(UsageError):
    """A request the server refuses; subclasses carry the status code."""

    status_code = 400


class BadRequest(ServeError):
    """Malformed or invalid request content: 400."""


class Unauthorized(ServeError):
    """Missing or wrong API key: 401."""

    status_code = 401


class NotFound(ServeError):
    """Unknown model, version or route, or an endpoint this model does not offer: 404."""

    status_code = 404


class PayloadTooLarge(ServeError):
    """A body over the configured limit: 413."""

    status_code = 413


class NotReady(ServeError):
    """The model is loaded but the server is not (yet, or no longer) accepting inference: 503."""

    status_code = 503


class Overloaded(ServeError):
    """A helper the request needs (a parser process) failed or is saturated; the client may retry: 503."""

    status_code = 503


# The one mapping from an error to its status code. A core UsageError (InputSpec.check_values, image decoding) is
# the client's fault — a picture over the pixel limit is "too large" (413); a runtime that fails on valid input,
# or any other exception, is the server's.
def status_of(error: Exception) -> int:
    if isinstance(error, (ServeError, HTTPException)):
        return error.status_code
    if isinstance(error, ImageTooLarge):
        return 413
    return 400 if isinstance(error, UsageError) else 500


def error_response(error: Exception, request_id: str | None = None) -> JsonResponse:
    """`{"error": one line}` with the error's status code; a server error also names the request id (the log line
    with the traceback carries the same id)."""
    status = status_of(error)
    if status < 500 or isinstance(error, (ConversionError, ServeError)):
        message = str(error)
    else:
        message = f"internal error: {type(error).__name__}: {error}"
    body = {"error": message}
    if status >= 500 and request_id is not None:
        body["request_id"] = request_id
    return JsonResponse(body, status_code=status)


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


async def _typed(request: Request, error: Exception) -> JsonResponse:
    return error_response(error, request_id_of(request))


async def _http(request: Request, error: HTTPException) -> JsonResponse:
    if error.status_code == 404:
        return error_response(NotFound(f"no route for {request.method} {request.url.path}"))
    return JsonResponse({"error": f"{request.method} {request.url.path}: {error.detail}"},
                        status_code=error.status_code, headers=error.headers)


# Client errors only: anything else (a runtime failure, a bug) propagates to the guard's catch-all, which logs it
# with its traceback and answers 500 with the request id.
EXCEPTION_HANDLERS = {HTTPException: _http, UsageError: _typed}
