"""`kerasport serve --repository DIR`: a model repository with version policies, polling or explicit control, and
hot swap.

The layout is TF Serving's and Triton's: `DIR/<model>/<version>/` where each version folder is a run directory
(manifest.json + artifacts) and versions are positive integers. Models are served under their folder names; a
manifest whose own name or version differs is logged and the folder wins. `--run DIR` is a repository of one (its
model name and version from `--model-name` and the manifest).

Model control follows Triton: `poll` re-scans the folder every `--poll-seconds` and picks up new, changed and
removed versions; `explicit` loads every model once at start and changes only through the repository extension
(`load` re-reads a model's folder, `unload` drops it). Both answer the repository extension's index.

Hot swap, per version: verify (the signature when `--trusted-key` is set; the sha256 of every artifact served,
against the manifest; the parity verdict) and open the runtime in a thread, warm it up with one inference (on the
model, so statistics never count it), start its micro-batcher, then switch it in with one assignment on the event
loop. A request takes its version when its inference starts (`resolve`, with no await before `run_inference` counts
it in flight), so it finishes there; a replaced or removed version leaves the routing table at once and is released
(batcher stopped, runtime dropped) after its last in-flight request. A version that fails a check is refused: a
JSON log line with the reason, the `kerasport_repository_refused_total` counter, `UNAVAILABLE` with the reason in the
index; what served before keeps serving, and the version is not tried again until its folder changes
(`folder_fingerprint`).

Version policies are Triton's: `latest:N` (the N highest loadable versions; a refused version does not count, so
the previous one keeps serving), `all`, `specific:V,...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasport.errors import KerasportError, UsageError
from kerasport.manifest import MANIFEST_NAME, load_manifest

from .errors import BadRequest, NotFound, NotReady
from .model import ServedModel, load_served_model
from .repository_control import SharedControl
from .state import ServingState

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"
DEFAULT_POLL_SECONDS = 5.0
UNLOADED_REASON = "unloaded"
NOT_IN_POLICY_REASON = "not selected by the version policy"
repository_log = logging.getLogger("kerasport.repository")


def log_event(event: str, **fields) -> None:
    """One JSON line on the repository log (stderr)."""
    repository_log.warning(json.dumps({"ts": round(time.time(), 3), "event": event, **fields, "pid": os.getpid()}))


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model serve: Triton's `latest: N`, `all`, or `specific: [V, ...]`."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """`latest:N`, `all` or `specific:V,...` (versions positive integers).

        Raises:
            UsageError: anything else.
        """
        kind, _, value = text.strip().partition(":")
        try:
            if kind == "all" and not value:
                return cls("all")
            if kind == "latest":
                count = int(value or "1")
                if count >= 1:
                    return cls("latest", count=count)
            if kind == "specific":
                versions = tuple(sorted({int(part) for part in value.split(",")}))
                if versions and versions[0] >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise UsageError(f"--version-policy {text!r}; expected latest:N (N >= 1), all, or specific:V,... (positive "
                         f"integers)")

    def select(self, versions) -> list[int]:
        """The versions to serve, from the loadable ones on disk, highest first."""
        ordered = sorted(set(versions), reverse=True)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [version for version in ordered if version in self.versions]
        return ordered[:self.count]

    def to_config(self) -> dict:
        """The policy as Triton's model configuration writes it."""
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"latest": {"num_versions": self.count}}


@dataclass(frozen=True)
class RepositorySource:
    """Where versions come from: a repository folder, or one run directory (`--run`, a repository of one)."""

    root: Path | None = None
    run: Path | None = None
    model_name: str | None = None

    def scan(self) -> dict[str, dict[int, Path]]:
        """Every model folder and its integer version folders holding a manifest.json."""
        if self.run is not None:
            manifest = load_manifest(self.run)
            version = int(manifest.version) if manifest.version.isdigit() and int(manifest.version) > 0 else 1
            return {self.model_name or manifest.name: {version: self.run}}
        models: dict[str, dict[int, Path]] = {}
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            versions = {int(child.name): child for child in folder.iterdir()
                        if child.is_dir() and child.name.isdigit() and int(child.name) > 0
                        and (child / MANIFEST_NAME).is_file()}
            models[folder.name] = versions
        return models


@dataclass(frozen=True)
class LoadSettings:
    """How each version is checked and opened (`kerasport serve`'s options)."""

    variant: str | None = None
    threads: int = 0
    allow_unverified: bool = False
    trusted_key: str | None = None
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    control: str = "poll"
    poll_seconds: float = DEFAULT_POLL_SECONDS


