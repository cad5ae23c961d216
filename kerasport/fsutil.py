"""Atomic writes and hashing shared by every stage.

A crash must never leave a half-written artifact that looks complete, so every file is written next to its
destination under a temporary name and renamed into place (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """Hash a directory: every file's relative path and content, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(file).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def tree_bytes(path: str | os.PathLike) -> int:
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it into place only if the block succeeds.

    Works for files and directories; a previous file or directory at `destination` is replaced.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=f"{suffix}.tmp",
                                         dir=destination.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    temp_path.unlink()  # the caller creates a file or a directory here
    try:
        yield temp_path
        if not temp_path.exists():
            raise FileNotFoundError(f"nothing was written to {temp_path} for {destination}")
        replace_path(temp_path, destination)
    finally:
        remove_path(temp_path)


def replace_path(source: Path, destination: Path) -> None:
    """Move `source` onto `destination`, replacing a file or a whole directory."""
    if destination.is_dir() and not destination.is_symlink():
        # A directory cannot be replaced by rename in one step: move the old one aside first, so that at
        # every instant either the old or the new complete tree is at `destination`.
        aside = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        remove_path(aside)
        os.replace(destination, aside)
        try:
            os.replace(source, destination)
        except BaseException:
            os.replace(aside, destination)  # put the old tree back: never leave `destination` missing
            raise
        remove_path(aside)
    else:
        os.replace(source, destination)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def write_bytes_atomic(destination: str | os.PathLike, data: bytes) -> None:
    with atomic_path(destination) as temp, open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(destination: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(destination, text.encode("utf-8"))


def write_json_atomic(destination: str | os.PathLike, payload: Any) -> None:
    write_text_atomic(destination, json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # numpy scalars and paths turn up in configs and metrics; everything else is a bug worth seeing
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON: {value!r}")
