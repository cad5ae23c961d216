"""Tiny imported bundles for the parity tests: the shared two-input/two-output model and tabular regressor
(devtools/tiny_models.py), written through the import library exactly as `kerasport import` does.
"""

from __future__ import annotations

from pathlib import Path

from devtools.tiny_models import regressor_bundle, two_input_bundle


def two_io_bundle(run: Path) -> Path:
    return two_input_bundle(run)


def mlp_bundle(run: Path) -> Path:
    return regressor_bundle(run)
