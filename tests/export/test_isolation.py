"""A native step that aborts (SIGABRT) costs its variant, never the process, the other variants or the bundle.

The abort is real: the child process of the step calls os.abort() through kerasport.isolation's test-only hook
(ABORT_STEP_ENV), exactly what a converter or TFLite Micro does when it hits an internal check.
"""

import math
import os
import signal

import pytest
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_RUNTIME, UsageError
from kerasport.export.stage import STAGE_DIR_NAME, ExportOptions, export_bundle
from kerasport.export.tflite_ladder import RUNG_BATCH_ONE, RUNG_DYNAMIC
from kerasport.export.variants import parse_formats
from kerasport.isolation import ABORT_STEP_ENV, StepCrashed, run_isolated
from kerasport.manifest import verify_bundle

runner = CliRunner()
ABORT = signal.Signals.SIGABRT.name


def test_run_isolated_returns_reraises_and_reports_a_crash(monkeypatch):
    assert run_isolated("square root", math.sqrt, 9.0) == 3.0
    with pytest.raises(UsageError, match="^--formats 'coreml': unknown coreml"):  # the child's own error class
        run_isolated("usage", parse_formats, "coreml")
    monkeypatch.setenv(ABORT_STEP_ENV, "native")
    with pytest.raises(StepCrashed, match=f"^native step crashed \\({ABORT}\\)") as crashed:
        run_isolated("native step", math.sqrt, 9.0)
    assert crashed.value.how == ABORT and crashed.value.exit_code == EXIT_RUNTIME


def staging_leftovers(run):
    return sorted(path.name for path in run.iterdir() if path.name.startswith(f".{STAGE_DIR_NAME}."))


def snapshot(run):
    return ({path.name: path.read_bytes() for path in (run / STAGE_DIR_NAME).iterdir()},
            (run / "manifest.json").read_text())


def test_keep_going_records_the_crash_and_its_dependents_and_keeps_the_rest(exported_copy, monkeypatch):
    monkeypatch.setenv(ABORT_STEP_ENV, "TFLite converter int8")  # every rung of the tflite-int8 ladder aborts
    result = export_bundle(ExportOptions(run=str(exported_copy), formats=["tflite-fp32", "tflite-int8", "tflm"],
                                         calibration_samples=10, keep_going=True))
    assert set(result.failures) == {"tflite-int8", "tflm"}
    manifest = verify_bundle(exported_copy)  # every kept artifact matches its recorded hash
    int8 = manifest.artifact("tflite-int8").entry
    assert int8["status"].startswith(f"failed: TFLite int8, {RUNG_DYNAMIC}: TFLite converter int8 / "
                                     f"{RUNG_DYNAMIC} crashed ({ABORT})"), int8["status"]
    assert [attempt["rung"] for attempt in int8["ladder"]] == [RUNG_DYNAMIC, RUNG_BATCH_ONE]
    assert all(f"crashed ({ABORT})" in attempt["result"] for attempt in int8["ladder"])
    assert manifest.artifact("tflm").status.startswith("failed: needs tflite-int8, which failed:")
    assert manifest.artifact("tflite-fp32").status == "ok"
    # Variants not requested this time are kept from the previous export, still verified above.
    assert manifest.artifact("onnx-fp32").status == "ok" and manifest.artifact("tflite-fp16").status == "ok"
    assert not (exported_copy / STAGE_DIR_NAME / "model_int8.tflite").exists()
    assert staging_leftovers(exported_copy) == []


def test_without_keep_going_a_crash_exits_3_and_changes_nothing(exported_copy, monkeypatch):
    stale = exported_copy / f".{STAGE_DIR_NAME}.killed.tmp"  # what a killed export would have left
    stale.mkdir()
    before = snapshot(exported_copy)
    monkeypatch.setenv(ABORT_STEP_ENV, "TFLite converter fp16")
    result = runner.invoke(app, ["export", "--run", str(exported_copy), "--formats", "tflite-fp32,tflite-fp16"])
    assert result.exit_code == EXIT_RUNTIME, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "variant tflite-fp16" in line and f"crashed ({ABORT})" in line, line
    assert snapshot(exported_copy) == before
    assert staging_leftovers(exported_copy) == []


def test_fork_server_reads_both_lines_that_arrive_in_one_write():
    """A child that ends before the parent reads its pid leaves the pid and the exit status in the pipe together;
    the second line must not wait on the descriptor for bytes already read (two parity checks share the server)."""
    import types

    from kerasport.isolation import _ForkServer

    read_end, write_end = os.pipe()
    os.write(write_end, b"4242\n-6\n")
    server = object.__new__(_ForkServer)
    server.process = types.SimpleNamespace(stdout=os.fdopen(read_end, "r"), poll=lambda: None)
    server.pending = b""
    try:
        assert server._line(1.0) == "4242"
        assert server._line(1.0) == "-6"
    finally:
        server.process.stdout.close()
        os.close(write_end)
