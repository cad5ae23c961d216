"""The whole pipeline as a user runs it: `kerasport run` in a subprocess, then serve and query the bundle."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ServerProcess, write_idx_dir

from kerasport.manifest import load_manifest
from kerasport.samples import load_samples
from kerasport.serve.model import SPEED_ORDER

KERASPORT = str(Path(sys.executable).with_name("kerasport"))


@pytest.mark.slow
def test_run_then_verify_then_serve(tmp_path):
    data = write_idx_dir(tmp_path / "idx", n_train=150, n_test=40)
    run = tmp_path / "build"
    result = subprocess.run([KERASPORT, "run", "--data", f"idx:{data}", "--run", str(run), "--width", "0.125",
                             "--epochs", "3", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["parity"]["passed"] is True and len(summary["export"]) == 7
    for path in ("train/model.keras", "export/model.onnx", "export/model_int8.cc", "parity/report.md",
                 "parity/junit.xml", "parity/errors.png", "manifest.json"):
        assert (run / path).is_file(), path
    verify = subprocess.run([KERASPORT, "bundle", "verify", "--run", str(run)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr

    server = ServerProcess(run)  # default variant: the fastest that passed parity
    try:
        assert server.ready["variant"] == SPEED_ORDER[0]
        manifest = load_manifest(run)
        sample = load_samples(run / manifest.artifact("eval_sample").path, manifest.contract)
        (image,), (output,) = manifest.contract.inputs, manifest.contract.outputs
        images, labels = sample.inputs[image.name], sample.targets[output.name]
        body = {"instances": images[:8, :, :, 0].tolist()}
        response = httpx.post(f"{server.url}/v1/models/kerasport-seed:predict", json=body, timeout=30)
        assert response.status_code == 200
        predicted = np.argmax(response.json()["predictions"], axis=1)
        assert (predicted == labels[:8]).mean() >= 0.75
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_run_stops_at_bad_data_with_exit_2(tmp_path):
    result = subprocess.run([KERASPORT, "run", "--data", f"npz:{tmp_path / 'missing.npz'}", "--run",
                             str(tmp_path / "build")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --data npz:")
    assert not (tmp_path / "build").exists()
