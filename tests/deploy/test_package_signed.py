"""`kerasport package --target container` of a signed bundle: the context carries the signature (the bundle copied
whole, manifest unchanged), and its entry point — run here as the image would run it, not in a container — serves
only a bundle whose signature verifies when a key is mounted."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devtools.keys import write_key_pair
from devtools.repository_bundles import flip_byte
from kerasport.app.cli import app
from kerasport.deploy import container as package_container
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE
from kerasport.fsutil import sha256_file
from kerasport.manifest import MANIFEST_NAME
from kerasport.signing import SIGNATURE_NAME, sign_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def context(tmp_path_factory, regressor_versions, source_wheel):
    root = tmp_path_factory.mktemp("signed-package")
    keys = write_key_pair(root / "keys")
    run = Path(shutil.copytree(regressor_versions[1], root / "run"))
    sign_bundle(run, keys.private)
    before = sha256_file(run / MANIFEST_NAME)
    out = root / "context"
    # --wheel: the session's wheel (building one from the source tree is tests/deploy/test_package.py's subject)
    result = runner.invoke(app, ["package", "--run", str(run), "--target", "container", "--out", str(out),
                                 "--wheel", str(source_wheel)])
    assert result.exit_code == EXIT_OK, result.output
    return {"run": run, "out": out, "keys": keys, "manifest_before": before}


def entrypoint(context, bundle: Path, key: Path | None, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           package_container.BUNDLE_ENV: str(bundle)}
    env.pop(package_container.KEY_ENV, None)
    if key is not None:
        env[package_container.KEY_ENV] = str(key)
    script = context["out"] / package_container.ENTRYPOINT_SCRIPT
    return subprocess.Popen([str(script), "--host", "127.0.0.1", "--port", "0", "--no-access-log", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_context_carries_the_signature_and_the_run_stays_signed(context):
    out, run = context["out"], context["run"]
    assert (out / "bundle" / SIGNATURE_NAME).read_bytes() == (run / SIGNATURE_NAME).read_bytes()
    assert sha256_file(out / "bundle" / MANIFEST_NAME) == sha256_file(run / MANIFEST_NAME) == context[
        "manifest_before"]  # packaging recorded nothing in a signed manifest
    for bundle in (run, out / "bundle"):
        result = runner.invoke(app, ["bundle", "verify", "--run", str(bundle), "--public-key",
                                     str(context["keys"].public)])
        assert result.exit_code == EXIT_OK, result.output
    dockerfile = (out / "Dockerfile").read_text()
    assert f"COPY {package_container.ENTRYPOINT_SCRIPT} {package_container.ENTRYPOINT_PATH}" in dockerfile
    assert "[serve,signing]" in dockerfile
    assert os.access(out / package_container.ENTRYPOINT_SCRIPT, os.X_OK)


def test_the_entrypoint_serves_a_bundle_whose_signature_verifies(context):
    process = entrypoint(context, context["out"] / "bundle", context["keys"].public)
    try:
        line = process.stdout.readline()
        assert line.startswith('{"event": "ready"'), process.stderr.read() if process.poll() is not None else line
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == EXIT_OK


def test_the_entrypoint_refuses_a_tampered_bundle_and_a_missing_key(context, tmp_path):
    tampered = Path(shutil.copytree(context["out"] / "bundle", tmp_path / "bundle"))
    flip_byte(tampered / MANIFEST_NAME)
    process = entrypoint(context, tampered, context["keys"].public)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_CHECK_FAILED, stderr
    assert f"{MANIFEST_NAME} changed since signing" in stderr and "Traceback" not in stderr
    process = entrypoint(context, context["out"] / "bundle", tmp_path / "absent.pub")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_USAGE and "absent.pub" in stderr
