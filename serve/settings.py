"""`kerasport serve`'s options, declared once: one frozen `ServeSettings`.

It is the command's option group (see `kerasport.cli_options`): each field is one option, and its default is the
option's default. It is validated once, when it is built, and then flows unchanged from `kerasport serve` through
`server.serve` to every worker process (as JSON in the worker's environment, `workers.WorkerSettings`). Only light
imports: the CLI imports this module to declare its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.errors import UsageError

CONTROL_MODES = ("poll", "explicit")
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_PORT = 65535


@dataclass(frozen=True)
class ServeSettings:
    """How `kerasport serve` serves: a bundle or a model repository, where, and with what limits.

    Raises:
        UsageError: a value out of its range (exit 2), when the settings are built.
    """

    run: RunOption = DEFAULT_RUN
    variant: Annotated[str, typer.Option(
        "--variant", help="Artifact to serve; auto: the server CPU recommendation (lowest measured batch-1 p50 that "
        "passed parity; without measurements, a fixed order). The choice and why are in the ready line.")] = "auto"
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="Name in URLs (default: from the manifest).")] = None
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1"
    port: Annotated[int, typer.Option("--port", help="0 picks a free port (printed on stdout when ready).")] = 8080
    max_batch: Annotated[int, typer.Option(
        "--max-batch", help="Most images per runtime call when requests coalesce (8 keeps the fp32 seed model under "
        "150 MB RSS; 32 is ~15 % faster per image, +90 MB).")] = 8
    max_delay_ms: Annotated[float, typer.Option(
        "--max-delay-ms", help="Extra wait for more requests (0: greedy batching, no added latency).")] = 0.0
    threads: Annotated[int, typer.Option(
        "--threads", help="Runtime intra-op threads per worker (0: the runtime's default; with --workers N > 1, the "
        "cores split evenly).")] = 0
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="KERASPORT_API_KEY",
        help="Require 'Authorization: Bearer KEY' or 'X-API-Key' (health stays open).")] = None
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes")] = DEFAULT_MAX_BODY_BYTES
    allow_unverified: Annotated[bool, typer.Option(
        "--allow-unverified", help="Serve an artifact whose parity verdict is missing or failed.")] = False
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="JSON access log on stderr.")] = True
    workers: Annotated[int, typer.Option(
        "--workers", help="Server processes sharing the port, each with its own runtime session (0: one per 2 "
        "cores). Threads are split so workers x threads ~ cores.")] = 0
    max_image_pixels: Annotated[int, typer.Option(
        "--max-image-pixels", help="Refuse larger pictures (413) from their header, before decoding (0: max(16 MP, "
        "4 x the model's input)).")] = 0
    grpc_port: Annotated[int | None, typer.Option(
        "--grpc-port", help="Also serve the Open Inference Protocol over gRPC on this port, in every worker (0 picks "
        "a free port, printed on stdout when ready).")] = None
    repository: Annotated[str | None, typer.Option(
        "--repository", help="Serve a model repository: <model>/<version>/ run directories (integer versions), "
        "served under their folder names, instead of --run.")] = None
    version_policy: Annotated[str, typer.Option(
        "--version-policy", help="Which versions of each model serve: latest:N, all, or specific:V,...")
    ] = "latest:1"
    model_control: Annotated[str, typer.Option(
        "--model-control", help="poll: pick up new, changed and removed versions every --poll-seconds; explicit: "
        "change only through the repository extension (load/unload).")] = "poll"
    poll_seconds: Annotated[float, typer.Option(
        "--poll-seconds", help="How often --model-control poll re-reads the repository (or the --run bundle).")
    ] = 5.0
    trusted_key: Annotated[str | None, typer.Option(
        "--trusted-key", help="Serve only bundles signed with this key's private half (elliptic-curve public key, "
        "PEM): unsigned or altered ones are refused.")] = None

    def __post_init__(self) -> None:
        if (self.max_batch < 1 or self.max_delay_ms < 0 or self.max_body_bytes < 1 or self.threads < 0
                or not 0 <= self.port <= MAX_PORT or self.workers < 0 or self.max_image_pixels < 0
                or (self.grpc_port is not None and not 0 <= self.grpc_port <= MAX_PORT)):
            raise UsageError(f"--max-batch {self.max_batch} (>= 1), --max-delay-ms {self.max_delay_ms} (>= 0), "
                             f"--max-body-bytes {self.max_body_bytes} (>= 1), --threads {self.threads} (>= 0), "
                             f"--port {self.port} (0..{MAX_PORT}), --workers {self.workers} (>= 0), "
                             f"--max-image-pixels {self.max_image_pixels} (>= 0), --grpc-port {self.grpc_port} "
                             f"(0..{MAX_PORT})")
        if self.model_control not in CONTROL_MODES:
            raise UsageError(f"--model-control {self.model_control!r}; expected one of {', '.join(CONTROL_MODES)}")
        if not self.poll_seconds > 0:
            raise UsageError(f"--poll-seconds {self.poll_seconds}; expected a positive number of seconds")
        if self.repository is not None and self.model_name is not None:
            raise UsageError("--model-name with --repository; expected neither: the repository's folder names are "
                             "the model names")

    @property
    def image_pixel_limit(self) -> int | None:
        """`--max-image-pixels`, or None for the default sized from the model (`app.default_max_image_pixels`)."""
        return self.max_image_pixels or None
