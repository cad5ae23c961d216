"""`kerasport bundle verify`: re-hash every artifact the manifest lists. `kerasport bundle diff`: compare two
bundles. No heavy imports at start-up (the diff reads weights with h5py/onnx/flatbuffers, imported when it runs).
"""

from __future__ import annotations

import json

import typer

from kerasport.cli_support import user_errors
from kerasport.errors import CheckFailed
from kerasport.manifest import artifact_problems, load_manifest

bundle_app = typer.Typer(help="Inspect and verify a run's release bundle.", no_args_is_help=True)


@bundle_app.command("verify")
@user_errors
def verify_command(
    run: str = typer.Option("build", "--run", help="Run directory holding manifest.json."),
) -> None:
    """Check the manifest's schema and every artifact's sha256; exit 1 naming each missing or altered file."""
    manifest = load_manifest(run)
    problems = artifact_problems(run, manifest)
    for problem in problems:
        typer.echo(f"FAIL {problem}", err=True)
    if problems:
        raise CheckFailed(f"{len(problems)} of {len(manifest.artifact_names())} artifacts in {run} failed verification")
    typer.echo(f"ok: {len(manifest.artifact_names())} artifacts in {run} match the manifest")


DIFF_EXIT_DIFFERENT = 1
MAX_TENSOR_ROWS = 12


@bundle_app.command("diff")
@user_errors
def diff_command(
    run_a: str = typer.Argument(..., help="First run directory (holding manifest.json)."),
    run_b: str = typer.Argument(..., help="Second run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
    weights: bool = typer.Option(True, "--weights/--no-weights",
                                 help="Compare the tensors of differing models and samples (off: hashes only)."),
) -> None:
    """Which artifacts of two bundles differ (sha256), and for models the largest weight difference per layer.

    Exit 0 when every artifact is identical, 1 when any differs (like `diff`), 2 when a bundle is missing.
    """
    from kerasport.bundle_diff import diff_bundles

    result = diff_bundles(run_a, run_b, weights=weights)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_diff(result)
    if not result.identical:
        raise typer.Exit(DIFF_EXIT_DIFFERENT)


def _print_diff(result) -> None:
    from kerasport.bundle_diff import EQUIVALENT, SAME

    width = max([len(row.name) for row in result.artifacts] + [8])
    for row in result.artifacts:
        hashes = f"{(row.sha256_a or '-')[:12]:12}  {(row.sha256_b or '-')[:12]:12}"
        typer.echo(f"{row.name:{width}}  {row.status:10}  {hashes}  {row.detail}".rstrip())
        differing = row.differing_tensors
        if row.tensors is not None and row.status != SAME:
            typer.echo(f"{'':{width}}  {len(row.tensors) - len(differing)} of {len(row.tensors)} tensors equal"
                       + ("; largest |A-B|:" if differing else ""))
        for tensor in sorted(differing, key=lambda t: -(t.max_abs_diff if t.max_abs_diff is not None else
                                                         float("inf")))[:MAX_TENSOR_ROWS]:
            delta = "n/a" if tensor.max_abs_diff is None else f"{tensor.max_abs_diff:.3g}"
            typer.echo(f"{'':{width}}    {delta:>9}  {tensor.name}  {tensor.note}".rstrip())
        if len(differing) > MAX_TENSOR_ROWS:
            typer.echo(f"{'':{width}}    ... {len(differing) - MAX_TENSOR_ROWS} more (--json lists all)")
    for line in result.context:
        typer.echo(f"note: {line}")
    same = sum(row.status == SAME for row in result.artifacts)
    equivalent = sum(row.status == EQUIVALENT for row in result.artifacts)
    verdict = "identical" if result.identical else "differ"
    typer.echo(f"{result.run_a} and {result.run_b} {verdict}: {same} of {len(result.artifacts)} artifacts "
               f"byte-identical" + (f", {equivalent} equal apart from timings and timestamps" if equivalent else ""))
