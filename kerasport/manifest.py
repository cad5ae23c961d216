"""The release bundle's manifest: one JSON file at the run root that every stage extends.

It records the model contract (input/output spec, labels, preprocessing), the seeds and versions behind the run,
and every artifact with its sha256, which makes the bundle tamper-evident. No TensorFlow import here: the serving
process reads this too.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CheckFailed, UsageError
from .fsutil import sha256_file, sha256_tree, tree_bytes, write_json_atomic

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("schema_version", "model", "input", "output", "artifacts")
REQUIRED_ARTIFACT_KEYS = ("path", "format", "precision", "sha256", "bytes")


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def manifest_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MANIFEST_NAME


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = manifest_path(run_dir)
    if not path.is_file():
        raise UsageError(f"no bundle at {run_dir}: {path} is missing; expected a run directory written by "
                         f"`kerasport train`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckFailed(f"{path} is not valid JSON ({error}); expected a kerasport manifest") from error
    problems = schema_problems(manifest)
    if problems:
        raise CheckFailed(f"{path} does not follow the manifest schema: {'; '.join(problems)}")
    return manifest


def save_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = utc_now()
    write_json_atomic(manifest_path(run_dir), manifest)


def schema_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"top level is {type(manifest).__name__}, expected an object"]
    problems = [f"missing key '{key}'" for key in REQUIRED_KEYS if key not in manifest]
    version = manifest.get("schema_version")
    if "schema_version" in manifest and version != SCHEMA_VERSION:
        problems.append(f"schema_version is {version!r}, expected {SCHEMA_VERSION}")
    artifacts = manifest.get("artifacts", {})
    if not isinstance(artifacts, dict):
        problems.append(f"'artifacts' is {type(artifacts).__name__}, expected an object")
        return problems
    for name, entry in artifacts.items():
        if not isinstance(entry, dict):
            problems.append(f"artifact '{name}' is {type(entry).__name__}, expected an object")
            continue
        missing = [key for key in REQUIRED_ARTIFACT_KEYS if key not in entry]
        if missing:
            problems.append(f"artifact '{name}' lacks {', '.join(missing)}")
        elif Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts:
            problems.append(f"artifact '{name}' path {entry['path']!r} leaves the run directory")
    return problems


def hash_artifact(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory tree (a SavedModel)."""
    if path.is_dir():
        return sha256_tree(path), tree_bytes(path)
    return sha256_file(path), path.stat().st_size


def artifact_entry(run_dir: str | Path, relative_path: str, *, format: str, precision: str,
                   **details: Any) -> dict[str, Any]:
    sha256, size = hash_artifact(Path(run_dir) / relative_path)
    return {"path": relative_path, "format": format, "precision": precision, "sha256": sha256, "bytes": size,
            **details}


def artifact_problems(run_dir: str | Path, manifest: dict[str, Any],
                      names: list[str] | None = None) -> list[str]:
    """Re-hash the named artifacts (default: all) and describe every missing or altered one."""
    artifacts = manifest["artifacts"]
    problems = []
    for name in names if names is not None else sorted(artifacts):
        entry = artifacts.get(name)
        if entry is None:
            problems.append(f"artifact '{name}' is not in the manifest (it has: {', '.join(sorted(artifacts))})")
            continue
        path = Path(run_dir) / entry["path"]
        if not path.exists():
            problems.append(f"artifact '{name}' is missing: {path}")
            continue
        sha256, _ = hash_artifact(path)
        if sha256 != entry["sha256"]:
            problems.append(f"artifact '{name}' was altered: {path} has sha256 {sha256[:12]}…, "
                            f"the manifest expects {entry['sha256'][:12]}…")
    return problems


def verify_bundle(run_dir: str | Path, names: list[str] | None = None) -> dict[str, Any]:
    """Load the manifest, check its schema and the artifacts' hashes; raise CheckFailed naming each problem."""
    manifest = load_manifest(run_dir)
    problems = artifact_problems(run_dir, manifest, names)
    if problems:
        raise CheckFailed(f"bundle {run_dir} failed verification: {'; '.join(problems)}")
    return manifest


def new_manifest(**sections: Any) -> dict[str, Any]:
    now = utc_now()
    return {"schema_version": SCHEMA_VERSION, "kerasport_version": __version__, "created": now, "updated": now,
            **sections, "artifacts": sections.get("artifacts", {})}


def require_verified(manifest: dict[str, Any], name: str, *, allow_unverified: bool = False) -> dict[str, Any]:
    """The serving gate: refuse an artifact whose parity verdict is missing or failed, unless told otherwise."""
    artifacts = manifest["artifacts"]
    if name not in artifacts:
        raise UsageError(f"variant {name!r} is not in the manifest; it has {', '.join(sorted(artifacts))}")
    entry = artifacts[name]
    verdict = (entry.get("parity") or {}).get("verdict")
    if verdict != "pass" and not allow_unverified:
        state = "has no parity verdict (run `kerasport parity`)" if verdict is None else f"failed parity ({verdict})"
        raise UsageError(f"artifact {name!r} {state}; refusing to use it without --allow-unverified")
    return entry
