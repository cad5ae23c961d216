"""`kerasport package --target kserve`: KServe `InferenceService` manifests speaking the V2 (Open Inference) protocol.

Two alternatives, one file each:

- `inferenceservice-triton.yaml`: `spec.predictor.triton` (protocolVersion v2) on the Triton model repository
  written beside it in `model_repository/` (the ONNX variants that passed parity); upload that folder and put its
  URI in `storageUri` (a placeholder unless `--storage-uri` is given). Written only when an ONNX variant qualifies.
- `inferenceservice-kerasport.yaml`: kerasport's own TF-free server as a custom predictor container
  (`kerasport serve --run /bundle --host 0.0.0.0 --port 8080`; KServe reads a custom container's protocol from its
  `PROTOCOL` environment variable), with readiness and liveness probes on `/v2/health/ready` and `/v2/health/live`,
  the bundle mounted read-only from a PersistentVolumeClaim, and a memory request sized from the server's measured
  resident memory (see rss.py).

The YAML is written by a small emitter (block style, every string double-quoted), so packaging needs no YAML library.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .base import PackageContext, TargetOutput
from .rss import HEADROOM, ROUND_MIB, measure_serve_rss, memory_request_mib
from .triton import write_repository

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
PROTOCOL = "v2"
PORT = 8080
BUNDLE_MOUNT = "/bundle"
CONTAINER_NAME = "kserve-container"  # the name KServe gives (and looks for in) a custom predictor's container
READY_PATH, LIVE_PATH = "/v2/health/ready", "/v2/health/live"
RUN_AS_USER = 10001  # the container target's non-root user
REPOSITORY_DIR = "model_repository"
TRITON_FILE, KERASPORT_FILE = "inferenceservice-triton.yaml", "inferenceservice-kerasport.yaml"
IMAGE_PLACEHOLDER = "REGISTRY/kerasport-serve:TAG"
STORAGE_PLACEHOLDER = "gs://BUCKET/PATH/model_repository"


def serve_args(unverified: bool) -> list[str]:
    """`kerasport serve`'s arguments inside the pod."""
    return ["serve", "--run", BUNDLE_MOUNT, "--host", "0.0.0.0", "--port", str(PORT),
            *(["--allow-unverified"] if unverified else [])]


def kerasport_service(name: str, image: str, claim: str, memory_mib: int, unverified: bool,
                      annotations: dict[str, str]) -> dict:
    """The custom-predictor InferenceService: kerasport serve, V2 probes, read-only bundle, sized memory.

    Args:
        name: metadata.name.
        image: the serving image (`--target container` builds one; its bundle is shadowed by the mount).
        claim: the PersistentVolumeClaim holding the bundle (manifest.json at its root).
        memory_mib: the memory request in MiB (the limit is twice that).
        unverified: pass --allow-unverified to the server.
        annotations: metadata.annotations.

    Returns:
        The InferenceService as a dict, ready for `to_yaml`.
    """
    probe = {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    container = {
        "name": CONTAINER_NAME, "image": image, "command": ["kerasport"], "args": serve_args(unverified),
        "env": [{"name": "PROTOCOL", "value": PROTOCOL}],
        "ports": [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": READY_PATH, "port": PORT}, "initialDelaySeconds": 2, **probe},
        "livenessProbe": {"httpGet": {"path": LIVE_PATH, "port": PORT}, "initialDelaySeconds": 10, **probe},
        "resources": {"requests": {"cpu": "1", "memory": f"{memory_mib}Mi"},
                      "limits": {"memory": f"{2 * memory_mib}Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": "bundle", "mountPath": BUNDLE_MOUNT, "readOnly": True}],
    }
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"predictor": {"containers": [container],
                                   "volumes": [{"name": "bundle", "persistentVolumeClaim": {
                                       "claimName": claim, "readOnly": True}}]}}}


