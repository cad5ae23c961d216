"""Hostile and malformed requests: every answer is a 4xx with a one-line JSON error — never a 5xx — the server
stays up, its memory stays bounded, and an unexpected failure is a 500 with a request id, not a dead process.

Hypothesis generates V2, TF Serving and :classify requests against the in-process app (fast); a smaller fixed
round of the worst (decompression bombs, lying binary headers, deep nesting) goes to a real server subprocess,
whose peak RSS is read from /proc.
"""

import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import ServerProcess, loopback_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from devtools.hostile import catalogue, deep_json, picture, png_bomb, png_header, random_garbage, send
from kerasport.contract import V2_DATATYPES
from kerasport.errors import EXIT_OK
from kerasport.serve.app import create_app, default_max_image_pixels
from kerasport.serve.model import load_served_model

# Pillow warns about the bombs before the server refuses them; the refusal is what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
MODEL = "kerasport-seed"
BODY_LIMIT = 1_000_000
PIXEL_LIMIT = 2_000_000
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def model(verified):
    return load_served_model(verified, variant="onnx-fp32")


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, max_body_bytes=BODY_LIMIT, max_image_pixels=PIXEL_LIMIT)
    with TestClient(app, raise_server_exceptions=True) as started:
        yield started


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(13000, 13000)  # 169 MP of zeros in ~160 KB


def assert_refused_cleanly(response, label: str = "") -> None:
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and error and "\n" not in error, (label, error)


# --- generated requests --------------------------------------------------------------------------------------

numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=3), st.none())
nested = st.recursive(numbers, lambda inner: st.lists(inner, max_size=5), max_leaves=30)
json_values = st.recursive(numbers, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=5), inner, max_size=4), max_leaves=20)
# Mostly plausible values, so requests get past the first checks and reach the deep ones; sometimes anything.
dims = st.one_of(st.integers(-3, 40), st.sampled_from([0, 1, 28, 784, 2**31, 2**63, 10**30]), st.text(max_size=2),
                 st.floats())
shapes = st.one_of(st.sampled_from([[1, 28, 28, 1], [1, 784], [2, 28, 28], [1, 28, 28], [3, 784], [0, 784]]),
                   st.lists(st.sampled_from([0, 1, 2, 28, 784]), max_size=5), st.lists(dims, max_size=5),
                   json_values)
datatypes = st.one_of(st.sampled_from(sorted(set(V2_DATATYPES.values())) * 2 + ["BYTES", "FP8", ""]), json_values)


def sometimes(draw, realistic, odd):
    """Mostly a plausible value, so requests get past the first checks to the deep ones; sometimes anything."""
    return draw(odd) if draw(st.integers(0, 5)) == 5 else draw(realistic)


@st.composite
def v2_tensor(draw) -> dict:
    shape = sometimes(draw, st.sampled_from([[1, 28, 28, 1], [1, 784], [2, 28, 28], [1, 28, 28], [3, 784], [0, 784],
                                             [1, 28, 28, 2], [1, 1, 784]]), shapes)
    tensor = {"name": sometimes(draw, st.just("image"), st.sampled_from(["pixels", ""]) | st.text(max_size=4)),
              "shape": shape, "datatype": sometimes(draw, st.sampled_from(["FP32", "UINT8", "FP16", "INT64", "FP64"]),
                                                    datatypes)}
    size = 0
    if isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 1000 for d in shape):
        size = int(np.prod(shape)) if shape else 1
    if draw(st.integers(0, 3)) > 0 and size <= 4000:
        value = draw(st.sampled_from([0.0, 255.0, 256.0, -1.0, 7, 0.5, 1e39, True]))
        tensor["data"] = [value] * (size + draw(st.sampled_from([0, 0, 0, 1, -1])))
    else:
        tensor["data"] = draw(nested)
    if draw(st.integers(0, 4)) == 4:
        tensor["parameters"] = draw(json_values | st.fixed_dictionaries({"binary_data_size": dims}))
    if draw(st.integers(0, 6)) == 6:
        del tensor[draw(st.sampled_from(["name", "shape", "datatype", "data"]))]
    return tensor


