"""The HTTP app: KServe V2 and TF Serving REST over a verified model, plus image classification, metrics and the
OpenAPI document.

Routes are grouped per protocol (`routes_v2.py`, `routes_tfs.py`, `routes_images.py`, `metrics.py`,
`openapi.py`) over one `ServingState` (model, micro-batcher, metrics, readiness, offload) held in
`app.state.serving`. Endpoints raise typed errors; `errors.EXCEPTION_HANDLERS` maps the client's to status codes
in one place and the guard's catch-all answers anything else with a 500 and a request id. Starlette without
per-request model validation: `protocol.py` validates against the contract, which keeps per-request overhead
well under a millisecond.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette

from kerasport.contract import ModelContract

from .batcher import MicroBatcher
from .errors import EXCEPTION_HANDLERS
from .guard import Guard
from .metrics import Metrics
from .model import ServedModel
from .offload import Offload
from .openapi import OpenApiEndpoint
from .repository import ModelRepository, RepositoryConfig, RepositoryMetrics
from .routes_images import ImageEndpoints
from .routes_repository import RepositoryEndpoints
from .routes_tfs import TfServingEndpoints
from .routes_v2 import V2Endpoints
from .settings import DEFAULT_MAX_BODY_BYTES
from .state import AppSettings, ServingState

# Pictures up to this many pixels are decoded by default (a 12 MP phone photo passes); models whose own input is
# larger get four times their input.
DEFAULT_MAX_IMAGE_PIXELS = 16_000_000


def default_max_image_pixels(contract: ModelContract) -> int:
    """The picture pixel limit sized from the model's image input: max(16 MP, 4 x its height x width)."""
    image = contract.image_input
    own = 4 * image.image.height * image.image.width if image is not None and image.image is not None else 0
    return max(DEFAULT_MAX_IMAGE_PIXELS, own)


def create_app(model: ServedModel | None, *, max_batch: int = 32, max_delay_ms: float = 0.0,
               api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_image_pixels: int | None = None, workers: int = 1, offload: Offload | None = None,
               repository: RepositoryConfig | None = None) -> Starlette:
    """The ASGI app serving `model`, or a model repository; its lifespan starts the micro-batcher (or loads the
    repository) and marks the server ready.

    Args:
        model: the loaded, verified model (`load_served_model`); with `repository`, the `--run` model already
            loaded (adopted as the repository's one version), or None.
        max_batch: most examples per runtime call when requests coalesce.
        max_delay_ms: how long a batch may wait for more requests (0: greedy, no added latency).
        api_key: when set, every route but health and metrics needs `Authorization: Bearer KEY` or `X-API-Key`.
        max_body_bytes: larger request bodies are refused with 413.
        max_image_pixels: larger pictures are refused with 413 from their header (None: `default_max_image_pixels`).
        workers: how many server processes share the port (reported in the model configuration).
        offload: where heavy parsing and decoding run (default: sized to the machine).
        repository: serve a model repository (repository.py): its versions, hot swap and the repository extension.

    Returns:
        A Starlette app whose `state.serving` holds the shared `ServingState`.

    Raises:
        ValueError: max_batch < 1 or max_delay_ms < 0.
    """
    metrics = Metrics()
    settings = AppSettings(max_batch=max_batch, max_delay_ms=max_delay_ms, max_body_bytes=max_body_bytes,
                           max_image_pixels=max_image_pixels or (default_max_image_pixels(model.contract) if model
                                                                 else DEFAULT_MAX_IMAGE_PIXELS),
                           workers=workers,
                           **({"version_policy": repository.settings.policy.to_config()} if repository else {}))
    offload = offload or Offload()

    def version_state(served: ServedModel) -> ServingState:
        batcher = MicroBatcher(served.predict, max_batch=max_batch, max_delay_ms=max_delay_ms,
                               observe=metrics.observe_batch)
        return ServingState(model=served, batcher=batcher, metrics=metrics, settings=settings, offload=offload)

    if repository is None:
        state = version_state(model)
    else:
        state = ServingState(model=None, batcher=None, metrics=metrics, settings=settings, offload=offload)
        state.repository = ModelRepository(repository.source, repository.settings, version_state,
                                           RepositoryMetrics(metrics.registry))
    routes = [*V2Endpoints(state).routes(), *ImageEndpoints(state).routes(), *TfServingEndpoints(state).routes(),
              *metrics.routes()]
    if repository is not None:
        routes += RepositoryEndpoints(state).routes()
    routes.append(OpenApiEndpoint(state, routes, secured=bool(api_key)).route())

    @asynccontextmanager
    async def lifespan(app):
        if state.repository is not None:
            await state.repository.start(preloaded=model)
        else:
            await state.batcher.start()
        state.set_ready(True)
        try:
            yield
        finally:
            state.set_ready(False)
            if state.repository is not None:
                await state.repository.stop()
            else:
                await state.batcher.stop()
            await state.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.add_middleware(Guard, routes=routes, metrics=metrics, api_key=api_key, max_body_bytes=max_body_bytes)
    app.state.serving = state
    return app
