"""A V2 client no one here wrote — tritonclient.http — drives every V2 call it offers against a real server.

Health, readiness, server and model metadata, the model-configuration and statistics extensions, inference with
JSON and binary tensors, 32 concurrent async requests, and errors surfacing as InferenceServerException with the
server's message. The repository extension lists, unloads and loads the served bundle; the calls of extensions this
server does not offer (trace, logging, shared memory) fail cleanly with a 4xx the client reports, never a 5xx.
"""

import numpy as np
import pytest
from helpers import ServerProcess

from kerasport.errors import EXIT_OK

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "kerasport-seed"


@pytest.fixture(scope="module")
def server(verified):
    process = ServerProcess(verified, "--variant", "onnx-fp32", "--no-access-log", "--max-batch", "16")
    yield process
    assert process.stop() == EXIT_OK, process.logs()[-2000:]


@pytest.fixture(scope="module")
def client(server):
    with tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8) as triton:
        yield triton


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


def inputs_for(images: np.ndarray, binary: bool):
    tensor = tritonclient_http.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return [tensor]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("other")
    server = client.get_server_metadata()
    assert server["name"] == "kerasport"
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(server["extensions"])
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert client.get_model_metadata(MODEL, "1")["name"] == MODEL


def test_model_configuration(client):
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [28, 28, 1],
                                "format": "FORMAT_NHWC"}]
    assert config["output"][0]["name"] == "probabilities" and config["output"][0]["dims"] == [3]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert client.get_model_config(MODEL, "1") == config


@pytest.mark.parametrize("binary", [False, True])
def test_infer_json_and_binary(client, sample, binary):
    images, expected = sample
    outputs = [tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(MODEL, inputs_for(images[:4], binary), outputs=outputs, request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected[:4], atol=1e-5)
    assert result.get_response()["id"] == "r-1"
    versioned = client.infer(MODEL, inputs_for(images[4:5], binary), model_version="1")
    np.testing.assert_allclose(versioned.as_numpy("probabilities"), expected[4:5], atol=1e-5)


def test_32_async_requests(client, sample):
    images, expected = sample
    pending = [client.async_infer(MODEL, inputs_for(images[i:i + 1], binary=i % 2 == 0)) for i in range(32)]
    for i, request in enumerate(pending):
        np.testing.assert_allclose(request.get_result().as_numpy("probabilities"), expected[i:i + 1], atol=1e-5)


def test_statistics_count_the_requests(client, sample):
    images, _ = sample
    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    for _ in range(3):
        client.infer(MODEL, inputs_for(images[:2], binary=True))
    with pytest.raises(InferenceServerException):
        client.infer(MODEL, inputs_for(np.zeros((1, 5), np.float32), binary=False))
    after = client.get_inference_statistics(MODEL)["model_stats"][0]
    stats, previous = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - previous["success"]["count"] == 3
    assert stats["fail"]["count"] - previous["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 6  # examples
    assert after["execution_count"] > before["execution_count"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["ns"] > previous[phase]["ns"], phase
    assert after["last_inference"] >= before["last_inference"] > 0
    everything = client.get_inference_statistics()  # every model: GET /v2/models/stats
    assert [m["name"] for m in everything["model_stats"]] == [MODEL]


def test_errors_are_exceptions_with_the_servers_message(client, sample):
    with pytest.raises(InferenceServerException, match=r"input 'image': shape \[1, 5\]"):
        client.infer(MODEL, inputs_for(np.zeros((1, 5), np.float32), binary=True))
    with pytest.raises(InferenceServerException, match=r"expects values in 0\.\.255"):
        client.infer(MODEL, inputs_for(np.full((1, 28, 28, 1), 300, np.float32), binary=False))
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.infer("other", inputs_for(sample[0][:1], binary=True))
    with pytest.raises(InferenceServerException, match="unknown output"):
        client.infer(MODEL, inputs_for(sample[0][:1], binary=True),
                     outputs=[tritonclient_http.InferRequestedOutput("logits")])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_config("other")


def test_the_repository_extension_lists_unloads_and_loads_the_one_bundle(client, sample):
    assert client.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]
    client.unload_model(MODEL)
    try:
        assert not client.is_model_ready(MODEL)
        assert client.get_model_repository_index()[0]["state"] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException, match="no ready version"):
            client.infer(MODEL, inputs_for(sample[0][:1], binary=True))
    finally:
        client.load_model(MODEL)
    assert client.is_model_ready(MODEL)
    result = client.infer(MODEL, inputs_for(sample[0][:1], binary=True))
    np.testing.assert_allclose(result.as_numpy("probabilities"), sample[1][:1], atol=1e-5)


def test_extensions_this_server_does_not_offer_fail_cleanly(client):
    calls = [client.get_trace_settings, client.get_log_settings, client.get_system_shared_memory_status,
             client.get_cuda_shared_memory_status]
    for call in calls:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() is None or not str(raised.value.status()).startswith("5")
    assert client.is_server_live()
