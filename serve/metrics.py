"""Prometheus metrics: the collectors, and the `/metrics` route."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.ready = Gauge("kerasport_ready", "1 when the model is ready to serve", registry=self.registry)
        self.in_flight = Gauge("kerasport_requests_in_flight", "Requests being handled", registry=self.registry)

    def observe_batch(self, size: int, queued: float, inference: float) -> None:
        self.batch_size.observe(size)
        self.queue_time.observe(queued)
        self.inference_time.observe(inference)
        self.examples.inc(size)

    def routes(self) -> list[Route]:
        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", metrics)]
