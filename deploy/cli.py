"""`kerasport package`: a thin typer shell over `deploy.stage.package_bundle`. No heavy imports."""

from __future__ import annotations

import json

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.cli_support import console, user_errors

from .base import DEFAULT_MAX_BATCH, PackageOptions
from .stage import TARGET_NAMES, package_bundle

TARGETS_HELP = " | ".join(TARGET_NAMES)


@user_errors
def package_command(
    run: RunOption = DEFAULT_RUN,
    target: str = typer.Option(None, "--target", help=f"Deploy target: {TARGETS_HELP}."),
    out: str = typer.Option(None, "--out", help="Directory to write (replaced only when the target succeeds)."),
    variants: str = typer.Option(None, "--variants",
                                 help="Comma list of artifacts (default: every artifact of the target's formats "
                                      "that passed parity: ONNX for triton/kserve, the SavedModel for tfserving, "
                                      "ONNX and TFLite for container)."),
    model_name: str = typer.Option(None, "--model-name", help="Model name (default: the manifest's, as a DNS label)."),
    version: str = typer.Option(None, "--version", help="Version directory, a positive integer (default: the "
                                                        "manifest's when numeric, else 1)."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified",
                                          help="Package artifacts whose parity verdict is missing or failed."),
    max_batch: int = typer.Option(DEFAULT_MAX_BATCH, "--max-batch", help="triton/kserve: Triton's max_batch_size."),
    image: str = typer.Option(None, "--image", help="kserve: the serving image (default: a placeholder)."),
    storage_uri: str = typer.Option(None, "--storage-uri",
                                    help="kserve: where model_repository/ is uploaded (default: a placeholder)."),
    bundle_claim: str = typer.Option(None, "--bundle-claim",
                                     help="kserve: PersistentVolumeClaim with the bundle (default: <model>-bundle)."),
    wheel: str = typer.Option(None, "--wheel", help="container: a kerasport wheel (default: built from the source "
                                                    "tree)."),
    base_image: str = typer.Option("python:3.11-slim", "--base-image", help="container: the FROM image."),
    check_install: bool = typer.Option(False, "--check-install",
                                       help="container: install the wheel with its serve extra into a fresh venv to "
                                            "measure the image's size, run the build-time check and pin versions "
                                            "(~20 s)."),
    json_output: bool = typer.Option(False, "--json", help="Print the manifest record as JSON on stdout."),
) -> None:
    """Lay the verified bundle out for Triton, TF Serving, KServe or a container image, with DEPLOY.md."""
    from kerasport.errors import UsageError

    names = [name.strip() for name in variants.split(",") if name.strip()] if variants is not None else None
    if variants is not None and not names:
        raise UsageError(f"--variants {variants!r}; expected a comma list of artifact names")
    result = package_bundle(PackageOptions(
        run=run, target=target or "", out=out or "", variants=names, model_name=model_name, version=version,
        allow_unverified=allow_unverified, max_batch=max_batch, image=image, storage_uri=storage_uri,
        bundle_claim=bundle_claim, wheel=wheel, base_image=base_image, check_install=check_install))
    record = result.record
    chosen = ", ".join(record["variants"]) or "no variant"
    console().print(f"kerasport package → {result.out} ({result.target}): {chosen} as {record['model_name']!r} "
                    f"version {record['version']}; {len(record['files'])} files; see {result.out}/DEPLOY.md\n"
                    f"run: {record['command']}")
    if record.get("recommended"):  # the core's selection among what the target runs, and why
        picked = record["recommended"]
        console().print(f"recommended: {picked['entry']} ({picked['variant']}) — {picked['why']}")
    if json_output:
        typer.echo(json.dumps(record))
