"""Prometheus metrics: the collectors, the `/metrics` route, and the Triton statistics read back from them.

With `--workers N` every worker process records into prometheus_client's multiprocess files
(`PROMETHEUS_MULTIPROC_DIR`, set by the supervisor before the workers start), and `/metrics` — whichever worker
answers — merges all of them with `MultiProcessCollector`. The Triton statistics extension is read from the same
merged samples, so it too counts every worker's requests.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Phases of an inference request, as Triton's statistics extension names them.
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def multiprocess_dir() -> str | None:
    """The multiprocess metrics folder when this process records into one (set before prometheus_client loads)."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


class Metrics:
    """One registry per app, so several apps in one process (tests) keep separate counts."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("kerasport_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("kerasport_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("kerasport_batch_size", "Examples per runtime call", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_time = Histogram("kerasport_queue_seconds", "Time the oldest request of a batch waited",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference_time = Histogram("kerasport_inference_seconds", "Runtime call duration",
                                        buckets=LATENCY_BUCKETS, registry=self.registry)
        self.examples = Counter("kerasport_examples_total", "Examples inferred", registry=self.registry)
        self.ready = Gauge("kerasport_ready", "1 when the model is ready to serve (every worker)",
                           registry=self.registry, multiprocess_mode="livemin")
        self.in_flight = Gauge("kerasport_requests_in_flight", "Requests being handled", registry=self.registry,
                               multiprocess_mode="livesum")
        self.phase = Summary("kerasport_inference_phase_seconds", "Inference requests: time per phase (Triton "
                             "statistics: success, fail, queue, compute_input, compute_infer, compute_output)",
                             ["phase"], registry=self.registry)
        self.last_inference = Gauge("kerasport_last_inference_timestamp_seconds", "When the last inference ended",
                                    registry=self.registry, multiprocess_mode="max")

    def observe_batch(self, size: int, queued: float, inference: float) -> None:
        self.batch_size.observe(size)
        self.queue_time.observe(queued)
        self.inference_time.observe(inference)
        self.examples.inc(size)

    def observe_request(self, ok: bool, total: float, phases: dict[str, float]) -> None:
        """One inference request's outcome and the seconds it spent per phase."""
        self.phase.labels("success" if ok else "fail").observe(total)
        for name, seconds in phases.items():
            self.phase.labels(name).observe(seconds)
        self.last_inference.set(time.time())

    def collected(self) -> CollectorRegistry:
        """A registry of every worker's samples (multiprocess mode), else this app's own."""
        path = multiprocess_dir()
        if path is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return registry

    def statistics(self) -> dict:
        """Triton statistics-extension figures: counts, and cumulative nanoseconds per phase."""
        values: dict[tuple[str, str], float] = {}
        for family in self.collected().collect():
            for sample in family.samples:
                phase = sample.labels.get("phase", "")
                values[(sample.name, phase)] = values.get((sample.name, phase), 0.0) + sample.value
        phases = {phase: {"count": int(values.get(("kerasport_inference_phase_seconds_count", phase), 0)),
                          "ns": int(values.get(("kerasport_inference_phase_seconds_sum", phase), 0.0) * 1e9)}
                  for phase in PHASES}
        return {"inference_count": int(values.get(("kerasport_examples_total", ""), 0)),
                "execution_count": int(values.get(("kerasport_batch_size_count", ""), 0)),
                "last_inference": int(values.get(("kerasport_last_inference_timestamp_seconds", ""), 0) * 1000),
                "phases": phases}

    def routes(self) -> list[Route]:
        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.collected()), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", metrics)]
