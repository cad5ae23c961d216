"""Multi-worker training (`kerasport train --distributed`, `kerasport launch`): real worker processes on loopback.

Each TensorFlow worker takes seconds to start, so the multi-worker runs are few and shared: one 2-worker job
(module fixture) answers the weights, roles, manifest, export/parity and loss-curve questions; one launched job is
killed and resumed; one lone worker waits for a peer that never comes.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import write_idx_dir
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, UsageError
from kerasport.train.config import TrainConfig
from kerasport.train.distributed import ShardPlan, parse_finished_line, resolve_cluster, weights_sha256
from kerasport.train.launch import free_ports

CLI = [sys.executable, "-m", "kerasport.app.cli"]
WORKERS = 2
PER_WORKER_BATCH = 8
EPOCHS = 3
# Small, but with a learning rate low enough that the curves still say something after the first epoch.
TRAIN_OPTIONS = ["--width", "0.125", "--batch-size", str(PER_WORKER_BATCH), "--learning-rate", "1e-4",
                 "--no-precise-bn", "--no-restore-best", "--eval-samples", "30", "--calibration-samples", "20"]
JOB_TIMEOUT = 600
# Single-process vs 2-worker training of the same global batch and seed differ only in the order of the samples
# (Keras' shuffle vs the seeded shard plan): each epoch's val_loss must agree within this fraction, its training
# loss within this absolute difference (measured: 1-2 % and 0.05 on this data).
VAL_LOSS_RELATIVE = 0.05
TRAIN_LOSS_ABSOLUTE = 0.1

runner = CliRunner()


def history(run: Path) -> list[dict]:
    with open(run / "train" / "history.csv", newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def cluster_options(ports: list[int], index: int) -> list[str]:
    return ["--distributed", "--workers", ",".join(f"127.0.0.1:{port}" for port in ports),
            "--worker-index", str(index)]


# --- the cluster and the shard plan (no TensorFlow) -----------------------------------------------------------


def test_tf_config_with_a_chief_task_puts_the_chief_first():
    spec = {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
    ranks = {}
    for task_type, index in (("chief", 0), ("worker", 0), ("worker", 1)):
        tf_config = json.dumps({"cluster": spec, "task": {"type": task_type, "index": index}})
        cluster = resolve_cluster(TrainConfig(distributed=True), {"TF_CONFIG": tf_config})
        assert cluster.size == 3
        ranks[(task_type, index)] = (cluster.rank, cluster.is_chief)
    assert ranks == {("chief", 0): (0, True), ("worker", 0): (1, False), ("worker", 1): (2, False)}


def test_workers_option_overrides_tf_config():
    config = TrainConfig(distributed=True, workers="a:1,b:2,c:3", worker_index=2)
    cluster = resolve_cluster(config, {"TF_CONFIG": json.dumps({"cluster": {"worker": ["x:9"]},
                                                                "task": {"type": "worker", "index": 0}})})
    assert (cluster.size, cluster.rank, cluster.is_chief) == (3, 2, False)
    assert json.loads(cluster.tf_config()) == {"cluster": {"worker": ["a:1", "b:2", "c:3"]},
                                               "task": {"type": "worker", "index": 2}}


@pytest.mark.parametrize("tf_config, message", [
    (None, "neither --workers nor TF_CONFIG"),
    ("{not json", "not a JSON object"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}), "'ps'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}), "worker:1 is not in"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}), "evaluator"),
])
def test_bad_tf_config_is_a_usage_error(tf_config, message):
    environ = {} if tf_config is None else {"TF_CONFIG": tf_config}
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_cluster(TrainConfig(distributed=True), environ)


@pytest.mark.parametrize("options, message", [
    ({"workers": "a:1,b:2"}, "without --distributed"),
    ({"distributed": True, "workers": "a:1,b"}, "'b' is not host:port"),
    ({"distributed": True, "workers": "a:1,a:1"}, "names an address twice"),
    ({"distributed": True, "workers": "a:1,b:2", "worker_index": 2}, "out of range for 2"),
    ({"distributed": True, "collective_timeout": 0}, "--collective-timeout 0"),
])
def test_bad_cluster_options_are_usage_errors(options, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        TrainConfig(**options)


@pytest.mark.parametrize("n, workers", [(100, 2), (101, 2), (99, 3), (7, 2)])
def test_shard_plan_gives_each_sample_to_one_worker_once_per_epoch(n, workers):
    plans = [ShardPlan(n, batch_size=8, workers=workers, rank=rank, seed=3) for rank in range(workers)]
    global_batch = 8 * workers
    for epoch in (0, 1):
        steps = [list(plan.epoch(epoch)) for plan in plans]
        assert {len(worker_steps) for worker_steps in steps} == {plans[0].steps}  # the same number everywhere
        used = np.concatenate([rows for worker_steps in steps for rows, _ in worker_steps])
        assert len(used) == len(set(used.tolist()))
        # only a last global batch smaller than the number of workers is left out
        assert n - len(used) == (n % global_batch if n % global_batch < workers else 0)
        for step in range(plans[0].steps):
            counts = {count for worker_steps in steps for _, count in [worker_steps[step]]}
            assert counts == {sum(len(worker_steps[step][0]) for worker_steps in steps)}
            assert min(len(worker_steps[step][0]) for worker_steps in steps) >= 1
    orders = [np.concatenate([rows for rows, _ in plans[0].epoch(epoch)]) for epoch in (0, 1)]
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch
    assert np.array_equal(orders[0], np.concatenate([rows for rows, _ in plans[0].epoch(0)]))  # deterministic


def test_finished_line_round_trips():
    digest = weights_sha256([np.arange(3, dtype=np.float32)])
    from kerasport.train.distributed import finished_line

    assert parse_finished_line(finished_line(1, 2, digest)) == (1, digest)
    assert parse_finished_line("epoch 1/3: loss 0.5") is None


@pytest.mark.parametrize("arguments, message", [
    (["--worker-index", "1"], "launch sets --worker-index itself"),
    (["--distributed"], "launch sets --distributed itself"),
    (["--epochs", "0"], "--epochs"),
    (["--no-such-option"], "No such option"),
    (["--val-split", "2"], "--val-split 2"),
])
def test_launch_checks_the_train_options_before_starting_workers(tmp_path, arguments, message):
    run = tmp_path / "run"
    result = runner.invoke(app, ["launch", "--workers", "2", "--run", str(run), *arguments])
    assert result.exit_code == EXIT_USAGE, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not run.exists()


def interrupted_run(run: Path, workers: int) -> None:
    """The files an interrupted 2-worker run leaves in its work directory (what --resume reads first)."""
    work = run / ".train-work"
    (work / "backup").mkdir(parents=True)
    (work / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    (work / "config.json").write_text(json.dumps(TrainConfig(run=str(run), distributed=True).to_dict()))
    (work / "cluster.json").write_text(json.dumps({"workers": workers, "global_batch_size": 32 * workers}))


def test_resume_with_another_number_of_workers_is_a_usage_error(tmp_path):
    run = tmp_path / "run"
    interrupted_run(run, workers=2)
    result = runner.invoke(app, ["train", "--run", str(run), "--resume", "--distributed", "--workers",
                                 "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"])
    assert result.exit_code == EXIT_USAGE
    assert "--resume with 3 workers, but the interrupted run trained with 2" in result.output


def test_a_worker_that_cannot_see_the_chief_backup_says_so(tmp_path):
    result = runner.invoke(app, ["train", "--run", str(tmp_path / "elsewhere"), "--resume", "--distributed",
                                 "--workers", "127.0.0.1:1,127.0.0.1:2", "--worker-index", "1"])
    assert result.exit_code == EXIT_USAGE
    assert "cannot see the chief's backup" in result.output and "filesystem every worker shares" in result.output


# --- one 2-worker job, shared ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_idx_dir(tmp_path_factory.mktemp("distributed") / "idx")


@pytest.fixture(scope="module")
def job(tmp_path_factory, data):
    """Two workers started by hand (no launcher). Worker 1 gets its own --run path and TMPDIR, so anything it
    wrote into a run directory, or left in its temporary directory, would be visible."""
    root = tmp_path_factory.mktemp("job")
    run, ghost_run, worker_tmp = root / "run", root / "worker1-run", root / "worker1-tmp"
    worker_tmp.mkdir()
    ports = free_ports(WORKERS)
    common = ["train", "--data", f"idx:{data}", "--epochs", str(EPOCHS), *TRAIN_OPTIONS, "--json"]
    worker = subprocess.Popen([*CLI, *common, "--run", str(ghost_run), *cluster_options(ports, 1)],
                              env={**os.environ, "TMPDIR": str(worker_tmp)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    chief = subprocess.run([*CLI, *common, "--run", str(run), *cluster_options(ports, 0)], capture_output=True,
                           text=True, timeout=JOB_TIMEOUT)
    worker_out, worker_err = worker.communicate(timeout=JOB_TIMEOUT)
    assert chief.returncode == EXIT_OK, chief.stderr[-3000:]
    assert worker.returncode == EXIT_OK, worker_err[-3000:]
    return {"run": run, "ghost_run": ghost_run, "worker_tmp": worker_tmp, "chief_metrics": json.loads(
        chief.stdout.strip().splitlines()[-1]), "worker_metrics": json.loads(worker_out.strip().splitlines()[-1]),
        "worker_stderr": worker_err}


@pytest.mark.slow
def test_workers_finish_with_identical_weights(job):
    import keras

    digest = job["chief_metrics"]["trained_weights_sha256"]
    assert job["worker_metrics"]["trained_weights_sha256"] == digest
    finished = [parse_finished_line(line) for line in job["worker_stderr"].splitlines()]
    assert (1, digest) in finished
    # with --no-precise-bn and --no-restore-best the bundle ships exactly the trained weights
    model = keras.saving.load_model(job["run"] / "train" / "model.keras")
    assert weights_sha256(model.get_weights()) == digest


@pytest.mark.slow
def test_only_the_chief_writes(job):
    assert not job["ghost_run"].exists()  # worker 1's --run was never created
    assert list(job["worker_tmp"].iterdir()) == []  # its private work directory was removed
    assert (job["run"] / "train" / "model.keras").is_file() and (job["run"] / "manifest.json").is_file()
    assert not (job["run"] / ".train-work").exists()


@pytest.mark.slow
def test_manifest_and_metrics_record_the_cluster(job):
    from kerasport.manifest import verify_bundle

    manifest = verify_bundle(job["run"])
    record = manifest.stage("train")["distributed"]
    assert (record["workers"], record["per_worker_batch_size"], record["global_batch_size"]) == (
        WORKERS, PER_WORKER_BATCH, WORKERS * PER_WORKER_BATCH)
    assert record["synchronized_batch_norm"] is True
    stage_config = json.loads((job["run"] / "train" / "config.json").read_text())
    assert stage_config["config"]["distributed"] is True and stage_config["distributed"] == record
    metrics = job["chief_metrics"]
    assert (metrics["workers"], metrics["global_batch_size"], metrics["epochs_run"]) == (
        WORKERS, WORKERS * PER_WORKER_BATCH, EPOCHS)
    assert [int(row["epoch"]) for row in history(job["run"])] == list(range(EPOCHS))


@pytest.mark.slow
def test_the_chief_bundle_exports_and_passes_parity(job, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(job["run"], run)
    exported = runner.invoke(app, ["export", "--run", str(run), "--formats", "onnx-fp32,tflite-fp32"])
    assert exported.exit_code == EXIT_OK, exported.output
    checked = runner.invoke(app, ["parity", "--run", str(run), "--json"])
    assert checked.exit_code == EXIT_OK, checked.output
    assert json.loads(checked.stdout.strip().splitlines()[-1])["passed"] is True


@pytest.mark.slow
def test_loss_curves_match_single_process_training_of_the_same_global_batch(job, data, tmp_path):
    from kerasport.train.fit import train

    single = train(TrainConfig(data=f"idx:{data}", run=str(tmp_path / "single"), width=0.125, epochs=EPOCHS,
                               batch_size=WORKERS * PER_WORKER_BATCH, learning_rate=1e-4, precise_bn=False,
                               restore_best=False, eval_samples=30, calibration_samples=20))
    one, two = history(single.run_dir), history(job["run"])
    assert len(one) == len(two) == EPOCHS
    for a, b in zip(one, two, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=VAL_LOSS_RELATIVE), (a, b)
        assert b["loss"] == pytest.approx(a["loss"], abs=TRAIN_LOSS_ABSOLUTE), (a, b)
        assert b["learning_rate"] == pytest.approx(a["learning_rate"])  # the same schedule, epoch by epoch


# --- failures ---------------------------------------------------------------------------------------------------


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_killed_worker_ends_the_job_within_the_timeout_and_resume_finishes_it(data, tmp_path):
    # No launcher here: the chief itself must notice (as under Kubeflow's TFJob) and say how to continue.
    run = tmp_path / "run"
    timeout = 30
    backup = run / ".train-work" / "backup" / "training_metadata.json"
    ports = free_ports(WORKERS)
    common = ["train", "--data", f"idx:{data}", "--run", str(run), "--epochs", "200", "--collective-timeout",
              str(timeout), *TRAIN_OPTIONS]
    # TMPDIR: the killed worker cannot remove its private directory; keep it inside the test's own tmp_path
    workers = [subprocess.Popen([*CLI, *common, *cluster_options(ports, index)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
               for index in range(WORKERS)]
    try:
        wait_for(backup.is_file, JOB_TIMEOUT, "the first finished epoch")
        workers[1].kill()
        killed_at = time.monotonic()
        _, chief_err = workers[0].communicate(timeout=timeout + 30)
    finally:
        for worker in workers:
            worker.kill()
            worker.communicate()
    assert time.monotonic() - killed_at < timeout  # noticed, not waited out
    assert workers[0].returncode == EXIT_RUNTIME
    errors = [line for line in chief_err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: distributed training stopped in epoch "), chief_err
    assert "start every worker again with --resume" in errors[0]
    assert not (run / "train").exists() and not (run / "manifest.json").exists()  # nothing looks complete

    finished = json.loads(backup.read_text())["epoch"]
    assert f"{finished} epoch(s) are backed up" in errors[0]
    resumed = subprocess.run([*CLI, "launch", "--workers", str(WORKERS), "--run", str(run), "--resume",
                              "--epochs", str(finished + 1), "--json"], capture_output=True, text=True,
                             timeout=JOB_TIMEOUT)
    assert resumed.returncode == EXIT_OK, resumed.stderr[-3000:]
    metrics = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert (metrics["epochs_this_session"], metrics["epochs_run"]) == (1, finished + 1)
    assert [int(row["epoch"]) for row in history(run)] == list(range(finished + 1))
    assert f"{WORKERS} worker(s) finished with identical trained weights" in resumed.stderr


@pytest.mark.slow
def test_launch_stops_every_worker_when_one_dies(data, tmp_path):
    log = tmp_path / "launch.log"
    with open(log, "w") as stderr:
        launch = subprocess.Popen([*CLI, "launch", "--workers", str(WORKERS), "--data", f"idx:{data}", "--run",
                                   str(tmp_path / "run"), *TRAIN_OPTIONS], stdout=subprocess.DEVNULL,
                                  stderr=stderr)
        try:
            wait_for(lambda: "(pids " in log.read_text(), JOB_TIMEOUT, "the launch line")
            pids = [int(pid) for pid in re.search(r"\(pids ([\d, ]+)\)", log.read_text()).group(1).split(", ")]
            os.kill(pids[1], signal.SIGKILL)  # the chief is starting up, waiting for it
            killed_at = time.monotonic()
            code = launch.wait(timeout=JOB_TIMEOUT)
        finally:
            launch.kill()
    assert time.monotonic() - killed_at < 15  # the launcher's grace (3 s) and polling, not a timeout
    assert code == EXIT_RUNTIME
    errors = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    assert errors == [f"error: worker 1 (pid {pids[1]}) was killed by SIGKILL; stopped the other 1 worker(s)"]
    assert not any(alive(pid) for pid in pids)


@pytest.mark.slow
def test_a_worker_whose_peers_never_join_ends_with_an_error(data, tmp_path):
    timeout = 3
    started = time.monotonic()
    result = subprocess.run([*CLI, "train", "--data", f"idx:{data}", "--run", str(tmp_path / "run"),
                             "--collective-timeout", str(timeout), *cluster_options(free_ports(WORKERS), 0)],
                            capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert result.returncode == -signal.SIGKILL
    assert f"not all {WORKERS} workers joined within --collective-timeout {timeout} s" in result.stderr
    assert time.monotonic() - started < timeout + 60  # start-up, then the bounded wait
    assert not (tmp_path / "run").exists()
