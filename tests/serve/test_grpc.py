"""`kerasport serve --grpc-port`, driven by clients no one here wrote: tritonclient.grpc and the stub Triton
generates from its own grpc_service.proto, against real server subprocesses.

Health, metadata, configuration and statistics, inference with raw and typed tensor contents, errors as gRPC status
codes, 32 concurrent requests, the API key, limits and metrics shared with HTTP, `--workers`, a two-input model,
and a SIGTERM that drains in-flight gRPC calls.
"""

import functools
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ServerProcess, loopback_client, loopback_get

from devtools.tiny_models import CLASS_OUTPUT, VALUE_OUTPUT, two_input_samples
from kerasport.errors import EXIT_OK, EXIT_USAGE

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "kerasport-seed"
KEY = "s3cret"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_BODY_BYTES = 1_000_000


@pytest.fixture(scope="module")
def server(verified):
    process = ServerProcess(verified, "--variant", "onnx-fp32", "--grpc-port", "0", "--api-key", KEY,
                            "--max-batch", "16", "--max-body-bytes", str(MAX_BODY_BYTES))
    yield process
    assert process.stop() == EXIT_OK, process.logs()[-2000:]


@pytest.fixture(scope="module")
def client(server):
    with tritonclient_grpc.InferenceServerClient(server.ready["grpc"]) as triton:
        yield triton


@pytest.fixture(scope="module")
def http(server):
    with loopback_client(base_url=server.url, headers=AUTH, timeout=30) as session:
        yield session


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.ready["grpc"]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def sample(verified):
    from kerasport.manifest import load_manifest
    from kerasport.samples import load_samples
    from kerasport.serve.model import load_served_model

    manifest = load_manifest(verified)
    images = load_samples(manifest.artifact("eval_sample").resolve(verified), manifest.contract).inputs["image"]
    images = np.resize(images, (32, *images.shape[1:])).astype(np.float32)  # at least 32, repeating
    expected = load_served_model(verified, variant="onnx-fp32").predict({"image": images})["probabilities"]
    return images, expected


def image_input(images: np.ndarray, name: str = "image"):
    tensor = tritonclient_grpc.InferInput(name, list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return tensor


def code_of(raised) -> str:
    return raised.value.status()


def test_ready_line_names_the_grpc_address(server):
    host, port = server.ready["grpc"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0 and not server.url.endswith(f":{port}")


def test_health_metadata_and_config_match_http(client, http):
    assert client.is_server_live() and client.is_server_ready()  # health stays open without the key
    assert client.is_model_ready(MODEL, headers=AUTH) and client.is_model_ready(MODEL, "1", headers=AUTH)
    assert not client.is_model_ready("other", headers=AUTH) and not client.is_model_ready(MODEL, "9", headers=AUTH)
    server = client.get_server_metadata(headers=AUTH)
    assert server.name == "kerasport" and {"model_configuration", "statistics"} <= set(server.extensions)
    metadata = json_format.MessageToDict(client.get_model_metadata(MODEL, headers=AUTH),
                                         preserving_proto_field_name=True)
    over_http = http.get(f"/v2/models/{MODEL}").json()
    for tensors in ("inputs", "outputs"):
        assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in metadata[tensors]] == over_http[tensors]
    assert metadata["name"] == MODEL and metadata["versions"] == over_http["versions"]
    config = client.get_model_config(MODEL, headers=AUTH).config
    assert config == json_format.ParseDict(http.get(f"/v2/models/{MODEL}/config").json(),
                                           model_config_pb2.ModelConfig())
    assert config.max_batch_size == 16 and config.platform == "onnxruntime_onnx"


def test_infer_equals_in_process_and_the_http_route(client, http, sample):
    images, expected = sample
    result = client.infer(MODEL, [image_input(images[:4])], headers=AUTH, request_id="g-1")
    probabilities = result.as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, expected[:4], atol=1e-5)
    assert result.get_response().id == "g-1" and result.get_response().model_name == MODEL
    body = {"inputs": [{"name": "image", "shape": [4, *images.shape[1:]], "datatype": "FP32",
                        "data": images[:4].ravel().tolist()}]}
    over_http = http.post(f"/v2/models/{MODEL}/infer", json=body).json()["outputs"][0]
    np.testing.assert_allclose(probabilities.ravel(), over_http["data"], atol=1e-6)
    versioned = client.infer(MODEL, [image_input(images[4:5])], model_version="1", headers=AUTH,
                             outputs=[tritonclient_grpc.InferRequestedOutput("probabilities")])
    np.testing.assert_allclose(versioned.as_numpy("probabilities"), expected[4:5], atol=1e-5)


