"""Memory of a model repository: the RSS of one `kerasport serve --repository` process holding 3 models x 2
versions — the `seed` architecture in fp32 (ONNX), the `edge` architecture in int8 (TFLite) and an imported
MobileNetV2 (ONNX fp32) — against the same server holding one version of each model, measured side by side.

    python bench/repository_rss.py [--json out.json]

Bundles are real: seed and edge trained briefly on synthetic digits at full width (the weights' size is what
counts here, not their accuracy), the MobileNetV2 through the import library; each exported to the one variant
served, parity-checked. RSS is the whole server process tree, read from /proc after one inference on every version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kerasport.tfenv import quiet_tensorflow  # noqa: E402

# What the figures depend on besides the runtimes, recorded with the machine.
SERVING_PACKAGES = ("kerasport", "model-signing", "uvicorn")
quiet_tensorflow()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# (model folder, how it is built, the one variant exported and served)
MODELS = (("seed", "seed", "onnx-fp32"), ("edge", "edge", "tflite-int8"), ("mobilenet", "imported", "onnx-fp32"))
VERSIONS = (1, 2)


def build_trained(run: Path, arch: str, variant: str, seed: int) -> None:
    from helpers import write_idx_dir

    from kerasport.train.config import TrainConfig
    from kerasport.train.fit import train

    data = write_idx_dir(run.parent / f"idx-{run.name}")
    train(TrainConfig(data=f"idx:{data}", run=str(run), arch=arch, epochs=1, batch_size=32, seed=seed))
    finish(run, variant)


def build_imported(run: Path, variant: str, seed: int) -> None:
    import numpy as np

    from devtools.imported_models import MOBILENET_LABELS, mobilenet_v2, noise_pictures
    from kerasport.ingest.importer import ContractHints, contract_from_keras, write_imported_bundle
    from kerasport.samples import Samples

    model = mobilenet_v2(seed=seed)
    contract = contract_from_keras(model, ContractHints(labels=MOBILENET_LABELS), {})
    (picture,), (label,) = contract.input_names, contract.output_names
    labels = (seed + np.arange(16)) % len(MOBILENET_LABELS)
    samples = Samples({picture: noise_pictures(16, seed=seed)}, {label: labels})
    write_imported_bundle(run, model, contract, eval_samples=samples, calibration=samples.take(8), name="mobilenet",
                          version=str(seed), source={"kind": "bench", "seed": seed})
    finish(run, variant)


def finish(run: Path, variant: str) -> None:
    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity

    export_bundle(ExportOptions(run=str(run), formats=[variant], calibration_samples=16))
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    print(f"  {run}: parity exit {result.exit_code} {result.failures[:2]}", flush=True)


def build_repository(root: Path) -> Path:
    repository = root / "repository"
    for folder, kind, variant in MODELS:
        for version in VERSIONS:
            run = repository / folder / str(version)
            started = time.perf_counter()
            if kind == "imported":
                build_imported(run, variant, seed=version)
            else:
                build_trained(run, kind, variant, seed=version)
            print(f"built {folder}/{version} in {time.perf_counter() - started:.1f} s", flush=True)
    return repository


def measure(repository: Path, policy: str) -> dict:
    """Serve the repository under `policy`, infer once on every ready version, read the process tree's RSS."""
    import httpx
    import numpy as np
    from soak import tree_rss_mb

    from devtools.serving import ServerProcess
    from kerasport.manifest import load_manifest

    server = ServerProcess(repository, "--repository", str(repository), "--version-policy", policy,
                           "--no-access-log", "--workers", "1")
    try:
        ready_rss = tree_rss_mb(server.pid)
        with httpx.Client(timeout=60) as client:
            rows = client.post(f"{server.url}/v2/repository/index").json()
            for row in rows:
                if row["state"] != "READY":
                    continue
                contract = load_manifest(repository / row["name"] / row["version"]).contract
                inputs = [{"name": spec.name, "datatype": spec.v2_datatype, "shape": [1, *spec.item_shape],
                           "data": np.zeros([1, *spec.item_shape]).ravel().tolist()} for spec in contract.inputs]
                response = client.post(f"{server.url}/v2/models/{row['name']}/versions/{row['version']}/infer",
                                       json={"inputs": inputs})
                assert response.status_code == 200, response.text
        time.sleep(1)
        return {"policy": policy, "versions": [f"{r['name']}/{r['version']}:{r['state']}" for r in rows],
                "ready_rss_mb": ready_rss, "rss_mb": tree_rss_mb(server.pid)}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    from kerasport.perf import host_info

    root = Path(tempfile.mkdtemp(prefix="kerasport-repository-rss-"))
    try:
        repository = build_repository(root)
        artifact_mb = {f"{f}/{v}": sum(p.stat().st_size for p in (repository / f / str(v) / "export").rglob("*")
                                       if p.is_file()) / 2**20 for f, _, _ in MODELS for v in VERSIONS}
        one = measure(repository, "latest:1")
        both = measure(repository, "all")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"machine": host_info(SERVING_PACKAGES), "artifact_mb": artifact_mb, "one_version_each": one,
              "two_versions_each": both, "ratio": both["rss_mb"] / one["rss_mb"]}
    print("== repository RSS (whole server process tree, after one inference per version)")
    print(f"exported files (MB): {json.dumps({k: round(v, 2) for k, v in artifact_mb.items()})}")
    for label, row in (("3 models x 1 version", one), ("3 models x 2 versions", both)):
        print(f"{label:22} {row['rss_mb']:7.0f} MB  (at ready {row['ready_rss_mb']:.0f} MB)  {row['versions']}")
    print(f"ratio 2 versions / 1 version: {report['ratio']:.2f}")
    print(f"machine: {report['machine']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
