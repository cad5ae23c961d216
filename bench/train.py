"""Training throughput: kerasport's training loop vs a plain `model.fit` on the same arrays, in one run.

kerasport's loop adds the callbacks the reference design asks for (LR recording, CSVLogger, ModelCheckpoint,
ReduceLROnPlateau, BackupAndRestore, progress bar). This prints images/s for both and the ratio (target >= 0.95).

    python bench/train.py [--epochs 3] [--arch seed] [--width 1.0] [--repeats 2] [--json out.json]

`--matrix` instead measures the training defaults (issue 9): test accuracy, mean ± spread over seeds, per
dataset, for the old defaults (constant rate, last epoch's weights) and the new ones (cosine decay, best
validation epoch's weights restored), plus the ablations (each change alone, a 1-epoch warm-up), on datasets built
offline: `digits`, letters rendered with Pillow's bundled font into an images:DIR tree (32x32 grayscale, 26
classes), and digits re-drawn as noisy colour pictures in an NPZ (32x32 RGB, 10 classes).

    python bench/train.py --matrix [--matrix-epochs 5] [--matrix-limit 1000] [--width 1.0] [--seeds 0,1,2]
                          [--datasets digits,glyphs,color-digits] [--data-dir DIR] [--json matrix.json]

`--workers N` instead measures multi-worker training (issue 10): images/s and test accuracy of `kerasport launch
--workers N` against single-process `kerasport train` and a 1-worker launch (the distributed loop without peers),
all on the same global batch and seed, plus the time of one all-reduce of the model's gradients between N workers.

    python bench/train.py --workers 2 [--epochs 3] [--global-batch 32] [--json workers.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from kerasport.tfenv import quiet_tensorflow  # noqa: E402

quiet_tensorflow()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--arch", default="seed")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--matrix", action="store_true", help="measure old vs new training defaults instead")
    parser.add_argument("--matrix-epochs", type=int, default=5)
    parser.add_argument("--matrix-limit", type=int, default=0, help="training samples per dataset (0 = all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--datasets", default=",".join(MATRIX_DATASETS))
    parser.add_argument("--runs", default=",".join(MATRIX_RUNS), help="which trained variants (MATRIX_RUNS)")
    parser.add_argument("--data-dir", help="where the generated datasets are kept (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=0, help="measure N-worker training instead")
    parser.add_argument("--global-batch", type=int, default=32, help="--workers: the global batch of every run")
    parser.add_argument("--allreduce-probe", nargs=3, metavar=("FLOATS", "RANK", "ADDRESSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.matrix:
        run_matrix(args)
        return
    if args.allreduce_probe:
        allreduce_probe(int(args.allreduce_probe[0]), int(args.allreduce_probe[1]), args.allreduce_probe[2])
        return
    if args.workers:
        run_workers(args)
        return

    import keras
    from rich.console import Console

    from kerasport.train.config import TrainConfig
    from kerasport.train.data import load_dataset
    from kerasport.train.fit import train
    from kerasport.train.models import build_model, compile_model
    from kerasport.train.runs import validation_split as _validation_split

    results: dict[str, list[float]] = {"plain_fit": [], "kerasport": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            config = TrainConfig(data=args.data, arch=args.arch, width=args.width, epochs=args.epochs,
                                 run=str(Path(scratch) / f"run{repeat}"))
            dataset = load_dataset(config.data, task=config.task)
            x_fit, y_fit, x_val, y_val = _validation_split(dataset, config)

            def plain_fit(config=config, x_fit=x_fit, y_fit=y_fit, x_val=x_val, y_val=y_val, dataset=dataset):
                keras.utils.set_random_seed(config.seed)
                model = build_model(config, len(dataset.labels))
                compile_model(model, config)
                started = time.perf_counter()
                model.fit(x_fit, y_fit, batch_size=config.batch_size, epochs=config.epochs,
                          validation_data=(x_val, y_val), shuffle=True, verbose=0)
                results["plain_fit"].append(len(x_fit) * config.epochs / (time.perf_counter() - started))

            def kerasport_fit(config=config):
                # with the progress bar on, as a user runs it (rendered into a buffer instead of a terminal)
                metrics = train(config, console=Console(file=io.StringIO(), width=100)).metrics
                results["kerasport"].append(metrics["train_images_per_second"])

            # alternate which runs first, so warm-up effects do not favour one side
            for step in ((plain_fit, kerasport_fit) if repeat % 2 == 0 else (kerasport_fit, plain_fit)):
                step()
            print(f"repeat {repeat + 1}: plain fit {results['plain_fit'][-1]:.1f} img/s, "
                  f"kerasport {results['kerasport'][-1]:.1f} img/s")

    plain, ours = max(results["plain_fit"]), max(results["kerasport"])
    summary = {"arch": args.arch, "width": args.width, "epochs": args.epochs, "data": args.data,
               "plain_fit_images_per_second": round(plain, 1), "kerasport_images_per_second": round(ours, 1),
               "ratio": round(ours / plain, 3), "target_ratio": 0.95, "runs": results}
    print(f"plain model.fit : {plain:8.1f} images/s")
    print(f"kerasport train : {ours:8.1f} images/s")
    print(f"ratio           : {ours / plain:8.3f}  (target >= 0.95)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2))


# --- --matrix: the training defaults measured across datasets and seeds ----------------------------------------

MATRIX_DATASETS = ("digits", "glyphs", "color-digits")
# Each trained variant: (label, options). One run gives both the last epoch's and the best epoch's metrics
# (metrics.json reports the weights not shipped too), so three runs per dataset and seed cover six columns.
MATRIX_RUNS = {"constant": {"lr_schedule": "none", "restore_best": False, "lr_warmup": 0},
               "cosine": {"lr_schedule": "cosine", "restore_best": True, "lr_warmup": 0},
               "cosine+warmup": {"lr_schedule": "cosine", "restore_best": True, "lr_warmup": 1}}
# Columns of the table: (run, which weights) -> headline.
MATRIX_COLUMNS = {"old defaults (constant rate, last epoch)": ("constant", "final"),
                  "constant + restore best": ("constant", "best"),
                  "cosine, last epoch": ("cosine", "final"),
                  "cosine + restore best": ("cosine", "best"),
                  "cosine + warm-up, last epoch": ("cosine+warmup", "final"),
                  "new defaults (cosine + 1-epoch warm-up + restore best)": ("cosine+warmup", "best")}
GLYPH_CLASSES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def make_glyphs(root: Path, per_class: int = 80, seed: int = 0) -> Path:
    """Capital letters in Pillow's bundled font (load_default(size)), random size, shift, rotation and noise."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    for letter in GLYPH_CLASSES:
        folder = root / letter
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            canvas = Image.new("L", (48, 48), 0)
            dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
            ImageDraw.Draw(canvas).text((24 + dx, 24 + dy), letter, fill=int(rng.integers(150, 256)),
                                        font=ImageFont.load_default(size=int(rng.integers(20, 29))), anchor="mm")
            canvas = canvas.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR)
            pixels = np.asarray(canvas, np.float32)[8:40, 8:40] + rng.normal(0, 15, (32, 32))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return root


