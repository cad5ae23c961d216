"""Where a request's CPU work runs, so the event loop stays free for every other client.

- Small bodies are parsed inline: a hop to another thread or process would cost more than the work.
- Work that releases the GIL (Pillow decoding and resizing, numpy on binary tensors) runs in a thread, through
  anyio's thread pool under a `CapacityLimiter` sized to the machine.
- Work that holds the GIL for long stretches — parsing a large JSON body into arrays (orjson and numpy's list
  conversion are single C calls: a thread would stall the loop just the same) and encoding a large JSON
  response — runs in a small pool of worker processes (`ProcessPoolExecutor`, spawned lazily, recycled after
  `MAX_TASKS_PER_CHILD` jobs so a parser's memory cannot creep). Pending jobs are bounded; the functions and
  their arguments must be picklable (module-level functions, the contract, bytes and arrays).

Protocol front ends (REST here, gRPC later) share one `Offload` through `ServingState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .errors import Overloaded

T = TypeVar("T")
# JSON bodies above this many bytes are parsed in a worker process: ~1.5 ms of orjson + numpy below it.
PROCESS_BODY_BYTES = 128 * 1024
# Responses with more output values than this are encoded in a worker process.
PROCESS_OUTPUT_VALUES = 64 * 1024
MAX_TASKS_PER_CHILD = 200
# Parsing processes run at a lower priority than the server, so on a busy machine the event loop (health checks,
# small requests) gets a core first when it wakes up; bulk parsing takes what is left.
PROCESS_NICENESS = 10


def _lower_priority() -> None:
    with contextlib.suppress(OSError):  # not permitted here: run at the server's priority
        os.nice(PROCESS_NICENESS)


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Offload:
    """Runs blocking work in a thread or a worker process, bounded.

    Args:
        threads: most concurrent thread jobs (default: the machine's cores).
        processes: worker processes for GIL-bound work (default: the machine's cores, at most 4).
    """

    def __init__(self, threads: int | None = None, processes: int | None = None):
        cores = machine_cores()
        self.threads = threads or max(2, cores)
        self.processes = processes or min(cores, 4)
        self._limiter: anyio.CapacityLimiter | None = None
        self._slots: asyncio.Semaphore | None = None
        self._pool: ProcessPoolExecutor | None = None

    async def thread(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker thread (for work that releases the GIL)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def process(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker process (for GIL-bound work); its exceptions re-raised here.

        Raises:
            Overloaded: a worker process died (the pool is replaced; the client may retry).
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(2 * self.processes)
        async with self._slots:
            pool = self._ensure_pool()
            try:
                return await asyncio.wrap_future(pool.submit(function, *args))
            except BrokenProcessPool:
                self._replace(pool)
                raise Overloaded("a parser process died while handling this request; retry it") from None

    async def run(self, heavy: bool, function: Callable[..., T], *args: Any) -> T:
        """In a worker process when `heavy`, else inline."""
        return await self.process(function, *args) if heavy else function(*args)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the server process holds runtime threads, which must not be forked
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_lower_priority, max_tasks_per_child=MAX_TASKS_PER_CHILD)
        return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is broken:
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
