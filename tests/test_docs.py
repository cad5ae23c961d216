"""The documentation site builds in strict mode, the CLI reference covers the whole typer app, README stays short."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from devtools.cli_reference import is_option, render, subcommands, walk
from kerasport.app.cli import app

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200


def test_cli_reference_names_every_command_argument_and_option():
    root = typer.main.get_command(app)
    page = render(root)
    entries = list(walk(root))
    # every command and subcommand of the app, the groups' children included
    assert {entry.path for entry in entries} >= {(name,) for name in subcommands(root)}
    assert any(len(entry.path) == 2 for entry in entries), "the bundle sub-app's commands are missing"
    for entry in entries:
        heading = f"# {entry.title}\n"
        assert heading in page, f"no section for {entry.title!r}"
        section = page.split(heading, 1)[1].split("\n#", 1)[0]
        for param in entry.command.params:
            if is_option(param) and param.hidden:
                continue
            names = [*param.opts, *param.secondary_opts] if is_option(param) else [param.name.upper()]
            for name in names:
                assert f"`{name}`" in section, f"{entry.title}: {name} is missing from the reference"
            if param.help:
                assert " ".join(param.help.split())[:40].replace("|", "\\|") in section, \
                    f"{entry.title}: the help of {names[0]} is missing"


def test_cli_reference_shows_declared_defaults():
    page = render()
    train = page.split("## kerasport train\n", 1)[1].split("\n## ", 1)[0]
    from kerasport.train.config import TrainConfig

    defaults = TrainConfig(data="digits")
    assert f"| `--epochs` | int range | `{defaults.epochs}` |" in train
    assert f"| `--batch-size` | int range | `{defaults.batch_size}` |" in train


def test_mkdocs_build_is_strict_clean(tmp_path: Path):
    pytest.importorskip("mkdocs", reason="mkdocs-material is in the dev extra")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's end-of-life banner, not a finding
    completed = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                                str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "kerasport bundle diff" in reference


def test_readme_is_short_and_links_into_the_docs():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    text = "\n".join(lines)
    for page in ("docs/getting-started.md", "docs/release-gate.md", "docs/serving.md"):
        assert page in text
        assert (ROOT / page).is_file()
