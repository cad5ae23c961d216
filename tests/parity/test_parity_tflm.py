"""The `tflm` candidate of the `edge` model in the parity gate: TFLite Micro's interpreter against Keras and LiteRT,
the flash/RAM budgets as a release gate, and a `skipped` verdict where tflite-micro is not installed."""

import copy
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.devices import DEVICES, KIB
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE
from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.export.tflm import read_c_array
from kerasport.manifest import hash_artifact, load_manifest
from kerasport.parity.budgets import BUDGET_CLASS, apply_budgets, resolve_budgets
from kerasport.parity.runners import EDGE_BATCH_SIZES, GATE_SETTINGS, run_batched
from kerasport.parity.stage import ParityOptions, load_eval_data, run_parity
from kerasport.parity.tflm import (
    BUILTIN_LABEL,
    LITERT_BUILTIN_STEPS,
    LITERT_SETTINGS,
    SOURCE_CHECK,
    TFLM_BUILTIN,
    TFLM_RUN_LABEL,
    TFLM_SAMPLE_EDGE,
    TFLM_SAMPLE_EVAL,
    XNNPACK_LABEL,
    TflmRunner,
    run_tflm,
)
from kerasport.runtimes import open_runtime
from kerasport.verdict import Verdict

runner = CliRunner()
ARENA_BAR = 64 * KIB  # the bar for `edge`


@pytest.fixture
def edge(edge_exported) -> Path:
    """The shared edge bundle (tests/conftest.py), read-only here."""
    return edge_exported


