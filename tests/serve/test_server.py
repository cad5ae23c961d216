"""A real `kerasport serve` subprocess on a loopback port, driven by real HTTP clients."""

import io
import json
import os
import socket
import struct
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import ServerProcess, loopback_client, loopback_get
from PIL import Image

from kerasport.errors import EXIT_OK, EXIT_USAGE
from kerasport.verdict import Verdict

MODEL = "kerasport-seed"


@pytest.fixture(scope="module")
def server(verified):
    process = ServerProcess(verified, "--variant", "onnx-fp32", "--max-body-bytes", "1000000")
    yield process
    assert process.stop() == EXIT_OK, process.logs()[-2000:]


@pytest.fixture(scope="module")
def client(server):
    with loopback_client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def sample(verified):
    from kerasport.manifest import load_manifest
    from kerasport.samples import load_samples

    manifest = load_manifest(verified)
    data = load_samples(manifest.artifact("eval_sample").resolve(verified), manifest.contract)
    return data.inputs["image"].astype(np.float32), data.targets["probabilities"]


@pytest.fixture(scope="module")
def reference(verified, sample):
    model = keras.saving.load_model(verified / "train" / "model.keras")
    return keras.ops.convert_to_numpy(model(sample[0], training=False))


def v2_body(images, **extra):
    return {"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "FP32",
                        "data": images.ravel().tolist()}], **extra}


def png_bytes(image: np.ndarray, size=(28, 28)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0].astype(np.uint8)).resize(size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_metadata_endpoints(client, server):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "kerasport"
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["variant"] == "onnx-fp32" and meta["parameters"]["parity"] == Verdict.PASS
    assert client.get(f"/v2/models/{MODEL}/versions/1").json()["name"] == MODEL
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v1/models/{MODEL}").json()["model_version_status"][0]["state"] == "AVAILABLE"
    signature = client.get(f"/v1/models/{MODEL}/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert "image" in signature["serving_default"]["inputs"]
    assert server.ready["ready_seconds"] < 5


def test_v2_infer_equals_keras_within_fp32_tolerance(client, sample, reference):
    images = sample[0]
    for start in range(0, len(images), 16):
        batch = images[start:start + 16]
        response = client.post(f"/v2/models/{MODEL}/infer", json=v2_body(batch, id=f"req-{start}"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == f"req-{start}" and body["model_name"] == MODEL
        output = body["outputs"][0]
        assert output["name"] == "probabilities" and output["shape"] == [len(batch), 3]
        np.testing.assert_allclose(np.array(output["data"]).reshape(len(batch), 3), reference[start:start + 16],
                                   atol=1e-5)


def test_v2_nested_uint8_versioned_and_output_selection(client, sample, reference):
    image = sample[0][:2]
    body = {"inputs": [{"name": "image", "shape": [2, 28, 28], "datatype": "UINT8",
                        "data": image[..., 0].astype(np.uint8).tolist()}],
            "outputs": [{"name": "probabilities"}]}
    response = client.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["outputs"][0]["data"]).reshape(2, 3), reference[:2], atol=1e-5)


def test_tf_serving_predict_row_and_columnar(client, sample, reference):
    images = sample[0][:3]
    rows = client.post(f"/v1/models/{MODEL}:predict", json={"instances": images.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], reference[:3], atol=1e-5)
    named = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"image": img.tolist()} for img in images]})
    np.testing.assert_allclose(named.json()["predictions"], reference[:3], atol=1e-5)
    columnar = client.post(f"/v1/models/{MODEL}:predict", json={"inputs": {"image": images.tolist()}})
    np.testing.assert_allclose(columnar.json()["outputs"], reference[:3], atol=1e-5)


