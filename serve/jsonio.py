"""JSON in and out with orjson (numpy arrays serialize natively), and reading a request body as JSON."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import Response


def dumps(payload: Any) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(body: bytes) -> Any:
    """Parse JSON; the NaN/Infinity tokens some clients emit (which orjson refuses) parse leniently, so such a
    request gets the precise "NaN or Inf in the data" answer instead of a vague syntax error.

    Raises:
        ValueError: the body is not JSON (the message says why).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise ValueError(str(error)) from None


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