def triton_service(name: str, storage_uri: str, annotations: dict[str, str]) -> dict:
    """The Triton InferenceService: `predictor.triton` with protocolVersion v2 on the uploaded model repository."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "annotations": annotations},
            "spec": {"predictor": {"triton": {"storageUri": storage_uri, "protocolVersion": PROTOCOL}}}}


def to_yaml(value, comment: str = "") -> str:
    """Block-style YAML of dicts, lists, strings, numbers and booleans (strings double-quoted, JSON escapes)."""
    header = [f"# {line}" if line else "#" for line in comment.splitlines()]
    return "\n".join([*header, *_yaml_lines(value, 0)]) + "\n"


def _yaml_lines(value, indent: int):
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            key_text = key if re.fullmatch(r"[A-Za-z0-9_./-]+", key) else json.dumps(key)
            if isinstance(item, dict | list) and item:
                yield f"{pad}{key_text}:"
                yield from _yaml_lines(item, indent + 1)
            else:
                yield f"{pad}{key_text}: {_scalar(item)}"
    else:
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = list(_yaml_lines(item, indent + 1))
                yield f"{pad}- {nested[0].lstrip()}"
                yield from nested[1:]
            else:
                yield f"{pad}- {_scalar(item)}"


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value))


def write_kserve(context: PackageContext, staging: Path) -> TargetOutput:
    """The `kserve` target: both InferenceService files, the Triton repository, the memory measurement.

    Args:
        context: the verified bundle; `chosen` holds the ONNX variants for Triton (possibly none).
        staging: the directory that becomes `--out`.

    Returns:
        The kubectl command, notes for DEPLOY.md and the manifest record (with the measurement).

    Raises:
        UsageError: the server refuses the bundle (no servable artifact passed parity).
        ConversionError: the server did not start, or an ONNX graph disagrees with the contract.
    """
    options, name = context.options, context.model_name
    annotations = {"kerasport.dev/model": context.manifest.name, "kerasport.dev/version": str(context.version),
                   "kerasport.dev/manifest-sha256": context.manifest_sha256}
    unverified = options.allow_unverified
    measured = measure_serve_rss(context.run_dir, context.manifest.contract,
                                 ["--allow-unverified"] if unverified else [])
    memory_mib = memory_request_mib(max(measured["vm_rss_mib"], measured["vm_hwm_mib"]))
    image, claim = options.image or IMAGE_PLACEHOLDER, options.bundle_claim or f"{name}-bundle"
    service = kerasport_service(name, image, claim, memory_mib, unverified, annotations)
    comment = (f"kerasport's TF-free server as a KServe custom predictor (V2 protocol), written by kerasport package.\n"
               f"image: {'given' if options.image else 'PLACEHOLDER: build one with --target container'}; "
               f"bundle: PVC {claim!r} (manifest.json at its root), mounted read-only at {BUNDLE_MOUNT}.\n"
               f"memory request: {HEADROOM} x {max(measured['vm_rss_mib'], measured['vm_hwm_mib']):.0f} MiB measured "
               f"(see DEPLOY.md), rounded up to {ROUND_MIB} MiB.")
    (staging / KERASPORT_FILE).write_text(to_yaml(service, comment))
    record = {"services": {"kerasport": KERASPORT_FILE}, "memory": {**measured, "request_mib": memory_mib},
              "image": image, "bundle_claim": claim}
    notes = [_kerasport_notes(context, measured, memory_mib, claim)]
    if context.chosen:
        entries = write_repository(context, staging / REPOSITORY_DIR)
        uri = options.storage_uri or STORAGE_PLACEHOLDER
        (staging / TRITON_FILE).write_text(to_yaml(triton_service(f"{name}-triton", uri, annotations),
                                                   f"Triton (onnxruntime backend, V2 protocol) on {REPOSITORY_DIR}/, "
                                                   f"written by kerasport package.\nstorageUri: "
                                                   f"{'given' if options.storage_uri else 'PLACEHOLDER'}: upload "
                                                   f"{REPOSITORY_DIR}/ and point storageUri at it."))
        record["services"]["triton"] = TRITON_FILE
        record.update(repository=REPOSITORY_DIR, entries=entries, storage_uri=uri)
        notes.append(f"## Triton alternative\n\nUpload `{REPOSITORY_DIR}/` (entries: "
                     f"{', '.join(f'`{entry}`' for entry in entries)}) to object storage, set `storageUri` in "
                     f"`{TRITON_FILE}` (now `{uri}`), then `kubectl apply -f {TRITON_FILE}`. KServe runs Triton with "
                     f"the repository at /mnt/models; its V2 routes and probes are Triton's own.")
    else:
        notes.append("## Triton alternative\n\nNot written: no ONNX variant of this bundle passed parity.")
    return TargetOutput(command=f"kubectl apply -f {KERASPORT_FILE}", notes=notes, record=record)


def _kerasport_notes(context: PackageContext, measured: dict, memory_mib: int, claim: str) -> str:
    peak = max(measured["vm_rss_mib"], measured["vm_hwm_mib"])
    return "\n".join([
        "## kerasport's own server (custom predictor)", "",
        f"Before applying: copy the bundle (`{context.run_dir}`: manifest.json and the served artifacts) to the root "
        f"of the PersistentVolumeClaim `{claim}`, and set `image` (`kerasport package --target container` writes "
        f"the build context). The pod runs `kerasport {' '.join(serve_args(context.options.allow_unverified))}` as "
        f"user {RUN_AS_USER}, with `PROTOCOL=v2` (how KServe learns a custom container's protocol), readiness on "
        f"`{READY_PATH}`, liveness on `{LIVE_PATH}`, and the bundle mounted read-only (`readOnly: true` on the "
        f"mount and the claim). In Knative (serverless) mode, PVC volumes need Knative's "
        f"`kubernetes.podspec-persistent-volume-claim` feature flag; RawDeployment mode needs nothing.", "",
        "### Memory request, measured", "",
        f"Measured on this machine: {measured['how']}. The server chose `{measured['variant']}` "
        f"({measured['runtime']}).", "",
        "| VmRSS after warm-up | VmHWM (peak) | request (1.5 x peak, rounded up to 32 MiB) | limit |",
        "|---|---|---|---|",
        f"| {measured['vm_rss_mib']:.1f} MiB | {measured['vm_hwm_mib']:.1f} MiB | {memory_mib} MiB | "
        f"{2 * memory_mib} MiB |", "",
        f"CPU: a request of one core (onnxruntime's threads default to the cores it sees) and no CPU limit, so "
        f"latency is not throttled. Peak used: {peak:.0f} MiB."])

