"""Multi-worker data-parallel training: `tf.distribute.MultiWorkerMirroredStrategy` and a custom training loop.

Keras 3's `model.fit` does not run under this strategy (keras-team/keras#20585, tensorflow/tensorflow#72388), so
an epoch here is a loop of `strategy.run` steps; everything around it is the single-process stage's: the same
data sources, model builder, compile settings, callbacks (driven through `keras.callbacks.CallbackList`),
evaluation and bundle.

- Cluster: `TF_CONFIG` (what Kubeflow's TFJob, Vertex AI and SageMaker set), or `--workers host:port,...
  --worker-index i`. The strategy is created before any other TensorFlow op, with a collective timeout, so a
  peer that dies or hangs ends the job with a one-line error instead of a hang.
- Batches: `--batch-size` is per worker; one step consumes a global batch of `batch_size x workers`. Every worker
  draws the same seeded permutation of the training split each epoch and takes its own slice of each global
  batch, so the data is sharded deterministically and no sample is seen twice in an epoch. The loss is averaged
  over the global batch (`tf.nn.compute_average_loss`), so gradients equal those of one process on that batch.
- BatchNorm is synchronized across workers (Keras `synchronized=True`): batch statistics are those of the global
  batch, as in single-process training with the global batch size, and the moving statistics stay identical on
  every worker (unsynchronized, each worker's drift apart).
- Roles: only the chief (worker 0, or TF_CONFIG's "chief" task) writes the run directory. The other workers'
  callbacks write into a private temporary directory that is deleted when they finish, so two workers never
  write one file. At the end the chief copies the trained weights into a plain (strategy-free) model and
  evaluates, recalibrates and exports it with the single-process code.
- Resume: the chief backs up model + optimizer weights and the epoch after every epoch (`<run>/.train-work/
  backup`); with `--resume` every worker loads that backup, so the run directory must be on a filesystem all
  workers share (as for Keras' BackupAndRestore in a multi-worker job).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.errors import KerasportError, UsageError
from kerasport.fsutil import atomic_path, write_json_atomic
from kerasport.tfenv import quiet_tensorflow

from .config import TrainConfig, worker_addresses
from .data import Dataset, load_training_data
from .runs import (
    WORK_DIR_NAME,
    Fitted,
    TrainResult,
    augmenter,
    check_arch,
    config_to_resume,
    evaluate_and_summarize,
    finish_run,
    prepare_work_dir,
    regression_width,
    validation_split,
)

JOBS = ("chief", "worker")  # the task types MultiWorkerMirroredStrategy trains with, the chief first
BACKUP_DIR = "backup"
BACKUP_WEIGHTS = "latest.weights.h5"  # the names Keras' BackupAndRestore uses, so fit.py's resume helpers apply
BACKUP_METADATA = "training_metadata.json"
CLUSTER_FILE = "cluster.json"
EVAL_BATCH = 256
# Measured (README-distributed.md): synchronized BatchNorm costs little per step here and keeps the workers'
# moving statistics identical; unsynchronized, each worker normalizes by its own share of the batch.
SYNC_BATCH_NORM = True
# The line every worker prints on stderr when it finishes; `kerasport launch` reads it to compare the workers.
FINISHED_PREFIX = "kerasport worker"


@dataclass(frozen=True)
class Cluster:
    """A job as TF_CONFIG describes it: every task's address, and which task this process is."""

    spec: dict
    task_type: str
    task_index: int

    @property
    def size(self) -> int:
        return sum(len(self.spec.get(job, [])) for job in JOBS)

    @property
    def rank(self) -> int:
        """This worker's position with the chief first: 0 is the chief, which writes the bundle."""
        chiefs = len(self.spec.get("chief", []))
        return self.task_index if self.task_type == "chief" else chiefs + self.task_index

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def tf_config(self) -> str:
        return json.dumps({"cluster": self.spec, "task": {"type": self.task_type, "index": self.task_index}})


def local_cluster(addresses: list[str], index: int) -> Cluster:
    """The cluster of `--workers` (or `kerasport launch`): plain workers, the first one the chief."""
    return Cluster({"worker": list(addresses)}, "worker", index)