def test_classify_png_raw_and_multipart(client, sample, reference):
    image = sample[0][0]
    raw = client.post(f"/v1/models/{MODEL}:classify?top_k=2", content=png_bytes(image),
                      headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    top = raw.json()["results"][0]["top_k"]
    assert len(top) == 2 and top[0]["index"] == int(reference[0].argmax())
    assert top[0]["probability"] == pytest.approx(float(reference[0].max()), abs=1e-5)
    # a 56x56 RGB JPEG-free upload: decoded to grayscale and resized as the manifest says
    files = [("image", ("a.png", png_bytes(sample[0][1], (56, 56)), "image/png")),
             ("image", ("b.png", png_bytes(sample[0][2]), "image/png"))]
    multi = client.post(f"/v1/models/{MODEL}:classify", files=files)
    assert multi.status_code == 200, multi.text
    results = multi.json()["results"]
    assert [r["file"] for r in results] == ["a.png", "b.png"]
    assert results[1]["top_k"][0]["index"] == int(reference[2].argmax())


@pytest.mark.parametrize("body, message", [
    ({"inputs": [{"name": "image", "shape": [1, 32, 32], "datatype": "FP32", "data": [0.0] * 1024}]},
     "shape [1, 32, 32]"),
    ({"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "BOOL", "data": [False] * 784}]},
     "datatype 'BOOL' is not supported"),
    ({"inputs": [{"name": "image", "shape": [2, 28, 28, 1], "datatype": "FP32", "data": [0.0] * 784}]},
     "data holds 784 values but shape [2, 28, 28, 1] needs 1568"),
    ({"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32", "data": [300.0] * 784}]},
     "input 'image' expects values in 0..255"),
    ({"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]},
     "unknown input 'pixels'"),
    ({"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32"}]}, "missing 'data'"),
    ({"instances": []}, "'inputs' must be a non-empty list of tensor objects"),
    ({"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}],
      "outputs": [{"name": "logits"}]}, "unknown output(s) ['logits']"),
])
def test_v2_bad_requests_are_400_with_a_precise_message(client, body, message):
    response = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_nan_malformed_json_and_bad_images_are_400(client):
    nan_body = json.dumps(v2_body(np.full((1, 28, 28, 1), np.nan)))  # json.dumps writes the NaN token
    nan = client.post(f"/v2/models/{MODEL}/infer", content=nan_body, headers={"Content-Type": "application/json"})
    assert nan.status_code == 400 and "NaN or Inf" in nan.json()["error"]
    broken = client.post(f"/v2/models/{MODEL}/infer", content=b'{"inputs": [',
                         headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "malformed JSON" in broken.json()["error"]
    empty = client.post(f"/v1/models/{MODEL}:predict", content=b"")
    assert empty.status_code == 400 and "empty body" in empty.json()["error"]
    both = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[0] * 784], "inputs": [[0] * 784]})
    assert both.status_code == 400 and "exactly one of 'instances'" in both.json()["error"]
    image = client.post(f"/v1/models/{MODEL}:classify", content=b"GIF89a not really",
                        headers={"Content-Type": "image/png"})
    assert image.status_code == 400 and "cannot decode as PNG/JPEG" in image.json()["error"]
    top_k = client.post(f"/v1/models/{MODEL}:classify?top_k=zero", content=b"x")
    assert top_k.status_code == 400


def test_unknown_model_version_and_route_are_404(client):
    assert client.get("/v2/models/other").status_code == 404
    assert "unknown model 'other'" in client.post("/v2/models/other/infer", json={}).json()["error"]
    assert client.get(f"/v2/models/{MODEL}/versions/7").status_code == 404
    assert client.get("/nope").status_code == 404
    assert client.get(f"/v2/models/{MODEL}/infer").status_code == 405


def test_body_limit_by_content_length_and_chunked(client, server):
    big = b"{" + b" " * 1_100_000 + b"}"
    response = client.post(f"/v2/models/{MODEL}/infer", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "exceeds the limit of 1000000 bytes" in response.json()["error"]

    def chunks():
        for _ in range(40):
            yield b" " * 50_000

    chunked = client.post(f"/v2/models/{MODEL}/infer", content=chunks())
    assert chunked.status_code == 413 and "cut off while streaming" in chunked.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200  # the server lives on


def test_64_parallel_requests_are_all_answered_correctly(server, sample, reference):
    images = sample[0]

    def one(index: int):
        i = index % len(images)
        with loopback_client(base_url=server.url, timeout=60) as http:
            response = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(images[i:i + 1], id=str(index)))
        return index, i, response

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(one, range(64)))
    for index, i, response in results:
        assert response.status_code == 200
        assert response.json()["id"] == str(index)
        np.testing.assert_allclose(response.json()["outputs"][0]["data"], reference[i], atol=1e-5)


def test_metrics_and_access_log(client, server):
    client.get("/v2/health/live")
    assert client.post(f"/v2/models/{MODEL}/infer", json=v2_body(np.zeros((1, 28, 28, 1)))).status_code == 200
    text = client.get("/metrics").text
    assert 'kerasport_requests_total{method="GET",route="/v2/health/live",status="200"}' in text
    assert 'kerasport_request_seconds_bucket{le="0.0001",route="/v2/models/{name}/infer"}' in text
    for metric in ("kerasport_batch_size_bucket", "kerasport_queue_seconds_bucket", "kerasport_inference_seconds"):
        assert metric in text
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert any(line["route"] == "/v2/health/live" and line["status"] == 200 for line in lines)