@st.composite
def v2_request(draw):
    body: dict = {"inputs": sometimes(draw, st.lists(v2_tensor(), min_size=1, max_size=1),
                                      st.lists(v2_tensor(), max_size=3) | json_values)}
    if draw(st.booleans()):
        body["outputs"] = sometimes(
            draw, st.sampled_from([[{"name": "probabilities"}],
                                   [{"name": "probabilities", "parameters": {"binary_data": True}}]]),
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(["probabilities", "x"]),
                                            "parameters": json_values}), max_size=2) | json_values)
    if draw(st.booleans()):
        body["id"] = sometimes(draw, st.text(max_size=8), json_values)
    if draw(st.booleans()):
        body["parameters"] = sometimes(draw, st.fixed_dictionaries({"binary_data_output": st.booleans()}),
                                       json_values)
    raw = json.dumps(body).encode()
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", "", "application/x-www"]))}
    if draw(st.integers(0, 3)) == 3:  # the binary extension, often lying about the split
        tail = draw(st.binary(max_size=4000))
        length = draw(st.one_of(st.just(len(raw)), st.integers(-2, len(raw) + len(tail) + 5)))
        headers["Inference-Header-Content-Length"] = str(length)
        raw += tail
    path = draw(st.sampled_from([f"/v2/models/{MODEL}/infer"] * 4 + [f"/v2/models/{MODEL}/versions/1/infer",
                                                                      "/v2/models/other/infer"]))
    return "POST", path, raw, headers


@st.composite
def tfs_request(draw):
    key = draw(st.sampled_from(["instances"] * 3 + ["inputs"] * 3 + ["both", "neither"]))
    body = {"signature_name": draw(st.sampled_from(["serving_default"] * 3 + ["other"]))} if draw(st.booleans()) else {}
    payload = draw(nested | st.just(np.zeros((2, 28, 28, 1)).tolist()) | st.just([[0.0] * 784])
                   | st.dictionaries(st.sampled_from(["image", "x"]), nested, max_size=2))
    if key in ("instances", "both"):
        body["instances"] = payload
    if key in ("inputs", "both"):
        body["inputs"] = payload
    return "POST", f"/v1/models/{MODEL}:predict", json.dumps(body).encode(), {"Content-Type": "application/json"}


PICTURES = {"png": picture(40, 30), "jpeg": picture(40, 30, "JPEG", "RGB"), "rgba": picture(20, 20, "PNG", "RGBA"),
            "gray16": picture(12, 12, "PNG", "I;16"), "cmyk": picture(16, 16, "JPEG", "CMYK")}


@st.composite
def classify_request(draw):
    kind = draw(st.sampled_from(["picture", "header", "cut", "bytes", "multipart"]))
    if kind == "picture":
        body = PICTURES[draw(st.sampled_from(sorted(PICTURES)))]
    elif kind == "header":
        body = png_header(draw(st.integers(0, 70000)), draw(st.integers(0, 70000)), draw(st.sampled_from([0, 2, 6])),
                          draw(st.sampled_from([1, 8, 16])))
    elif kind == "cut":
        whole = PICTURES[draw(st.sampled_from(sorted(PICTURES)))]
        body = whole[:draw(st.integers(0, len(whole)))]
    else:
        body = draw(st.binary(max_size=2000))
    headers = {"Content-Type": draw(st.sampled_from(["image/png", "image/jpeg", "application/octet-stream"]))}
    if kind == "multipart":
        boundary = "b0undary"
        parts = b"".join(b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="image"; filename="'
                         + str(index).encode() + b'.png"\r\nContent-Type: image/png\r\n\r\n' + part + b"\r\n"
                         for index, part in enumerate(draw(st.lists(st.sampled_from(list(PICTURES.values()))
                                                                    | st.binary(max_size=200), max_size=4))))
        body = parts + (b"--" + boundary.encode() + b"--\r\n" if draw(st.booleans()) else b"")
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    top_k = draw(st.sampled_from(["", "?top_k=2", "?top_k=0", "?top_k=99", "?top_k=x", "?top_k=-1"]))
    return "POST", f"/v1/models/{MODEL}:classify{top_k}", body, headers


requests_ = st.one_of(v2_request(), tfs_request(), classify_request(),
                      st.tuples(st.sampled_from(["GET", "PUT", "DELETE", "POST"]),
                                st.sampled_from(["/v2", "/v2/models/stats", f"/v2/models/{MODEL}/config",
                                                 f"/v2/models/{MODEL}/stats", f"/v1/models/{MODEL}", "/openapi.json",
                                                 f"/v1/models/{MODEL}/metadata", "/v2/models/%00"]),
                                st.binary(max_size=100), st.just({})))


def test_generated_requests_never_get_a_server_error(client):
    @FUZZ
    @given(request=requests_)
    def check(request):
        method, path, body, headers = request
        assert_refused_cleanly(client.request(method, path, content=body, headers=headers), f"{method} {path}")

    check()
    assert client.get("/v2/health/ready").status_code == 200