def resolve_cluster(config: TrainConfig, environ=os.environ) -> Cluster:
    """The cluster this worker belongs to: from `--workers/--worker-index`, else from `TF_CONFIG`.

    Raises:
        UsageError: neither is given, TF_CONFIG is not valid JSON, or it describes a task this strategy cannot run.
    """
    if config.workers:
        return local_cluster(worker_addresses(config.workers), config.worker_index)
    raw = environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise UsageError("--distributed: neither --workers nor TF_CONFIG is set; expected TF_CONFIG (as Kubeflow's "
                         "TFJob sets it) or --workers host:port,host:port --worker-index i")
    try:
        tf_config = json.loads(raw)
        cluster, task = dict(tf_config["cluster"]), dict(tf_config["task"])
        task_type, task_index = str(task["type"]), int(task.get("index", 0))
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"TF_CONFIG is not a JSON object with 'cluster' and 'task' ({error}); expected e.g. "
                         '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", '
                         '"index": 0}}') from error
    unsupported = sorted(set(cluster) - set(JOBS))
    if unsupported or task_type not in JOBS:
        raise UsageError(f"TF_CONFIG has task type(s) {', '.join(map(repr, unsupported or [task_type]))}; "
                         f"MultiWorkerMirroredStrategy trains only with 'chief' and 'worker' tasks")
    if len(cluster.get("chief", [])) > 1:
        raise UsageError(f"TF_CONFIG lists {len(cluster['chief'])} chief tasks; expected at most one")
    if not 0 <= task_index < len(cluster.get(task_type, [])):
        raise UsageError(f"TF_CONFIG task {task_type}:{task_index} is not in its cluster "
                         f"({len(cluster.get(task_type, []))} {task_type} task(s))")
    return Cluster({job: list(cluster[job]) for job in JOBS if cluster.get(job)}, task_type, task_index)


def weights_sha256(weights: list) -> str:
    """One digest of a model's weights (shapes, dtypes and values, in `model.get_weights()` order)."""
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def finished_line(rank: int, size: int, digest: str) -> str:
    return f"{FINISHED_PREFIX} {rank}/{size} finished: trained weights sha256 {digest}"


def parse_finished_line(line: str) -> tuple[int, str] | None:
    """(rank, digest) from a `finished_line`, or None for any other line."""
    if not line.startswith(FINISHED_PREFIX) or " sha256 " not in line:
        return None
    rank = line[len(FINISHED_PREFIX):].strip().split("/", 1)[0]
    return (int(rank), line.rsplit(" ", 1)[-1].strip()) if rank.isdigit() else None