@pytest.fixture
def edge_copy(edge, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(edge, copy)
    return copy


def junit_cases(run: Path) -> dict[str, ET.Element]:
    suite = ET.parse(run / "parity" / "junit.xml").getroot().find("testsuite")
    return {f"{case.get('classname')}/{case.get('name')}": case for case in suite.findall("testcase")}


def test_tflm_candidate_passes_and_agrees_with_litert(edge_copy):
    result = run_parity(ParityOptions(run=str(edge_copy), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    tflm = result.report.candidates["tflm"]
    assert tflm.verdict == Verdict.PASS and tflm.runtime == "tflite-micro"
    assert {check.id for check in tflm.checks} >= {SOURCE_CHECK, "top1_agreement[probabilities]",
                                                   "dynamic_batch[probabilities]"}
    assert tflm.description.startswith("tflite-micro") and tflm.seconds < 10  # the bar for `edge`
    arena = tflm.microcontroller.arena
    assert arena["measured"] and 0 < arena["used_bytes"] < ARENA_BAR
    assert set(tflm.vs_litert) == set(LITERT_SETTINGS)
    builtin = tflm.vs_litert["builtin kernels"]["probabilities"]
    assert builtin["within_bound"] and builtin["steps"] <= LITERT_BUILTIN_STEPS
    assert builtin["top1_agreement"] == 1.0
    assert not [finding for finding in result.report.findings if finding.startswith("tflm")]
    manifest = load_manifest(edge_copy)
    assert manifest.parity_verdict("tflm") == Verdict.PASS
    assert manifest.artifact("tflm").get("fit")["samd21"]["ram"] == (arena["reserve_bytes"] <= 32 * KIB)
    report_md = (edge_copy / "parity" / "report.md").read_text()
    assert "## Microcontroller (tflm)" in report_md and "MicroMutableOpResolver<" in report_md
    assert all(device in report_md for device in DEVICES)
    assert f"parity.tflm/{SOURCE_CHECK}" in junit_cases(edge_copy)


def test_budgets_below_the_model_fail_naming_them(edge_copy):
    manifest = load_manifest(edge_copy)
    flash_kib = manifest.artifact("tflm").get("flash_bytes") / KIB
    tight = int(flash_kib) - 1
    result = runner.invoke(app, ["parity", "--run", str(edge_copy), "--no-sweep", "--device", "stm32f746",
                                 "--max-flash-kib", str(tight)])
    assert result.exit_code == EXIT_CHECK_FAILED, result.output
    assert "budget_flash" in result.output and f"the flash budget {tight:.1f} KiB (--max-flash-kib {tight})" \
        in result.output and "over" in result.output
    report = load_manifest(edge_copy).stage("parity")
    budgets = {row["kind"]: row for row in report["budgets"]}
    assert budgets["flash"]["passed"] is False and budgets["flash"]["limit_bytes"] == tight * KIB
    assert budgets["ram"]["passed"] is True and budgets["ram"]["limit_bytes"] == DEVICES["stm32f746"].sram_kib * KIB
    cases = junit_cases(edge_copy)
    assert cases[f"parity.{BUDGET_CLASS}/budget_flash"].find("failure") is not None
    assert cases[f"parity.{BUDGET_CLASS}/budget_ram"].find("failure") is None
    assert load_manifest(edge_copy).parity_verdict("tflm") == Verdict.PASS  # the numbers still agree; the budget fails


def test_unknown_device_exits_2_listing_the_known_ones(edge_copy):
    result = runner.invoke(app, ["parity", "--run", str(edge_copy), "--device", "z80"])
    assert result.exit_code == EXIT_USAGE
    assert "'z80'" in result.output and all(key in result.output for key in DEVICES)


def test_without_tflite_micro_skipped_never_passed_and_parity_fills_the_arena_later(edge_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # what `import tflite_micro` meets when not installed
    export_bundle(ExportOptions(run=str(edge_copy), formats=["tflite-int8", "tflm"], calibration_samples=20))
    result = run_parity(ParityOptions(run=str(edge_copy), sweep=False))
    tflm = result.report.candidates["tflm"]
    assert tflm.verdict == Verdict.SKIPPED and "tflite-micro is not importable" in tflm.skipped
    assert result.exit_code == EXIT_OK and result.report.passed
    manifest = load_manifest(edge_copy)
    assert manifest.parity_verdict("tflm") == Verdict.SKIPPED and not manifest.artifact("tflm").passed_parity
    assert junit_cases(edge_copy)["parity.tflm/tflm_runtime"].find("skipped") is not None
    assert not tflm.microcontroller.arena["measured"]
    # a RAM budget cannot be shown to hold without a measured arena: it fails, flash is still judged
    report = copy.deepcopy(result.report)
    apply_budgets(report, resolve_budgets("samd21"))
    assert not report.passed and [failure.split(" — ")[0] for failure in report.failures] == [
        f"{BUDGET_CLASS}: budget_ram"]
    assert "not measured" in report.failures[0]
    monkeypatch.undo()
    again = run_parity(ParityOptions(run=str(edge_copy), sweep=False))
    assert again.exit_code == EXIT_OK and again.report.candidates["tflm"].verdict == Verdict.PASS
    arena = load_manifest(edge_copy).artifact("tflm").get("arena")
    assert arena["measured"] and 0 < arena["used_bytes"] < ARENA_BAR  # parity filled in what export could not


def _is_constant(interpreter, index: int) -> bool:
    try:
        interpreter.get_tensor(index)
    except ValueError:  # tensors without data (activations) cannot be read before allocation
        return False
    return True


def test_c_array_that_is_not_its_source_model_fails(edge_copy):
    manifest = load_manifest(edge_copy)
    artifact = manifest.artifact("tflm")
    source = artifact.resolve(edge_copy)
    model = bytearray(read_c_array(source))
    # One weight of the largest constant tensor changes: the model still runs, but it is not its source any more.
    interpreter = Interpreter(model_content=bytes(model))
    weights = max((interpreter.get_tensor(detail["index"]) for detail in interpreter.get_tensor_details()
                   if detail["name"] and _is_constant(interpreter, detail["index"])), key=lambda array: array.size)
    offset = bytes(model).index(weights.tobytes()) + weights.nbytes // 2
    model[offset] ^= 0x01
    text = source.read_text()
    head = text[:text.index("= {") + 3]
    body = "".join(f"0x{byte:02x}," for byte in model)
    source.write_text(head + "\n" + body + "\n" + text[text.index("};"):])
    sha256, size = hash_artifact(source)
    manifest.set_artifact("tflm", {**artifact.entry, "sha256": sha256, "bytes": size})
    manifest.save(edge_copy)
    result = run_parity(ParityOptions(run=str(edge_copy), sweep=False))
    assert result.exit_code == EXIT_CHECK_FAILED
    assert any(failure.startswith(f"tflm: {SOURCE_CHECK} — ") and "differ from model_int8.tflite" in failure
               for failure in result.failures)


def test_int8_io_model_runs_in_tflm_with_its_own_quantization(edge_copy):
    export_bundle(ExportOptions(run=str(edge_copy), formats=["tflite-int8", "tflm"], calibration_samples=20,
                                int8_io=True))
    (tensor_in,) = load_manifest(edge_copy).artifact("tflm").get("inputs")
    assert tensor_in["dtype"] == "int8"
    result = run_parity(ParityOptions(run=str(edge_copy), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    builtin = result.report.candidates["tflm"].vs_litert["builtin kernels"]["probabilities"]
    assert builtin["within_bound"] and builtin["top1_agreement"] == 1.0


def test_tflm_runs_a_sample_and_full_on_request_with_the_same_checks(edge_copy, tmp_path):
    sampled = run_parity(ParityOptions(run=str(edge_copy), sweep=False))
    assert sampled.exit_code == EXIT_OK, sampled.failures
    tflm = sampled.report.candidates["tflm"]
    record = tflm.tflm_sample
    assert record["mode"] == "sample" and record["bit_identical"] is True
    examples = sampled.report.inputs.eval_sample.examples  # this tiny bundle's eval sample may be smaller
    assert record["eval_examples"] == min(TFLM_SAMPLE_EVAL, examples) and record["edge_examples"] == TFLM_SAMPLE_EDGE
    assert record["tflm_inferences"] == record["eval_examples"] + TFLM_SAMPLE_EDGE
    assert tflm.vs_litert["builtin kernels"]["probabilities"]["examples"] == record["tflm_inferences"]
    (row,) = sampled.report.sampled_checks
    assert row.candidate == "tflm" and row.sample["eval_examples"] == record["eval_examples"]
    report_md = (edge_copy / "parity" / "report.md").read_text()
    assert "## Checks run on a sample" in report_md and "Why the sample proves the rest" in report_md
    full_run = tmp_path / "full"
    shutil.copytree(edge_copy, full_run)
    result = runner.invoke(app, ["parity", "--run", str(full_run), "--no-sweep", "--tflm", "full"])
    assert result.exit_code == EXIT_OK, result.output
    full = load_manifest(full_run).parity_verdict("tflm"), (full_run / "parity" / "report.json").read_text()
    assert full[0] == "pass" and '"mode": "full"' in full[1] and '"sampled_checks": []' in full[1]
    full_tflm = json.loads(full[1])["candidates"]["tflm"]
    assert [c["id"] for c in full_tflm["checks"]] == [c.id for c in tflm.checks]
    assert full_tflm["outputs"]["probabilities"]["eval"]["top1_agreement"] == \
        tflm.eval_stats("probabilities")["top1_agreement"]
    bad = runner.invoke(app, ["parity", "--run", str(full_run), "--tflm", "most"])
    assert bad.exit_code == EXIT_USAGE and "--tflm 'most'" in bad.output


class OneStepOff:
    """The real TFLite Micro runner with one planted difference: the first example's outputs one step higher."""

    def __init__(self, runner, step: float):
        self.runner, self.step, self.calls = runner, step, 0

    def run(self, inputs):
        outputs = self.runner.run(inputs)
        self.calls += len(next(iter(inputs.values())))
        return {name: np.concatenate([value[:1] + self.step, value[1:]]) for name, value in outputs.items()}


def test_a_sample_that_differs_from_litert_sends_everything_through_tflm(edge):
    manifest = load_manifest(edge)
    artifact = manifest.artifact("tflm")
    model = read_c_array(artifact.resolve(edge))
    data = load_eval_data(edge, manifest)
    planted = OneStepOff(TflmRunner(model, manifest.contract, artifact.get("arena")["reserve_bytes"]), 1 / 256)
    outputs, record, measured = run_tflm(planted, model, manifest.contract, data, "sample")
    assert record["bit_identical"] is False and "every example ran in TFLM" in record["rest_from"]
    examples = len(data.inputs["image"])
    assert planted.calls == min(TFLM_SAMPLE_EVAL, examples) + TFLM_SAMPLE_EDGE + examples + sum(EDGE_BATCH_SIZES)
    assert len(outputs.eval["probabilities"]) == examples and set(measured) == {BUILTIN_LABEL}


def test_tflm_check_and_int8_sweep_share_litert_runs_with_the_same_figures(edge_copy):
    result = run_parity(ParityOptions(run=str(edge_copy), perf=False))
    assert result.exit_code == EXIT_OK, result.failures
    manifest = load_manifest(edge_copy)
    data = load_eval_data(edge_copy, manifest)
    int8_path = manifest.artifact("tflite-int8").resolve(edge_copy)
    builtin = run_batched(open_runtime(int8_path, "tflite", TFLM_BUILTIN), data.inputs)["probabilities"]
    xnnpack = run_batched(open_runtime(int8_path, "tflite", GATE_SETTINGS), data.inputs)["probabilities"]
    # TFLM equals the built-in kernels on this model (bit-identical sample), so its XNNPACK row is theirs
    compared = result.report.candidates["tflm"].vs_litert[XNNPACK_LABEL]["probabilities"]
    assert compared["examples"] == len(xnnpack)
    assert compared["max_abs_diff"] == float(np.abs(xnnpack - builtin).max())
    rows = {row["settings"]: row for row in result.report.candidates["tflite-int8"].sweep}
    one_thread_off = rows[TFLM_BUILTIN.describe("ai-edge-litert")]
    assert one_thread_off["ran"]["same_as"] == TFLM_RUN_LABEL
    assert one_thread_off["ran"]["of"] == len(builtin)