def make_color_digits(path: Path, variants: int = 2, seed: int = 0) -> Path:
    """sklearn's digits re-drawn at 32x32 RGB: random size and place, a bright random colour on a dark random
    colour, noise.

    Split by source image first (the fixed split `digits` uses), so no drawing of a test digit is trained on.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from kerasport.train.data import _split

    digits = load_digits()
    rng = np.random.default_rng(seed)
    ids = np.arange(len(digits.target))
    train_ids, _, test_ids, _ = _split(ids, digits.target)

    def draw(source: int):
        box = int(rng.integers(18, 25))
        top, left = (int(v) + (32 - box) // 2 for v in rng.integers(-3, 4, 2))
        glyph = np.asarray(Image.fromarray(digits.images[source].astype(np.float32) / 16.0).resize(
            (box, box), Image.BILINEAR))
        mask = np.zeros((32, 32), np.float32)
        mask[top:top + box, left:left + box] = np.clip(glyph, 0, 1)
        background, foreground = rng.uniform(0, 90, 3), rng.uniform(120, 255, 3)
        picture = background + mask[..., None] * (foreground - background) + rng.normal(0, 15, (32, 32, 3))
        return np.clip(picture, 0, 255).astype(np.uint8)

    arrays = {}
    for split, chosen in (("train", train_ids), ("test", test_ids)):
        sources = np.repeat(chosen, variants)
        arrays[f"x_{split}"] = np.stack([draw(int(source)) for source in sources])
        arrays[f"y_{split}"] = digits.target[sources].astype(np.uint8)
    np.savez(path, **arrays)
    return path


def matrix_sources(names: list[str], data_dir: Path) -> dict[str, dict]:
    """Dataset name -> TrainConfig options (data spec, image size, colour), generating what is missing."""
    sources = {}
    for name in names:
        if name == "digits":
            sources[name] = {"data": "digits"}
        elif name == "glyphs":
            root = data_dir / "glyphs"
            if not root.is_dir():
                make_glyphs(root)
            sources[name] = {"data": f"images:{root}", "image_size": "32x32", "color": "grayscale"}
        elif name == "color-digits":
            path = data_dir / "color-digits.npz"
            if not path.is_file():
                make_color_digits(path)
            sources[name] = {"data": f"npz:{path}"}  # 32x32x3 arrays: RGB by --color auto
        else:
            raise SystemExit(f"--datasets: unknown {name!r}; expected some of {', '.join(MATRIX_DATASETS)}")
    return sources


def _spread(values: list[float]) -> dict:
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "values": [float(v) for v in values]}


def run_matrix(args) -> None:
    import tempfile

    import keras
    from rich.console import Console
    from rich.table import Table

    from kerasport.train.config import TrainConfig
    from kerasport.train.fit import train

    seeds = [int(seed) for seed in args.seeds.split(",")]
    names = [name for name in args.datasets.split(",") if name]
    runs = {run: MATRIX_RUNS[run] for run in args.runs.split(",")}
    columns = {column: (run, side) for column, (run, side) in MATRIX_COLUMNS.items() if run in runs}
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir or scratch)
        data_dir.mkdir(parents=True, exist_ok=True)
        sources = matrix_sources(names, data_dir)
        raw: dict = {name: {run: [] for run in runs} for name in names}
        for name, source in sources.items():
            for seed in seeds:
                for run, options in runs.items():
                    keras.backend.clear_session()
                    config = TrainConfig(**source, **options, arch=args.arch, width=args.width, seed=seed,
                                         epochs=args.matrix_epochs, limit=args.matrix_limit,
                                         run=str(Path(scratch) / "run"))
                    metrics = train(config).metrics
                    kept = {key: metrics[key] for key in ("test_accuracy", "final_epoch_test_accuracy",
                                                          "best_epoch_test_accuracy", "best_epoch", "fit_seconds",
                                                          "n_train", "n_test", "parameters")}
                    raw[name][run].append(kept)
                    print(f"{name:13s} seed {seed} {run:14s} last {kept['final_epoch_test_accuracy']:.4f} "
                          f"best {kept['best_epoch_test_accuracy']:.4f} (epoch {kept['best_epoch']}) "
                          f"{kept['fit_seconds']:.0f}s", flush=True)
    table = {name: {column: _spread([r[f"{side}_epoch_test_accuracy"] for r in raw[name][run]])
                    for column, (run, side) in columns.items()} for name in names}
    show = Table(title=f"test accuracy, mean ± std over seeds {seeds} ({args.matrix_epochs} epochs, "
                       f"{args.arch} width {args.width}, limit {args.matrix_limit or 'none'})")
    show.add_column("dataset")
    for column in columns:
        show.add_column(column, justify="right")
    for name in names:
        show.add_row(name, *(f"{cell['mean']:.4f} ± {cell['std']:.4f}" for cell in table[name].values()))
    Console(width=200).print(show)
    if args.json_path:
        described = {name: {key: source for key, source in sources[name].items()} for name in names}
        Path(args.json_path).write_text(json.dumps(
            {"epochs": args.matrix_epochs, "arch": args.arch, "width": args.width, "seeds": seeds,
             "limit": args.matrix_limit,
             "datasets": described, "runs": runs, "columns": {c: list(v) for c, v in columns.items()},
             "table": table, "raw": raw}, indent=2))


# --- --workers N: multi-worker training vs one process, on the same global batch ------------------------------


def run_workers(args) -> None:
    """Single process, 1 worker and N workers on the same data, global batch and seed; one table and JSON."""
    import subprocess

    cli = [sys.executable, "-m", "kerasport.app.cli"]
    n, batch = args.workers, args.global_batch
    if batch % n:
        raise SystemExit(f"--global-batch {batch} must be a multiple of --workers {n}")
    common = ["--data", args.data, "--arch", args.arch, "--width", str(args.width), "--epochs", str(args.epochs),
              "--json"]
    variants = {"single process (model.fit)": ["train", "--batch-size", str(batch)],
                "1 worker (distributed loop)": ["launch", "--workers", "1", "--batch-size", str(batch)],
                f"{n} workers": ["launch", "--workers", str(n), "--batch-size", str(batch // n)]}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name, words in variants.items():
                run = str(Path(scratch) / f"run{repeat}-{len(results)}")
                started = time.perf_counter()
                done = subprocess.run([*cli, *words, *common, "--run", run], capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                metrics = json.loads(done.stdout.strip().splitlines()[-1])
                steps = -(-metrics["n_train"] // batch) * metrics["epochs_this_session"]
                row = {"images_per_second": metrics["train_images_per_second"], "fit_seconds": metrics["fit_seconds"],
                       "ms_per_step": round(1000 * metrics["fit_seconds"] / steps, 1),
                       "test_accuracy": metrics["test_accuracy"], "wall_seconds": round(time.perf_counter() -
                                                                                         started, 1),
                       "parameters": metrics["parameters"]}
                if name not in results or row["images_per_second"] > results[name]["images_per_second"]:
                    results[name] = row
                print(f"repeat {repeat + 1}: {name}: {row}")
    parameters = next(iter(results.values()))["parameters"]
    allreduce_ms = measure_allreduce(n, parameters) if n > 1 else 0.0
    single, many = results["single process (model.fit)"], results[f"{n} workers"]
    print(f"{'':30} {'images/s':>9} {'ms/step':>8} {'test acc':>9} {'wall s':>7}")
    for name, row in results.items():
        print(f"{name:30} {row['images_per_second']:9.1f} {row['ms_per_step']:8.1f} {row['test_accuracy']:9.4f} "
              f"{row['wall_seconds']:7.1f}")
    print(f"{n} workers / single process: {many['images_per_second'] / single['images_per_second']:.3f}x images/s; "
          f"all-reduce of {parameters:,} gradients between {n} workers: {allreduce_ms:.1f} ms per step")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "data": args.data, "arch": args.arch, "width": args.width, "epochs": args.epochs, "global_batch": batch,
            "workers": n, "runs": results, "allreduce_ms_per_step": round(allreduce_ms, 2),
            "speedup_vs_single": round(many["images_per_second"] / single["images_per_second"], 3)}, indent=2))


def measure_allreduce(workers: int, floats: int) -> float:
    """Median time of one float32 all-reduce of `floats` values between `workers` local processes (ms)."""
    import subprocess

    from kerasport.train.launch import free_ports

    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(workers))
    probes = [subprocess.Popen([sys.executable, __file__, "--allreduce-probe", str(floats), str(rank), addresses],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
              for rank in range(workers)]
    outputs = [probe.communicate(timeout=600)[0] for probe in probes]
    return float(json.loads(outputs[0].strip().splitlines()[-1])["median_ms"])


def allreduce_probe(floats: int, rank: int, addresses: str, repeats: int = 20) -> None:
    import os

    import numpy as np

    from kerasport.train.distributed import local_cluster

    os.environ["TF_CONFIG"] = local_cluster(addresses.split(","), rank).tf_config()
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    value = tf.ones([floats], tf.float32)

    @tf.function
    def reduce():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", value))

    timings = []
    for index in range(repeats + 3):
        started = time.perf_counter()
        strategy.experimental_local_results(reduce())[0].numpy()
        if index >= 3:  # warm-up: tracing and the first connections
            timings.append(1000 * (time.perf_counter() - started))
    print(json.dumps({"median_ms": float(np.median(timings))}))


if __name__ == "__main__":
    main()