def test_the_hostile_catalogue_is_refused_with_4xx(client, bomb):
    for case in catalogue(MODEL, "image", (28, 28, 1), max_body_bytes=BODY_LIMIT, big_bomb=bomb):
        response = client.request(case.method, case.path, content=case.body, headers=case.headers)
        assert 400 <= response.status_code < 500, (case.label, response.status_code, response.text[:300])
        assert_refused_cleanly(response, case.label)


def test_pictures_over_the_pixel_limit_are_413_naming_their_size(client, bomb):
    response = client.post(f"/v1/models/{MODEL}:classify", content=bomb, headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert "13000x13000 pixels (169.0 MP) exceeds the limit of 2.0 MP" in response.json()["error"]
    first_bytes = client.post(f"/v1/models/{MODEL}:classify", content=png_header(20000, 20000))
    assert first_bytes.status_code == 413 and "400.0 MP" in first_bytes.json()["error"]
    at_limit = client.post(f"/v1/models/{MODEL}:classify", content=png_bomb(2000, 1000))  # 2.0 MP: decoded
    assert at_limit.status_code == 200, at_limit.text
    over = client.post(f"/v1/models/{MODEL}:classify", content=png_header(2000, 1001))
    assert over.status_code == 413 and "2000x1001" in over.json()["error"]


def test_truncated_and_undecodable_pictures_are_400(client):
    whole = picture(64, 64)
    for body, message in ((whole[:100], "truncated"), (picture(8, 8, "GIF"), "not PNG or JPEG"),
                          (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not PNG or JPEG")):
        response = client.post(f"/v1/models/{MODEL}:classify", content=body)
        assert response.status_code == 400 and message in response.json()["error"], response.text


def test_default_pixel_limit_is_sized_from_the_model(model):
    assert default_max_image_pixels(model.contract) == 16_000_000  # a 28x28 model: the 16 MP floor


def test_big_json_bodies_parse_in_a_worker_process_and_answer_the_same(client, model):
    # over the inline threshold: parsed and encoded in the offload process pool
    images = np.random.default_rng(0).integers(0, 256, (120, 28, 28, 1)).astype(np.float32)
    body = {"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "FP32",
                        "data": images.ravel().tolist()}]}
    assert len(json.dumps(body)) > 128 * 1024
    big = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert big.status_code == 200, big.text
    expected = model.predict({"image": images})["probabilities"]
    np.testing.assert_allclose(np.reshape(big.json()["outputs"][0]["data"], expected.shape), expected, atol=1e-5)
    rows = client.post(f"/v1/models/{MODEL}:predict", json={"instances": images.tolist()})
    np.testing.assert_allclose(rows.json()["predictions"], expected, atol=1e-5)
    broken = client.post(f"/v2/models/{MODEL}/infer", content=deep_json(200_000))
    assert broken.status_code == 400 and "malformed JSON" in broken.json()["error"]


# --- unexpected failures: the catch-all ----------------------------------------------------------------------

class ExplodingRuntime:
    def __init__(self, real):
        self.real, self.explode = real, True

    def run(self, inputs):
        if self.explode:
            raise RuntimeError("kaboom in the runtime")
        return self.real.run(inputs)


def test_an_unexpected_error_is_a_500_with_a_request_id_and_the_server_serves_on(model, caplog):
    from dataclasses import replace

    runtime = ExplodingRuntime(model.runtime)
    app = create_app(replace(model, runtime=runtime))
    body = {"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
    with TestClient(app, raise_server_exceptions=True) as client, caplog.at_level(logging.ERROR, "kerasport.error"):
        failed = client.post(f"/v2/models/{MODEL}/infer", json=body, headers={"X-Request-ID": "req-42"})
        assert failed.status_code == 500
        assert failed.json() == {"error": "internal error: RuntimeError: kaboom in the runtime", "request_id": "req-42"}
        assert failed.headers["x-request-id"] == "req-42"
        logged = [json.loads(record.getMessage()) for record in caplog.records if record.name == "kerasport.error"]
        assert logged and logged[0]["request_id"] == "req-42" and "kaboom" in logged[0]["traceback"]
        generated = client.post(f"/v2/models/{MODEL}/infer", json=body).json()
        assert len(generated["request_id"]) == 32  # no usable client id: the server makes one
        runtime.explode = False
        assert client.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 200  # serving on
        stats = client.get(f"/v2/models/{MODEL}/stats").json()["model_stats"][0]["inference_stats"]
        assert stats["fail"]["count"] == 2 and stats["success"]["count"] == 1


def test_a_client_that_leaves_mid_body_is_not_a_server_error(model, caplog):
    import asyncio

    app = create_app(model)
    app.state.serving.set_ready(True)  # no lifespan: the request never reaches the batcher
    messages = [{"type": "http.request", "body": b'{"inputs": [', "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": f"/v2/models/{MODEL}/infer", "raw_path": b"", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": None}
    with caplog.at_level(logging.ERROR, "kerasport.error"):
        asyncio.run(app(scope, receive, send))
    assert sent == [] and not [r for r in caplog.records if r.name == "kerasport.error"]
    text = app.state.serving.metrics.collected()
    from prometheus_client import generate_latest

    assert 'status="499"' in generate_latest(text).decode()


def test_large_jpegs_decode_at_a_reduced_scale_close_to_the_full_decode():
    import io

    from PIL import Image

    from kerasport.images import DRAFT_ABOVE_PIXELS, REFERENCE_IMAGE, decode_image, decode_image_bytes

    side = int((DRAFT_ABOVE_PIXELS * 1.2) ** 0.5)  # just over the draft threshold
    payload = picture(side, side, "JPEG", "RGB", seed=3)
    drafted = decode_image_bytes(payload, REFERENCE_IMAGE, max_pixels=16_000_000)
    with Image.open(io.BytesIO(payload)) as full:
        full.load()
        exact = decode_image(full, REFERENCE_IMAGE)
    assert drafted.shape == exact.shape == (28, 28, 1)
    assert not np.array_equal(drafted, exact)  # decoded at a reduced DCT scale, not in full
    assert float(np.abs(drafted - exact).mean()) < 2.0  # pixels 0..255: a resampling difference, not another image


# --- a real server subprocess ---------------------------------------------------------------------------------

def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_real_server_survives_the_hostile_round_with_bounded_memory(verified, bomb):
    server = ServerProcess(verified, "--variant", "onnx-fp32", "--max-body-bytes", str(BODY_LIMIT),
                           "--max-image-pixels", "1000000", "--no-access-log")
    try:
        cases = catalogue(MODEL, "image", (28, 28, 1), max_body_bytes=BODY_LIMIT, big_bomb=bomb)
        rng = random.Random(0)
        cases += [random_garbage(rng, MODEL) for _ in range(60)]
        good = {"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
        with loopback_client(base_url=server.url, timeout=30) as http:
            assert http.post(f"/v2/models/{MODEL}/infer", json=good).status_code == 200
            baseline = rss_kb(server.pid)

            with ThreadPoolExecutor(max_workers=8) as pool:
                for case, (status, body) in zip(cases * 2, pool.map(lambda c: send(server.url, c), cases * 2),
                                                strict=True):
                    assert 400 <= status < 500, (case.label, status, body[:300])
            assert http.get("/v2/health/live").status_code == 200
            assert http.post(f"/v2/models/{MODEL}/infer", json=good).status_code == 200
            over = http.post(f"/v1/models/{MODEL}:classify", content=png_header(1001, 1000))  # --max-image-pixels
            assert over.status_code == 413 and "1001x1000 pixels (1.0 MP) exceeds the limit of 1.0 MP" in over.text
        # the 169 MP bomb was refused from its header: the peak stays far below one decoded copy of it
        peak = rss_kb(server.pid, "VmHWM")
        assert peak - baseline < 120_000, (baseline, peak)
    finally:
        assert server.stop() == EXIT_OK, server.logs()[-2000:]
    assert "Traceback" not in server.logs()


def test_health_answers_while_big_bodies_are_parsed(verified):
    server = ServerProcess(verified, "--variant", "onnx-fp32", "--no-access-log")
    images = np.random.default_rng(1).integers(0, 256, (600, 28, 28, 1)).astype(np.float32)
    big = json.dumps({"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "FP32",
                                  "data": images.ravel().tolist()}]}).encode()
    try:
        stop = time.monotonic() + 6

        def hammer(_):
            with loopback_client(base_url=server.url, timeout=60) as http:
                while time.monotonic() < stop:
                    assert http.post(f"/v2/models/{MODEL}/infer", content=big).status_code == 200

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(hammer, i) for i in range(4)]
            latencies = []
            with loopback_client(base_url=server.url, timeout=10) as http:
                time.sleep(1.0)
                while time.monotonic() < stop - 0.5:
                    started = time.perf_counter()
                    assert http.get("/v2/health/live").status_code == 200
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.01)
            for future in futures:
                future.result()
        # a blocked loop would make health wait for whole parses (~100 ms each); bench/serve.py reports the p99
        assert float(np.median(latencies)) < 0.05, sorted(latencies)[-10:]
    finally:
        assert server.stop() == EXIT_OK
