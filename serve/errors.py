"""Typed HTTP errors and the one table that maps every error to its status code.

Endpoints raise; they never build error responses themselves. `EXCEPTION_HANDLERS` is handed to Starlette (as
KServe's server registers its exception handlers), and the ASGI guard uses `error_response` for what it refuses
before a route runs, so each error gets the same status and `{"error": message}` body wherever it is raised.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request

from kerasport.errors import ConversionError, UsageError

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


# The one mapping from an error to its status code. A core UsageError (InputSpec.check_values, image decoding) is
# the client's fault; a runtime that fails on valid input, or any other exception, is the server's.
def status_of(error: Exception) -> int:
    if isinstance(error, (ServeError, HTTPException)):
        return error.status_code
    return 400 if isinstance(error, UsageError) else 500


def error_response(error: Exception) -> JsonResponse:
    """`{"error": one line}` with the error's status code."""
    status = status_of(error)
    message = str(error) if status < 500 or isinstance(error, ConversionError) else \
        f"internal error: {type(error).__name__}: {error}"
    return JsonResponse({"error": message}, status_code=status)


async def _typed(request: Request, error: Exception) -> JsonResponse:
    return error_response(error)


async def _http(request: Request, error: HTTPException) -> JsonResponse:
    if error.status_code == 404:
        return error_response(NotFound(f"no route for {request.method} {request.url.path}"))
    return JsonResponse({"error": f"{request.method} {request.url.path}: {error.detail}"},
                        status_code=error.status_code)


EXCEPTION_HANDLERS = {HTTPException: _http, ServeError: _typed, UsageError: _typed, ConversionError: _typed,
                      Exception: _typed}
