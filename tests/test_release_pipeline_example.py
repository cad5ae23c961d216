"""examples/release-pipeline.yml is run, step by step, on a tiny model: the example pipeline cannot rot.

Each `run:` step of the workflow's job runs in order in bash (the workflow's `defaults.run.shell`), with the
workflow's own `env:` and tiny overrides of the knobs it exposes; only the install step is skipped (the package is
already installed here). GitHub `uses:` steps are actions, not commands: their wiring is checked instead (the JUnit
file they publish is the one the gate wrote).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from helpers import write_idx_dir

from devtools.keys import write_key_pair
from kerasport.manifest import load_manifest
from kerasport.signing import verify_signature

WORKFLOW = Path(__file__).resolve().parents[1] / "examples" / "release-pipeline.yml"
SKIPPED_STEP_IDS = {"install"}  # pip install of the package under test: done before the tests run


def load_workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def release_steps(workflow: dict) -> list[dict]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def step_label(step: dict) -> str:
    return step.get("name") or step.get("uses") or step.get("id")


def test_workflow_has_the_release_stages_in_order():
    workflow = load_workflow()
    steps = release_steps(workflow)
    commands = [step["run"] for step in steps if "run" in step]
    stage_order = ["kerasport train", "kerasport export", "kerasport parity", "kerasport bundle sign",
                   "kerasport package"]
    positions = [next(index for index, command in enumerate(commands) if stage in command) for stage in stage_order]
    assert positions == sorted(positions), f"stages out of order: {dict(zip(stage_order, positions, strict=True))}"
    assert "kerasport import" in commands[positions[0]], "the first stage must offer import as well as train"
    # ${{ }} expressions are expanded by GitHub, not by bash: a run: command must use the environment instead
    assert not [command for command in commands if "${{" in command]
    assert {step.get("id") for step in steps if "run" in step} >= SKIPPED_STEP_IDS
    assert workflow["defaults"]["run"]["shell"] == "bash"


def test_workflow_publishes_the_gate_junit_and_signs_before_packaging():
    workflow = load_workflow()
    steps = release_steps(workflow)
    labels = [step_label(step) for step in steps]
    junit_steps = [step for step in steps if "junit" in step.get("uses", "")]
    assert len(junit_steps) == 1
    junit = junit_steps[0]
    assert junit["if"] == "always()", "the test view must show a failed gate too"
    assert junit["with"]["report_paths"] == "${{ env.RUN }}/parity/junit.xml"
    gate = next(index for index, step in enumerate(steps) if "kerasport parity" in step.get("run", ""))
    package = next(index for index, step in enumerate(steps) if "kerasport package" in step.get("run", ""))
    assert gate < labels.index(step_label(junit)) < package
    sign = next(index for index, step in enumerate(steps) if "kerasport bundle sign" in step.get("run", ""))
    assert gate < sign < package
    # the private key comes from the CI's secrets, never from the repository
    assert workflow["env"]["SIGNING_KEY"].startswith("${{ secrets.")


@pytest.mark.slow
def test_workflow_commands_run_in_order_on_a_tiny_model(tmp_path: Path):
    workflow = load_workflow()
    keys = write_key_pair(tmp_path / "keys")
    env = {**os.environ, **{name: str(value) for name, value in workflow["env"].items()}}
    env.update({
        "RUN": str(tmp_path / "build"),
        "DATA": f"idx:{write_idx_dir(tmp_path / 'idx')}",
        "EPOCHS": "2", "WIDTH": "0.125", "LIMIT": "0",
        "PARITY_ARGS": "--no-sweep",
        "PACKAGE_TARGET": "triton",
        "DEPLOY": str(tmp_path / "deploy"),
        "SIGNING_KEY": keys.private.read_text(),
        "SIGNING_PUBLIC_KEY": str(keys.public),
        # the venv's kerasport first, as `pip install` puts it on the runner's PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    ran = []
    for step in release_steps(workflow):
        if "run" not in step or step.get("id") in SKIPPED_STEP_IDS:
            continue
        completed = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, f"step {step_label(step)!r} failed:\n{completed.stderr[-3000:]}"
        ran.append(step_label(step))
    assert len(ran) == len([step for step in release_steps(workflow) if "run" in step]) - len(SKIPPED_STEP_IDS)

    run = Path(env["RUN"])
    suite = ET.parse(run / "parity" / "junit.xml").getroot()
    cases = suite.findall(".//testcase")
    assert cases, "the gate wrote no JUnit testcases"
    assert not [case for case in cases if case.find("failure") is not None or case.find("error") is not None]
    manifest = load_manifest(run)
    assert all(artifact.passed_parity for artifact in manifest.artifacts() if artifact.parity)
    # signed after the gate; packaging leaves a signed bundle's manifest as it was signed
    verify_signature(run, keys.public)
    assert not manifest.stage("package"), "packaging must not rewrite a signed manifest"
    deploy = Path(env["DEPLOY"]) / env["PACKAGE_TARGET"]
    assert (deploy / "DEPLOY.md").is_file()
