"""What every route shares: the served model, its micro-batcher, the metrics and readiness (`app.state.serving`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from starlette.requests import Request

from .batcher import MicroBatcher
from .errors import BadRequest, NotFound, NotReady
from .jsonio import loads
from .metrics import Metrics
from .model import ServedModel


@dataclass
class ServingState:
    model: ServedModel
    batcher: MicroBatcher
    metrics: Metrics
    ready: bool = False
    versions: frozenset = field(init=False)

    def __post_init__(self) -> None:
        self.versions = frozenset({self.model.version})

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if ready else 0)

    def check_model(self, request: Request, *, need_ready: bool = True) -> None:
        """The URL names this model (and, if given, a version it has); inference also needs readiness.

        Raises:
            NotFound: another model or version. NotReady: starting up or draining.
        """
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != self.model.name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.model.name!r}")
        if version is not None and version not in self.versions:
            raise NotFound(f"unknown version {version!r} of {self.model.name!r}; available: {sorted(self.versions)}")
        if need_ready and not self.ready:
            raise NotReady(f"model {self.model.name!r} is not ready")

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request's named inputs through the micro-batcher; its rows of every output."""
        return await self.batcher.submit(inputs)


async def read_json(request: Request, body: bytes | None = None):
    """The request body (or `body`) parsed as JSON.

    Raises:
        BadRequest: an empty body or malformed JSON.
    """
    body = await request.body() if body is None else body
    if not body:
        raise BadRequest("empty body; expected a JSON object")
    try:
        return loads(body)
    except ValueError as error:
        raise BadRequest(f"malformed JSON: {error}") from None
