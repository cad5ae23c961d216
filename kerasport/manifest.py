"""The release bundle's manifest: one JSON file at the run root that every stage extends.

It records the model contract (named inputs and outputs, see `contract.py`), the seeds and versions behind the run,
every stage's summary and every artifact with its sha256, which makes the bundle tamper-evident. The JSON is parsed
and validated once, into a `Manifest` with typed accessors; stages never dig through the raw dictionaries. No
TensorFlow import here: the serving process reads this too.

Schema 2 (current): `inputs` and `outputs` are lists. Schema 1 bundles (a single `input`/`output`) are migrated
in memory when they load and written back as schema 2 by the next stage that saves.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .contract import ModelContract
from .errors import CheckFailed, UsageError
from .fsutil import sha256_file, sha256_tree, tree_bytes, write_json_atomic
from .verdict import Verdict

SCHEMA_VERSION = 2
SUPPORTED_SCHEMAS = (1, 2)
MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("schema_version", "model", "inputs", "outputs", "artifacts")
REQUIRED_ARTIFACT_KEYS = ("path", "format", "precision", "sha256", "bytes")


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def manifest_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MANIFEST_NAME


@dataclass(frozen=True)
class Artifact:
    """A read-only view of one artifact entry."""

    name: str
    entry: dict

    @property
    def path(self) -> str:
        return self.entry["path"]

    @property
    def format(self) -> str:
        return self.entry["format"]

    @property
    def precision(self) -> str:
        return self.entry["precision"]

    @property
    def runtime(self) -> str | None:
        return self.entry.get("runtime")

    @property
    def sha256(self) -> str:
        return self.entry["sha256"]

    @property
    def bytes(self) -> int:
        return int(self.entry["bytes"])

    @property
    def parity(self) -> dict:
        return self.entry.get("parity") or {}

    @property
    def verdict(self) -> str | None:
        """The parity verdict: 'pass', 'fail', 'error', 'skipped' or None when never checked."""
        return self.parity.get("verdict")

    @property
    def passed_parity(self) -> bool:
        return self.verdict == Verdict.PASS

    @property
    def settings_beyond_tolerance(self) -> list[str]:
        """The runtime settings parity's sweep found this artifact's answers leave its tolerance (or fail) under;
        empty when none did or no sweep ran."""
        return list((self.parity.get("sweep") or {}).get("beyond_tolerance") or [])

    @property
    def status(self) -> str:
        """'ok', or 'failed: <reason>' for a variant export could not build (`--keep-going`)."""
        return self.entry.get("status", "ok")

    def get(self, key: str, default: Any = None) -> Any:
        """A stage-specific detail recorded with the artifact (e.g. the TFLite ops, the opset)."""
        return self.entry.get(key, default)

    def resolve(self, run_dir: str | Path) -> Path:
        return Path(run_dir) / self.path


class Manifest:
    """A parsed, validated manifest. Mutations go through methods; `save` writes it atomically."""

    def __init__(self, data: dict[str, Any], source: str = MANIFEST_NAME):
        problems = schema_problems(data)
        if problems:
            raise CheckFailed(f"{source} does not follow the manifest schema: {'; '.join(problems)}")
        self.data = data
        self.contract = ModelContract.from_dict(data)

    # --- the model ----------------------------------------------------------------------------------------------
    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def name(self) -> str:
        return str(self.model.get("name", "model"))

    @property
    def version(self) -> str:
        return str(self.model.get("version", "1"))

    @property
    def task(self) -> str:
        return self.contract.task

    @property
    def source(self) -> dict:
        """Where the model came from: {"kind": "trained"} or the imported file/builder."""
        return self.model.get("source") or {"kind": "trained"}

    # --- artifacts ----------------------------------------------------------------------------------------------
    def artifact_names(self) -> list[str]:
        return list(self.data["artifacts"])

    def artifacts(self) -> Iterator[Artifact]:
        for name, entry in self.data["artifacts"].items():
            yield Artifact(name, entry)

    def has(self, name: str) -> bool:
        return name in self.data["artifacts"]

    def artifact(self, name: str) -> Artifact:
        """The named artifact.

        Raises:
            UsageError: when the manifest has no such artifact (the message lists those it has).
        """
        entry = self.data["artifacts"].get(name)
        if entry is None:
            raise UsageError(f"artifact {name!r} is not in the manifest; it has {', '.join(self.artifact_names())}")
        return Artifact(name, entry)

    def parity_verdict(self, name: str) -> str | None:
        return self.artifact(name).verdict if self.has(name) else None

    def set_artifact(self, name: str, entry: dict) -> None:
        self.data["artifacts"][name] = entry

    def remove_artifact(self, name: str) -> None:
        self.data["artifacts"].pop(name, None)

    def set_parity(self, name: str, record: dict | None) -> None:
        if record is None:
            self.data["artifacts"][name].pop("parity", None)
        else:
            self.data["artifacts"][name]["parity"] = record

    # --- stages, versions ---------------------------------------------------------------------------------------
    def stage(self, name: str) -> dict:
        return (self.data.get("stages") or {}).get(name, {})

    def set_stage(self, name: str, record: dict) -> None:
        self.data.setdefault("stages", {})[name] = record

    def drop_stage(self, name: str) -> None:
        self.data.setdefault("stages", {}).pop(name, None)

    @property
    def versions(self) -> dict:
        return self.data.get("versions") or {}

    def update_versions(self, versions: dict) -> None:
        self.data.setdefault("versions", {}).update(versions)

    @property
    def performance(self) -> dict:
        """Measured speed per candidate with its host (`perf.py`); empty when never measured."""
        return self.data.get("performance") or {}

    def set_performance(self, block: dict | None) -> None:
        if block is None:
            self.data.pop("performance", None)
        else:
            self.data["performance"] = block

    @property
    def recommendation(self) -> dict:
        """The variant recommended per deployment target (`selection.py`); empty when never made."""
        return self.data.get("recommendation") or {}

    def set_recommendation(self, record: dict | None) -> None:
        if record is None:
            self.data.pop("recommendation", None)
        else:
            self.data["recommendation"] = record

    @property
    def seeds(self) -> dict:
        return self.data.get("seeds") or {}

    def save(self, run_dir: str | Path) -> None:
        self.data["updated"] = utc_now()
        write_json_atomic(manifest_path(run_dir), self.data)

    def copy(self) -> Manifest:
        return Manifest(copy.deepcopy(self.data))


def load_manifest(run_dir: str | Path) -> Manifest:
    """Read, migrate (schema 1 -> 2) and validate `<run_dir>/manifest.json`.

    Raises:
        UsageError: there is no manifest (exit 2).
        CheckFailed: the manifest is not JSON or breaks the schema (exit 1), one line naming the problem.
    """
    path = manifest_path(run_dir)
    if not path.is_file():
        raise UsageError(f"no bundle at {run_dir}: {path} is missing; expected a run directory written by "
                         f"`kerasport train` or `kerasport import`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckFailed(f"{path} is not valid JSON ({error}); expected a kerasport manifest") from error
    if isinstance(data, dict) and data.get("schema_version") == 1:
        data = migrate_schema_1(data, path)
    return Manifest(data, source=str(path))


def migrate_schema_1(data: dict, path: Path | str = MANIFEST_NAME) -> dict:
    """A schema-1 manifest (single `input`/`output`, `preprocessing`) as schema 2.

    Raises:
        CheckFailed: the schema-1 manifest lacks what the contract needs; re-run the pipeline.
    """
    try:
        single_in, single_out, model = data["input"], data["output"], data["model"]
        preprocessing = data.get("preprocessing") or {}
        height, width = preprocessing.get("resize") or single_in["shape"][1:3]
        color_mode = "rgb" if single_in["shape"][-1] == 3 else "grayscale"
        inputs = [{"name": single_in["name"], "dtype": single_in["dtype"], "shape": single_in["shape"],
                   "kind": "image", "value_range": single_in.get("value_range", [0, 255]),
                   "image": {"height": height, "width": width, "color_mode": color_mode,
                             "resample": preprocessing.get("resample", "bilinear"),
                             "foreground": preprocessing.get("foreground")}}]
        classification = model.get("task") == "classification"
        outputs = [{"name": single_out["name"], "dtype": single_out["dtype"], "shape": single_out["shape"],
                    "kind": "probabilities" if classification else "values",
                    "labels": model.get("labels") or [], "activation": single_out.get("activation")}]
    except (KeyError, TypeError, ValueError) as error:
        raise CheckFailed(f"{path} is a schema-1 bundle that cannot be read as schema 2 ({error!r} missing or "
                          f"malformed); re-run `kerasport run` to rebuild it") from None
    migrated = {key: value for key, value in data.items() if key not in ("input", "output", "preprocessing")}
    migrated.update(schema_version=SCHEMA_VERSION, inputs=inputs, outputs=outputs, migrated_from_schema=1)
    return migrated


def schema_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"top level is {type(manifest).__name__}, expected an object"]
    problems = [f"missing key '{key}'" for key in REQUIRED_KEYS if key not in manifest]
    version = manifest.get("schema_version")
    if "schema_version" in manifest and version != SCHEMA_VERSION:
        problems.append(f"schema_version is {version!r}, expected one of {list(SUPPORTED_SCHEMAS)} "
                        f"(re-run the pipeline to rebuild the bundle)")
    if not isinstance(manifest.get("model", {}), dict):
        problems.append("'model' is not an object")
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
    """A new artifact entry: the file's sha256 and size plus the given details."""
    sha256, size = hash_artifact(Path(run_dir) / relative_path)
    return {"path": relative_path, "format": format, "precision": precision, "sha256": sha256, "bytes": size,
            **details}


