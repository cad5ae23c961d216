"""`kerasport package`: the verified bundle laid out for an existing serving engine.

One function per target writes a complete directory (`--out`):

- `triton` (triton.py): a Triton model repository, one entry per ONNX variant that passed parity;
- `tfserving` (tfserving.py): the SavedModel in TF Serving's `<model>/<version>/` layout + `models.config`;
- `kserve` (kserve.py): InferenceService YAML for Triton and for kerasport's own TF-free server;
- `container` (container.py): a Dockerfile and its build context for a TF-free serving image.

The chosen artifacts are re-hashed against the manifest before anything is copied, and every copy is re-hashed
after; a variant that failed parity (or never ran it) is refused unless `allow_unverified`. Everything is written in
a staging directory beside `--out` that replaces it only when the target succeeds, then `DEPLOY.md` (the command,
what was verified, the hashes) is written beside the files, and the packaging is recorded in the manifest under
`stages.package.<target>` (artifact entries and hashes are left untouched). No TensorFlow import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kerasport import __version__
from kerasport.bundle import Bundle, Stage
from kerasport.errors import UsageError
from kerasport.fsutil import atomic_path, sha256_file, write_text_atomic
from kerasport.manifest import Artifact, Manifest, load_manifest, utc_now
from kerasport.verdict import Verdict

from .base import PackageContext, PackageOptions, TargetOutput, parity_state

DEPLOY_NAME = "DEPLOY.md"
STAGE = Stage.PACKAGE
# A name every target accepts: a DNS-1035 label (KServe's InferenceService names), which Triton and TF Serving
# model names and directory names take too. Short enough for the derived names ("-triton", "-int8") to stay < 64.
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 48
# The targets' names, for --help without importing their modules; `targets()` lists the same, in this order.
TARGET_NAMES = ("triton", "tfserving", "kserve", "container")


@dataclass(frozen=True)
class Target:
    """A deploy target: the artifact formats it takes and the function that writes its directory.

    Attributes:
        write: `write(context, staging) -> TargetOutput`; fills the (empty, existing) `staging` directory.
        needs_variants: False where the target is useful with no artifact of `formats` (kserve's own server).
    """

    name: str
    title: str
    formats: tuple[str, ...]
    write: Callable[[PackageContext, Path], TargetOutput]
    needs_variants: bool = True


@dataclass
class PackageResult:
    target: str
    out: Path
    record: dict


def targets() -> dict[str, Target]:
    """The registry of deploy targets, in the order `--help` lists them."""
    from .container import write_container
    from .kserve import write_kserve
    from .tfserving import write_tfserving
    from .triton import write_triton

    return {target.name: target for target in (
        Target("triton", "Triton Inference Server (onnxruntime backend)", ("onnx",), write_triton),
        Target("tfserving", "TensorFlow Serving", ("tf_saved_model",), write_tfserving),
        Target("kserve", "KServe (V2 protocol)", ("onnx",), write_kserve, needs_variants=False),
        Target("container", "a TF-free kerasport serving image", ("onnx", "tflite"), write_container),
    )}


def package_bundle(options: PackageOptions) -> PackageResult:
    """Write the bundle's deployable layout for one target into `options.out`, atomically.

    Args:
        options: the run directory, target, output directory, chosen variants and target-specific settings.

    Returns:
        The target, the output directory and the record written to `stages.package.<target>` of the manifest.

    Raises:
        UsageError: unknown target, no bundle, a bad name/version, a variant that is unknown, not of the target's
            formats, recorded as failed by export, or unverified without `allow_unverified` (exit 2).
        CheckFailed: a chosen artifact is missing or was altered since the manifest recorded it (exit 1).
        ConversionError: the target could not be written (e.g. the ONNX graph disagrees with the contract) (exit 3).
    """
    registry = targets()
    if options.target not in registry:
        given = f"--target {options.target!r}" if options.target else "no --target given"
        raise UsageError(f"{given}; expected one of {', '.join(registry)}")
    target = registry[options.target]
    run_dir, out = Path(options.run), _check_out(options.out, Path(options.run))
    bundle = Bundle.open(run_dir)
    manifest = bundle.manifest
    context = PackageContext(run_dir=run_dir, manifest=manifest, options=options,
                             model_name=resolve_model_name(options.model_name, manifest),
                             version=resolve_version(options.version, manifest),
                             chosen=select_variants(manifest, target, options.variants, options.allow_unverified))
    bundle.verify([artifact.name for artifact in context.chosen])
    with atomic_path(out) as staging:
        staging.mkdir()
        output = target.write(context, staging)
        files = file_hashes(staging)
        write_text_atomic(staging / DEPLOY_NAME, render_deploy(context, target, output, files))
    record = {"finished": utc_now(), "out": str(out.resolve()), "model_name": context.model_name,
              "version": context.version, "command": output.command,
              "variants": {artifact.name: {"sha256": artifact.sha256, "parity": context.parity(artifact)}
                           for artifact in context.chosen},
              **output.record, "files": files}
    from kerasport.signing import is_signed

    if not is_signed(run_dir):  # a signed manifest stays as signed: the record is in DEPLOY.md and returned
        _record_stage(run_dir, target.name, record)
    return PackageResult(target=target.name, out=out, record=record)


def _check_out(out: str, run_dir: Path) -> Path:
    if not out:
        raise UsageError("no --out given; expected the directory to write the target into")
    path = Path(out)
    resolved, run_resolved = path.resolve(), run_dir.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents:
        raise UsageError(f"--out {out} would replace the bundle {run_dir} it packages; expected a directory outside "
                         f"it (or inside it, e.g. {run_dir}/deploy/<target>)")
    return path


def resolve_model_name(requested: str | None, manifest: Manifest) -> str:
    """The model name every target uses: `requested`, or the manifest's name made a DNS-1035 label.

    Raises:
        UsageError: `requested` is not a lowercase DNS label of at most 48 characters.
    """
    if requested is None:
        derived = re.sub(r"[^a-z0-9-]+", "-", manifest.name.lower()).strip("-")[:MAX_NAME].strip("-") or "model"
        return derived if derived[0].isalpha() else f"m-{derived}"[:MAX_NAME].strip("-")
    if not NAME_PATTERN.match(requested) or len(requested) > MAX_NAME:
        raise UsageError(f"--model-name {requested!r}; expected a lowercase DNS label (a letter, then letters, "
                         f"digits or '-', at most {MAX_NAME} characters): Triton, TF Serving and KServe all accept it")
    return requested


def resolve_version(requested: str | None, manifest: Manifest) -> int:
    """The version directory number: `requested`, or the manifest's version when it is a positive integer, else 1.

    Raises:
        UsageError: `requested` is not a positive integer (Triton and TF Serving name version directories so).
    """
    if requested is None:
        return int(manifest.version) if manifest.version.isdigit() and int(manifest.version) > 0 else 1
    if not requested.isdigit() or int(requested) < 1:
        raise UsageError(f"--version {requested!r}; expected a positive integer (Triton and TF Serving read version "
                         f"directories as numbers)")
    return int(requested)


def select_variants(manifest: Manifest, target: Target, requested: list[str] | None,
                    allow_unverified: bool) -> list[Artifact]:
    """The artifacts a target packages: those requested, or every one of its formats that passed parity.

    Args:
        manifest: the bundle's manifest.
        target: the deploy target (its `formats`).
        requested: artifact names from `--variants`, or None for the default.
        allow_unverified: accept (and by default include) artifacts without a passing verdict.

    Returns:
        The chosen artifacts, in manifest order when defaulted, in the order given otherwise.

    Raises:
        UsageError: an unknown or unfit artifact, or none at all where the target needs one.
    """
    if requested:
        return [_requested_variant(manifest, target, name, allow_unverified) for name in requested]
    usable = [artifact for artifact in manifest.artifacts()
              if artifact.format in target.formats and artifact.status == "ok"]
    chosen = [artifact for artifact in usable
              if allow_unverified or parity_state(manifest, artifact).shippable]
    if not chosen and target.needs_variants:
        have = ", ".join(f"{a.name} ({parity_state(manifest, a)})" for a in usable) or "none"
        raise UsageError(f"no {'/'.join(target.formats)} artifact of this bundle passed parity (it has: {have}); "
                         f"expected one for --target {target.name}: run `kerasport export` and `kerasport parity`, "
                         f"or pass --variants with --allow-unverified")
    return chosen


def _requested_variant(manifest: Manifest, target: Target, name: str, allow_unverified: bool) -> Artifact:
    artifact = manifest.artifact(name)
    if artifact.format not in target.formats:
        fitting = [a.name for a in manifest.artifacts() if a.format in target.formats] or ["none in this bundle"]
        raise UsageError(f"--variants {name}: a {artifact.format} artifact; --target {target.name} takes "
                         f"{'/'.join(target.formats)} artifacts ({', '.join(fitting)})")
    if artifact.status != "ok":
        raise UsageError(f"--variants {name}: export recorded it as {artifact.status}; expected a built artifact")
    state = parity_state(manifest, artifact)
    if not state.shippable and not allow_unverified:
        detail = ("has no parity verdict (run `kerasport parity`)" if state == Verdict.UNCHECKED
                  else f"failed parity ({state})")
        raise UsageError(f"--variants {name}: the artifact {detail}; refusing to package it without "
                         f"--allow-unverified")
    return artifact


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, keyed by its POSIX path relative to `root`, sorted."""
    return {path.relative_to(root).as_posix(): sha256_file(path)
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != DEPLOY_NAME}


def render_deploy(context: PackageContext, target: Target, output: TargetOutput, files: dict[str, str]) -> str:
    """DEPLOY.md: the command that runs the target, what was verified, and the hash of every file written."""
    manifest_sha = context.manifest_sha256
    lines = [f"# Deploy `{context.model_name}` (version {context.version}) with {target.title}", "",
             f"Written by kerasport {__version__} (`kerasport package --target {target.name}`) on {utc_now()} from "
             f"the bundle `{context.run_dir.resolve()}` (manifest.json sha256 `{manifest_sha}` before this packaging "
             f"was recorded in it; model "
             f"{context.manifest.name!r} version {context.manifest.version!r}).", "",
             "## Run it", "", "```sh", output.command, "```", ""]
    for note in output.notes:
        lines += [note, ""]
    lines += ["## What was verified", "",
              "Every artifact below was re-hashed against the bundle's manifest before it was copied, and its copy "
              "here was re-hashed after. Parity verdicts are those `kerasport parity` recorded in the manifest.", "",
              "| artifact | format | precision | parity | sha256 |", "|---|---|---|---|---|"]
    for artifact in context.chosen:
        lines.append(f"| {artifact.name} | {artifact.format} | {artifact.precision} | "
                     f"{context.parity(artifact)} | `{artifact.sha256}` |")
    if not context.chosen:
        lines.append("| (none) | | | | |")
    if context.unverified:
        lines += ["", f"**Unverified** (packaged with --allow-unverified): {', '.join(context.unverified)}."]
    lines += ["", "## Files", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in files.items()]
    return "\n".join(lines) + "\n"


def _record_stage(run_dir: Path, target: str, record: dict) -> None:
    manifest = load_manifest(run_dir)  # fresh: only stages.package changes, never an artifact entry
    packaged = dict(manifest.stage(STAGE))
    packaged[target] = record
    manifest.set_stage(STAGE, packaged)
    manifest.save(run_dir)
