"""Training throughput: kerasport's training loop vs a plain `model.fit` on the same arrays, in one run.

kerasport's loop adds the callbacks the reference design asks for (LR recording, CSVLogger, ModelCheckpoint,
ReduceLROnPlateau, BackupAndRestore, progress bar). This prints images/s for both and the ratio (target >= 0.95).

    python bench/train.py [--epochs 3] [--arch seed] [--width 1.0] [--repeats 2] [--json out.json]
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
    args = parser.parse_args()

    import keras
    from rich.console import Console

    from kerasport.train.config import TrainConfig
    from kerasport.train.data import load_dataset
    from kerasport.train.fit import _validation_split, train
    from kerasport.train.models import build_model, compile_model

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


if __name__ == "__main__":
    main()
