"""The runtime-settings sweep runs a setting on every eval batch only where its sampled batches are not
bit-identical to outputs already computed on the whole sample."""

from __future__ import annotations

import numpy as np

from parity.formatting import sweep_ran
from parity.runners import EVAL_BATCH
from parity.sweep import batch_bounds, run_setting

TOTAL = 3 * EVAL_BATCH + 7  # three full batches and a shorter last one


class CountingRunner:
    """A runtime stand-in: y = scale * x + shift per example, recording the batch sizes it was called with."""

    def __init__(self, scale: float = 2.0, shift: float = 0.0):
        self.scale, self.shift, self.batches = np.float32(scale), np.float32(shift), []

    def run(self, inputs):
        x = inputs["x"]
        self.batches.append(len(x))
        return {"y": x * self.scale + self.shift}


def eval_inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).random((TOTAL, 3), dtype=np.float32)}


def test_batches_cut_like_the_gate():
    bounds = batch_bounds(TOTAL)
    assert bounds[0] == (0, EVAL_BATCH) and bounds[-1] == (3 * EVAL_BATCH, TOTAL)
    assert sum(stop - start for start, stop in bounds) == TOTAL


def test_identical_setting_runs_only_the_sampled_batches_and_reuses_known_outputs():
    inputs = eval_inputs()
    default = CountingRunner().run(inputs)
    runner = CountingRunner()
    outputs, ran = run_setting(runner, inputs, [("the default settings", default)])
    assert runner.batches == [EVAL_BATCH, 7]  # the first batch and the short last one: each shape once
    assert ran == {"examples": EVAL_BATCH + 7, "of": TOTAL, "same_as": "the default settings"}
    np.testing.assert_array_equal(outputs["y"], default["y"])
    assert "bit-identical there to the default settings" in sweep_ran({"ran": ran})


def test_differing_setting_runs_every_batch_once_in_order():
    inputs = eval_inputs()
    default = CountingRunner().run(inputs)
    runner = CountingRunner(shift=1e-6)
    outputs, ran = run_setting(runner, inputs, [("the default settings", default)])
    assert sorted(runner.batches) == sorted([EVAL_BATCH] * 3 + [7])  # nothing ran twice
    assert ran == {"examples": TOTAL, "of": TOTAL, "same_as": None}
    np.testing.assert_array_equal(outputs["y"], CountingRunner(shift=1e-6).run(inputs)["y"])
    assert sweep_ran({"ran": ran}) == f"all {TOTAL}"


def test_a_later_setting_matches_an_earlier_full_run():
    inputs = eval_inputs()
    default = CountingRunner().run(inputs)
    first, _ = run_setting(CountingRunner(scale=3.0), inputs, [("the default settings", default)])
    known = [("the default settings", default), ("threads=1", first)]
    runner = CountingRunner(scale=3.0)
    outputs, ran = run_setting(runner, inputs, known)
    assert ran["same_as"] == "threads=1" and len(runner.batches) == 2
    np.testing.assert_array_equal(outputs["y"], first["y"])


class SettingsRunner(CountingRunner):
    """Answers like the default except where `differ` says: on one example outside the sampled batches."""

    def __init__(self, differ: bool):
        super().__init__()
        self.differ = differ

    def run(self, inputs):
        outputs = super().run(inputs)
        if self.differ and len(inputs["x"]) == EVAL_BATCH and self.batches.count(EVAL_BATCH) == 2:
            outputs["y"][5] += 1e-3  # the second full batch: neither the first nor the last, shorter one
        return outputs


def test_other_kernels_never_stand_in_however_well_they_match_on_the_sampled_batches(monkeypatch):
    from kerasport.manifest import Artifact
    from parity import sweep

    inputs = eval_inputs()
    default = CountingRunner().run(inputs)
    opened = []

    def open_candidate(run_dir, artifact, contract, setting):
        opened.append(SettingsRunner(differ=not setting.xnnpack))  # XNNPACK off: other kernels
        return opened[-1]

    monkeypatch.setattr(sweep, "open_candidate", open_candidate)
    artifact = Artifact("tflite-int8", {"path": "model_int8.tflite", "format": "tflite", "precision": "int8"})
    runs = {run.settings: run for run in sweep.sweep_runs(None, artifact, None, inputs, default_outputs=default)}
    assert runs["xnnpack=on, threads=1"].ran["same_as"] == "the default settings"  # same kernels, other threads
    off = runs["xnnpack=off, threads=1"]
    assert off.ran == {"examples": TOTAL, "of": TOTAL, "same_as": None}
    assert np.abs(off.outputs["y"] - default["y"]).max() > 0  # the difference outside the sample is seen
    assert runs["xnnpack=off, threads=2"].ran["same_as"] == "xnnpack=off, threads=1"


def test_same_kernels_differ_at_most_in_thread_count():
    from kerasport.runtimes import RuntimeSettings
    from parity.sweep import same_kernels

    assert same_kernels(RuntimeSettings(threads=1), RuntimeSettings(threads=2))
    assert not same_kernels(RuntimeSettings(xnnpack=False), RuntimeSettings())
    assert not same_kernels(RuntimeSettings(ort_optimization="basic"), RuntimeSettings())


def test_a_setting_that_is_the_default_on_this_host_runs_nothing(monkeypatch):
    from kerasport.manifest import Artifact
    from parity import sweep

    inputs = eval_inputs()
    default = CountingRunner().run(inputs)
    opened = []

    def open_candidate(run_dir, artifact, contract, setting):
        opened.append((setting.ort_optimization, setting.threads))
        return CountingRunner()

    monkeypatch.setattr(sweep, "open_candidate", open_candidate)
    monkeypatch.setattr(sweep, "default_intra_op_threads", lambda: 2)
    artifact = Artifact("onnx-fp32", {"path": "model.onnx", "format": "onnx", "precision": "fp32"})
    runs = {run.settings: run for run in sweep.sweep_runs(None, artifact, None, inputs, default_outputs=default)}
    same = runs["optimization=all, threads=2"]
    assert ("all", 2) not in opened and same.ran["examples"] == 0 and same.ran["same_as"] == "the default settings"
    np.testing.assert_array_equal(same.outputs["y"], default["y"])
    assert "none: on this host, the same configuration as the default settings" in sweep_ran({"ran": same.ran})
    assert ("all", 1) in opened and runs["optimization=all, threads=1"].ran["examples"] == EVAL_BATCH + 7


def test_shared_runs_count_once_under_their_own_key_and_not_as_the_callers_own_time():
    import time

    from parity.runners import CandidateOutputs

    shared = CandidateOutputs(None, None, {}, {})

    def inner():
        time.sleep(0.2)
        return 1

    def outer():
        time.sleep(0.02)
        return shared.once("inner", inner) + 1

    started = shared.start_timing()
    assert shared.once("outer", outer) == 2 and shared.once("outer", outer) == 2  # the second call reuses
    time.sleep(0.01)
    # counted twice, "outer" and this thread's own time would each be over 0.2 s
    assert shared.spent("inner") >= 0.2 and 0.02 <= shared.spent("outer") < 0.2
    assert 0.01 <= shared.own_seconds(started) < 0.2
