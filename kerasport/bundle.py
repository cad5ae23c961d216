"""The bundle's stages: their order, the folder each writes in the run directory, and what rewriting one invalidates.

A run directory is one release candidate. A model stage (`train`, or `import` of a user's model) writes the model
part; `export` turns it into deployable variants; `parity` checks them; `package` lays them out for a serving engine
(outside the run directory, recorded in the manifest). Every stage that writes the bundle asks this module where
its folder is and what its rewrite makes stale, so no stage spells another's folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .errors import CheckFailed, UsageError
from .fsutil import remove_path
from .manifest import Artifact, Manifest, load_manifest, require_verified, verify_bundle
from .selection import SERVABLE_FORMATS, Choice, choose


class Stage(StrEnum):
    """A stage of the bundle, named as the manifest's `stages` section names it."""

    TRAIN = "train"
    IMPORT = "import"
    EXPORT = "export"
    PARITY = "parity"
    PACKAGE = "package"

    @property
    def folder(self) -> str | None:
        """The folder the stage writes in the run directory; None for `package`, which writes to `--out`."""
        return _FOLDERS[self]

    @property
    def writes_the_model(self) -> bool:
        return self in MODEL_STAGES


_FOLDERS = {Stage.TRAIN: "train", Stage.IMPORT: "model", Stage.EXPORT: "export", Stage.PARITY: "parity",
            Stage.PACKAGE: None}
# Either writes the model part; a bundle holds one of them.
MODEL_STAGES = (Stage.TRAIN, Stage.IMPORT)
STAGE_ORDER = (MODEL_STAGES, Stage.EXPORT, Stage.PARITY, Stage.PACKAGE)


def stage_folder(run_dir: str | Path, stage: Stage) -> Path:
    """`<run>/<folder>` of a stage that writes inside the run directory.

    Raises:
        ValueError: the stage writes outside the run directory (`package`).
    """
    if stage.folder is None:
        raise ValueError(f"stage {stage!r} writes outside the run directory; expected one of "
                         f"{', '.join(s for s in Stage if s.folder)}")
    return Path(run_dir) / stage.folder


def invalidated_by(stage: Stage) -> tuple[Stage, ...]:
    """The stages whose outputs no longer describe the bundle once `stage` is rewritten.

    A new model (trained or imported) replaces the other model stage and everything downstream; a re-export
    changes the artifacts, so parity's verdicts no longer apply to them.
    """
    if stage.writes_the_model:
        other = tuple(model for model in MODEL_STAGES if model is not stage)
        return (*other, Stage.EXPORT, Stage.PARITY)
    if stage is Stage.EXPORT:
        return (Stage.PARITY,)
    return ()


def forget_invalidated(manifest: Manifest, stage: Stage) -> None:
    """Drop from `manifest` the records of the stages `stage` invalidates (the caller saves it: one write a stage)."""
    for later in invalidated_by(stage):
        manifest.drop_stage(later)


def remove_invalidated_folders(run_dir: str | Path, stage: Stage) -> None:
    """After a new model is recorded: remove the folders of every stage it invalidates (they describe another model).

    Called once the new manifest is saved, so a crash in between leaves only unlisted folders behind. A re-export
    removes nothing: `parity/` keeps the last reports readable, while the manifest no longer holds their verdicts.
    """
    if not stage.writes_the_model:
        return
    for later in invalidated_by(stage):
        if later.folder is not None:
            remove_path(stage_folder(run_dir, later))


@dataclass
class Bundle:
    """One run directory, opened once: its manifest read and validated once, its artifacts verified on request.

    Stages and consumers ask it for their folder, for the artifact the one selection policy picks
    (`kerasport.selection`), and record themselves in one manifest write.
    """

    run_dir: Path
    manifest: Manifest

    @classmethod
    def open(cls, run_dir: str | Path) -> Bundle:
        """Read and validate `<run_dir>/manifest.json` (once).

        Raises:
            UsageError: there is no bundle at `run_dir` (exit 2).
            CheckFailed: the manifest is not valid (exit 1).
        """
        return cls(Path(run_dir), load_manifest(run_dir))

    def verify(self, names: list[str] | None = None) -> Bundle:
        """Check the listed artifacts' hashes (all when None) against the manifest already read.

        Raises:
            CheckFailed: naming each missing or altered artifact.
        """
        verify_bundle(self.run_dir, names, manifest=self.manifest)
        return self

    def folder(self, stage: Stage) -> Path:
        return stage_folder(self.run_dir, stage)

    def select(self, *, formats: tuple[str, ...] = SERVABLE_FORMATS, requested: str | None = None,
               allow_unverified: bool = False) -> tuple[Choice, Artifact]:
        """The artifact a consumer running `formats` uses, chosen by the selection policy, gated on its parity
        verdict and re-hashed: what serve, predict and package load.

        Raises:
            UsageError: nothing runnable, an unverified choice without `allow_unverified`, or an altered artifact
                (the user's to fix: exit 2).
        """
        choice = choose(self.manifest, formats=formats, requested=requested, allow_unverified=allow_unverified)
        artifact = require_verified(self.manifest, choice.variant, allow_unverified=allow_unverified)
        try:
            self.verify([choice.variant])
        except CheckFailed as error:
            raise UsageError(str(error)) from error
        return choice, artifact

    def record(self, stage: Stage, record: dict) -> Manifest:
        """One manifest transaction for a stage: its record, the stages it invalidates forgotten, one atomic write."""
        self.manifest.set_stage(stage, record)
        forget_invalidated(self.manifest, stage)
        self.manifest.save(self.run_dir)
        return self.manifest
