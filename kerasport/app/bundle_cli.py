"""`kerasport bundle verify`: re-hash every artifact the manifest lists. No heavy imports."""

from __future__ import annotations

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
