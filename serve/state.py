"""What every route shares — the served model, its micro-batcher, the metrics, readiness, where CPU work runs —
and the protocol-independent core of an inference request: parse → batch → respond.

A front end (the REST routes here; gRPC alike) hands `run_inference` two coroutines: `parse()` turns its
request into the model's named input arrays plus whatever it needs to answer, and `respond(outputs, context)`
turns the model's rows back into its own response. `run_inference` times each phase for the Triton statistics
extension and counts successes and failures; `offload` decides where heavy parsing and encoding run.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from starlette.requests import Request

from .batcher import MicroBatcher, Timing
from .errors import NotFound, NotReady
from .metrics import Metrics
from .model import ServedModel
from .offload import Offload
from .protocol import parse_json
from .settings import DEFAULT_MAX_BODY_BYTES

C = TypeVar("C")
R = TypeVar("R")
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class AppSettings:
    """How the server was configured (the Triton model configuration reports batching from it)."""

    max_batch: int = 32
    max_delay_ms: float = 0.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_pixels: int = 16_000_000
    workers: int = 1
    version_policy: dict = field(default_factory=lambda: {"latest": {"num_versions": 1}})  # Triton's form


@dataclass
class ServingState:
    """The server's state; with a model repository (`repository` set), also each served version's own state.

    The server's state answers `check_name` with the state of the model version a request names: itself when it
    serves one model, else the repository's (each version has its own model and micro-batcher, sharing the
    metrics, settings and offload). `active` counts the requests in `run_inference`, so a replaced version is
    released only after its last one.
    """

    model: ServedModel | None
    batcher: MicroBatcher | None
    metrics: Metrics
    settings: AppSettings = field(default_factory=AppSettings)
    offload: Offload = field(default_factory=Offload)
    ready: bool = False
    versions: frozenset = field(init=False)
    repository: Any = None  # a repository.ModelRepository (typed loosely: repository.py imports this module)
    active: int = 0

    def __post_init__(self) -> None:
        self.versions = frozenset({self.model.version}) if self.model is not None else frozenset()

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if ready else 0)

    def check_model(self, request: Request, *, need_ready: bool = True) -> ServingState:
        """The URL names this model (and, if given, a version it has); inference also needs readiness.

        Returns:
            The state of the model version to answer with (see `check_name`).

        Raises:
            NotFound: another model or version. NotReady: starting up or draining.
        """
        return self.check_name(request.path_params["name"], request.path_params.get("version"),
                               need_ready=need_ready)

    def check_name(self, name: str, version: str | None, *, need_ready: bool = True) -> ServingState:
        """`check_model` for any protocol: the model name and optional version a request names.

        Returns:
            This state when it serves one model; else the repository's state of that version (the highest ready
            one when none is named). A request that infers must call `run_inference` on it with no await in
            between, so a hot swap cannot release the version under it.
        """
        if self.repository is not None:
            if need_ready and not self.ready:
                raise NotReady("the server is not ready (starting up or draining)")
            return self.repository.resolve(name, version, need_ready)
        if name != self.model.name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.model.name!r}")
        if version is not None and version not in self.versions:
            raise NotFound(f"unknown version {version!r} of {self.model.name!r}; available: {sorted(self.versions)}")
        if need_ready and not self.ready:
            raise NotReady(f"model {self.model.name!r} is not ready")
        return self

    def described(self) -> ServingState:
        """The state whose model server-wide pages describe (OpenAPI, statistics without a model name): the one
        model, or the repository's first model at its highest ready version.

        Raises:
            NotReady: a repository with no version serving.
        """
        if self.model is not None:
            return self
        state = self.repository.default_state()
        if state is None:
            raise NotReady("no model version is serving; see POST /v2/repository/index")
        return state

    async def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """One request's named inputs through the micro-batcher; its rows of every output."""
        return await self.batcher.submit(inputs)

    async def run_inference(self, parse: Callable[[], Awaitable[tuple[Inputs, C]]],
                            respond: Callable[[dict[str, np.ndarray], C], Awaitable[R]]) -> R:
        """parse → micro-batcher → respond, timed per phase and counted as a success or a failure.

        Args:
            parse: returns the model's named input arrays and a context `respond` needs (the parsed request).
            respond: builds the protocol's response from the request's rows of every output.

        Returns:
            What `respond` returns.

        Raises:
            Whatever `parse`, the runtime or `respond` raise (counted as a failed request).
        """
        started = time.perf_counter()
        ok, phases = False, {}
        self.active += 1
        try:
            inputs, context = await parse()
            parsed = time.perf_counter()
            timing = Timing()
            outputs = await self.batcher.submit(inputs, timing)
            inferred = time.perf_counter()
            result = await respond(outputs, context)
            phases = {"compute_input": parsed - started, "queue": timing.queue, "compute_infer": timing.infer,
                      "compute_output": time.perf_counter() - inferred}
            ok = True
            return result
        finally:
            self.active -= 1
            self.metrics.observe_request(ok, time.perf_counter() - started, phases)

    async def close(self) -> None:
        self.offload.close()


async def read_json(request: Request, body: bytes | None = None) -> Any:
    """The request body (or `body`) parsed as JSON.

    Raises:
        BadRequest: an empty body or malformed JSON.
    """
    return parse_json(await request.body() if body is None else body)
