"""TF Serving REST endpoints: model status, metadata (the `serving_default` signature) and `:predict`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from .jsonio import JsonResponse
from .protocol import TFS_SIGNATURE, parse_tfs_predict, tfs_response
from .state import ServingState, read_json
from .tensors import TF_DATATYPES


def _tensor_info(name: str, dtype: str, shape: tuple[int, ...]) -> dict:
    return {"dtype": TF_DATATYPES[dtype], "name": name,
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape], "unknown_rank": False}}


def signature_def(state: ServingState) -> dict:
    contract = state.model.contract
    return {"inputs": {spec.name: _tensor_info(spec.name, spec.dtype, spec.shape) for spec in contract.inputs},
            "outputs": {spec.name: _tensor_info(spec.name, spec.dtype, spec.shape) for spec in contract.outputs},
            "method_name": "tensorflow/serving/predict"}


class TfServingEndpoints:
    def __init__(self, state: ServingState):
        self.state = state

    async def status(self, request: Request) -> JsonResponse:
        self.state.check_model(request, need_ready=False)
        state_name = "AVAILABLE" if self.state.ready else "UNAVAILABLE"
        return JsonResponse({"model_version_status": [{"version": self.state.model.version, "state": state_name,
                                                       "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(self, request: Request) -> JsonResponse:
        self.state.check_model(request, need_ready=False)
        model = self.state.model
        # TF Serving's metadata has no place for labels or value ranges: the whole contract rides along.
        return JsonResponse({"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
                             "metadata": {"signature_def": {"signature_def": {TFS_SIGNATURE: signature_def(
                                 self.state)}}, "kerasport_contract": model.contract.to_dict()}})

    async def predict(self, request: Request) -> JsonResponse:
        self.state.check_model(request)
        contract = self.state.model.contract
        inputs, layout = parse_tfs_predict(await read_json(request), contract)
        return JsonResponse(tfs_response(await self.state.infer(inputs), contract, layout))

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models/{name}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/metadata", self.metadata),
            Route("/v1/models/{name}/versions/{version}/metadata", self.metadata),
            Route("/v1/models/{name}", self.status), Route("/v1/models/{name}/versions/{version}", self.status),
        ]
