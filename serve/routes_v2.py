"""KServe V2 / Open Inference Protocol endpoints: health, server and model metadata, inference.

Inference takes any number of named tensors in the contract's datatypes, as JSON or under the binary tensor
data extension (`Inference-Header-Content-Length`: a JSON header followed by raw little-endian tensors).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kerasport import __version__

from .errors import BadRequest
from .jsonio import JsonResponse, dumps
from .protocol import parse_v2_infer, v2_response
from .state import ServingState, read_json

BINARY_HEADER = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]


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


class V2Endpoints:
    def __init__(self, state: ServingState):
        self.state = state

    async def live(self, request: Request) -> JsonResponse:
        return JsonResponse({"live": True})

    async def ready(self, request: Request) -> JsonResponse:
        return JsonResponse({"ready": self.state.ready}, status_code=200 if self.state.ready else 503)

    async def server_metadata(self, request: Request) -> JsonResponse:
        return JsonResponse({"name": "kerasport", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(self, request: Request) -> JsonResponse:
        self.state.check_model(request, need_ready=False)
        return JsonResponse(model_metadata(self.state))

    async def model_ready(self, request: Request) -> JsonResponse:
        self.state.check_model(request)
        return JsonResponse({"name": self.state.model.name, "ready": True})

    async def infer(self, request: Request) -> Response:
        self.state.check_model(request)
        contract = self.state.model.contract
        raw = await request.body()
        header_length = request.headers.get(BINARY_HEADER)
        binary = b""
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(raw):
                raise BadRequest(f"{BINARY_HEADER} {header_length!r}; expected the JSON header's length in bytes, "
                                 f"at most the body's {len(raw)}")
            raw, binary = raw[:int(header_length)], raw[int(header_length):]
        parsed = parse_v2_infer(await read_json(request, raw), contract, binary)
        outputs = await self.state.infer(parsed.inputs)
        body, payload = v2_response(outputs, parsed, contract, model_name=self.state.model.name,
                                    model_version=self.state.model.version)
        if not payload:
            return JsonResponse(body)
        header = dumps(body)
        return Response(header + payload, media_type="application/octet-stream",
                        headers={BINARY_HEADER: str(len(header))})

    def routes(self) -> list[Route]:
        return [
            Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/models/{name}", self.model_metadata),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata),
            Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.infer, methods=["POST"]),
        ]
