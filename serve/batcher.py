"""Micro-batching: concurrent requests coalesce into one runtime call, run in a worker thread.

With `max_delay_ms = 0` (the default) batching is greedy: a request runs at once when the worker is idle, and
whatever queues up while a batch runs forms the next batch. So a lone client pays no added latency, and under load
batches grow by themselves. A positive delay additionally waits up to that long for more requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Request:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 32, max_delay_ms: float = 0.0,
                 observe: Callable[[int, float, float], None] | None = None):
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
        # One worker: a LiteRT interpreter must never be invoked concurrently, and one batched call uses the
        # runtime's own intra-op threads better than several competing calls.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerasport-infer")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="kerasport-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(images, future))
        return await future

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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            batch, size = [first], len(first.images)
            deadline = first.enqueued + self._max_delay
            while size < self._max_batch:
                request = await self._next(deadline - time.perf_counter())
                if request is None:
                    break
                if size + len(request.images) > self._max_batch:
                    self._held = request  # starts the next batch
                    break
                batch.append(request)
                size += len(request.images)
            live = [request for request in batch if not request.future.done()]  # skip cancelled clients
            if not live:
                continue
            images = live[0].images if len(live) == 1 else np.concatenate([r.images for r in live])
            queued = time.perf_counter() - live[0].enqueued
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._infer, images)
            except Exception as error:  # noqa: BLE001 - every waiting request gets the runtime's error
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            if self._observe is not None:
                self._observe(len(images), queued, time.perf_counter() - started)
            offset = 0
            for request in live:
                count = len(request.images)
                if not request.future.done():
                    request.future.set_result(outputs[offset:offset + count])
                offset += count
