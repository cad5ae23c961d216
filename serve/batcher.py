"""Micro-batching: concurrent requests coalesce into one runtime call, run in a worker thread.

A request is a dict of named input arrays sharing one batch size. Requests coalesce when their inputs have the
same names and per-example shapes: each input is concatenated along the batch axis, and every output is split
back into the callers' rows.

With `max_delay_ms = 0` (the default) batching is greedy: a request runs at once when the worker is idle, and
whatever queues up while a batch runs forms the next batch. So a lone client pays no added latency, and under load
batches grow by themselves. A positive delay additionally waits up to that long for more requests.

A single request larger than `max_batch` runs alone, in runtime calls of at most `max_batch` examples each, so
the runtime's working memory (activations grow with the batch) stays bounded whatever a client sends.

Nothing here knows about HTTP: any protocol front end (REST, gRPC) submits named arrays and awaits its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

Arrays = Mapping[str, np.ndarray]


@dataclass
class Timing:
    """Where one request's time went in the batcher: waiting for the runtime, and the runtime call(s)."""

    queue: float = 0.0
    infer: float = 0.0


@dataclass
class _Request:
    inputs: Arrays
    future: asyncio.Future
    timing: Timing | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    size: int = field(init=False)
    signature: tuple = field(init=False)

    def __post_init__(self) -> None:
        sizes = {len(array) for array in self.inputs.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs of one request differ in batch size: "
                             f"{ {name: len(array) for name, array in self.inputs.items()} }")
        self.size = sizes.pop()
        # Requests coalesce only when every input has the same per-example shape and dtype.
        self.signature = tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in self.inputs.items()))


def concatenate(requests: list[_Request]) -> dict[str, np.ndarray]:
    if len(requests) == 1:
        return dict(requests[0].inputs)
    return {name: np.concatenate([request.inputs[name] for request in requests]) for name in requests[0].inputs}


def split(outputs: Arrays, requests: list[_Request]) -> list[dict[str, np.ndarray]]:
    """Every output cut back into each request's rows, in order."""
    parts, offset = [], 0
    for request in requests:
        parts.append({name: array[offset:offset + request.size] for name, array in outputs.items()})
        offset += request.size
    return parts


class MicroBatcher:
    """Coalesces concurrent `submit` calls into batched `infer` calls on one worker thread.

    Args:
        infer: runs one batch, dict of named inputs -> dict of named outputs (each batch-first).
        max_batch: most examples per call (a single larger request still runs, alone).
        max_delay_ms: how long the first request of a batch may wait for more (0: greedy).
        observe: called with (examples, seconds the oldest request queued, inference seconds) per call.
    """

    def __init__(self, infer: Callable[[dict[str, np.ndarray]], Arrays], *, max_batch: int = 32,
                 max_delay_ms: float = 0.0, observe: Callable[[int, float, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, received {max_batch}")
        if max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, received {max_delay_ms}")
        self._infer = infer
        self._max_batch = max_batch
        self._max_delay = max_delay_ms / 1000.0
        self._observe = observe  # (batch size, seconds queued by the oldest request, inference seconds)
        self._queue: asyncio.Queue[_Request] | None = None
        self._held: _Request | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        # One worker: a LiteRT interpreter must never be invoked concurrently, and one batched call uses the
        # runtime's own intra-op threads better than several competing calls. Made per start, so an app's
        # lifespan can run again after a shutdown.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasport-infer")
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="kerasport-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, inputs: Arrays, timing: Timing | None = None) -> dict[str, np.ndarray]:
        """Infer one request's named inputs (all with the same batch size); returns its rows of every output.

        Args:
            inputs: batch-first arrays keyed by input name.
            timing: filled in with the seconds the request queued and the runtime call took, when given.
        """
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(inputs, future, timing))
        return await future

    def _run_chunked(self, inputs: dict[str, np.ndarray]) -> tuple[Arrays, list[tuple[int, float]]]:
        """One runtime call, or several of at most max_batch examples for an oversized request; outputs joined.

        Returns the outputs and (examples, seconds) per runtime call.
        """
        size = len(next(iter(inputs.values())))
        calls, parts = [], []
        for start in range(0, max(size, 1), self._max_batch):
            chunk = inputs if size <= self._max_batch else {name: array[start:start + self._max_batch]
                                                            for name, array in inputs.items()}
            started = time.perf_counter()
            parts.append(self._infer(chunk))
            calls.append((min(self._max_batch, size - start), time.perf_counter() - started))
        if len(parts) == 1:
            return parts[0], calls
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}, calls

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._held is not None:
            held, self._held = self._held, None
            return held
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self) -> list[_Request]:
        first = await self._next(None)
        batch, size = [first], first.size
        deadline = first.enqueued + self._max_delay
        while size < self._max_batch:
            request = await self._next(deadline - time.perf_counter())
            if request is None:
                break
            if size + request.size > self._max_batch or request.signature != first.signature:
                self._held = request  # starts the next batch
                break
            batch.append(request)
            size += request.size
        return [request for request in batch if not request.future.done()]  # skip cancelled clients

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = await self._collect()
            if not live:
                continue
            started = time.perf_counter()
            queued = started - live[0].enqueued
            try:
                inputs = concatenate(live)
                outputs, calls = await loop.run_in_executor(self._executor, self._run_chunked, inputs)
                parts = split(outputs, live)
            except Exception as error:  # noqa: BLE001 - every waiting request gets the runtime's error
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            inferred = time.perf_counter() - started
            if self._observe is not None:
                for index, (examples, seconds) in enumerate(calls):
                    self._observe(examples, queued if index == 0 else 0.0, seconds)
            for request, rows in zip(live, parts, strict=True):
                if request.timing is not None:
                    request.timing.queue, request.timing.infer = started - request.enqueued, inferred
                if not request.future.done():
                    request.future.set_result(rows)