def folder_fingerprint(path: Path) -> str:
    """A digest of every file's path, size and modification time under a version folder: changes when it does."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_and_open(path: Path, name: str, version: int, settings: LoadSettings) -> ServedModel:
    """Verify a version folder and open its runtime (blocking: run it in a thread).

    Checks, in order: the signature over the manifest and every artifact (with a trusted key), then the served
    artifact's sha256 against the manifest and its parity verdict (`load_served_model`).

    Raises:
        KerasportError: the reason the version is refused (one line).
    """
    if settings.trusted_key is not None:
        from kerasport.signing import verify_signature

        verify_signature(path, settings.trusted_key)
    model = load_served_model(path, variant=settings.variant, model_name=name, threads=settings.threads,
                              allow_unverified=settings.allow_unverified)
    model.served_version = str(version)
    manifest = model.manifest
    if manifest.name != name or manifest.version != str(version):
        log_event("folder_name_wins", model=name, version=version, manifest_name=manifest.name,
                  manifest_version=manifest.version, path=str(path))
    return model


def warmup_inputs(model: ServedModel) -> dict[str, np.ndarray]:
    """One example per input, every value the low end of its range (zero when none is declared)."""
    inputs = {}
    for spec in model.contract.inputs:
        shape = [1 if dim in (-1, None) else dim for dim in spec.shape]
        low = spec.value_range[0] if spec.value_range is not None else 0
        inputs[spec.name] = np.full(shape, low, dtype=spec.dtype)
    return inputs


@dataclass
class VersionRecord:
    """What the index says of one version: its state, the reason when not ready, its folder's fingerprint."""

    state: str
    reason: str = ""
    fingerprint: str | None = None


@dataclass
class ModelEntry:
    versions: dict[int, ServingState] = field(default_factory=dict)  # ready, serving
    records: dict[int, VersionRecord] = field(default_factory=dict)
    unloaded: bool = False  # by the repository extension: polling leaves it alone until it is loaded again


