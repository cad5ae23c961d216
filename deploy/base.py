"""What every deploy target shares: the options, the verified context a target writer gets, what it returns, and
the copy that re-hashes an artifact against the manifest. Targets import this module, never the stage that runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kerasport.bundle import Stage
from kerasport.fsutil import sha256_file
from kerasport.manifest import Artifact, Manifest, hash_artifact, manifest_path
from kerasport.verdict import Verdict

DEFAULT_MAX_BATCH = 8


@dataclass
class PackageOptions:
    """What `kerasport package` was asked for; target-specific fields are ignored by the other targets."""

    run: str = "build"
    target: str = ""
    out: str = ""
    variants: list[str] | None = None
    model_name: str | None = None
    version: str | None = None
    allow_unverified: bool = False
    max_batch: int = DEFAULT_MAX_BATCH
    image: str | None = None
    storage_uri: str | None = None
    bundle_claim: str | None = None
    wheel: str | None = None
    base_image: str = "python:3.11-slim"
    check_install: bool = False


@dataclass
class PackageContext:
    """The verified inputs a target writer gets."""

    run_dir: Path
    manifest: Manifest
    options: PackageOptions
    model_name: str
    version: int
    chosen: list[Artifact]

    def parity(self, artifact: Artifact) -> Verdict:
        """'pass', 'reference' (the artifact parity compared against), the failed verdict, or 'unchecked'."""
        return parity_state(self.manifest, artifact)

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(manifest_path(self.run_dir))

    @property
    def unverified(self) -> list[str]:
        return [artifact.name for artifact in self.chosen if not self.parity(artifact).shippable]


@dataclass
class TargetOutput:
    """What a target wrote: the one command that runs it, markdown notes for DEPLOY.md, and the manifest record."""

    command: str
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)


def parity_state(manifest: Manifest, artifact: Artifact) -> Verdict:
    """'pass', 'reference' (parity's own reference), the failed verdict, or 'unchecked'."""
    if artifact.passed_parity:
        return Verdict.PASS
    if manifest.stage(Stage.PARITY).get("reference") == artifact.name:
        return Verdict.REFERENCE
    return Verdict(artifact.verdict) if artifact.verdict else Verdict.UNCHECKED


def copy_verified(context: PackageContext, artifact: Artifact, destination: Path) -> None:
    """Copy an artifact (file or SavedModel tree) and check the copy hashes to the manifest's sha256.

    Raises:
        CheckFailed: the copy differs from what the manifest recorded (a disk or concurrency problem).
    """
    import shutil

    from kerasport.errors import CheckFailed

    source = artifact.resolve(context.run_dir)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copyfile(source, destination)
    sha256, _ = hash_artifact(destination)
    if sha256 != artifact.sha256:
        raise CheckFailed(f"the copy of {artifact.name} at {destination} has sha256 {sha256[:12]}…; the manifest "
                          f"expects {artifact.sha256[:12]}…")
