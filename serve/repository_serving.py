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
    CONTROL_MODES,
    LoadSettings,
    RepositoryConfig,
    RepositorySource,
    VersionPolicy,
    repository_log,
)
from .state import ServingState


def repository_config(*, run: str, repository: str | None, model_name: str | None, variant: str | None,
                      threads: int, allow_unverified: bool, trusted_key: str | None, version_policy: str,
                      model_control: str, poll_seconds: float) -> RepositoryConfig:
    """The served repository from `kerasport serve`'s options.

    Raises:
        UsageError: an unknown control mode or version policy, a poll interval <= 0, a repository that is not a
            folder, or `--model-name` with `--repository` (folder names are the model names).
    """
    if model_control not in CONTROL_MODES:
        raise UsageError(f"--model-control {model_control!r}; expected one of {', '.join(CONTROL_MODES)}")
    if not poll_seconds > 0:
        raise UsageError(f"--poll-seconds {poll_seconds}; expected a positive number of seconds")
    settings = LoadSettings(variant=variant, threads=threads, allow_unverified=allow_unverified,
                            trusted_key=trusted_key, policy=VersionPolicy.parse(version_policy), control=model_control,
                            poll_seconds=poll_seconds, policy_text=version_policy)
    if repository is None:
        return RepositoryConfig(RepositorySource(run=Path(run), model_name=model_name), settings)
    if model_name is not None:
        raise UsageError("--model-name with --repository; expected neither: the repository's folder names are the "
                         "model names")
    root = Path(repository)
    if not root.is_dir():
        raise UsageError(f"--repository {repository}: not a folder; expected <model>/<version>/ run directories")
    return RepositoryConfig(RepositorySource(root=root), settings)


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
