"""A runtime that aborts on its first load costs that candidate only: parity loads each candidate once in an
isolated child before it runs it in-process, so the crash is the candidate's `error`, and the others are judged."""

from __future__ import annotations

import pytest
from parity_bundles import mlp_bundle

from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.isolation import ABORT_STEP_ENV
from kerasport.manifest import load_manifest
from kerasport.parity.checks import LOAD_CHECK
from kerasport.parity.stage import ParityOptions, run_parity
from kerasport.verdict import Verdict


@pytest.fixture(scope="module")
def exported_mlp(tmp_path_factory):
    run = mlp_bundle(tmp_path_factory.mktemp("first-load") / "run")
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "tflite-fp32"]))
    return run


def test_an_abort_in_a_candidates_first_load_is_that_candidates_error(exported_mlp, monkeypatch):
    runtime = load_manifest(exported_mlp).artifact("onnx-fp32").runtime
    monkeypatch.setenv(ABORT_STEP_ENV, f"{runtime} first load")  # a real SIGABRT in the child that loads it
    result = run_parity(ParityOptions(run=str(exported_mlp), sweep=False, perf=False))
    candidates = result.report.candidates
    crashed = candidates["onnx-fp32"]
    assert crashed.verdict == Verdict.ERROR
    (check,) = crashed.checks
    assert check.check == LOAD_CHECK and not check.passed
    assert check.message.startswith(f"{runtime} first load of onnx-fp32 crashed (SIGABRT)"), check.message
    assert candidates["tflite-fp32"].verdict == Verdict.PASS
    assert load_manifest(exported_mlp).parity_verdict("tflite-fp32") == Verdict.PASS


def test_without_a_crash_every_candidate_passes_its_first_load(exported_mlp):
    result = run_parity(ParityOptions(run=str(exported_mlp), sweep=False, perf=False))
    assert {name: c.verdict for name, c in result.report.candidates.items()} == {
        "saved_model": Verdict.PASS, "onnx-fp32": Verdict.PASS, "tflite-fp32": Verdict.PASS}