class ModelRepository:
    """The served models and versions, their states, and the control that changes them.

    Args:
        source: where the versions are.
        settings: how versions are checked and opened, the version policy and the control mode.
        make_state: builds a version's ServingState (with its micro-batcher, not yet started) around its model.
        metrics: a `RepositoryMetrics` to count loads and refusals on.
    """

    def __init__(self, source: RepositorySource, settings: LoadSettings,
                 make_state: Callable[[ServedModel], ServingState], metrics: RepositoryMetrics):
        self.source, self.settings, self.make_state, self.metrics = source, settings, make_state, metrics
        self.models: dict[str, ModelEntry] = {}
        self.lock = asyncio.Lock()  # one change at a time: a poll, a load or an unload
        self.poller: asyncio.Task | None = None
        self.follower: asyncio.Task | None = None
        self.shared = SharedControl.from_environment()  # --workers N: loads and unloads apply to every worker
        self.releasing: set[asyncio.Task] = set()

    # --- requests -----------------------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None, need_ready: bool = True) -> ServingState:
        """The ServingState a request for `name` (and `version`, else the highest ready one) runs on.

        Raises:
            NotFound: an unknown model or version. NotReady: the model or version is known but not serving.
        """
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model {name!r}; this server serves {sorted(self.models)}")
        if version is None:
            if entry.versions:
                return entry.versions[max(entry.versions)]
            raise NotReady(f"model {name!r} has no ready version ({self._reasons(entry)})")
        number = int(version) if version.isdigit() else None
        if number in entry.versions:
            return entry.versions[number]
        record = entry.records.get(number)
        if record is not None:
            raise NotReady(f"version {version} of {name!r} is {record.state}: {record.reason or 'loading'}")
        raise NotFound(f"unknown version {version!r} of {name!r}; available: {sorted(map(str, entry.versions))}")

    def index(self, ready_only: bool = False) -> list[dict]:
        """The repository extension's index: every known model version, its state and the reason."""
        rows = []
        for name in sorted(self.models):
            entry = self.models[name]
            for version in sorted(entry.records):
                record = entry.records[version]
                if ready_only and record.state != READY:
                    continue
                rows.append({"name": name, "version": str(version), "state": record.state, "reason": record.reason})
        return rows

    def version_status(self, name: str) -> list[dict]:
        """TF Serving's model_version_status for a model (every known version, highest first)."""
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model {name!r}; this server serves {sorted(self.models)}")
        return [{"version": str(version), "state": "AVAILABLE" if record.state == READY else record.state,
                 "status": {"error_code": "OK" if record.state == READY else "UNAVAILABLE",
                            "error_message": record.reason}}
                for version, record in sorted(entry.records.items(), reverse=True)]

    def default_state(self) -> ServingState | None:
        """The highest ready version of the first model with one (what a model-less page describes)."""
        for name in sorted(self.models):
            if self.models[name].versions:
                return self.resolve(name, None)
        return None

    # --- control ------------------------------------------------------------------------------------------------

    async def start(self, preloaded: ServedModel | None = None) -> None:
        """Load every model (adopting `preloaded`, the `--run` model already checked), then poll if polling."""
        if preloaded is not None:
            ((name, versions),) = self.source.scan().items()
            ((version, path),) = versions.items()
            preloaded.served_version = str(version)
            await self._switch_in(name, version, preloaded, folder_fingerprint(path))
        await self.refresh()
        if self.settings.control == "poll":
            self.poller = asyncio.create_task(self._poll(), name="kerasport-repository-poll")
        if self.shared is not None:
            self.follower = asyncio.create_task(self.shared.follow(self._apply_shared), name="kerasport-control")

    async def stop(self) -> None:
        for task in (self.poller, self.follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for entry in self.models.values():
            for state in entry.versions.values():
                await state.batcher.stop()
            entry.versions.clear()
        for task in list(self.releasing):
            task.cancel()

    async def refresh(self, only: str | None = None) -> None:
        """Bring the served versions in line with the folder (every model, or `only`)."""
        async with self.lock:
            scanned = await asyncio.to_thread(self._scan)
            if scanned is None:  # the folder could not be read this time: keep serving what serves
                return
            names = [only] if only is not None else sorted(set(scanned) | set(self.models))
            for name in names:
                entry = self.models.setdefault(name, ModelEntry())
                if only is None and entry.unloaded:
                    continue
                await self._reconcile(name, scanned.get(name, {}))
                if not entry.records and name not in scanned:
                    del self.models[name]

    async def load(self, name: str, *, publish: bool = True) -> None:
        """The repository extension's load: (re)read the model's folder and serve what its policy selects; with
        workers, every worker does the same.

        Raises:
            NotFound: no such model folder. BadRequest: no version of it could be loaded (the reasons).
        """
        scanned = await asyncio.to_thread(self._scan) or {}
        if name not in scanned:
            raise NotFound(f"no model {name!r} in the repository; it holds {sorted(scanned)}")
        self.models.setdefault(name, ModelEntry()).unloaded = False
        await self.refresh(only=name)
        if publish and self.shared is not None:
            await asyncio.to_thread(self.shared.publish, name, False)
        entry = self.models[name]
        if not entry.versions:
            raise BadRequest(f"failed to load {name!r}: {self._reasons(entry)}")

    async def unload(self, name: str, *, publish: bool = True) -> None:
        """The repository extension's unload: stop serving every version of the model (in-flight ones finish);
        with workers, in every worker.

        Raises:
            NotFound: an unknown model.
        """
        await self._unload(name)
        if publish and self.shared is not None:
            await asyncio.to_thread(self.shared.publish, name, True)

    async def _apply_shared(self, states: dict[str, bool]) -> None:
        for name, unloaded in states.items():
            entry = self.models.get(name)
            try:
                if unloaded and entry is not None and not entry.unloaded:
                    await self.unload(name, publish=False)
                elif not unloaded and (entry is None or entry.unloaded):
                    await self.load(name, publish=False)
            except KerasportError as error:
                log_event("shared_control_failed", model=name, unloaded=unloaded, reason=str(error))

    async def _unload(self, name: str) -> None:
        async with self.lock:
            entry = self.models.get(name)
            if entry is None:
                raise NotFound(f"unknown model {name!r}; this server serves {sorted(self.models)}")
            entry.unloaded = True
            for version in list(entry.versions):
                self._retire(name, version, UNLOADED_REASON)
            for record in entry.records.values():
                record.state, record.reason, record.fingerprint = UNAVAILABLE, UNLOADED_REASON, None

    # --- internals ----------------------------------------------------------------------------------------------

    def _scan(self) -> dict[str, dict[int, Path]] | None:
        try:
            return self.source.scan()
        except (OSError, KerasportError) as error:  # e.g. the --run manifest caught mid-rewrite
            log_event("scan_failed", reason=str(error))
            return None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - polling must outlive any one bad folder
                log_event("poll_failed", reason=f"{type(error).__name__}: {error}")

    async def _reconcile(self, name: str, on_disk: dict[int, Path]) -> None:
        entry = self.models[name]
        fingerprints = await asyncio.to_thread(lambda: {v: folder_fingerprint(p) for v, p in on_disk.items()})
        while True:
            loadable = [version for version in on_disk
                        if not (entry.records.get(version, VersionRecord(READY)).state == UNAVAILABLE
                                and entry.records[version].fingerprint == fingerprints[version])]
            wanted = self.settings.policy.select(loadable)
            stale = [version for version in wanted if version not in entry.versions
                     or entry.records[version].fingerprint != fingerprints[version]]
            if not stale:
                break
            version = stale[0]
            await self._load_version(name, version, on_disk[version], fingerprints[version])
        for version in list(entry.versions):
            if version not in wanted:
                self._retire(name, version, NOT_IN_POLICY_REASON if version in on_disk else "removed")
        for version in list(entry.records):
            if version not in on_disk:
                del entry.records[version]
        for version in on_disk:
            record = entry.records.get(version)
            if version not in wanted and (record is None or record.state == READY):
                entry.records[version] = VersionRecord(UNAVAILABLE, NOT_IN_POLICY_REASON)

    async def _load_version(self, name: str, version: int, path: Path, fingerprint: str) -> None:
        entry = self.models[name]
        previous = entry.records.get(version)
        entry.records[version] = VersionRecord(LOADING, fingerprint=fingerprint)
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(check_and_open, path, name, version, self.settings)
            await self._switch_in(name, version, model, fingerprint)
        except Exception as error:  # noqa: BLE001 - any failure refuses this version, the server serves on
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            if not isinstance(error, KerasportError):
                reason = f"{type(error).__name__}: {reason}"
            serving = version in entry.versions
            entry.records[version] = VersionRecord(READY if serving else UNAVAILABLE,
                                                   "" if serving else reason, fingerprint)
            if serving:  # a changed folder of a serving version: the loaded one keeps serving, marked by its reason
                entry.records[version].reason = f"kept the loaded files; the changed folder was refused: {reason}"
            self.metrics.refused.labels(name).inc()
            log_event("version_refused", model=name, version=version, path=str(path), reason=reason,
                      previous=previous.state if previous else None)
            return
        log_event("version_ready", model=name, version=version, path=str(path),
                  seconds=round(time.perf_counter() - started, 3))

    async def _switch_in(self, name: str, version: int, model: ServedModel, fingerprint: str) -> None:
        # The warm-up runs on the model itself, not through the batcher: it is not a request, so the inference
        # statistics and metrics never count it. Nothing else can call this model yet (it is not switched in).
        await asyncio.to_thread(model.predict, warmup_inputs(model))
        state = self.make_state(model)
        await state.batcher.start()
        entry = self.models.setdefault(name, ModelEntry())
        replaced = entry.versions.get(version)
        state.ready = True  # the version's own flag; the server's readiness (and its gauge) is the app's
        entry.versions[version] = state  # the switch: one assignment on the event loop
        entry.records[version] = VersionRecord(READY, fingerprint=fingerprint)
        self._refresh_versions(name)
        self.metrics.loaded.labels(name).inc()
        if replaced is not None:
            self._release_later(name, version, replaced)

    def _retire(self, name: str, version: int, reason: str) -> None:
        entry = self.models[name]
        state = entry.versions.pop(version)
        entry.records[version] = VersionRecord(UNAVAILABLE, reason)
        self._refresh_versions(name)
        log_event("version_unloaded", model=name, version=version, reason=reason)
        self._release_later(name, version, state)

    def _release_later(self, name: str, version: int, state: ServingState) -> None:
        task = asyncio.create_task(self._release(name, version, state))
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _release(self, name: str, version: int, state: ServingState) -> None:
        # Every request that took this version already counts in `active` (taken with no await before it), and
        # none can take it any more: once the count is zero, nothing will use it again.
        while state.active:
            await asyncio.sleep(0.01)
        await state.batcher.stop()
        state.ready = False
        log_event("version_released", model=name, version=version)

    def _refresh_versions(self, name: str) -> None:
        entry = self.models[name]
        versions = frozenset(str(version) for version in entry.versions)
        for state in entry.versions.values():
            state.versions = versions

    @staticmethod
    def _reasons(entry: ModelEntry) -> str:
        reasons = [f"version {version}: {record.reason}" for version, record in sorted(entry.records.items())
                   if record.reason]
        return "; ".join(reasons) or "no version folder"


@dataclass(frozen=True)
class RepositoryConfig:
    """What `create_app` needs to serve a repository: where the versions are and how they load."""

    source: RepositorySource
    settings: LoadSettings = field(default_factory=LoadSettings)


class RepositoryMetrics:
    """Prometheus counters of the repository: versions switched in, versions refused (per model)."""

    def __init__(self, registry):
        from prometheus_client import Counter

        self.loaded = Counter("kerasport_repository_loaded_total", "Model versions switched in", ["model"],
                              registry=registry)
        self.refused = Counter("kerasport_repository_refused_total", "Model versions refused by a check (the "
                               "reason is in the log and the repository index)", ["model"], registry=registry)