def test_server_process_never_loads_tensorflow(server):
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    loaded = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    assert not [path for path in loaded if "site-packages/tensorflow/" in path or "site-packages/keras/" in path]
    assert any("onnxruntime" in path for path in loaded)  # the runtime really is in there


def test_api_key(verified):
    process = ServerProcess(verified, "--variant", "tflite-fp32", "--api-key", "s3cret")
    try:
        with loopback_client(base_url=process.url) as http:
            assert http.get("/v2/health/ready").status_code == 200  # health stays open
            body = v2_body(np.zeros((1, 28, 28, 1)))
            assert http.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 401
            wrong = http.post(f"/v2/models/{MODEL}/infer", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
            ok = http.post(f"/v2/models/{MODEL}/infer", json=body, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            assert http.get(f"/v2/models/{MODEL}", headers={"X-API-Key": "s3cret"}).status_code == 200
    finally:
        assert process.stop() == EXIT_OK


def test_sigterm_drains_in_flight_requests(verified):
    import re
    import time

    # a long batching window holds the requests in flight while SIGTERM arrives
    process = ServerProcess(verified, "--variant", "onnx-fp32", "--max-delay-ms", "1500", "--max-batch", "64")
    images = np.zeros((1, 28, 28, 1))

    def call(_):
        with loopback_client(base_url=process.url, timeout=30) as http:
            return http.post(f"/v2/models/{MODEL}/infer", json=v2_body(images)).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(call, i) for i in range(8)]
        deadline = time.monotonic() + 10
        in_flight = 0
        while time.monotonic() < deadline and in_flight < 8:
            text = loopback_get(f"{process.url}/metrics").text
            in_flight = float(re.search(r"^kerasport_requests_in_flight (\S+)", text, re.M).group(1)) - 1
        assert in_flight >= 8  # all eight are inside the server, none answered yet
        code = process.stop()
        statuses = [future.result() for future in futures]
    assert code == EXIT_OK  # a drained SIGTERM is a clean exit
    assert statuses == [200] * 8


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses `pid` listens on at `port`, from /proc/net/tcp{,6} (no psutil needed)."""
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    addresses = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            address, local_port = fields[1].split(":")
            if fields[3] == "0A" and int(local_port, 16) == port and f"socket:[{fields[9]}]" in inodes:
                # the kernel prints the address as native-endian 32-bit words
                packed = b"".join(struct.pack("=I", int(address[i:i + 8], 16)) for i in range(0, len(address), 8))
                addresses.add(socket.inet_ntop(family, packed))
    return addresses


def test_loopback_default_and_port_in_use(verified, server):
    # the fixture passes no --host: the default listens on the loopback interface only
    port = int(server.url.rsplit(":", 1)[1])
    assert server.url == f"http://127.0.0.1:{port}"
    assert listening_addresses(server.pid, port) == {"127.0.0.1"}

    script = Path(sys.executable).with_name("kerasport")
    taken = subprocess.run([str(script), "serve", "--run", str(verified), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert taken.returncode == EXIT_USAGE, taken.stderr
    lines = taken.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Address already in use" in lines[0], taken.stderr
    assert taken.stdout == ""  # no ready line


def test_serve_extra_does_not_pull_tensorflow():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    serve_extra = " ".join(pyproject["project"]["optional-dependencies"]["serve"]).lower()
    base = " ".join(pyproject["project"]["dependencies"]).lower()
    for heavy in ("tensorflow", "keras", "tf2onnx", "tf-keras"):
        assert heavy not in serve_extra and heavy not in base


def test_v2_binary_tensor_extension(client, sample, reference):
    images = sample[0][:3]
    header = json.dumps({"inputs": [{"name": "image", "shape": [3, 28, 28, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": images.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    response = client.post(f"/v2/models/{MODEL}/infer", content=header + images.astype("<f4").tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 3 * 3 * 4
    values = np.frombuffer(response.content[length:], dtype="<f4").reshape(3, 3)
    np.testing.assert_allclose(values, reference[:3], atol=1e-5)

    pixels = images.astype(np.uint8)
    header = json.dumps({"inputs": [{"name": "image", "shape": [3, 784], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": pixels.nbytes}}]}).encode()
    as_json = client.post(f"/v2/models/{MODEL}/infer", content=header + pixels.tobytes(),
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert as_json.status_code == 200, as_json.text
    np.testing.assert_allclose(np.reshape(as_json.json()["outputs"][0]["data"], (3, 3)), reference[:3], atol=1e-5)

    short = client.post(f"/v2/models/{MODEL}/infer", content=header + pixels.tobytes()[:-5],
                        headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "binary_data_size says 2352" in short.json()["error"]