def typed_request(images: np.ndarray, datatype: str, field: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="image", datatype=datatype, shape=images.shape)
    getattr(tensor.contents, field).extend(images.ravel().tolist())
    return request


def test_typed_contents_fp32_and_uint8(stub, sample):
    images, expected = sample
    for datatype, field, values in (("FP32", "fp32_contents", images[:2]),
                                    ("UINT8", "uint_contents", images[:2].astype(np.uint8))):
        response = stub.ModelInfer(typed_request(values, datatype, field), metadata=tuple(AUTH.items()))
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
            ("probabilities", "FP32", [2, expected.shape[1]])]
        rows = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, -1)
        np.testing.assert_allclose(rows, expected[:2], atol=1e-5)


@pytest.mark.parametrize(("request_for", "message"), [
    (lambda images: typed_request(images[:1].astype(np.int32), "FP32", "int_contents"), "takes contents.fp32_contents"),
    (lambda images: typed_request(images[:1].astype(np.int64) + 300, "INT64", "int64_contents"),
     r"expects values in 0\.\.255"),
    (lambda images: typed_request(images[:1].reshape(1, -1)[:, :5], "FP32", "fp32_contents"),
     r"input 'image': shape \[1, 5\]"),
])
def test_bad_typed_requests_are_invalid_argument(stub, sample, request_for, message):
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request_for(sample[0]), metadata=tuple(AUTH.items()))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, raised.value.details()), raised.value.details()


