"""Model-zoo benchmark (issue 18): every Keras model family through import -> export -> parity, gated.

    python bench/zoo.py [--models MobileNet,lstm,...] [--all] [--formats onnx-fp32,tflite-fp32,...]
                        [--cap-s 900] [--epochs 2] [--examples 320] [--json out.json]

Default: one Keras Applications model per family (`weights=None`, 10 classes, the smallest input each allows) plus
recurrent (LSTM, GRU, SimpleRNN, Bidirectional), attention, embedding and preprocessing-inside models. `--all`
runs every application in `ALL_APPLICATIONS`. Each model runs in its own child process with a wall-clock cap.

With `weights=None` the outputs are near-uniform, and agreement on near-ties proves little, so each model is first
fine-tuned briefly on scikit-learn's `digits` (8x8 pictures of 10 digits, resized to the model's input; rows of the
picture as a sequence for the recurrent and attention models, pixel values as tokens for the embedding model), and
then the head (its last layer with a kernel) is scaled, x2 steps, until at most 10 % of examples are near-ties.
The table reports the share of eval examples whose top-2 margin is below the int8 tie margin (near-ties).

Per model and variant it prints: built / failed (why) / parity verdict, max |diff| against Keras on the eval
inputs, the export seconds of the variant and the parity seconds of the candidate; per model the whole wall time
(import + fine-tune + export + parity) and the machine (CPU model, cores, runtime versions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kerasport.tfenv import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402

# One application per family, with the smallest input it accepts (weights=None). Keras 3.15's keras.applications
# has no RegNet (the models exist only in keras-hub), so that family is not here.
FAMILIES = {
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "ResNet50": 32, "ResNet50V2": 32,
    "DenseNet121": 32, "EfficientNetB0": 32, "EfficientNetV2B0": 32, "VGG16": 32, "Xception": 71,
    "InceptionV3": 75, "InceptionResNetV2": 75, "NASNetMobile": 32, "ConvNeXtTiny": 32,
}
ALL_APPLICATIONS = {
    **FAMILIES, "MobileNetV3Large": 32, "ResNet101": 32, "ResNet152": 32, "ResNet101V2": 32, "ResNet152V2": 32,
    "DenseNet169": 32, "DenseNet201": 32, "VGG19": 32, "NASNetLarge": 32, "ConvNeXtSmall": 32, "ConvNeXtBase": 32,
    "ConvNeXtLarge": 32, "ConvNeXtXLarge": 32,
    **{f"EfficientNetB{i}": 32 for i in range(1, 8)}, **{f"EfficientNetV2{s}": 32 for s in ("B1", "B2", "B3", "S")},
}
LAYER_MODELS = ("lstm", "gru", "simplernn", "bidirectional", "attention", "embedding", "preprocessing")
CLASSES = 10
VOCABULARY = 17  # digits' pixel values are 0..16


def machine() -> dict:
    """CPU model, cores and runtime versions: a figure is never recorded without them."""
    from kerasport.export.stage import tool_versions

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **tool_versions()}


def digits(kind: str, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits shaped for a model kind: pictures (0..255), row sequences or tokens; and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images, labels = data.images.astype(np.float32), data.target.astype(np.int64)  # [N, 8, 8], 0..16
    if kind in ("lstm", "gru", "simplernn", "bidirectional", "attention"):
        return images / 16.0, labels
    if kind == "embedding":
        return images.reshape(len(images), -1).astype(np.int32), labels
    if kind == "preprocessing":
        return (images * 255.0 / 16.0)[..., None], labels
    factor = -(-side // 8)
    pictures = np.kron(images * 255.0 / 16.0, np.ones((factor, factor), np.float32))[:, :side, :side]
    return np.repeat(pictures[..., None], 3, axis=-1), labels


def build(name: str, side: int):
    """The Keras model `name`: an application (weights=None, 10 classes, `side` pixels) or a layer-family model."""
    import keras

    layers = keras.layers
    if name in ALL_APPLICATIONS:
        application = getattr(keras.applications, name)
        inputs = keras.Input((side, side, 3), name="pixels")
        scaled = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
        return keras.Model(inputs, application(input_shape=(side, side, 3), weights=None, classes=CLASSES)(scaled),
                           name=name.lower())
    if name == "embedding":
        tokens = keras.Input((64,), dtype="int32", name="tokens")
        hidden = layers.GlobalAveragePooling1D()(layers.Embedding(VOCABULARY, 16)(tokens))
        return keras.Model(tokens, layers.Dense(CLASSES, activation="softmax")(layers.Dense(32, "relu")(hidden)))
    if name == "preprocessing":
        pixels = keras.Input((8, 8, 1), name="pixels")
        hidden = layers.Rescaling(1 / 255)(layers.Resizing(16, 16)(pixels))
        hidden = layers.Conv2D(16, 3, activation="relu")(hidden)
        hidden = layers.GlobalAveragePooling2D()(hidden)
        return keras.Model(pixels, layers.Dense(CLASSES, activation="softmax")(hidden))
    rows = keras.Input((8, 8), name="rows")
    if name == "attention":
        hidden = layers.MultiHeadAttention(2, 8)(layers.Dense(16)(rows), layers.Dense(16)(rows))
        hidden = layers.LayerNormalization()(hidden)
        hidden = layers.Dense(32, activation="gelu")(hidden)
        hidden = layers.GlobalAveragePooling1D()(hidden)
    else:
        recurrent = {"lstm": lambda: layers.LSTM(32), "gru": lambda: layers.GRU(32),
                     "simplernn": lambda: layers.SimpleRNN(32),
                     "bidirectional": lambda: layers.Bidirectional(layers.LSTM(16))}[name]
        hidden = recurrent()(rows)
    return keras.Model(rows, layers.Dense(CLASSES, activation="softmax")(hidden))


def fine_tune(model, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """A short fit so the outputs are decisive; returns the training accuracy of the last epoch."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    set_batch_norm_statistics(model, x[:64])
    return float(history.history["accuracy"][-1])


