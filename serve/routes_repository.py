"""Triton's model repository extension over HTTP: `POST /v2/repository/index`, `.../models/{name}/load` and
`.../models/{name}/unload`, as tritonclient's `get_model_repository_index`, `load_model` and `unload_model` call them.

The state lives in `repository.ModelRepository`; these endpoints only parse and answer. A load's optional
`parameters` (a config override, or files forming a model directory) ask for what this server does not do and are
refused with 400 rather than ignored.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import BadRequest
from .jsonio import JsonResponse
from .state import ServingState, read_json

UNSUPPORTED_LOAD_PARAMETERS = ("config",)


def ready_only(body: object) -> bool:
    """The index request's `ready` flag (an empty body: false).

    Raises:
        BadRequest: a body that is not a JSON object, or a `ready` that is not a boolean.
    """
    if body is None:
        return False
    if not isinstance(body, dict) or not isinstance(body.get("ready", False), bool):
        raise BadRequest(f"index request {str(body)[:80]!r}; expected a JSON object with an optional boolean 'ready'")
    return body.get("ready", False)


def check_load_parameters(body: object) -> None:
    """Refuse a load request that overrides the model's configuration or files.

    Raises:
        BadRequest: a body that is not a JSON object, or parameters this server does not support.
    """
    if body is None:
        return
    parameters = body.get("parameters", {}) if isinstance(body, dict) else None
    if not isinstance(parameters, dict):
        raise BadRequest(f"load request {str(body)[:80]!r}; expected a JSON object with optional 'parameters'")
    unsupported = [key for key in parameters if key in UNSUPPORTED_LOAD_PARAMETERS or key.startswith("file:")]
    if unsupported:
        raise BadRequest(f"load parameters {unsupported} override the model's files or configuration, which this "
                         f"server does not do; expected a model folder in the repository")


class RepositoryEndpoints:
    def __init__(self, state: ServingState):
        self.state = state

    async def _body(self, request: Request) -> object:
        raw = await request.body()
        return await read_json(request, raw) if raw.strip() else None

    async def index(self, request: Request) -> JsonResponse:
        return JsonResponse(self.state.repository.index(ready_only(await self._body(request))))

    async def load(self, request: Request) -> Response:
        check_load_parameters(await self._body(request))
        await self.state.repository.load(request.path_params["name"])
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        await self._body(request)  # `unload_dependents` has nothing to act on: no ensembles here
        await self.state.repository.unload(request.path_params["name"])
        return Response(status_code=200)

    def routes(self) -> list[Route]:
        return [Route("/v2/repository/index", self.index, methods=["POST"]),
                Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
                Route("/v2/repository/models/{name}/unload", self.unload, methods=["POST"])]
