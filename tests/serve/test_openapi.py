"""`GET /openapi.json` describes every route, and Schemathesis — a second, independent fuzzer — generates
requests from it (valid and invalid ones) against the app: no server errors, and every response matches the
schema the document gives for its status code."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from starlette.routing import Route
from starlette.testclient import TestClient

from kerasport.serve.app import create_app
from kerasport.serve.model import load_served_model

MODEL = "kerasport-seed"
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def app(verified):
    return create_app(load_served_model(verified, variant="onnx-fp32"), max_body_bytes=1_000_000)


@pytest.fixture(scope="module")
def document(app):
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_the_document_covers_every_route_and_the_contract(app, document):
    assert document["openapi"].startswith("3.")
    routes = {route.path for route in app.routes if isinstance(route, Route)}
    assert routes == set(document["paths"])  # every route documented, nothing documented that is not a route
    schemas = document["components"]["schemas"]
    assert schemas["RequestInput"]["properties"]["name"]["enum"] == ["image"]
    assert "FP32" in schemas["RequestInput"]["properties"]["datatype"]["enum"]
    infer = document["paths"]["/v2/models/{name}/infer"]
    assert infer["parameters"][0]["schema"]["enum"] == [MODEL]
    assert {"application/json", "application/octet-stream"} <= set(infer["post"]["requestBody"]["content"])
    assert {"400", "413", "500"} <= set(infer["post"]["responses"])
    assert "image/png" in document["paths"]["/v1/models/{name}:classify"]["post"]["requestBody"]["content"]
    assert "security" not in document  # no API key on this server


def test_a_secured_server_documents_its_key(verified):
    app = create_app(load_served_model(verified, variant="onnx-fp32"), api_key="k")
    with TestClient(app) as client:
        document = client.get("/openapi.json", headers={"X-API-Key": "k"}).json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert document["paths"]["/v2/health/live"]["get"]["security"] == []


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(app, document, mode):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
                  if method != "parameters"}
    assert {operation.label for operation in operations} == documented - {"GET /openapi.json"}  # (itself)
    seen = set()

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call_and_validate(checks=CHECKS)
        seen.add((case.operation.label, response.status_code))

    check()
    # the generated cases reached most operations (fewer in negative mode: a route without parameters or a body
    # has nothing to get wrong)
    assert len({label for label, _ in seen}) >= (20 if mode is GenerationMode.POSITIVE else 12)
