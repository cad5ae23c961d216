"""mkdocs hooks (mkdocs.yml `hooks:`): the CLI reference page is generated from the typer app at every build.

The page is added to the site's files in memory (reference/cli.md); nothing is written into docs/, so the
reference always matches the code the site is built from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

# mkdocs loads this file by path; the repository root (holding devtools/) is not necessarily on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from devtools.cli_reference import render  # noqa: E402

CLI_REFERENCE_PAGE = "reference/cli.md"


def on_files(files, config):
    """Add the generated CLI reference to the site's files (mkdocs event)."""
    files.append(File.generated(config, CLI_REFERENCE_PAGE, content=render()))
    return files