def train_distributed(config: TrainConfig, *, console=None, extra_callbacks: list | None = None) -> TrainResult:
    """Train as one worker of a multi-worker job; the chief writes the bundle, the others only train.

    Args:
        config: a validated configuration with `distributed` set (the cluster from TF_CONFIG or `workers`).
        console: a rich Console for the chief's progress (the other workers print only their final line).
        extra_callbacks: Keras callbacks run before kerasport's own, on every worker.

    Returns:
        On the chief, the run directory, test metrics and manifest; on the others the same metrics keys that
        describe training (`manifest` is None: they write nothing in the run directory).

    Raises:
        UsageError / DataError: bad options, cluster or data, before anything is written (exit 2).
        KerasportError: a peer died or stopped answering within the collective timeout (exit 3).
    """
    cluster = resolve_cluster(config)
    run_dir = Path(config.run)
    work_dir = run_dir / WORK_DIR_NAME
    if config.resume:
        config = _config_to_resume_here(work_dir, config, cluster)
    # fails before anything is written; the config comes back with --image-size/--color as the data turned out
    config, dataset = load_training_data(config)
    check_arch(config)
    strategy = make_strategy(cluster, config.collective_timeout)

    import keras
    import tensorflow as tf

    private = None if cluster.is_chief else Path(tempfile.mkdtemp(prefix=f"kerasport-worker{cluster.rank}-"))
    progress = _Progress()
    try:
        if cluster.is_chief:
            prepare_work_dir(work_dir, config)
            write_json_atomic(work_dir / CLUSTER_FILE, {"workers": cluster.size,
                                                        "global_batch_size": config.batch_size * cluster.size})
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        n_outputs = len(dataset.labels) if config.task == "classification" else regression_width(dataset)
        job = _Job(config, cluster, strategy, work_dir, private or work_dir, progress)
        fitted = job.fit(dataset, n_outputs, console if cluster.is_chief else None, extra_callbacks)
    except tf.errors.OpError as error:
        raise _peer_error(error, config, progress, work_dir) from None
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)

    digest = weights_sha256(fitted.model.get_weights())
    print(finished_line(cluster.rank, cluster.size, digest), file=sys.stderr, flush=True)
    record = {"strategy": "MultiWorkerMirroredStrategy", "workers": cluster.size, "per_worker_batch_size":
              config.batch_size, "global_batch_size": config.batch_size * cluster.size,
              "synchronized_batch_norm": SYNC_BATCH_NORM, "collective_timeout_s": config.collective_timeout,
              "trained_weights_sha256": digest}
    if not cluster.is_chief:
        epochs = len(fitted.history.epoch)
        metrics = {"worker": cluster.rank, **record, "epochs_this_session": epochs,
                   "fit_seconds": round(fitted.fit_seconds, 2), "n_train": len(fitted.x_fit),
                   "train_images_per_second": round(len(fitted.x_fit) * epochs / max(fitted.fit_seconds, 1e-9), 1)}
        return TrainResult(run_dir=run_dir, metrics=metrics, manifest=None)

    plain = dataclasses.replace(fitted, model=_plain_copy(fitted.model, config, n_outputs))
    metrics = evaluate_and_summarize(plain, dataset, config, work_dir)
    metrics.update(workers=cluster.size, global_batch_size=record["global_batch_size"],
                   trained_weights_sha256=digest)
    manifest = finish_run(run_dir, work_dir, config, dataset, plain, metrics, n_outputs, distributed=record)
    return TrainResult(run_dir=run_dir, metrics=metrics, manifest=manifest)


def make_strategy(cluster: Cluster, timeout: float):
    """Create the strategy for `cluster` (sets TF_CONFIG); must run before any other TensorFlow op.

    Raises:
        UsageError: TensorFlow already ran an op in this process (the strategy needs a fresh one).
    """
    os.environ["TF_CONFIG"] = cluster.tf_config()
    quiet_tensorflow()
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(timeout))
    disarm = _join_watchdog(f"worker {cluster.rank}: not all {cluster.size} workers joined within "
                            f"--collective-timeout {timeout:g} s; expected every one of "
                            f"{', '.join(_addresses(cluster))} to start", timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as error:
        raise UsageError(f"--distributed needs a fresh process: TensorFlow already ran in this one "
                         f"({str(error).splitlines()[0]}); run `kerasport train --distributed` as its own "
                         f"command") from None
    finally:
        disarm()
    if strategy.num_replicas_in_sync != cluster.size:
        # Each worker feeds one replica with its slice of the global batch (ShardPlan).
        raise UsageError(f"worker {cluster.rank} has {strategy.num_replicas_in_sync // cluster.size} devices; "
                         f"kerasport trains one replica per worker: make one GPU visible to each worker "
                         f"(CUDA_VISIBLE_DEVICES) and start one worker per GPU")
    return strategy


def _join_watchdog(message: str, timeout: float):
    """End this process with `message` if the strategy is not up within `timeout` seconds; returns the disarm.

    While it creates the strategy, TensorFlow waits for every worker with no limit, holding the GIL and ignoring
    SIGTERM, so no thread of this process can stop it: a forked watchdog process (TensorFlow's threads are not
    yet running there) prints the error and sends SIGKILL. Without fork (not POSIX) the wait stays unbounded.
    """
    if not hasattr(os, "fork"):  # pragma: no cover
        return lambda: None
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    watchdog = os.fork()
    if watchdog == 0:  # pragma: no cover - the child; coverage does not follow it
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], timeout)
        if not ready:
            os.write(2, f"error: {message}\n".encode())
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(0)
    os.close(read_end)

    def disarm() -> None:
        os.close(write_end)  # the watchdog sees end-of-file and exits
        os.waitpid(watchdog, 0)

    return disarm


