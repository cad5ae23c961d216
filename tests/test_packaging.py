"""The wheel: one top-level package, `kerasport`, and a `[serve]` install that works without TensorFlow.

Builds the wheel from a copy of the working tree (so no build/ appears in the repository), then installs it with
its `[serve]` extra into a fresh virtual environment without system site-packages (about a minute: the
dependencies come from pip's cache or the configured index).
"""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

EXPECTED = ["kerasport/__init__.py", "kerasport/app/cli.py", "kerasport/train/fit.py", "kerasport/export/stage.py",
            "kerasport/parity/stage.py", "kerasport/parity/templates/report.html.j2", "kerasport/serve/app.py",
            "kerasport/serve/server.py"]


def run(*command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # cwd: outside the repository, whose kerasport/ folder would shadow the installed package for `python -c`
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=Path(sys.executable).anchor)


@pytest.fixture(scope="module")
def wheel(source_wheel) -> Path:
    """The session's wheel of the whole working tree (conftest.source_wheel, shared with the container tests)."""
    return source_wheel


@pytest.mark.slow
def test_the_wheel_holds_one_namespace(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [name for name in names if name.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["kerasport"]
    assert set(EXPECTED) <= set(names)
    outside = {name.split("/")[0] for name in names} - {"kerasport", wheel.name.split("-py3")[0] + ".dist-info"}
    assert outside == set(), f"the wheel installs more than kerasport: {sorted(outside)}"


@pytest.mark.slow
def test_a_serve_install_runs_without_tensorflow(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, system_site_packages=False)
    python, script = env_dir / "bin" / "python", env_dir / "bin" / "kerasport"
    # This venv's pip installs into the new one (`--python`), without byte-compiling: 6.6 s instead of 22 s for
    # ensurepip, pip's own start and compiling every dependency; what is installed is the same.
    installed = run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                    f"{wheel}[serve]", timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    imported = run(str(python), "-c", "import kerasport.serve.app, kerasport.serve.model, kerasport.serve.server, "
                   "kerasport.serve.grpc_server")
    assert imported.returncode == 0, imported.stderr[-3000:]
    for arguments in (["--help"], ["serve", "--help"], ["predict", "--help"]):
        shown = run(str(script), *arguments)
        assert shown.returncode == 0, (arguments, shown.stderr[-3000:])
    assert "serve" in run(str(script), "--help").stdout
    for heavy in ("tensorflow", "keras", "tf2onnx"):
        absent = run(str(python), "-c", f"import {heavy}")
        assert absent.returncode != 0 and "ModuleNotFoundError" in absent.stderr, heavy
