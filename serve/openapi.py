"""`GET /openapi.json`: an OpenAPI 3.1 document of every route, written to match the Open Inference Protocol's
REST spec (KServe V2, with Triton's model-configuration and statistics extensions) and TF Serving's REST API.

The schemas are hand-written dicts in the shape those specs give; the served model's names, versions, input
names and accepted datatypes come from the contract, so the document describes this server exactly. It is built
once per app. Schemathesis fuzzes the server from it (tests/serve/test_openapi.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from kerasport import __version__

from .jsonio import JsonResponse
from .routes_images import FORMATS
from .state import ServingState
from .tensors import accepted_datatypes

REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": REF + name}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {"400": "Malformed request or values the model's contract refuses",
          "401": "Missing or wrong API key (when the server has one)",
          "404": "Unknown model, version or route",
          "413": "Body over --max-body-bytes, or a picture over --max-image-pixels",
          "500": "Unexpected server error (the response and the log name the request id)",
          "503": "The model is not ready (starting up or draining)"}


def _responses(ok: dict, *codes: str) -> dict:
    responses = {"200": ok}
    for code in codes:
        responses[code] = _json(_ref("Error"), ERRORS[code])
    return responses


def _metadata_tensor() -> dict:
    return {"type": "object", "required": ["name", "datatype", "shape"],
            "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                           "shape": {"type": "array", "items": {"type": "integer"}}}}


def _schemas(state: ServingState) -> dict:
    contract = state.model.contract
    datatypes = sorted({d for spec in contract.inputs for d in accepted_datatypes(spec)})
    count_ns = {"type": "object", "required": ["count", "ns"],
                "properties": {"count": {"type": "integer", "minimum": 0}, "ns": {"type": "integer", "minimum": 0}}}
    scalar = {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "array"}]}
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                           "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                          "extensions": {"type": "array", "items": {"type": "string"}}}},
        "MetadataTensor": _metadata_tensor(),
        "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                          "properties": {"name": {"type": "string"},
                                         "versions": {"type": "array", "items": {"type": "string"}},
                                         "platform": {"type": "string"},
                                         "inputs": {"type": "array", "items": _ref("MetadataTensor")},
                                         "outputs": {"type": "array", "items": _ref("MetadataTensor")},
                                         "parameters": {"type": "object"}}},
        "RequestInput": {"type": "object", "required": ["name", "shape", "datatype"],
                         "properties": {"name": {"type": "string", "enum": list(contract.input_names)},
                                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                        "datatype": {"type": "string", "enum": datatypes},
                                        "parameters": {"type": "object", "properties": {
                                            "binary_data_size": {"type": "integer", "minimum": 0}}},
                                        "data": {"type": "array", "items": scalar,
                                                 "description": "Flat or nested, row-major"}}},
        "RequestOutput": {"type": "object", "required": ["name"],
                          "properties": {"name": {"type": "string", "enum": list(contract.output_names)},
                                         "parameters": {"type": "object", "properties": {
                                             "binary_data": {"type": "boolean"}}}}},
        "InferenceRequest": {"type": "object", "required": ["inputs"],
                             "properties": {"id": {"type": "string"},
                                            "parameters": {"type": "object", "properties": {
                                                "binary_data_output": {"type": "boolean"}}},
                                            "inputs": {"type": "array", "minItems": 1,
                                                       "items": _ref("RequestInput")},
                                            "outputs": {"type": "array", "items": _ref("RequestOutput")}}},
        "ResponseOutput": {"type": "object", "required": ["name", "shape", "datatype"],
                           "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                          "shape": {"type": "array", "items": {"type": "integer"}},
                                          "parameters": {"type": "object"},
                                          "data": {"type": "array"}}},
        "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"],
                              "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                                             "id": {"type": "string"}, "parameters": {"type": "object"},
                                             "outputs": {"type": "array", "items": _ref("ResponseOutput")}}},
        "ModelConfig": _model_config_schema(),
        "CountNs": count_ns,
        "ModelStatistics": _statistics_schema(),
        **_tfs_schemas(),
        **_classify_schemas(),
    }


def _model_config_schema() -> dict:
    tensor = {"type": "object", "required": ["name", "data_type", "dims"],
              "properties": {"name": {"type": "string"}, "data_type": {"type": "string"},
                             "dims": {"type": "array", "items": {"type": "integer"}}, "format": {"type": "string"},
                             "label_filename": {"type": "string"}}}
    return {"type": "object", "required": ["name", "platform", "max_batch_size", "input", "output"],
            "properties": {"name": {"type": "string"}, "platform": {"type": "string"},
                           "backend": {"type": "string"}, "max_batch_size": {"type": "integer", "minimum": 0},
                           "input": {"type": "array", "items": tensor}, "output": {"type": "array", "items": tensor},
                           "dynamic_batching": {"type": "object", "properties": {
                               "preferred_batch_size": {"type": "array", "items": {"type": "integer"}},
                               "max_queue_delay_microseconds": {"type": "integer", "minimum": 0}}},
                           "instance_group": {"type": "array", "items": {"type": "object"}},
                           "version_policy": {"type": "object"}, "parameters": {"type": "object"}}}


def _statistics_schema() -> dict:
    phases = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
              "cache_miss")
    model = {"type": "object",
             "required": ["name", "version", "inference_count", "execution_count", "inference_stats"],
             "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                            "last_inference": {"type": "integer", "minimum": 0},
                            "inference_count": {"type": "integer", "minimum": 0},
                            "execution_count": {"type": "integer", "minimum": 0},
                            "inference_stats": {"type": "object", "required": list(phases[:6]),
                                                "properties": {phase: _ref("CountNs") for phase in phases}},
                            "batch_stats": {"type": "array", "items": {"type": "object"}}}}
    return {"type": "object", "required": ["model_stats"],
            "properties": {"model_stats": {"type": "array", "items": model}}}


def _tfs_schemas() -> dict:
    return {
        "TfsModelStatus": {"type": "object", "required": ["model_version_status"], "properties": {
            "model_version_status": {"type": "array", "items": {
                "type": "object", "required": ["version", "state"],
                "properties": {"version": {"type": "string"}, "state": {"type": "string"},
                               "status": {"type": "object", "properties": {
                                   "error_code": {"type": "string"}, "error_message": {"type": "string"}}}}}}}},
        "TfsModelMetadata": {"type": "object", "required": ["model_spec", "metadata"],
                             "properties": {"model_spec": {"type": "object"}, "metadata": {"type": "object"}}},
        "TfsPredictRequest": {
            "type": "object", "description": "Exactly one of `instances` (row format) or `inputs` (columnar)",
            "properties": {"signature_name": {"type": "string", "enum": ["serving_default"]},
                           "instances": {"type": "array", "minItems": 1},
                           "inputs": {"anyOf": [{"type": "array"}, {"type": "object"}]}}},
        "TfsPredictResponse": {"type": "object", "description": "`predictions` (row) or `outputs` (columnar)",
                               "properties": {"predictions": {"type": "array"},
                                              "outputs": {"anyOf": [{"type": "array"}, {"type": "object"}]}}},
    }


def _classify_schemas() -> dict:
    label = {"type": "object", "required": ["label", "index"],
             "properties": {"label": {"type": "string"}, "index": {"type": "integer", "minimum": 0},
                            "probability": {"type": "number"}, "score": {"type": "number"}}}
    result = {"type": "object", "required": ["file", "top_k"],
              "properties": {"file": {"type": "string"}, "top_k": {"type": "array", "items": label},
                             "outputs": {"type": "object"}}}
    return {"ClassifyResponse": {"type": "object", "required": ["model_name", "output", "results"],
                                 "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                                                "variant": {"type": "string"}, "output": {"type": "string"},
                                                "results": {"type": "array", "items": result}}}}


def _parameters(state: ServingState, path: str) -> list[dict]:
    parameters = []
    if "{name}" in path:
        parameters.append({"name": "name", "in": "path", "required": True,
                           "schema": {"type": "string", "enum": [state.model.name]}})
    if "{version}" in path:
        parameters.append({"name": "version", "in": "path", "required": True,
                           "schema": {"type": "string", "enum": sorted(state.versions)}})
    return parameters


def _v2_paths() -> dict:
    metadata = {"get": {"summary": "Model metadata", "responses": _responses(
        _json(_ref("ModelMetadata"), "The model's tensors and parameters"), "401", "404")}}
    ready = {"get": {"summary": "Model readiness", "responses": _responses(_json(
        {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "ready": {"type": "boolean"}}}, "Ready"), "401", "404", "503")}}
    config = {"get": {"summary": "Model configuration (Triton model_configuration extension)",
                      "responses": _responses(_json(_ref("ModelConfig"), "Triton-style configuration"),
                                              "401", "404")}}
    stats = {"get": {"summary": "Model statistics (Triton statistics extension)",
                     "responses": _responses(_json(_ref("ModelStatistics"), "Counts and cumulative ns per phase"),
                                             "401", "404")}}
    infer = {"post": {
        "summary": "Inference (JSON tensors, or the binary tensor data extension)",
        "parameters": [{"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Binary extension: length of the JSON header that starts the body"}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("InferenceRequest")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {**_responses(
            {"description": "Outputs (binary outputs follow the JSON header)",
             "content": {"application/json": {"schema": _ref("InferenceResponse")},
                         "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "400", "401", "404", "413", "500", "503")}}}
    paths = {"/v2/health/live": {"get": {"summary": "Server liveness", "responses": _responses(_json(
                 {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}}, "Live"))}},
             "/v2/health/ready": {"get": {"summary": "Server readiness", "responses": {
                 "200": _json(_ref("Readiness"), "Ready"), "503": _json(_ref("Readiness"), "Not ready")}}},
             "/v2": {"get": {"summary": "Server metadata", "responses": _responses(
                 _json(_ref("ServerMetadata"), "Name, version, extensions"), "401")}},
             "/v2/models/stats": stats}
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        paths[prefix] = metadata
        paths[prefix + "/ready"] = ready
        paths[prefix + "/config"] = config
        paths[prefix + "/stats"] = stats
        paths[prefix + "/infer"] = infer
    return paths


def _tfs_paths() -> dict:
    status = {"get": {"summary": "TF Serving model status", "responses": _responses(
        _json(_ref("TfsModelStatus"), "Version states"), "401", "404")}}
    metadata = {"get": {"summary": "TF Serving model metadata (serving_default signature)",
                        "responses": _responses(_json(_ref("TfsModelMetadata"), "Signature"), "401", "404")}}
    predict = {"post": {"summary": "TF Serving predict (row or columnar format)",
                        "requestBody": {"required": True, "content": {
                            "application/json": {"schema": _ref("TfsPredictRequest")}}},
                        "responses": _responses(_json(_ref("TfsPredictResponse"), "Predictions"),
                                                "400", "401", "404", "413", "500", "503")}}
    binary = {"schema": {"type": "string", "format": "binary"}}
    classify = {"post": {
        "summary": "Classify pictures (raw PNG/JPEG body, or multipart files)",
        "parameters": [{"name": "top_k", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1}}],
        "requestBody": {"required": True, "content": {
            **{f"image/{fmt.lower()}": binary for fmt in FORMATS},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}},
        "responses": _responses(_json(_ref("ClassifyResponse"), "Top-k labels per picture"),
                                "400", "401", "404", "413", "500", "503")}}
    paths = {}
    for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
        paths[prefix] = status
        paths[prefix + "/metadata"] = metadata
        paths[prefix + ":predict"] = predict
        paths[prefix + ":classify"] = classify
    return paths


def build_openapi(state: ServingState, *, secured: bool = False) -> dict:
    """The OpenAPI 3.1 document for this server and model.

    Args:
        state: the serving state (model name, versions, contract).
        secured: the server needs an API key (documents the bearer and X-API-Key schemes).

    Returns:
        The document, ready for JSON.
    """
    paths = {**_v2_paths(), **_tfs_paths(),
             "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                 "description": "Text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
             "/openapi.json": {"get": {"summary": "This document", "responses": _responses(
                 _json({"type": "object"}, "OpenAPI 3.1"), "401")}}}
    for path, item in paths.items():
        parameters = _parameters(state, path)
        if parameters:
            paths[path] = {"parameters": parameters, **item}
    schemas = {**_schemas(state), "Readiness": {"type": "object", "required": ["ready"],
                                                "properties": {"ready": {"type": "boolean"}}}}
    document = {"openapi": "3.1.0",
                "info": {"title": f"kerasport serve: {state.model.name}", "version": __version__,
                         "description": "Open Inference Protocol (KServe V2) REST with Triton's model_configuration "
                                        "and statistics extensions, TF Serving REST, and picture classification."},
                "paths": paths, "components": {"schemas": schemas}}
    if secured:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        document["security"] = [{"bearer": []}, {"apiKey": []}]
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            for operation in paths[path].values():
                if isinstance(operation, dict) and "responses" in operation:
                    operation["security"] = []
    return document


class OpenApiEndpoint:
    def __init__(self, state: ServingState, routes: list[Route], *, secured: bool = False):
        self.state, self.routes, self.secured = state, routes, secured
        self._document: dict | None = None

    async def openapi(self, request: Request) -> JsonResponse:
        if self._document is None:
            self._document = build_openapi(self.state.described(), secured=self.secured)
        return JsonResponse(self._document)

    def route(self) -> Route:
        return Route("/openapi.json", self.openapi)
