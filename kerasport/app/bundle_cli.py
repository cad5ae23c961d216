"""`kerasport bundle verify`: re-hash every artifact the manifest lists (and check the bundle's signature with
`--public-key`). `kerasport bundle sign`: sign the bundle (kerasport/signing.py). `kerasport bundle diff`: compare two
bundles. No heavy imports at start-up (the diff reads weights with h5py/onnx/flatbuffers, imported when it runs).
"""

from __future__ import annotations

import json

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.cli_support import user_errors
from kerasport.errors import CheckFailed
from kerasport.manifest import artifact_problems, load_manifest

bundle_app = typer.Typer(help="Inspect and verify a run's release bundle.", no_args_is_help=True)


@bundle_app.command("verify")
@user_errors
def verify_command(
    run: RunOption = DEFAULT_RUN,
    public_key: str = typer.Option(None, "--public-key",
                                   help="Also check the bundle's signature (bundle.sig) with this elliptic-curve "
                                        "public key (PEM): unsigned, signed by another key or altered since "
                                        "signing fails."),
) -> None:
    """Check the manifest's schema and every artifact's sha256, and the signature with --public-key; exit 1 naming
    each missing or altered file, 2 when the key cannot be read."""
    manifest = load_manifest(run)
    problems = artifact_problems(run, manifest)
    for problem in problems:
        typer.echo(f"FAIL {problem}", err=True)
    if problems:
        raise CheckFailed(f"{len(problems)} of {len(manifest.artifact_names())} artifacts in {run} failed verification")
    typer.echo(f"ok: {len(manifest.artifact_names())} artifacts in {run} match the manifest")
    if public_key is not None:
        from kerasport.signing import verify_signature

        check = verify_signature(run, public_key)
        typer.echo(f"ok: signature verified, {check.files} files signed by key sha256:{check.key_sha256[:16]}")


@bundle_app.command("sign")
@user_errors
def sign_command(
    run: RunOption = DEFAULT_RUN,
    key: str = typer.Option(..., "--key", help="Elliptic-curve private key (PEM) to sign with."),
    password: str = typer.Option(None, "--key-password", envvar="KERASPORT_KEY_PASSWORD",
                                 help="The private key's password, if it is encrypted."),
) -> None:
    """Sign manifest.json and every artifact it lists (OpenSSF Model Signing, offline); writes bundle.sig in the
    bundle. Artifacts are re-hashed against the manifest first: an altered bundle is never signed."""
    from kerasport.signing import SIGNATURE_NAME, sign_bundle

    manifest = load_manifest(run)
    problems = artifact_problems(run, manifest)
    if problems:
        raise CheckFailed(f"{run} does not match its manifest, refusing to sign it: {'; '.join(problems)}")
    check = sign_bundle(run, key, password)
    typer.echo(f"signed {check.files} files of {run} into {run}/{SIGNATURE_NAME} (key sha256:{check.key_sha256[:16]})")


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
