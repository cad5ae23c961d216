"""Small Keras models saved the ways users hand them to `kerasport import`, and data files that fit them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from import_helpers import EXAMPLES, invoke, mlp_regressor, two_io_arrays

from devtools.tiny_models import CLASSES, two_input_model


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("import-models")


@pytest.fixture(scope="session")
def two_io_keras(models_dir) -> Path:
    path = models_dir / "two_io.keras"
    two_input_model().save(path)
    return path


@pytest.fixture(scope="session")
def two_io_npz(models_dir) -> Path:
    path = models_dir / "two_io.npz"
    np.savez(path, **two_io_arrays())
    return path


@pytest.fixture(scope="session")
def mlp_keras(models_dir) -> Path:
    path = models_dir / "mlp.keras"
    mlp_regressor().save(path)
    return path


@pytest.fixture(scope="session")
def mlp_npz(models_dir) -> Path:
    rng = np.random.default_rng(1)
    path = models_dir / "mlp.npz"
    np.savez(path, x=rng.uniform(-3, 7, (EXAMPLES, 13)).astype(np.float32), y=rng.normal(size=EXAMPLES))
    return path


@pytest.fixture(scope="session")
def imported_bundle(two_io_keras, two_io_npz, tmp_path_factory) -> Path:
    """A bundle imported once; tests that must not change it copy it."""
    run = tmp_path_factory.mktemp("imported") / "run"
    result = invoke(["import", str(two_io_keras), "--run", str(run), "--eval-data", f"npz:{two_io_npz}",
                     "--labels", ",".join(CLASSES)])
    assert result.exit_code == 0, result.stderr
    return run
