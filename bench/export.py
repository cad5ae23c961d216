"""Export benchmark: conversion seconds and size per variant, then latency of every variant in its own runtime
against Keras `model(x)` and `model.predict`, at batch 1 and 64, all measured in this one run.

Also measures the two choices the export stage made: static (QDQ) vs dynamic int8 ONNX quantization, and whether
an offline onnxruntime graph optimization shortens session start.

    python bench/export.py [--run DIR] [--arch seed] [--repeats 50] [--json out.json]

Without --run it trains a 1-epoch model of --arch on digits first (accuracy is irrelevant to timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kerasport.tfenv import quiet_tensorflow  # noqa: E402

quiet_tensorflow()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def timed(fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def runner(path: Path, artifact_format: str, x: np.ndarray):
    """One inference of `x` in the artifact's runtime, through the same adapters parity and serve use."""
    from kerasport.runtimes import RuntimeSettings, open_runtime

    # LiteRT defaults to one thread; give it both cores like onnxruntime takes by default.
    runtime = open_runtime(path, artifact_format, RuntimeSettings(threads=2 if artifact_format == "tflite" else 0))
    (input_name,), (output_name,) = runtime.input_names, runtime.output_names
    return lambda: runtime.run({input_name: x})[output_name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing trained run directory (default: train a fresh 1-epoch one)")
    parser.add_argument("--arch", default="seed")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    import keras

    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.export.to_onnx import quantize_onnx_dynamic
    from kerasport.export.variants import VARIANTS
    from kerasport.train.config import TrainConfig
    from kerasport.train.fit import train

    scratch = Path(tempfile.mkdtemp(prefix="kerasport-bench-"))
    run = Path(args.run) if args.run else scratch / "run"
    if not args.run:
        train(TrainConfig(arch=args.arch, epochs=1, run=str(run)))

    started = time.perf_counter()
    result = export_bundle(ExportOptions(run=str(run)))
    export_seconds = time.perf_counter() - started
    manifest = result.manifest
    print(f"\n== conversion ({manifest.model.get('arch')} arch, {manifest.model.get('parameters', 0):,} parameters)")
    print(f"{'variant':<16}{'size MB':>10}{'seconds':>10}")
    for row in result.rows:
        print(f"{row['variant']:<16}{row['bytes'] / 1e6:>10.2f}{row['seconds']:>10.2f}")
    conversion_total = sum(row["seconds"] for row in result.rows)
    print(f"{'all variants':<16}{'':>10}{conversion_total:>10.2f}   (whole export call incl. loading: "
          f"{export_seconds:.1f} s; target <= 60 s)")

    from kerasport.samples import load_samples

    contract = manifest.contract
    (image_input,), (output,) = contract.inputs, contract.outputs
    sample = load_samples(run / manifest.artifact("eval_sample").path, contract)
    images, labels = sample.inputs[image_input.name].astype(np.float32), sample.targets[output.name]
    model = keras.saving.load_model(run / "train" / "model.keras")
    reference = keras.ops.convert_to_numpy(model.predict(images, batch_size=256, verbose=0))

    latency: dict[str, dict[str, float]] = {}
    for batch in (1, 64):
        x = np.ascontiguousarray(np.resize(images, image_input.example_shape(batch)))
        repeats = args.repeats if batch == 1 else max(5, args.repeats // 5)
        latency.setdefault("keras model(x)", {})[f"batch{batch}"] = timed(
            lambda x=x: model(x, training=False), repeats) / batch
        latency.setdefault("keras predict", {})[f"batch{batch}"] = timed(
            lambda x=x: model.predict(x, verbose=0), repeats) / batch
        for name, variant in VARIANTS.items():
            if variant.runtime == "tflite-micro":
                continue
            path = run / manifest.artifact(name).path
            latency.setdefault(name, {})[f"batch{batch}"] = timed(runner(path, variant.format, x), repeats) / batch

    print("\n== latency per image (median), each variant in its own runtime, Keras measured in the same run")
    print(f"{'runtime':<18}{'batch 1 ms':>12}{'batch 64 ms':>13}{'vs predict b1':>15}")
    predict_b1 = latency["keras predict"]["batch1"]
    for name, values in latency.items():
        print(f"{name:<18}{values['batch1'] * 1e3:>12.3f}{values['batch64'] * 1e3:>13.4f}"
              f"{predict_b1 / values['batch1']:>14.1f}x")
    int8_speedup = latency["tflite-fp32"]["batch1"] / latency["tflite-int8"]["batch1"]
    print(f"tflite-int8 vs tflite-fp32 at batch 1: {int8_speedup:.2f}x faster (target >= 4x)")

    # Static QDQ (what the export stage ships) vs dynamic int8 ONNX: speed and agreement with Keras.
    dynamic_path = scratch / "model_dynamic_int8.onnx"
    quantize_onnx_dynamic(run / "export" / "model.onnx", dynamic_path)
    comparison = {}
    for label, path in (("static QDQ", run / "export" / "model_int8.onnx"), ("dynamic", dynamic_path)):
        outputs = runner(path, "onnx", images)()
        x1 = images[:1]
        comparison[label] = {
            "batch1_ms": timed(runner(path, "onnx", x1), args.repeats) * 1e3,
            "top1_agreement": float((outputs.argmax(1) == reference.argmax(1)).mean()),
            "accuracy": float((outputs.argmax(1) == labels).mean()),
            "max_abs_diff": float(np.abs(outputs - reference).max()),
        }
    print("\n== ONNX int8: static QDQ vs dynamic quantization (Keras accuracy "
          f"{float((reference.argmax(1) == labels).mean()):.4f} on {len(labels)} held-out images)")
    for label, values in comparison.items():
        print(f"{label:<12} batch1 {values['batch1_ms']:.3f} ms  top-1 agreement {values['top1_agreement']:.4f}  "
              f"accuracy {values['accuracy']:.4f}  max|diff| {values['max_abs_diff']:.4f}")

    # Offline graph optimization: does a pre-optimized model start faster?
    import onnxruntime as ort

    optimized = scratch / "model_optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(run / "export" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    load_plain = timed(lambda: ort.InferenceSession(str(run / "export" / "model.onnx"),
                                                    providers=["CPUExecutionProvider"]), 5, warmup=1)
    offline = ort.SessionOptions()
    offline.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    load_optimized = timed(lambda: ort.InferenceSession(str(optimized), offline,
                                                        providers=["CPUExecutionProvider"]), 5, warmup=1)
    print(f"\n== ORT session start: as exported {load_plain * 1e3:.1f} ms, pre-optimized offline "
          f"{load_optimized * 1e3:.1f} ms ({load_plain / load_optimized:.2f}x)")

    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "conversion": result.rows, "conversion_total_seconds": conversion_total,
            "export_call_seconds": export_seconds, "latency_seconds_per_image": latency,
            "int8_vs_fp32_tflite_batch1": int8_speedup, "onnx_int8": comparison,
            "ort_session_start_ms": {"as_exported": load_plain * 1e3, "pre_optimized": load_optimized * 1e3},
        }, indent=2))


if __name__ == "__main__":
    main()
