"""Shared fixtures. Helpers that tests import live in helpers.py.

The bundles here are session fixtures built once per session and shared by every test file that asks for them —
under `make test`'s pytest-xdist workers too (`helpers.shared_bundle`: the first worker builds, the others reuse).
A test that changes a bundle works on a copy (`exported_copy`, `helpers.copy_bundle`), never on the shared one.
"""

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

from helpers import build_source_wheel, copy_bundle, shared_bundle, trained_bundle, write_idx_dir  # noqa: E402


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    return write_idx_dir(tmp_path / "idx")


@pytest.fixture
def tiny(tmp_path: Path):
    """Keyword arguments for a TrainConfig that trains in seconds."""
    return {"data": f"idx:{write_idx_dir(tmp_path / 'idx')}", "run": str(tmp_path / "run"), "width": 0.125,
            "epochs": 2, "batch_size": 16, "plateau_patience": 3}


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """The tiny trained bundle (`helpers.trained_bundle` defaults), not exported; tests copy it before changing it."""
    return shared_bundle(tmp_path_factory, "trained", trained_bundle)


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory) -> Path:
    """A tiny trained bundle with every variant exported; tests copy it before changing anything."""
    from kerasport.export.stage import ExportOptions, export_bundle

    def build(root: Path) -> Path:
        run = copy_bundle(trained, root)
        export_bundle(ExportOptions(run=str(run), calibration_samples=50))
        return run

    return shared_bundle(tmp_path_factory, "exported", build)


@pytest.fixture(scope="session")
def edge_exported(tmp_path_factory) -> Path:
    """The compact `edge` model, trained one epoch, with tflite-int8 and its TFLite Micro C array exported."""
    from kerasport.export.stage import ExportOptions, export_bundle

    def build(root: Path) -> Path:
        run = trained_bundle(root, arch="edge", epochs=1)
        export_bundle(ExportOptions(run=str(run), formats=["tflite-int8", "tflm"], calibration_samples=20))
        return run

    return shared_bundle(tmp_path_factory, "edge", build)


@pytest.fixture(scope="session")
def regression_trained(tmp_path_factory) -> Path:
    """A tiny regression model, trained two epochs and not exported; tests copy it and export what they need."""
    return shared_bundle(tmp_path_factory, "regression", lambda root: trained_bundle(root, task="regression", epochs=2))


@pytest.fixture
def exported_copy(exported, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(exported, copy)
    return copy


@pytest.fixture(scope="session")
def verified(exported, tmp_path_factory) -> Path:
    """The exported bundle after a passing parity run: what `kerasport serve` accepts."""
    from kerasport.parity.stage import ParityOptions, run_parity

    def build(root: Path) -> Path:
        run = copy_bundle(exported, root)
        result = run_parity(ParityOptions(run=str(run), sweep=False))
        assert result.exit_code == 0, result.failures
        return run

    return shared_bundle(tmp_path_factory, "verified", build)



@pytest.fixture(scope="session")
def two_inputs_exported(tmp_path_factory) -> Path:
    """The shared two-input/two-output model (devtools/tiny_models.py) imported with 16 eval examples and declared
    value ranges, exported to onnx-fp32 and tflite-fp32, parity not run (serve it with allow_unverified)."""
    from devtools.tiny_models import FEATURE_RANGE, PIXEL_RANGE, export_formats, two_input_bundle

    def build(root: Path) -> Path:
        run = two_input_bundle(root / "run", eval_examples=16,
                               ranges={"picture": PIXEL_RANGE, "features": FEATURE_RANGE})
        return export_formats(run, ["onnx-fp32", "tflite-fp32"])

    return shared_bundle(tmp_path_factory, "two-inputs", build)


@pytest.fixture(scope="session")
def source_wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of the whole working tree (helpers.build_source_wheel), built once per session:
    tests/test_packaging.py inspects and installs it, the container tests that are not about building a wheel take
    it with `--wheel` (the build from the source tree is test_package.py's container-context test). Read-only."""
    return shared_bundle(tmp_path_factory, "wheel", build_source_wheel)


@pytest.fixture(scope="session")
def regressor_versions(tmp_path_factory) -> dict[int, Path]:
    """Versions 1 and 2 of one small regressor, other weights each, exported and parity-checked (unsigned);
    devtools/repository_bundles.py. Tests copy them before changing or signing anything."""
    from devtools.repository_bundles import write_version

    root = tmp_path_factory.mktemp("regressor-versions")
    return {version: write_version(root / f"v{version}", seed=version) for version in (1, 2)}


# --- scheduling under pytest-xdist (`make test`: -n auto --dist loadfile) -------------------------------------------
# Each worker is handed whole files in the order they are collected. Handing out the longest files first (longest
# processing time first) keeps a long file from starting last and running alone at the end. The seconds per file
# come from a recorded run (devtools/test_durations.py); a file without a record counts as DEFAULT_FILE_SECONDS.
FILE_DURATIONS = Path(__file__).with_name("file_durations.json")
DEFAULT_FILE_SECONDS = 10.0


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # only xdist workers: a plain run keeps the usual order
        return
    import json

    recorded = json.loads(FILE_DURATIONS.read_text()) if FILE_DURATIONS.is_file() else {}
    root = Path(str(config.rootpath))

    def file_seconds(item) -> float:
        return recorded.get(Path(str(item.path)).relative_to(root).as_posix(), DEFAULT_FILE_SECONDS)

    items.sort(key=file_seconds, reverse=True)  # stable: a file's tests keep their order
