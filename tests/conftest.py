"""Shared fixtures. Helpers that tests import live in helpers.py."""

import os
import shutil
from pathlib import Path

import pytest

from kerasport.perf import PERF_ENV
from kerasport.tfenv import quiet_tensorflow  # noqa: E402

quiet_tensorflow()
# Parity measures every passing candidate's speed by default (seconds per run on this suite's many gates): only the
# tests of that measurement ask for it (perf=True / --perf); the subprocesses the tests start inherit this too.
os.environ.setdefault(PERF_ENV, "0")

from helpers import trained_bundle, write_idx_dir  # noqa: E402


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return write_idx_dir(tmp_path / "idx")


@pytest.fixture
def tiny(tmp_path: Path):
    """Keyword arguments for a TrainConfig that trains in seconds."""
    return {"data": f"idx:{write_idx_dir(tmp_path / 'idx')}", "run": str(tmp_path / "run"), "width": 0.125,
            "epochs": 2, "batch_size": 16, "plateau_patience": 3}


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """A tiny trained bundle with every variant exported; tests copy it before changing anything."""
    from kerasport.export.stage import ExportOptions, export_bundle

    run = trained_bundle(tmp_path_factory.mktemp("exported"))
    export_bundle(ExportOptions(run=str(run), calibration_samples=50))
    return run


@pytest.fixture
def exported_copy(exported, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(exported, copy)
    return copy


@pytest.fixture(scope="session")
def verified(exported, tmp_path_factory) -> Path:
    """The exported bundle after a passing parity run: what `kerasport serve` accepts."""
    from kerasport.parity.stage import ParityOptions, run_parity

    run = tmp_path_factory.mktemp("verified") / "run"
    shutil.copytree(exported, run)
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == 0, result.failures
    return run


@pytest.fixture(scope="session")
def regressor_versions(tmp_path_factory) -> dict[int, Path]:
    """Versions 1 and 2 of one small regressor, other weights each, exported and parity-checked (unsigned);
    devtools/repository_bundles.py. Tests copy them before changing or signing anything."""
    from devtools.repository_bundles import write_version

    root = tmp_path_factory.mktemp("regressor-versions")
    return {version: write_version(root / f"v{version}", seed=version) for version in (1, 2)}
