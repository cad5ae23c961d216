"""The HTTP app: KServe V2 and TF Serving REST over a verified model, plus image classification and metrics.

Routes are grouped per protocol (`routes_v2.py`, `routes_tfs.py`, `routes_images.py`, `metrics.py`) over one
`ServingState` (model, micro-batcher, metrics, readiness) held in `app.state.serving`. Endpoints raise typed
errors; `errors.EXCEPTION_HANDLERS` maps them to status codes in one place. Starlette without per-request model
validation: `protocol.py` validates against the contract, which keeps per-request overhead well under a
millisecond.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from starlette.applications import Starlette

from .batcher import MicroBatcher
from .errors import EXCEPTION_HANDLERS
from .guard import Guard
from .metrics import Metrics
from .model import ServedModel
from .routes_images import ImageEndpoints
from .routes_tfs import TfServingEndpoints
from .routes_v2 import V2Endpoints
from .state import ServingState

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def create_app(model: ServedModel, *, max_batch: int = 32, max_delay_ms: float = 0.0, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """The ASGI app serving `model`; its lifespan starts the micro-batcher and marks the model ready.

    Args:
        model: the loaded, verified model (`load_served_model`).
        max_batch: most examples per runtime call when requests coalesce.
        max_delay_ms: how long a batch may wait for more requests (0: greedy, no added latency).
        api_key: when set, every route but health and metrics needs `Authorization: Bearer KEY` or `X-API-Key`.
        max_body_bytes: larger request bodies are refused with 413.

    Returns:
        A Starlette app whose `state.serving` holds the shared `ServingState`.

    Raises:
        ValueError: max_batch < 1 or max_delay_ms < 0.
    """
    metrics = Metrics()
    batcher = MicroBatcher(model.predict, max_batch=max_batch, max_delay_ms=max_delay_ms,
                           observe=metrics.observe_batch)
    state = ServingState(model=model, batcher=batcher, metrics=metrics)
    routes = [*V2Endpoints(state).routes(), *ImageEndpoints(state).routes(), *TfServingEndpoints(state).routes(),
              *metrics.routes()]

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        state.set_ready(True)
        try:
            yield
        finally:
            state.set_ready(False)
            await batcher.stop()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.add_middleware(Guard, routes=routes, metrics=metrics, api_key=api_key, max_body_bytes=max_body_bytes)
    app.state.serving = state
    return app
