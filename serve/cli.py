"""`kerasport serve` and `kerasport predict`: thin typer shells. Never import tensorflow or keras."""

from __future__ import annotations

import json
import sys

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.cli_support import console, user_errors
from kerasport.errors import UsageError


@user_errors
def serve_command(
    run: RunOption = DEFAULT_RUN,
    variant: str = typer.Option("auto", "--variant", help="Artifact to serve; auto: the server CPU recommendation "
                                "(lowest measured batch-1 p50 that passed parity; without measurements, a fixed "
                                "order). The choice and why are in the ready line."),
    model_name: str = typer.Option(None, "--model-name", help="Name in URLs (default: from the manifest)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port", help="0 picks a free port (printed on stdout when ready)."),
    max_batch: int = typer.Option(8, "--max-batch",
                                  help="Most images per runtime call when requests coalesce (8 keeps the fp32 "
                                       "seed model under 150 MB RSS; 32 is ~15 % faster per image, +90 MB)."),
    max_delay_ms: float = typer.Option(0.0, "--max-delay-ms",
                                       help="Extra wait for more requests (0: greedy batching, no added latency)."),
    threads: int = typer.Option(0, "--threads", help="Runtime intra-op threads per worker (0: the runtime's "
                                                     "default; with --workers N > 1, the cores split evenly)."),
    api_key: str = typer.Option(None, "--api-key", envvar="KERASPORT_API_KEY",
                                help="Require 'Authorization: Bearer KEY' or 'X-API-Key' (health stays open)."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, "--max-body-bytes"),
    allow_unverified: bool = typer.Option(False, "--allow-unverified",
                                          help="Serve an artifact whose parity verdict is missing or failed."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="JSON access log on stderr."),
    workers: int = typer.Option(0, "--workers",
                                help="Server processes sharing the port, each with its own runtime session "
                                     "(0: one per 2 cores). Threads are split so workers x threads ~ cores."),
    max_image_pixels: int = typer.Option(0, "--max-image-pixels",
                                         help="Refuse larger pictures (413) from their header, before decoding "
                                              "(0: max(16 MP, 4 x the model's input))."),
    grpc_port: int = typer.Option(None, "--grpc-port",
                                  help="Also serve the Open Inference Protocol over gRPC on this port, in every "
                                       "worker (0 picks a free port, printed on stdout when ready)."),
    repository: str = typer.Option(None, "--repository",
                                   help="Serve a model repository: <model>/<version>/ run directories (integer "
                                        "versions), served under their folder names, instead of --run."),
    version_policy: str = typer.Option("latest:1", "--version-policy",
                                       help="Which versions of each model serve: latest:N, all, or specific:V,..."),
    model_control: str = typer.Option("poll", "--model-control",
                                      help="poll: pick up new, changed and removed versions every --poll-seconds; "
                                           "explicit: change only through the repository extension (load/unload)."),
    poll_seconds: float = typer.Option(5.0, "--poll-seconds", help="How often --model-control poll re-reads the "
                                                                   "repository (or the --run bundle)."),
    trusted_key: str = typer.Option(None, "--trusted-key",
                                    help="Serve only bundles signed with this key's private half (elliptic-curve "
                                         "public key, PEM): unsigned or altered ones are refused."),
) -> None:
    """Serve the bundle, or a model repository with hot swap, over HTTP (KServe V2 + TF Serving REST), and gRPC with
    --grpc-port, with onnxruntime or LiteRT."""
    if (max_batch < 1 or max_delay_ms < 0 or max_body_bytes < 1 or threads < 0 or not 0 <= port <= 65535
            or workers < 0 or max_image_pixels < 0 or (grpc_port is not None and not 0 <= grpc_port <= 65535)):
        raise UsageError(f"--max-batch {max_batch} (>= 1), --max-delay-ms {max_delay_ms} (>= 0), --max-body-bytes "
                         f"{max_body_bytes} (>= 1), --threads {threads} (>= 0), --port {port} (0..65535), "
                         f"--workers {workers} (>= 0), --max-image-pixels {max_image_pixels} (>= 0), --grpc-port "
                         f"{grpc_port} (0..65535)")
    from .server import serve
    from .workers import default_workers

    serve(run=run, variant=variant, model_name=model_name, host=host, port=port, max_batch=max_batch,
          max_delay_ms=max_delay_ms, threads=threads, api_key=api_key, max_body_bytes=max_body_bytes,
          allow_unverified=allow_unverified, access_log=access_log, workers=workers or default_workers(),
          max_image_pixels=max_image_pixels or None, grpc_port=grpc_port, repository=repository,
          version_policy=version_policy, model_control=model_control, poll_seconds=poll_seconds,
          trusted_key=trusted_key)


@user_errors
def predict_command(
    paths: list[str] = typer.Argument(None, help="Image files (PNG/JPEG) or folders of them, for image models."),
    inputs: str = typer.Option(None, "--inputs",
                               help="npz:FILE with one array per input name (or `x` for a single input), for any "
                                    "model."),
    run: RunOption = DEFAULT_RUN,
    variant: str = typer.Option("auto", "--variant", help="Artifact to run; auto: the server CPU recommendation."),
    output_format: str = typer.Option("table", "--format", help="table | json | csv"),
    top_k: int = typer.Option(3, "--top-k", min=1),
    allow_unverified: bool = typer.Option(False, "--allow-unverified"),
) -> None:
    """Run image files or named input arrays through the bundle's runtime, without TensorFlow."""
    if output_format not in ("table", "json", "csv"):
        raise UsageError(f"--format {output_format!r}; expected table, json or csv")
    if bool(paths) == bool(inputs):
        raise UsageError("give image files or folders, or --inputs npz:FILE; expected exactly one of the two")
    from .model import load_served_model
    from .predict import collect_images, load_input_arrays, predict_arrays, predict_images, render_csv, render_table

    files = collect_images(paths) if paths else []
    model = load_served_model(run, variant=variant, allow_unverified=allow_unverified)
    if model.choice is not None:  # which variant and why, on stderr: stdout stays the predictions
        typer.echo(f"predict: {model.variant} — {model.choice.why}", err=True)
    if files:
        rows = predict_images(model, files, top_k=top_k)
    else:
        rows = predict_arrays(model, load_input_arrays(inputs, model.contract), top_k=top_k)
    if output_format == "json":
        typer.echo(json.dumps({"variant": model.variant, "predictions": rows}))
    elif output_format == "csv":
        sys.stdout.write(render_csv(rows))
    else:
        console().print(render_table(rows, f"kerasport predict ({model.variant})", top_k))