def _addresses(cluster: Cluster) -> list[str]:
    return [address for job in JOBS for address in cluster.spec.get(job, [])]


def _config_to_resume_here(work_dir: Path, requested: TrainConfig, cluster: Cluster) -> TrainConfig:
    """The interrupted run's configuration, with this job's cluster; every worker reads the chief's work dir."""
    if not cluster.is_chief and not (work_dir / BACKUP_DIR / BACKUP_METADATA).is_file():
        raise UsageError(f"--resume: worker {cluster.rank} cannot see the chief's backup at {work_dir / BACKUP_DIR}; "
                         f"expected the run directory on a filesystem every worker shares")
    config = config_to_resume(work_dir, requested)
    config.distributed, config.workers = True, requested.workers
    config.worker_index, config.collective_timeout = requested.worker_index, requested.collective_timeout
    saved = work_dir / CLUSTER_FILE
    trained_with = json.loads(saved.read_text())["workers"] if saved.is_file() else None
    if trained_with is not None and trained_with != cluster.size:
        raise UsageError(f"--resume with {cluster.size} workers, but the interrupted run trained with {trained_with} "
                         f"(global batch {config.batch_size * trained_with}); expected {trained_with} workers")
    return config


@dataclass
class _Progress:
    """Where the job is, for error messages."""

    epoch: int = 0
    step: int = 0