def test_errors_are_status_codes_with_the_servers_message(client, sample):
    images = sample[0]
    with pytest.raises(InferenceServerException, match=r"input 'image': shape \[1, 5\]") as raised:
        client.infer(MODEL, [image_input(np.zeros((1, 5), np.float32))], headers=AUTH)
    assert code_of(raised) == str(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as raised:
        client.infer("other", [image_input(images[:1])], headers=AUTH)
    assert code_of(raised) == str(grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InferenceServerException, match="unknown version '9'") as raised:
        client.get_model_metadata(MODEL, "9", headers=AUTH)
    assert code_of(raised) == str(grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InferenceServerException, match="unknown output") as raised:
        client.infer(MODEL, [image_input(images[:1])], headers=AUTH,
                     outputs=[tritonclient_grpc.InferRequestedOutput("logits")])
    assert code_of(raised) == str(grpc.StatusCode.INVALID_ARGUMENT)
    too_many = np.zeros((MAX_BODY_BYTES // images[0].nbytes + 1, *images.shape[1:]), np.float32)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [image_input(too_many)], headers=AUTH)
    assert code_of(raised) == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
    with pytest.raises(InferenceServerException) as raised:
        client.get_trace_settings(headers=AUTH)
    assert code_of(raised) == str(grpc.StatusCode.UNIMPLEMENTED)
    listed = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert [(row["name"], row["version"], row["state"]) for row in listed] == [(MODEL, "1", "READY")]
    assert client.is_server_ready()


def test_api_key(client, sample):
    images = sample[0][:1]
    for headers in ({}, {"authorization": "Bearer nope"}, {"x-api-key": "nope"}):
        with pytest.raises(InferenceServerException, match="API key") as raised:
            client.infer(MODEL, [image_input(images)], headers=headers)
        assert code_of(raised) == str(grpc.StatusCode.UNAUTHENTICATED)
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata(MODEL)
    assert code_of(raised) == str(grpc.StatusCode.UNAUTHENTICATED)
    assert client.infer(MODEL, [image_input(images)], headers={"x-api-key": KEY}).as_numpy("probabilities") is not None


def test_32_concurrent_requests(client, sample):
    images, expected = sample
    results: dict[int, object] = {}
    done = threading.Event()

    def callback(index, result, error):
        results[index] = error or result.as_numpy("probabilities")
        if len(results) == 32:
            done.set()

    for i in range(32):
        client.async_infer(MODEL, [image_input(images[i:i + 1])], functools.partial(callback, i), headers=AUTH)
    assert done.wait(60)
    for i in range(32):
        np.testing.assert_allclose(results[i], expected[i:i + 1], atol=1e-5)


def test_statistics_and_metrics_are_shared_with_http(client, http, sample):
    before = client.get_inference_statistics(MODEL, headers=AUTH).model_stats[0]
    for _ in range(3):
        client.infer(MODEL, [image_input(sample[0][:2])], headers=AUTH)
    after = client.get_inference_statistics(MODEL, headers=AUTH).model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_count - before.inference_count == 6
    assert json_format.ParseDict(http.get(f"/v2/models/{MODEL}/stats").json(),
                                 service_pb2.ModelStatisticsResponse()).model_stats[0] == after
    metrics = http.get("/metrics").text
    ok = re.search(r'^kerasport_requests_total\{method="GRPC",route="/inference.GRPCInferenceService/ModelInfer",'
                   r'status="OK"\} (\S+)', metrics, re.M)
    assert ok and float(ok.group(1)) >= 3


def test_port_in_use_and_bad_port_are_usage_errors(verified, server):
    script = Path(sys.executable).with_name("kerasport")
    taken_port = server.ready["grpc"].rsplit(":", 1)[1]
    for port, message in ((taken_port, "Address already in use"), ("70000", "--grpc-port 70000")):
        taken = subprocess.run([str(script), "serve", "--run", str(verified), "--port", "0", "--grpc-port", port],
                               capture_output=True, text=True, timeout=60)
        assert taken.returncode == EXIT_USAGE, taken.stderr
        lines = taken.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], taken.stderr
        assert taken.stdout == ""


def test_sigterm_drains_in_flight_grpc_calls(verified, sample):
    # a long batching window holds the calls in flight while SIGTERM arrives
    process = ServerProcess(verified, "--variant", "onnx-fp32", "--grpc-port", "0", "--max-delay-ms", "1500",
                            "--max-batch", "64", "--no-access-log")
    results: list = []
    try:
        triton = tritonclient_grpc.InferenceServerClient(process.ready["grpc"])
        for i in range(8):
            triton.async_infer(MODEL, [image_input(sample[0][i:i + 1])],
                               lambda result, error: results.append(error or result))
        deadline, in_flight = time.monotonic() + 10, 0.0
        while time.monotonic() < deadline and in_flight < 8:
            text = loopback_get(f"{process.url}/metrics").text
            in_flight = float(re.search(r"^kerasport_requests_in_flight (\S+)", text, re.M).group(1)) - 1
        assert in_flight >= 8  # all eight are inside the server, none answered yet
    finally:
        code = process.stop()
    assert code == EXIT_OK, process.logs()[-2000:]
    assert len(results) == 8 and all(not isinstance(r, Exception) for r in results), results
    assert all(result.as_numpy("probabilities").shape == (1, sample[1].shape[1]) for result in results)


@pytest.fixture(scope="module")
def two_inputs(two_inputs_exported):
    return two_inputs_exported, two_input_samples(4, seed=3)


def test_two_inputs_under_workers_equal_http(two_inputs):
    run, samples = two_inputs
    process = ServerProcess(run, "--allow-unverified", "--variant", "onnx-fp32", "--grpc-port", "0",
                            "--workers", "2", "--no-access-log")
    try:
        assert process.ready["workers"] == 2 and process.ready["grpc"]
        tensors = [image_input(samples.inputs["picture"], "picture"), image_input(samples.inputs["features"],
                                                                                  "features")]
        with tritonclient_grpc.InferenceServerClient(process.ready["grpc"]) as triton:
            result = triton.infer("two-inputs", tensors)
            with pytest.raises(InferenceServerException, match="missing input 'features'") as raised:
                triton.infer("two-inputs", tensors[:1])
            assert code_of(raised) == str(grpc.StatusCode.INVALID_ARGUMENT)
        body = {"inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32",
                            "data": array.ravel().tolist()} for name, array in samples.inputs.items()]}
        outputs = {o["name"]: o for o in httpx.post(f"{process.url}/v2/models/two-inputs/infer",
                                                     json=body).json()["outputs"]}
        for name in (CLASS_OUTPUT, VALUE_OUTPUT):
            grpc_rows = result.as_numpy(name)
            assert list(grpc_rows.shape) == outputs[name]["shape"]
            np.testing.assert_allclose(grpc_rows.ravel(), outputs[name]["data"], atol=1e-6)
    finally:
        assert process.stop() == EXIT_OK, process.logs()[-2000:]