def artifact_problems(run_dir: str | Path, manifest: Manifest, names: list[str] | None = None) -> list[str]:
    """Re-hash the named artifacts (default: all) and describe every missing or altered one."""
    problems = []
    for name in names if names is not None else sorted(manifest.artifact_names()):
        if not manifest.has(name):
            problems.append(f"artifact '{name}' is not in the manifest (it has: "
                            f"{', '.join(sorted(manifest.artifact_names()))})")
            continue
        artifact = manifest.artifact(name)
        if artifact.status != "ok":
            continue  # a variant export recorded as failed has no file to check
        path = artifact.resolve(run_dir)
        if not path.exists():
            problems.append(f"artifact '{name}' is missing: {path}")
            continue
        sha256, _ = hash_artifact(path)
        if sha256 != artifact.sha256:
            problems.append(f"artifact '{name}' was altered: {path} has sha256 {sha256[:12]}…, "
                            f"the manifest expects {artifact.sha256[:12]}…")
    return problems


def verify_bundle(run_dir: str | Path, names: list[str] | None = None, *, manifest: Manifest | None = None) -> Manifest:
    """Load the manifest (unless it is given, already loaded), check its schema and the artifacts' hashes.

    Raises:
        CheckFailed: naming each missing or altered artifact.
    """
    manifest = manifest if manifest is not None else load_manifest(run_dir)
    problems = artifact_problems(run_dir, manifest, names)
    if problems:
        raise CheckFailed(f"bundle {run_dir} failed verification: {'; '.join(problems)}")
    return manifest


def new_manifest(*, model: dict, contract: ModelContract, **sections: Any) -> Manifest:
    """A fresh schema-2 manifest for a model and its contract."""
    now = utc_now()
    return Manifest({"schema_version": SCHEMA_VERSION, "kerasport_version": __version__, "created": now,
                     "updated": now, "model": model, **contract.to_dict(), **sections,
                     "artifacts": sections.get("artifacts", {})})


def require_verified(manifest: Manifest, name: str, *, allow_unverified: bool = False) -> Artifact:
    """The serving gate: refuse an artifact whose parity verdict is missing or failed, unless told otherwise.

    Raises:
        UsageError: the artifact is unknown, or unverified without `allow_unverified`.
    """
    artifact = manifest.artifact(name)
    if not artifact.passed_parity and not allow_unverified:
        verdict = artifact.verdict
        state = "has no parity verdict (run `kerasport parity`)" if verdict is None else f"failed parity ({verdict})"
        raise UsageError(f"artifact {name!r} {state}; refusing to use it without --allow-unverified")
    return artifact