class _Job:
    """One worker's training: the model in the strategy's scope, sharded batches, the callback stack."""

    def __init__(self, config: TrainConfig, cluster: Cluster, strategy, work_dir: Path, own_dir: Path,
                 progress: _Progress):
        self.config, self.cluster, self.strategy = config, cluster, strategy
        self.work_dir, self.own_dir, self.progress = work_dir, own_dir, progress
        self.global_batch = config.batch_size * cluster.size

    def fit(self, dataset: Dataset, n_outputs: int, console, extra_callbacks: list | None) -> Fitted:
        import keras

        from .models import build_model, compile_model

        x_fit, y_fit, x_val, y_val = validation_split(dataset, self.config)
        if len(x_fit) < self.cluster.size:
            raise UsageError(f"{len(x_fit)} training samples for {self.cluster.size} workers; expected at least one "
                             f"per worker")
        with self.strategy.scope():
            model = build_model(self.config, n_outputs)
            for layer in _all_layers(model):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = SYNC_BATCH_NORM  # read at call time; the saved (plain) model keeps False
            compile_model(model, self.config)  # builds the optimizer's state inside the strategy's scope
        steps = _Steps(model, self.strategy, self.config.task, x_fit, y_fit)
        plan = ShardPlan(len(x_fit), self.config.batch_size, self.cluster.size, self.cluster.rank, self.config.seed)
        backup = chief_backup(self.work_dir / BACKUP_DIR, write=self.cluster.is_chief)
        callbacks = _callback_list(self.config, self.own_dir, model, backup, console, plan.steps, extra_callbacks)
        initial_epoch = backup.restore(model) if self.config.resume else 0
        augment = _augment_fn(self.config)

        model.stop_training = False
        callbacks.on_train_begin()
        started = time.perf_counter()
        logs: dict = {}
        for epoch in range(initial_epoch, self.config.epochs):
            self.progress.epoch, self.progress.step = epoch, 0
            callbacks.on_epoch_begin(epoch)
            logs = self._train_epoch(steps, plan, epoch, x_fit, y_fit, callbacks, augment)
            logs.update(self._validate(steps, x_val, y_val))
            callbacks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        callbacks.on_train_end(logs)
        history = next(cb for cb in callbacks.callbacks if isinstance(cb, keras.callbacks.History))
        return Fitted(model, x_fit, y_fit, x_val, history, time.perf_counter() - started, y_val)

    def _train_epoch(self, steps: _Steps, plan: ShardPlan, epoch: int, x, y, callbacks, augment) -> dict:
        totals = np.zeros(2)
        seen = 0
        for step, (rows, global_count) in enumerate(plan.epoch(epoch)):
            self.progress.step = step
            callbacks.on_train_batch_begin(step)
            images = x[rows] if augment is None else augment(x[rows])
            totals += steps.train(images, y[rows], global_count)
            seen += global_count
            callbacks.on_train_batch_end(step)
        return {"loss": totals[0] / seen, steps.metric_name: totals[1] / seen}

    def _validate(self, steps: _Steps, x, y) -> dict:
        # Every worker evaluates its share of the validation split; the sums are reduced across workers.
        bounds = _split_bounds(len(x), self.cluster.size)
        mine = np.arange(bounds[self.cluster.rank], bounds[self.cluster.rank + 1])
        longest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        totals = np.zeros(2)
        for start in range(0, longest, EVAL_BATCH):
            rows = mine[start:start + EVAL_BATCH]
            totals += steps.evaluate(x[rows], y[rows])
        return {"val_loss": totals[0] / len(x), f"val_{steps.metric_name}": totals[1] / len(x)}


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model (a user's builder may compose them)
            yield from _all_layers(layer)


@dataclass(frozen=True)
class ShardPlan:
    """Which training rows worker `rank` uses at each step of an epoch.

    Every worker draws the same permutation (seeded by the run's seed and the epoch) and cuts it into global
    batches of `batch_size x workers`; worker `rank` takes the `rank`-th of `workers` near-equal slices of each.
    A last global batch smaller than the number of workers is dropped (those samples come up again, in another
    order, in the next epoch), so no worker ever steps on an empty batch.
    """

    n: int
    batch_size: int
    workers: int
    rank: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.workers

    @property
    def steps(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest >= self.workers else 0)

    def epoch(self, epoch: int):
        """Yield (this worker's row indices, the global batch's size) for each step of `epoch`."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        for step in range(self.steps):
            batch = order[step * self.global_batch:(step + 1) * self.global_batch]
            bounds = _split_bounds(len(batch), self.workers)
            yield batch[bounds[self.rank]:bounds[self.rank + 1]], len(batch)


def _split_bounds(n: int, parts: int) -> list[int]:
    return [n * part // parts for part in range(parts + 1)]


class _Steps:
    """The compiled train and evaluation steps: `strategy.run` per worker, sums reduced across workers."""

    def __init__(self, model, strategy, task: str, x, y):
        import tensorflow as tf

        self.model, self.strategy = model, strategy
        self.metric_name = "accuracy" if task == "classification" else "mae"
        # The compiled loss, per example: averaged below over the GLOBAL batch, not each worker's share.
        self.loss = type(model.loss).from_config({**model.loss.get_config(), "reduction": None})
        self.classification = task == "classification"
        x_spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))
        y_spec = tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype))
        self._train = tf.function(self._train_step, input_signature=[x_spec, y_spec, tf.TensorSpec((), tf.int32)])
        self._evaluate = tf.function(self._evaluate_step, input_signature=[x_spec, y_spec])

    def train(self, x: np.ndarray, y: np.ndarray, global_count: int) -> np.ndarray:
        """One step on this worker's rows of a global batch; returns the global (loss sum, metric sum)."""
        return self._train(x, y, np.int32(global_count)).numpy()

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._evaluate(x, y).numpy()

    def _sums(self, y, predictions, per_example):
        import tensorflow as tf

        if self.classification:
            correct = tf.equal(tf.argmax(predictions, axis=-1, output_type=tf.int64), tf.cast(y, tf.int64))
            metric = tf.reduce_sum(tf.cast(correct, tf.float32))
        else:
            targets = tf.reshape(tf.cast(y, predictions.dtype), tf.shape(predictions))
            metric = tf.reduce_sum(tf.reduce_mean(tf.abs(predictions - targets), axis=-1))
        return tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float32)), metric])

    def _train_step(self, x, y, global_count):
        import tensorflow as tf

        model = self.model

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                predictions = model(x, training=True)
                per_example = self.loss(y, predictions)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_count)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            gradients = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return self._sums(y, predictions, per_example)

        sums = self.strategy.run(replica_step, args=(x, y))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    def _evaluate_step(self, x, y):
        import tensorflow as tf

        def replica_step(x, y):
            predictions = self.model(x, training=False)
            return self._sums(y, predictions, self.loss(y, predictions))

        sums = self.strategy.run(replica_step, args=(x, y))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)


