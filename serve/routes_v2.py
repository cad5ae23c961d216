"""KServe V2 / Open Inference Protocol endpoints: health, server and model metadata, inference, and the Triton
extensions real clients call: model configuration and statistics.

Inference takes any number of named tensors in the contract's datatypes, as JSON or under the binary tensor
data extension (`Inference-Header-Content-Length`: a JSON header followed by raw little-endian tensors). A large
JSON body is parsed, and a large response encoded, in a worker process; a large binary body is checked in a
thread — so the event loop keeps answering everyone else (`offload.py`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kerasport import __version__

from .errors import BadRequest
from .jsonio import JsonResponse
from .offload import PROCESS_BODY_BYTES, PROCESS_OUTPUT_VALUES
from .protocol import encode_v2, parse_v2_body
from .state import ServingState

BINARY_HEADER = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
# numpy dtype name -> Triton model-configuration data type
TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64"}
PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}


def model_metadata(state: ServingState) -> dict:
    """The V2 model metadata: the contract's tensors, plus the artifact and the whole contract as parameters."""
    model, contract = state.model, state.model.contract
    artifact = model.artifact
    return {"name": model.name, "versions": sorted(state.versions), "platform": f"kerasport/{model.runtime_name}",
            "inputs": [{"name": spec.name, "datatype": spec.v2_datatype, "shape": list(spec.shape)}
                       for spec in contract.inputs],
            "outputs": [{"name": spec.name, "datatype": spec.v2_datatype, "shape": list(spec.shape)}
                        for spec in contract.outputs],
            "parameters": {"variant": model.variant, "precision": artifact.precision, "sha256": artifact.sha256,
                           "task": model.task, "parity": artifact.verdict or "unverified",
                           "labels": {spec.name: list(spec.labels) for spec in contract.outputs if spec.labels},
                           "contract": contract.to_dict()}}


def model_config(state: ServingState) -> dict:
    """A Triton-style model configuration (the JSON form Triton's `GET .../config` returns) from the contract.

    Dims leave out the batch dimension, as Triton's do when `max_batch_size` > 0; dynamic batching reports the
    micro-batcher's delay.
    """
    model, contract, settings = state.model, state.model.contract, state.settings

    def tensor(spec) -> dict:
        entry = {"name": spec.name, "data_type": TRITON_TYPES.get(spec.dtype, "TYPE_INVALID"),
                 "dims": list(spec.shape[1:])}
        image = getattr(spec, "image", None)
        if image is not None:
            entry["format"] = "FORMAT_NHWC"
        return entry

    outputs = []
    for spec in contract.outputs:
        entry = tensor(spec)
        entry["label_filename"] = ""
        outputs.append(entry)
    return {"name": model.name, "platform": PLATFORMS.get(model.artifact.format, model.artifact.format),
            "backend": model.runtime_name, "version_policy": settings.version_policy,
            "max_batch_size": settings.max_batch, "input": [tensor(spec) for spec in contract.inputs],
            "output": outputs,
            "dynamic_batching": {"preferred_batch_size": [settings.max_batch],
                                 "max_queue_delay_microseconds": int(settings.max_delay_ms * 1000)},
            "instance_group": [{"name": model.variant, "kind": "KIND_CPU", "count": settings.workers}],
            "parameters": {"variant": {"string_value": model.variant},
                           "sha256": {"string_value": model.artifact.sha256 or ""}}}


def model_statistics(state: ServingState) -> dict:
    """The Triton statistics extension's answer for the served model (every worker's requests)."""
    figures = state.metrics.statistics()
    phases = figures["phases"]
    zero = {"count": 0, "ns": 0}
    return {"model_stats": [{
        "name": state.model.name, "version": state.model.version, "last_inference": figures["last_inference"],
        "inference_count": figures["inference_count"], "execution_count": figures["execution_count"],
        "inference_stats": {**phases, "cache_hit": zero, "cache_miss": zero},
        "batch_stats": [],
    }]}


def binary_header_length(request: Request, body_length: int) -> int | None:
    """The JSON header's length under the binary tensor data extension, or None without it.

    Raises:
        BadRequest: not a byte count within the body.
    """
    text = request.headers.get(BINARY_HEADER)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > body_length:
        raise BadRequest(f"{BINARY_HEADER} {text[:40]!r}; expected the JSON header's length in bytes, at most the "
                         f"body's {body_length}")
    return int(text)


class V2Endpoints:
    def __init__(self, state: ServingState):
        self.state = state

    async def live(self, request: Request) -> JsonResponse:
        return JsonResponse({"live": True})

    async def ready(self, request: Request) -> JsonResponse:
        return JsonResponse({"ready": self.state.ready}, status_code=200 if self.state.ready else 503)

    async def server_metadata(self, request: Request) -> JsonResponse:
        extensions = EXTENSIONS + (["model_repository"] if self.state.repository is not None else [])
        return JsonResponse({"name": "kerasport", "version": __version__, "extensions": extensions})

    async def model_metadata(self, request: Request) -> JsonResponse:
        return JsonResponse(model_metadata(self.state.check_model(request, need_ready=False)))

    async def model_ready(self, request: Request) -> JsonResponse:
        state = self.state.check_model(request)
        return JsonResponse({"name": state.model.name, "ready": True})

    async def model_config(self, request: Request) -> JsonResponse:
        return JsonResponse(model_config(self.state.check_model(request, need_ready=False)))

    async def model_stats(self, request: Request) -> JsonResponse:
        if "name" in request.path_params:
            return JsonResponse(model_statistics(self.state.check_model(request, need_ready=False)))
        return JsonResponse(model_statistics(self.state.described()))

    async def infer(self, request: Request) -> Response:
        self.state.check_model(request)
        raw = await request.body()
        header_length = binary_header_length(request, len(raw))
        json_bytes = len(raw) if header_length is None else header_length
        # The version this request runs on, taken after its body arrived (a hot swap may have happened meanwhile)
        # and with no await before run_inference counts it in flight.
        state = self.state.check_model(request)
        contract, model = state.model.contract, state.model

        async def parse():
            if json_bytes > PROCESS_BODY_BYTES:
                parsed = await state.offload.process(parse_v2_body, raw, header_length, contract)
            elif len(raw) - json_bytes > PROCESS_BODY_BYTES:
                parsed = await state.offload.thread(parse_v2_body, raw, header_length, contract)
            else:
                parsed = parse_v2_body(raw, header_length, contract)
            return parsed.inputs, parsed

        async def respond(outputs, parsed):
            heavy = sum(array.size for array in outputs.values()) > PROCESS_OUTPUT_VALUES
            return await state.offload.run(heavy, encode_v2, outputs, parsed, contract, model.name, model.version)

        content, length = await state.run_inference(parse, respond)
        if length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={BINARY_HEADER: str(length)})

    def routes(self) -> list[Route]:
        return [
            Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/models/stats", self.model_stats),
            Route("/v2/models/{name}", self.model_metadata),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata),
            Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready),
            Route("/v2/models/{name}/config", self.model_config),
            Route("/v2/models/{name}/versions/{version}/config", self.model_config),
            Route("/v2/models/{name}/stats", self.model_stats),
            Route("/v2/models/{name}/versions/{version}/stats", self.model_stats),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.infer, methods=["POST"]),
        ]
