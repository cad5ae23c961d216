"""Speed per candidate after the gate (each in its own process), the recommendation per target, and the one selection
policy serve, predict and `kerasport bench` use."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ServerProcess
from test_html_report import CONSOLE_ERRORS, browser, render, section_html
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.contract import ModelContract, OutputSpec, image_input_spec
from kerasport.errors import EXIT_OK, EXIT_USAGE
from kerasport.manifest import load_manifest, new_manifest
from kerasport.parity.html import REPORT_NAME
from kerasport.parity.performance import pareto_front
from kerasport.parity.stage import ParityOptions, run_parity
from kerasport.perf import THROUGHPUT_BATCHES, thread_counts
from kerasport.selection import FALLBACK_ORDER, choose, recommend
from kerasport.serve.model import explain_choice, load_served_model

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def measured(verified, tmp_path_factory) -> Path:
    """The verified tiny bundle after `parity --perf`: every passing candidate measured."""
    run = tmp_path_factory.mktemp("measured") / "run"
    shutil.copytree(verified, run)
    result = run_parity(ParityOptions(run=str(run), sweep=False, perf=True))
    assert result.exit_code == EXIT_OK, result.failures
    return run


def test_every_passing_candidate_is_measured_with_its_host(measured):
    manifest = load_manifest(measured)
    performance = manifest.performance
    passed = {artifact.name for artifact in manifest.artifacts() if artifact.passed_parity}
    assert set(performance["candidates"]) == passed
    host = performance["host"]
    assert host["cpu_model"] and host["cores"] >= 1 and host["versions"]["onnxruntime"]
    for name, figures in performance["candidates"].items():
        artifact = manifest.artifact(name)
        assert figures["file_bytes"] == artifact.bytes and figures["sha256"] == artifact.sha256
        if artifact.format not in ("onnx", "tflite"):  # the SavedModel, the tflm C array: said why
            assert figures["measured"] is False and figures["why"]
            continue
        latency = figures["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] and latency["runs"] > 0
        assert figures["load_seconds"] > 0 and figures["peak_rss_bytes_first_answer"] > 10 * 2**20
        cells = {(cell["threads"], cell["batch"]) for cell in figures["throughput"]}
        assert cells == {(t, b) for t in thread_counts(host["usable_cores"]) for b in THROUGHPUT_BATCHES}
        assert all(cell["examples_per_second"] > 0 for cell in figures["throughput"])


def test_a_recommendation_per_target(measured):
    manifest = load_manifest(measured)
    recommendation = manifest.recommendation
    timed = {name: figures["latency_ms"]["p50"] for name, figures in manifest.performance["candidates"].items()
             if figures["measured"]}
    # Lowest p50 (two candidates may tie at the recorded precision: either is the lowest)
    assert timed[recommendation["server_cpu"]["variant"]] == min(timed.values())
    assert "lowest batch-1 p50" in recommendation["server_cpu"]["why"]
    litert = {a.name: a.bytes for a in manifest.artifacts() if a.format == "tflite" and a.passed_parity}
    assert recommendation["mobile_edge"]["variant"] == min(litert, key=litert.get)
    fits = any(fit["fits"] for fit in manifest.artifact("tflm").get("fit").values())
    assert recommendation["microcontroller"]["variant"] == ("tflm" if fits else None)
    report = (measured / "parity" / "report.json").read_text()
    assert '"recommendation"' in report and '"performance"' in report


def test_serve_and_predict_use_the_recommendation_and_say_why(measured, tmp_path):
    recommended = load_manifest(measured).recommendation["server_cpu"]["variant"]
    model = load_served_model(measured)
    assert model.variant == recommended and model.choice.measured
    server = ServerProcess(measured)
    try:
        assert server.ready["variant"] == recommended
        assert "lowest batch-1 p50" in server.ready["variant_why"]
    finally:
        assert server.stop() == EXIT_OK
    manifest = load_manifest(measured)
    spec = manifest.contract.inputs[0]
    np.savez(tmp_path / "x.npz", x=np.zeros(spec.example_shape(2), dtype=spec.dtype))
    result = runner.invoke(app, ["predict", "--run", str(measured), "--inputs", f"npz:{tmp_path / 'x.npz'}",
                                 "--format", "json"])
    assert result.exit_code == EXIT_OK, result.output
    assert f'"variant": "{recommended}"' in result.output


def test_a_bundle_without_measurements_falls_back_and_says_so(verified):
    choice = explain_choice(load_manifest(verified), None, False)
    assert choice.variant == FALLBACK_ORDER[0] and not choice.measured
    assert "no measured speed" in choice.why and "kerasport bench" in choice.why


def test_an_onnx_only_target_gets_the_fastest_onnx(measured):
    manifest = load_manifest(measured)
    onnx = {name: figures["latency_ms"]["p50"] for name, figures in manifest.performance["candidates"].items()
            if figures["measured"] and manifest.artifact(name).format == "onnx"}
    assert choose(manifest, formats=("onnx",)).variant == min(onnx, key=onnx.get)


def test_bench_measures_again_and_keeps_the_accuracy(measured, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(measured, run)
    before = load_manifest(run).performance
    result = runner.invoke(app, ["bench", "--run", str(run)])
    assert result.exit_code == EXIT_OK, result.output
    after = load_manifest(run).performance
    assert after["measured"] >= before["measured"] and set(after["candidates"]) == set(before["candidates"])
    assert {n: f["accuracy_delta"] for n, f in after["candidates"].items()} == {
        n: f["accuracy_delta"] for n, f in before["candidates"].items()}
    assert "recommend server_cpu" in result.output


def test_bench_refuses_a_bundle_that_never_passed_parity(exported):
    result = runner.invoke(app, ["bench", "--run", str(exported)])
    assert result.exit_code == EXIT_USAGE and "no artifact passed parity" in result.output


def test_the_independent_timing_script_reads_every_measured_candidate(measured):
    # bench/perf_check.py imports nothing from kerasport; the 25 % agreement is a figure of the bench, measured on a
    # quiet machine: here, on a shared one, only that it runs and reports every candidate.
    check = subprocess.run([sys.executable, str(ROOT / "bench" / "perf_check.py"), "--run", str(measured),
                            "--rounds", "1", "--tolerance", "100"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    measured_names = [n for n, f in load_manifest(measured).performance["candidates"].items() if f["measured"]]
    assert all(f"\n{name} " in check.stdout for name in measured_names), check.stdout


def speed_manifest(candidates: dict[str, tuple[str, float | None, float]], sizes: dict[str, int] | None = None,
                   beyond_tolerance: dict[str, list[str]] | None = None):
    """A manifest whose artifacts all passed parity, with measured p50 (ms; None: not measured) and accuracy Δ per
    candidate, optional file sizes and the sweep settings each one left its tolerance under (none by default)."""
    contract = ModelContract(inputs=(image_input_spec("image", 8, 8),),
                             outputs=(OutputSpec("probabilities", "float32", (-1, 2), "probabilities"),))
    sizes, beyond_tolerance = sizes or {}, beyond_tolerance or {}
    artifacts = {name: {"path": f"export/{name}", "format": fmt, "precision": "fp32", "sha256": "0",
                        "bytes": sizes.get(name, 1),
                        "parity": {"verdict": "pass", "sweep": {"settings": 4,
                                                                "beyond_tolerance": beyond_tolerance.get(name, [])}}}
                 for name, (fmt, _, _) in candidates.items()}
    manifest = new_manifest(model={"name": "m"}, contract=contract, artifacts=artifacts)
    manifest.set_performance({"host": {"cpu_model": "test CPU", "cores": 2}, "candidates": {
        name: {"measured": p50 is not None, "latency_ms": {"p50": p50}, "accuracy_delta": delta}
        for name, (_, p50, delta) in candidates.items()}})
    return manifest


def test_max_accuracy_drop_limits_the_server_recommendation():
    manifest = speed_manifest({"fast-int8": ("tflite", 1.0, -0.02), "slow-fp32": ("onnx", 2.0, 0.0)})
    assert recommend(manifest)["server_cpu"]["variant"] == "fast-int8"
    limited = recommend(manifest, max_accuracy_drop=0.01)["server_cpu"]
    assert limited["variant"] == "slow-fp32" and "within 1 pp" in limited["why"]


OFF_DEVICE = "xnnpack=off, threads=1"  # LiteRT's built-in kernels: what some devices run, never `kerasport serve`
SERVING = "xnnpack=on, threads=2"  # the serving default at another thread count


def test_a_candidate_unsteady_under_another_runtime_setting_is_left_out_while_a_steady_one_remains():
    candidates = {"small-dynamic": ("tflite", 0.5, 0.0), "int8": ("tflite", 0.6, 0.0), "fp32": ("onnx", 2.0, 0.0)}
    sizes = {"small-dynamic": 10, "int8": 11, "fp32": 40}
    manifest = speed_manifest(candidates, sizes, beyond_tolerance={"small-dynamic": [OFF_DEVICE]})
    assert manifest.artifact("small-dynamic").settings_beyond_tolerance == [OFF_DEVICE]
    chosen = recommend(manifest)
    assert chosen["mobile_edge"]["variant"] == "int8"
    assert (f"left out, beyond tolerance (or not running) under other runtime settings: small-dynamic with "
            f"{OFF_DEVICE}") in chosen["mobile_edge"]["why"]
    # a server never runs LiteRT without XNNPACK: that finding does not move the server recommendation
    assert chosen["server_cpu"]["variant"] == "small-dynamic" and "left out" not in chosen["server_cpu"]["why"]

    serving = speed_manifest(candidates, sizes, beyond_tolerance={"small-dynamic": [SERVING]})
    server = recommend(serving)["server_cpu"]
    assert server["variant"] == "int8" and f"small-dynamic with {SERVING}" in server["why"]
    assert "among 2 measured candidates" in server["why"]
    served = choose(serving)  # no recorded recommendation: serve applies the same policy
    assert served.variant == "int8" and "small-dynamic" in served.why
    steady = speed_manifest(candidates, sizes)
    assert {target: recommend(steady)[target]["variant"] for target in ("server_cpu", "mobile_edge")} == {
        "server_cpu": "small-dynamic", "mobile_edge": "small-dynamic"}


def test_when_no_steady_candidate_qualifies_the_policy_still_chooses_and_says_so():
    every = speed_manifest({"a": ("tflite", 1.0, 0.0), "b": ("tflite", 2.0, 0.0)}, {"a": 5, "b": 3},
                           beyond_tolerance={"a": [SERVING], "b": [SERVING]})
    chosen = recommend(every)
    assert (chosen["server_cpu"]["variant"], chosen["mobile_edge"]["variant"]) == ("a", "b")
    assert all("no steady candidate qualified" in chosen[target]["why"] for target in ("server_cpu", "mobile_edge"))
    # the accuracy limit comes before steadiness: the only candidate within it is taken, unsteady or not
    limited = speed_manifest({"steady-worse": ("onnx", 1.0, -0.05), "unsteady": ("tflite", 2.0, 0.0)},
                             beyond_tolerance={"unsteady": [SERVING]})
    server = recommend(limited, max_accuracy_drop=0.01)["server_cpu"]
    assert server["variant"] == "unsteady" and server["measured"] and "no steady candidate qualified" in server["why"]
    # so does a measurement: an unmeasured steady candidate does not beat a measured unsteady one
    unmeasured = speed_manifest({"steady": ("onnx", None, 0.0), "unsteady": ("tflite", 2.0, 0.0)},
                                beyond_tolerance={"unsteady": [SERVING]})
    assert recommend(unmeasured)["server_cpu"]["variant"] == choose(unmeasured).variant == "unsteady"


def test_requested_variants_and_refusals():
    manifest = speed_manifest({"a": ("onnx", 1.0, 0.0)})
    assert choose(manifest, requested="a").why == "requested with --variant"
    with pytest.raises(Exception, match="not a servable artifact"):
        choose(manifest, requested="missing")


def test_pareto_front():
    points = [("fast-worse", 1.0, -1.0), ("slow-better", 3.0, 0.0), ("dominated", 3.5, -1.5), ("tie", 1.0, -1.0)]
    assert pareto_front(points) == {"fast-worse", "slow-better", "tie"}


def test_report_shows_the_recommendation_and_the_plot_in_chromium(measured, tmp_path):
    report_md = (measured / "parity" / "report.md").read_text()
    assert report_md.index("## Recommendation") < report_md.index("## Output")
    assert "## Performance" in report_md and "Measured on" in report_md
    page = (measured / REPORT_NAME).read_text()
    section = section_html(page, "recommendation")
    recommended = load_manifest(measured).recommendation["server_cpu"]["variant"]
    assert "<svg" in section and 'class="pareto"' in section and 'class="recommended"' in section
    assert f"<td>{recommended}</td>" in section
    if browser() is None:
        pytest.skip("no Chromium installed (`apt-get install chromium`; .ci/run does)")
    dom = render(measured / REPORT_NAME, "--dump-dom")
    assert dom.returncode == 0 and not CONSOLE_ERRORS.search(dom.stderr), dom.stderr[-2000:]
    assert '<section id="recommendation"><h2>Recommendation and speed</h2>' in dom.stdout
    assert dom.stdout.count('class="pareto"') >= 1 and "<circle" in dom.stdout


def test_the_server_recommendation_is_profiled_per_op_with_keras_layers(measured):
    report = json.loads((measured / "parity" / "report.json").read_text())
    profile = report["profile"]
    assert profile["variant"] == report["recommendation"]["server_cpu"]["variant"]
    if "unavailable" in profile:  # a TFLite recommendation: said why, and the fastest ONNX profiled instead
        assert "no per-op timing" in profile["unavailable"]
        profile = profile["onnx_instead"]
    ops = profile["ops"]
    assert 0 < len(ops) <= 10 and all(0 < op["share"] <= 1 for op in ops)
    assert [op["us_per_run"] for op in ops] == sorted((op["us_per_run"] for op in ops), reverse=True)
    assert {"conv1", "dense"} <= set(profile["layers"])  # the seed architecture's layer names
    assert "## Per-op profile" in (measured / "parity" / "report.md").read_text()


def test_triton_package_names_the_fastest_onnx_entry(measured, tmp_path):
    manifest = load_manifest(measured)
    fastest = choose(manifest, formats=("onnx",)).variant
    result = runner.invoke(app, ["package", "--run", str(measured), "--target", "triton", "--out",
                                 str(tmp_path / "repo"), "--json"])
    assert result.exit_code == EXIT_OK, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["recommended"]["variant"] == fastest and record["recommended"]["entry"] in record["entries"]
    assert "Recommended entry" in (tmp_path / "repo" / "DEPLOY.md").read_text()


def test_bad_time_caps_are_usage_errors(measured):
    assert runner.invoke(app, ["bench", "--run", str(measured), "--seconds", "0"]).exit_code == EXIT_USAGE
    result = runner.invoke(app, ["parity", "--run", str(measured), "--perf-seconds", "-1"])
    assert result.exit_code == EXIT_USAGE and "--perf-seconds -1" in result.output