def set_batch_norm_statistics(model, x: np.ndarray) -> None:
    """Batch norms' moving statistics from one training-mode pass (momentum 0), as devtools/imported_models.py.

    Two epochs move the moving averages (momentum 0.99) only a little, so in inference mode the untrained
    statistics would flatten the activations and every output would be near-uniform.
    """
    import keras

    norms = [layer for layer in iterate_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum


def iterate_layers(model):
    """Every layer, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from iterate_layers(layer)


def last_kernel_layer(model):
    """The last layer with a kernel, looking into nested models: the classification head (Dense or 1x1 Conv)."""
    found = None
    for layer in model.layers:
        inner = last_kernel_layer(layer) if hasattr(layer, "layers") else None
        if inner is not None:
            found = inner
        elif getattr(layer, "kernel", None) is not None:
            found = layer
    return found


def sharpen_head(model, x: np.ndarray, tie_margin: float, target_share: float = 0.1) -> float:
    """Scale the softmax layer's kernel and bias (x2 steps) until few examples are near-ties; the factor used.

    A briefly fine-tuned model with `weights=None` can still answer near-uniformly; multiplying the logits keeps
    its ranking and makes the outputs decisive, so agreement between runtimes is tested on real decisions.
    """
    layer = last_kernel_layer(model)
    weights = layer.get_weights() if layer is not None else []
    factor = 1.0
    while weights and factor < 4096:
        top2 = np.sort(model.predict(x, verbose=0), axis=1)[:, -2:]
        if np.mean(top2[:, 1] - top2[:, 0] < tie_margin) <= target_share:
            break
        factor *= 2
        layer.set_weights([w * factor for w in weights])
    return factor


def run_one(name: str, formats: list[str], epochs: int, examples: int, work: Path) -> dict:
    """Import -> export -> parity of one model, in this process; the rows for the table."""
    import keras

    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.ingest.importer import ContractHints, contract_from_keras, write_imported_bundle
    from kerasport.parity.stage import ParityOptions, run_parity
    from kerasport.samples import Samples
    from kerasport.tolerances import TolerancePolicy

    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    side = ALL_APPLICATIONS.get(name, 32)
    kind = "picture" if name in ALL_APPLICATIONS else name
    x, y = digits(kind, side)
    order = np.random.default_rng(0).permutation(len(x))
    train, held = order[:examples], order[examples:examples + 64]
    model = build(name, side)
    accuracy = fine_tune(model, x[train], y[train], epochs)
    tie_margin = TolerancePolicy().int8.tie_margin
    factor = sharpen_head(model, x[train[:64]], tie_margin)
    contract = contract_from_keras(model, ContractHints(task="classification"))
    (input_name,) = contract.input_names
    (output_name,) = contract.output_names
    probabilities = model.predict(x[held], verbose=0)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    near_ties = float(np.mean(top2[:, 1] - top2[:, 0] < tie_margin))
    run = work / name
    write_imported_bundle(run, model, contract, eval_samples=Samples({input_name: x[held]}, {output_name: y[held]}),
                          calibration=Samples({input_name: x[train[:100]]}), name=name.lower(), version="1",
                          source={"kind": "bench/zoo.py"})
    ready = time.perf_counter()
    exported = export_bundle(ExportOptions(run=str(run), formats=formats, keep_going=True, calibration_samples=100))
    export_seconds = time.perf_counter() - ready
    # The gate only: speed is measured by `kerasport parity` (perf), not part of the seconds reported here.
    parity = run_parity(ParityOptions(run=str(run), sweep=False, perf=False))
    parity_seconds = time.perf_counter() - ready - export_seconds
    rows = []
    for row in exported.rows:
        candidate = parity.report.candidates.get(row["variant"])
        stats = (candidate.eval_stats(output_name) if candidate else None) or {}
        rows.append({"variant": row["variant"], "status": row["status"], "export_seconds": row["seconds"],
                     "verdict": candidate.verdict if candidate else None,
                     "parity_seconds": candidate.seconds if candidate else None,
                     "max_abs_diff": stats.get("max_abs_diff"),
                     "rung": exported.manifest.artifact(row["variant"]).get("rung"),
                     "why": [f"{check.id}: {check.message}" for check in
                             (candidate.failed_checks() if candidate else [])][:2]})
    return {"model": name, "input": list(contract.inputs[0].shape), "train_accuracy": round(accuracy, 3),
            "head_scale": factor,
            "near_tie_share": round(near_ties, 3), "tie_margin": tie_margin, "rows": rows,
            "export_seconds": round(export_seconds, 1), "parity_seconds": round(parity_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def run_capped(name: str, args) -> dict:
    """One model in a child process (a crash or the cap costs that model only)."""
    with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as scratch:
        result = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--one", name, "--formats", args.formats, "--epochs", str(args.epochs),
                   "--examples", str(args.examples), "--work", scratch, "--json", str(result)]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.cap_s)
        except subprocess.TimeoutExpired:
            return {"model": name, "error": f"over the {args.cap_s:g} s cap", "seconds": args.cap_s, "rows": []}
        if done.returncode != 0 or not result.is_file():
            tail = [line for line in (done.stderr or "").splitlines() if line.strip()][-1:] or ["no output"]
            return {"model": name, "error": f"exit {done.returncode}: {tail[0][:200]}", "rows": [],
                    "seconds": round(time.perf_counter() - started, 1)}
        return json.loads(result.read_text())


def print_table(results: list[dict]) -> None:
    print(f"{'model':<18} {'variant':<15} {'result':<58} {'max|diff|':>10} {'export s':>9} {'parity s':>9}")
    for model in results:
        if model.get("error"):
            print(f"{model['model']:<18} {'-':<15} {'error: ' + model['error']:<58}")
            continue
        for row in model["rows"]:
            if row["status"] != "ok":
                result = row["status"][:58]
            else:
                result = f"built ({row['rung']}) -> {row['verdict']}" if row.get("rung") else \
                    f"built -> {row['verdict']}"
            diff = f"{row['max_abs_diff']:.2e}" if row.get("max_abs_diff") is not None else "-"
            parity = f"{row['parity_seconds']:.2f}" if row.get("parity_seconds") is not None else "-"
            print(f"{model['model']:<18} {row['variant']:<15} {result:<58} {diff:>10} {row['export_seconds']:>9.1f} "
                  f"{parity:>9}")
            for why in row.get("why", []):
                print(f"{'':<34}  {why[:200]}")
        print(f"{model['model']:<18} {'(model)':<15} train acc {model['train_accuracy']:.2f}, head x"
              f"{model['head_scale']:g}, near-ties "
              f"{model['near_tie_share']:.0%} (top-2 margin < {model['tie_margin']}), export "
              f"{model['export_seconds']} s + parity {model['parity_seconds']} s, total {model['seconds']} s")


def main() -> None:
    from kerasport.export.variants import DEFAULT_FORMATS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*FAMILIES, *LAYER_MODELS]))
    parser.add_argument("--all", action="store_true", help="every application in ALL_APPLICATIONS")
    parser.add_argument("--formats", default=",".join(DEFAULT_FORMATS))
    parser.add_argument("--cap-s", type=float, default=900.0, help="wall-clock cap per model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--examples", type=int, default=320, help="fine-tuning examples")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(args.one, args.formats.split(","), args.epochs, args.examples, args.work)
        args.json.write_text(json.dumps(result))
        return
    names = [*ALL_APPLICATIONS, *LAYER_MODELS] if args.all else args.models.split(",")
    unknown = [name for name in names if name not in ALL_APPLICATIONS and name not in LAYER_MODELS]
    if unknown:
        known = ", ".join([*ALL_APPLICATIONS, *LAYER_MODELS])
        parser.error(f"--models: unknown {', '.join(unknown)}; expected {known}")
    environment = machine()
    results = []
    for name in names:
        results.append(run_capped(name, args))
        print_table(results[-1:])  # as each model finishes: a long run can be stopped without losing the rest
        print(flush=True)
        if args.json:
            args.json.write_text(json.dumps({"machine": environment, "models": results}, indent=1))
    print_table(results)
    print(f"machine: {environment}")


if __name__ == "__main__":
    main()
