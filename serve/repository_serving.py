"""From `kerasport serve`'s options to a served repository: the configuration, the `--run` bundle checked before the
port serves, the repository log, and what the ready line says.

`--run DIR` is a repository of one: its bundle is checked and opened here, before serving starts, so an unusable
bundle is still a one-line error and an exit code (2 for an altered or unverified one, 1 for a signature that does
not verify) rather than a server that answers 503. Afterwards it is watched and hot-swapped like any repository
version. With `--repository DIR`, versions that fail their checks at start are refused (UNAVAILABLE in the index)
and the others serve.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from kerasport.errors import UsageError

from .model import ServedModel, load_served_model
from .repository import (
    LoadSettings,
    RepositoryConfig,
    RepositorySource,
    VersionPolicy,
    repository_log,
)
from .settings import ServeSettings
from .state import ServingState


def repository_config(settings: ServeSettings) -> RepositoryConfig:
    """The served repository from `kerasport serve`'s settings.

    Raises:
        UsageError: an unknown version policy, or a repository that is not a folder.
    """
    load = LoadSettings(variant=settings.variant, threads=settings.threads,
                        allow_unverified=settings.allow_unverified, trusted_key=settings.trusted_key,
                        policy=VersionPolicy.parse(settings.version_policy), control=settings.model_control,
                        poll_seconds=settings.poll_seconds)
    if settings.repository is None:
        return RepositoryConfig(RepositorySource(run=Path(settings.run), model_name=settings.model_name), load)
    root = Path(settings.repository)
    if not root.is_dir():
        raise UsageError(f"--repository {settings.repository}: not a folder; expected <model>/<version>/ run "
                         f"directories")
    return RepositoryConfig(RepositorySource(root=root), load)


def preload_run(config: RepositoryConfig) -> ServedModel | None:
    """Check and open the `--run` bundle (None for a repository folder).

    Raises:
        UsageError: no bundle, no servable or verified artifact, an altered artifact, an unreadable key (exit 2).
        CheckFailed: an invalid manifest, or a signature that does not verify with `--trusted-key` (exit 1).
        ConversionError: the runtime cannot load the artifact (exit 3).
    """
    source, settings = config.source, config.settings
    if source.run is None:
        return None
    if settings.trusted_key is not None:
        from kerasport.signing import verify_signature

        verify_signature(source.run, settings.trusted_key)
    return load_served_model(source.run, variant=settings.variant, model_name=source.model_name,
                             threads=settings.threads, allow_unverified=settings.allow_unverified)


def configure_repository_log() -> None:
    """Repository events (versions ready, refused, released) as JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    repository_log.handlers[:] = [handler]
    repository_log.setLevel(logging.INFO)
    repository_log.propagate = False


def describe_served(state: ServingState) -> dict:
    """What the ready line says about the served models: the default model's name, variant and runtime, and with
    a repository every version's state."""
    described = {}
    if state.repository is not None:
        described["models"] = state.repository.index()
        default = state.repository.default_state()
        model = default.model if default is not None else None
    else:
        model = state.model
    if model is not None:
        described.update(model=model.name, version=model.version, variant=model.variant,
                         variant_why=model.choice.why if model.choice else None, runtime=model.entry["runtime"])
    return described
