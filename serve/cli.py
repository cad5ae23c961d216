"""`kerasport serve` and `kerasport predict`: thin typer shells. Never import tensorflow or keras."""

from __future__ import annotations

import csv
import io
import json
import os
import sys

import typer

from kerasport.cli_support import console, user_errors
from kerasport.errors import UsageError


@user_errors
def serve_command(
    run: str = typer.Option("build", "--run", help="Run directory with a verified bundle."),
    variant: str = typer.Option(None, "--variant", help="Artifact to serve (default: the fastest that passed parity)."),
    model_name: str = typer.Option(None, "--model-name", help="Name in URLs (default: from the manifest)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port", help="0 picks a free port (printed on stdout when ready)."),
    max_batch: int = typer.Option(8, "--max-batch",
                                  help="Most images per runtime call when requests coalesce (8 keeps the fp32 "
                                       "seed model under 150 MB RSS; 32 is ~15 % faster per image, +90 MB)."),
    max_delay_ms: float = typer.Option(0.0, "--max-delay-ms",
                                       help="Extra wait for more requests (0: greedy batching, no added latency)."),
    threads: int = typer.Option(0, "--threads", help="Runtime intra-op threads (0: the runtime's default)."),
    api_key: str = typer.Option(None, "--api-key", envvar="KERASPORT_API_KEY",
                                help="Require 'Authorization: Bearer KEY' or 'X-API-Key' (health stays open)."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, "--max-body-bytes"),
    allow_unverified: bool = typer.Option(False, "--allow-unverified",
                                          help="Serve an artifact whose parity verdict is missing or failed."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="JSON access log on stderr."),
) -> None:
    """Serve the bundle over HTTP (KServe V2 + TF Serving REST) with onnxruntime or LiteRT."""
    if max_batch < 1 or max_delay_ms < 0 or max_body_bytes < 1 or threads < 0 or not 0 <= port <= 65535:
        raise UsageError(f"--max-batch {max_batch} (>= 1), --max-delay-ms {max_delay_ms} (>= 0), --max-body-bytes "
                         f"{max_body_bytes} (>= 1), --threads {threads} (>= 0), --port {port} (0..65535)")
    from .server import serve

    serve(run=run, variant=variant, model_name=model_name, host=host, port=port, max_batch=max_batch,
          max_delay_ms=max_delay_ms, threads=threads, api_key=api_key, max_body_bytes=max_body_bytes,
          allow_unverified=allow_unverified, access_log=access_log)


@user_errors
def predict_command(
    paths: list[str] = typer.Argument(..., help="Image files (PNG/JPEG) or folders of them."),
    run: str = typer.Option("build", "--run"),
    variant: str = typer.Option(None, "--variant"),
    output_format: str = typer.Option("table", "--format", help="table | json | csv"),
    top_k: int = typer.Option(3, "--top-k", min=1),
    allow_unverified: bool = typer.Option(False, "--allow-unverified"),
) -> None:
    """Classify image files with the bundle's runtime, without TensorFlow."""
    if output_format not in ("table", "json", "csv"):
        raise UsageError(f"--format {output_format!r}; expected table, json or csv")
    from .model import load_served_model
    from .predict import collect_images, predict_files

    files = collect_images(paths)
    model = load_served_model(run, variant=variant, allow_unverified=allow_unverified)
    rows = predict_files(model, files, top_k=top_k)
    if output_format == "json":
        typer.echo(json.dumps({"variant": model.variant, "predictions": rows}))
    elif output_format == "csv":
        buffer = io.StringIO()
        if model.task == "classification":
            writer = csv.writer(buffer)
            writer.writerow(["file", "label", "probability"])
            writer.writerows([row["file"], row["label"], f"{row['probability']:.6f}"] for row in rows)
        else:
            writer = csv.writer(buffer)
            writer.writerow(["file", "values"])
            writer.writerows([row["file"], " ".join(f"{v:.6f}" for v in row["values"])] for row in rows)
        sys.stdout.write(buffer.getvalue())
    else:
        from rich.table import Table

        table = Table(title=f"kerasport predict ({model.variant})")
        table.add_column("file")
        if model.task == "classification":
            table.add_column("label")
            table.add_column("probability", justify="right")
            table.add_column(f"top {top_k}")
            for row in rows:
                table.add_row(os.path.relpath(row["file"]), row["label"], f"{row['probability']:.4f}",
                              ", ".join(f"{t['label']}:{t['probability']:.3f}" for t in row["top_k"]))
        else:
            table.add_column("values")
            for row in rows:
                table.add_row(os.path.relpath(row["file"]), ", ".join(f"{v:.4f}" for v in row["values"]))
        console().print(table)