def _augment_fn(config: TrainConfig):
    if not config.augment:
        return None
    import tensorflow as tf

    layers = augmenter(config)
    augment = tf.function(lambda images: layers(images, training=True))
    return lambda images: augment(images).numpy()


def _callback_list(config: TrainConfig, own_dir: Path, model, backup, console, steps: int,
                   extra_callbacks: list | None):
    """The single-process stack (train/callbacks.py), with the multi-worker backup in BackupAndRestore's place."""
    import keras

    from .callbacks import build_callbacks

    stack = build_callbacks(config, own_dir, console=console, steps_per_epoch=steps, resuming=config.resume)
    stack = [backup if isinstance(callback, keras.callbacks.BackupAndRestore) else callback for callback in stack]
    return keras.callbacks.CallbackList(list(extra_callbacks or []) + stack, add_history=True, model=model,
                                        verbose=0, epochs=config.epochs, steps=steps)


def chief_backup(backup_dir: Path, *, write: bool):
    """BackupAndRestore for a multi-worker job: the chief writes, every worker restores.

    After each epoch the chief replaces `backup_dir` atomically with the model and optimizer weights and the
    number of finished epochs (Keras' file names and metadata, so the stage's resume helpers read it). Every
    worker restores from the same files, so all continue from identical weights.
    """
    import keras

    class ChiefBackup(keras.callbacks.Callback):
        def restore(self, model) -> int:
            """Load the backup into `model`; returns the epoch to continue from (0 when there is none)."""
            metadata = Path(backup_dir) / BACKUP_METADATA
            if not metadata.is_file():
                return 0
            model.load_weights(Path(backup_dir) / BACKUP_WEIGHTS)
            return int(json.loads(metadata.read_text())["epoch"])

        def on_epoch_end(self, epoch, logs=None):
            if not write:
                return
            with atomic_path(backup_dir) as staging:
                staging.mkdir()
                self.model.save_weights(staging / BACKUP_WEIGHTS)
                (staging / BACKUP_METADATA).write_text(json.dumps({"epoch": epoch + 1, "batch": 0}))

    return ChiefBackup()


def _plain_copy(model, config: TrainConfig, n_outputs: int):
    """The trained model outside the strategy: same architecture, weights and optimizer state, default BatchNorm."""
    import keras

    from .models import build_model, compile_model

    plain = build_model(config, n_outputs)
    compile_model(plain, config)
    plain.set_weights(model.get_weights())
    for target, source in zip(plain.optimizer.variables, model.optimizer.variables, strict=True):
        target.assign(keras.ops.convert_to_numpy(source))
    return plain


def _peer_error(error, config: TrainConfig, progress: _Progress, work_dir: Path) -> KerasportError:
    """One line for a failed collective: which peer problem, where, and how to continue."""
    import tensorflow as tf

    where = f"distributed training stopped in epoch {progress.epoch + 1}, step {progress.step + 1}"
    if isinstance(error, tf.errors.DeadlineExceededError):
        cause = f"a peer worker did not answer within --collective-timeout {config.collective_timeout:g} s"
    elif "heartbeat" in (error.message or ""):
        cause = "a peer worker stopped sending heartbeats (it hung, or its host is unreachable)"
    else:
        lines = [line.strip() for line in (error.message or "").splitlines() if line.strip()]
        detail = next((line for line in lines if "aborted by" in line), lines[-1] if lines else type(error).__name__)
        cause = f"a peer worker went away ({detail.removeprefix('Collective ops is aborted by: ')[:160]})"
    metadata = work_dir / BACKUP_DIR / BACKUP_METADATA
    if metadata.is_file():
        finished = json.loads(metadata.read_text())["epoch"]
        advice = f"{finished} epoch(s) are backed up: start every worker again with --resume"
    else:
        advice = "no epoch had finished: start the job again"
    return KerasportError(f"{where}: {cause}; {advice}")
