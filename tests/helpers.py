"""Test helpers: tiny datasets written to disk in every supported format, and tiny trained bundles.

What benchmarks need too (ServerProcess) lives in the repository's devtools/ package and is re-exported here.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from devtools.serving import ServerProcess, loopback_client, loopback_get

__all__ = ["ServerProcess", "build_source_wheel", "copy_bundle", "loopback_client", "loopback_get", "shared_bundle",
           "synthetic_digits", "trained_bundle", "write_idx", "write_idx_dir", "write_npz", "write_png_folders"]

IMAGE = 28


def synthetic_digits(n: int, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable uint8 images: each class is a bright bar at its own position, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, IMAGE, IMAGE)).astype(np.uint8)
    for index, label in enumerate(labels):
        row = 4 + int(label) * (20 // max(n_classes - 1, 1))
        images[index, row:row + 3, 4:24] = 230
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_idx_dir(root: Path, n_train: int = 120, n_test: int = 30, gz: bool = False, n_classes: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    x_train, y_train = synthetic_digits(n_train, n_classes, seed=1)
    x_test, y_test = synthetic_digits(n_test, n_classes, seed=2)
    write_idx(root / "train-images-idx3-ubyte", x_train, gz)
    write_idx(root / "train-labels-idx1-ubyte", y_train, gz)
    write_idx(root / "t10k-images-idx3-ubyte", x_test, gz)
    write_idx(root / "t10k-labels-idx1-ubyte", y_test, gz)
    return root


def write_npz(path: Path, n_train: int = 120, n_test: int = 30, **overrides) -> Path:
    x_train, y_train = synthetic_digits(n_train, seed=1)
    x_test, y_test = synthetic_digits(n_test, seed=2)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **overrides}
    np.savez(path, **arrays)
    return path


def write_png_folders(root: Path, per_class: int = 12, classes=("circle", "cross", "square")) -> Path:
    from PIL import Image

    x, y = synthetic_digits(per_class * len(classes), len(classes), seed=3)
    for index, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        # 56x56 RGB on disk: the loader must convert to grayscale and resize to 28x28
        Image.fromarray(image).resize((56, 56)).convert("RGB").save(folder / f"{index:03d}.png")
    return root


def trained_bundle(root: Path, **overrides) -> Path:
    """Train a tiny model on synthetic IDX files into root/run (a few seconds)."""
    from kerasport.train.config import TrainConfig
    from kerasport.train.fit import train

    data = write_idx_dir(root / "idx")
    config = TrainConfig(**{"data": f"idx:{data}", "run": str(root / "run"), "width": 0.125, "epochs": 2,
                            "batch_size": 16, **overrides})
    train(config)
    return root / "run"


def copy_bundle(run: Path, destination: Path) -> Path:
    """A private copy of a shared (session fixture) bundle, for a test that changes it: destination/run."""
    copy = destination / "run"
    shutil.copytree(run, copy)
    return copy


ROOT = Path(__file__).resolve().parents[1]
SOURCE_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache")


def build_source_wheel(root: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the whole working tree (not only the packaged folders, so a stray top-level
    package would show up in the wheel), into root; returns the wheel's path."""
    shutil.copytree(ROOT, root / "src", ignore=SOURCE_SKIP)
    # cwd: outside the repository, as for any command that must not see its kerasport/ folder
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(root / "src"), "-w", str(root)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(sys.executable).anchor)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = root.glob("kerasport-*.whl")
    return path


BUILT_MARKER = "built"


def shared_bundle(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """A bundle built once per test session, shared by every pytest-xdist worker of the session, read-only.

    The first worker to ask builds it (`build(root)` returns the run directory it wrote under root) while holding
    a lock; the others wait for it and reuse it. A build that fails leaves no marker, so the next one tries again.
    Without xdist it is an ordinary session-scoped build.

    Args:
        tmp_path_factory: pytest's session-scoped tmp_path_factory.
        name: a folder name for the bundle, unique among shared bundles.
        build: writes the bundle under the given folder and returns its run directory.

    Returns:
        The run directory; a test that changes it must work on a copy (copy_bundle).
    """
    base = tmp_path_factory.getbasetemp()
    # Under xdist every worker has its own basetemp (.../pytest-N/popen-gw0); their parent belongs to this session.
    session_root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = session_root / f"shared-{name}"
    with open(session_root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            marker = root / BUILT_MARKER
            if marker.is_file():
                return root / marker.read_text()
            shutil.rmtree(root, ignore_errors=True)  # what a failed build left
            root.mkdir()
            run = build(root)
            marker.write_text(run.relative_to(root).as_posix())
            return run
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
