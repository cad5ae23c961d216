"""TF Serving REST endpoints: model status, metadata (the `serving_default` signature) and `:predict`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .jsonio import JsonResponse
from .offload import PROCESS_BODY_BYTES, PROCESS_OUTPUT_VALUES
from .protocol import TFS_SIGNATURE, encode_tfs, parse_tfs_body
from .state import ServingState
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
        state = self.state.check_model(request, need_ready=False)
        if self.state.repository is not None and "version" not in request.path_params:
            return JsonResponse({"model_version_status": self.state.repository.version_status(
                request.path_params["name"])})
        state_name = "AVAILABLE" if self.state.ready and state.ready else "UNAVAILABLE"
        return JsonResponse({"model_version_status": [{"version": state.model.version, "state": state_name,
                                                       "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(self, request: Request) -> JsonResponse:
        state = self.state.check_model(request, need_ready=False)
        model = state.model
        # TF Serving's metadata has no place for labels or value ranges: the whole contract rides along.
        return JsonResponse({"model_spec": {"name": model.name, "signature_name": "", "version": model.version},
                             "metadata": {"signature_def": {"signature_def": {TFS_SIGNATURE: signature_def(
                                 state)}}, "kerasport_contract": model.contract.to_dict()}})

    async def predict(self, request: Request) -> Response:
        self.state.check_model(request)
        raw = await request.body()
        # The version this request runs on, taken after its body arrived (a hot swap may have happened meanwhile).
        state = self.state.check_model(request)
        contract = state.model.contract

        async def parse():
            return await state.offload.run(len(raw) > PROCESS_BODY_BYTES, parse_tfs_body, raw, contract)

        async def respond(outputs, layout):
            heavy = sum(array.size for array in outputs.values()) > PROCESS_OUTPUT_VALUES
            return await state.offload.run(heavy, encode_tfs, outputs, contract, layout)

        return Response(await state.run_inference(parse, respond), media_type="application/json")

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models/{name}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/metadata", self.metadata),
            Route("/v1/models/{name}/versions/{version}/metadata", self.metadata),
            Route("/v1/models/{name}", self.status), Route("/v1/models/{name}/versions/{version}", self.status),
        ]
