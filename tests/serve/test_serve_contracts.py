"""Serving models other than the reference CNN: several named inputs and outputs, tabular, RGB images.

Driven in process (Starlette's TestClient over the real app); expected values come from the same artifact run
in-process through `kerasport.runtimes`.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from devtools import tiny_models as bundles
from kerasport.app.cli import app as cli
from kerasport.images import decode_image_bytes
from kerasport.manifest import load_manifest
from kerasport.runtimes import open_runtime
from kerasport.serve.app import create_app
from kerasport.serve.model import load_served_model

runner = CliRunner()


@pytest.fixture(scope="module")
def two_inputs(two_inputs_exported):
    return two_inputs_exported


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    return bundles.export_formats(bundles.regressor_bundle(tmp_path_factory.mktemp("prices") / "run",
                                                           eval_examples=16), ["onnx-fp32"])


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return bundles.export_formats(bundles.rgb_bundle(tmp_path_factory.mktemp("colours") / "run"), ["onnx-fp32"])


def serving(run, variant="onnx-fp32"):
    model = load_served_model(run, variant=variant, allow_unverified=True)
    return model, TestClient(create_app(model, max_batch=8))


def in_process(run, variant, inputs):
    """The expected outputs: the same artifact, run directly in its runtime."""
    artifact = load_manifest(run).artifact(variant)
    return open_runtime(artifact.resolve(run), artifact.format).run(inputs)


def two_inputs_batch(n=3, seed=5):
    return bundles.two_input_samples(n, seed).inputs


def v2_json(inputs, **extra):
    return {"inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32",
                        "data": array.ravel().tolist()} for name, array in inputs.items()], **extra}


def outputs_of(body):
    return {o["name"]: np.reshape(o["data"], o["shape"]) for o in body["outputs"]}


# --- (a) two named inputs, two outputs --------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["onnx-fp32", "tflite-fp32"])
def test_two_inputs_v2_json_returns_both_outputs(two_inputs, variant):
    inputs = two_inputs_batch()
    expected = in_process(two_inputs, variant, inputs)
    model, client = serving(two_inputs, variant)
    with client:
        response = client.post(f"/v2/models/{model.name}/infer", json=v2_json(inputs, id="a"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "a" and [o["name"] for o in body["outputs"]] == model.contract.output_names
    assert {o["name"]: (o["datatype"], o["shape"]) for o in body["outputs"]} == {
        "species": ("FP32", [3, len(bundles.CLASSES)]), "size": ("FP32", [3, 1])}
    for name, values in outputs_of(body).items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-6, atol=1e-6)


def test_two_inputs_v2_binary_extension(two_inputs):
    inputs = two_inputs_batch(n=2)
    expected = in_process(two_inputs, "onnx-fp32", inputs)
    pixels = inputs["picture"].astype(np.uint8)  # a float input also takes UINT8 pixels: 4x fewer bytes
    header = json.dumps({
        "inputs": [{"name": "features", "shape": [2, bundles.FEATURES], "datatype": "FP32",
                    "parameters": {"binary_data_size": inputs["features"].nbytes}},
                   {"name": "picture", "shape": list(pixels.shape), "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes}}],
        "outputs": [{"name": "size", "parameters": {"binary_data": True}}, {"name": "species"}]}).encode()
    model, client = serving(two_inputs)
    with client:
        response = client.post(f"/v2/models/{model.name}/infer",
                               content=header + inputs["features"].astype("<f4").tobytes() + pixels.tobytes(),
                               headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    size, species = meta["outputs"]
    assert size["name"] == "size" and size["parameters"]["binary_data_size"] == 2 * 4
    np.testing.assert_allclose(np.frombuffer(response.content[length:], "<f4").reshape(2, 1), expected["size"],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.reshape(species["data"], species["shape"]), expected["species"], rtol=1e-6,
                               atol=1e-6)


def tensor(name, shape, data, datatype="FP32"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


PICTURE = tensor("picture", [1, *bundles.PICTURE], [0.0] * int(np.prod(bundles.PICTURE)))
FEATURES = tensor("features", [1, bundles.FEATURES], [0.0] * bundles.FEATURES)


@pytest.mark.parametrize("inputs, message", [
    ([PICTURE], "missing input 'features'"),
    ([PICTURE, FEATURES, tensor("extra", [1], [0.0])], "unknown input 'extra'"),
    ([PICTURE, tensor("features", [1, 7], [0.0] * 7)], "input 'features': shape [1, 7]; input 'features' expects "
                                                      "[batch, 8]"),
    ([PICTURE, tensor("features", [1, 8], [True] * 8, "BOOL")], "input 'features': datatype 'BOOL' is not supported"),
    ([tensor("picture", [1, 32, 32, 3], [256.0] * 3072), FEATURES], "input 'picture' expects values in 0..255"),
    ([PICTURE, tensor("features", [2, 8], [0.0] * 16)], "inputs have batch sizes {'picture': 1, 'features': 2}"),
])
def test_two_inputs_errors_name_the_offending_input(two_inputs, inputs, message):
    model, client = serving(two_inputs)
    with client:
        response = client.post(f"/v2/models/{model.name}/infer", json={"inputs": inputs})
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_an_inferred_tensor_range_is_not_enforced_but_a_pixel_range_is(two_inputs):
    model, client = serving(two_inputs)
    features = model.manifest.contract.input("features")
    assert features.range_origin == "inferred" and not features.enforces_range
    beyond = features.value_range[1] + 4.0
    with client:
        response = client.post(f"/v2/models/{model.name}/infer",
                               json={"inputs": [PICTURE, tensor("features", [1, 8], [beyond] * 8)]})
    assert response.status_code == 200, response.text


def test_two_inputs_tf_serving_and_metadata(two_inputs):
    inputs = two_inputs_batch(n=2)
    expected = in_process(two_inputs, "onnx-fp32", inputs)
    model, client = serving(two_inputs)
    with client:
        instances = [{name: array[i].tolist() for name, array in inputs.items()} for i in range(2)]
        rows = client.post(f"/v1/models/{model.name}:predict", json={"instances": instances}).json()["predictions"]
        columns = client.post(f"/v1/models/{model.name}:predict",
                              json={"inputs": {name: array.tolist() for name, array in inputs.items()}}).json()
        metadata = client.get(f"/v2/models/{model.name}").json()
        signature = client.get(f"/v1/models/{model.name}/metadata").json()["metadata"]
        classify = client.post(f"/v1/models/{model.name}:classify", content=b"\x89PNG")
    for name in model.contract.output_names:
        np.testing.assert_allclose([row[name] for row in rows], expected[name], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(columns["outputs"][name], expected[name], rtol=1e-6, atol=1e-6)
    assert metadata["inputs"] == [{"name": "picture", "datatype": "FP32", "shape": [-1, *bundles.PICTURE]},
                                  {"name": "features", "datatype": "FP32", "shape": [-1, bundles.FEATURES]}]
    assert [o["name"] for o in metadata["outputs"]] == ["species", "size"]
    assert metadata["parameters"]["labels"] == {"species": list(bundles.CLASSES)}
    assert metadata["parameters"]["parity"] == "unverified" and metadata["parameters"]["task"] == "mixed"
    served = signature["signature_def"]["signature_def"]["serving_default"]
    assert sorted(served["inputs"]) == ["features", "picture"] and sorted(served["outputs"]) == ["size", "species"]
    assert served["inputs"]["features"]["tensor_shape"]["dim"][1]["size"] == str(bundles.FEATURES)
    assert signature["kerasport_contract"] == model.contract.to_dict()
    assert classify.status_code == 404 and "needs one image input and a classification output" in classify.text


# --- (b) a tabular regressor ------------------------------------------------------------------------------------
def test_regressor_tf_serving_instances_and_inputs(regressor):
    rows = bundles.regressor_samples(4, seed=3).inputs["row"]
    expected = in_process(regressor, "onnx-fp32", {"row": rows})["price"]
    model, client = serving(regressor)
    url = f"/v1/models/{model.name}:predict"
    with client:
        bodies = [{"instances": rows.tolist()}, {"instances": [{"row": row} for row in rows.tolist()]},
                  {"inputs": rows.tolist()}, {"inputs": {"row": rows.tolist()}}]
        answers = [client.post(url, json=body) for body in bodies]
        short = client.post(url, json={"instances": [row[:-1] for row in rows.tolist()]})
    for answer in answers:
        assert answer.status_code == 200, answer.text
        values = answer.json().get("predictions", answer.json().get("outputs"))
        np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-6)  # [batch, 1], as TF Serving answers
    assert short.status_code == 400
    assert f"input 'row' of 'instances': shape [4, {bundles.TABULAR - 1}]" in short.json()["error"]


def test_predict_cli_with_npz_inputs(regressor, tmp_path):
    rows = bundles.regressor_samples(3, seed=4).inputs["row"]
    expected = in_process(regressor, "onnx-fp32", {"row": rows})["price"]
    np.savez(tmp_path / "x.npz", x=rows)
    np.savez(tmp_path / "named.npz", row=rows)
    base = ["predict", "--run", str(regressor), "--allow-unverified"]
    as_json = runner.invoke(cli, [*base, "--inputs", f"npz:{tmp_path / 'x.npz'}", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    predictions = json.loads(as_json.stdout)["predictions"]
    assert [row["index"] for row in predictions] == [0, 1, 2]
    np.testing.assert_allclose([row["values"] for row in predictions], expected, rtol=1e-5)
    as_csv = runner.invoke(cli, [*base, "--inputs", f"npz:{tmp_path / 'named.npz'}", "--format", "csv"])
    assert as_csv.exit_code == 0 and as_csv.stdout.splitlines()[0] == "index,values"
    pictures = runner.invoke(cli, [*base, str(tmp_path / "x.npz")])
    assert pictures.exit_code == 2 and "pass --inputs npz:FILE" in pictures.output
    neither = runner.invoke(cli, base)
    assert neither.exit_code == 2 and "exactly one of the two" in neither.output
    np.savez(tmp_path / "wrong.npz", other=rows)
    wrong = runner.invoke(cli, [*base, "--inputs", f"npz:{tmp_path / 'wrong.npz'}"])
    assert wrong.exit_code == 2 and "no array for input 'row'" in wrong.output


def test_predict_cli_with_two_named_inputs(two_inputs, tmp_path):
    inputs = two_inputs_batch(n=2)
    expected = in_process(two_inputs, "onnx-fp32", inputs)
    np.savez(tmp_path / "two.npz", **inputs)
    result = runner.invoke(cli, ["predict", "--run", str(two_inputs), "--variant", "onnx-fp32", "--allow-unverified",
                                 "--inputs", f"npz:{tmp_path / 'two.npz'}", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["predictions"]
    assert [row["outputs"]["species"]["label"] for row in rows] == [
        bundles.CLASSES[i] for i in expected["species"].argmax(axis=1)]
    np.testing.assert_allclose([row["outputs"]["size"]["values"] for row in rows], expected["size"], rtol=1e-5)
    table = runner.invoke(cli, ["predict", "--run", str(two_inputs), "--variant", "onnx-fp32", "--allow-unverified",
                                "--inputs", f"npz:{tmp_path / 'two.npz'}", "--format", "csv"])
    assert table.stdout.splitlines()[0] == "index,species.label,species.probability,size.values"


# --- (c) an RGB image classifier --------------------------------------------------------------------------------
def png(pixels: np.ndarray, mode: str = "RGB", size=None) -> bytes:
    image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_rgb_classify_accepts_rgb_pngs(rgb):
    pictures = bundles.rgb_samples(3, seed=7).inputs["photo"]
    model, client = serving(rgb)
    spec = model.contract.image_input
    payloads = [png(pictures[0]), png(pictures[1], size=(64, 48)), png(pictures[2], mode="RGBA")]
    decoded = np.stack([decode_image_bytes(payload, spec.image) for payload in payloads])
    expected = in_process(rgb, "onnx-fp32", {"photo": decoded})["colour"]
    with client:
        raw = client.post(f"/v1/models/{model.name}:classify?top_k=2", content=payloads[0],
                          headers={"Content-Type": "image/png"})
        files = [("image", (f"{i}.png", payload, "image/png")) for i, payload in enumerate(payloads)]
        multi = client.post(f"/v1/models/{model.name}:classify", files=files)
    assert raw.status_code == 200, raw.text
    top = raw.json()["results"][0]["top_k"]
    assert len(top) == 2 and top[0]["label"] == bundles.PHOTO_LABELS[0]
    assert top[0]["probability"] == pytest.approx(float(expected[0].max()), abs=1e-6)
    results = multi.json()["results"]
    assert [r["top_k"][0]["index"] for r in results] == expected.argmax(axis=1).tolist() == [0, 1, 2]
    assert len(results[0]["top_k"]) == len(bundles.PHOTO_LABELS)  # top_k is capped at the output width


def test_rgb_predict_cli_on_png_files(rgb, tmp_path):
    pictures = bundles.rgb_samples(3, seed=8).inputs["photo"]
    for index, picture in enumerate(pictures):
        (tmp_path / f"{index}.png").write_bytes(png(picture))
    result = runner.invoke(cli, ["predict", "--run", str(rgb), "--allow-unverified", "--format", "json", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [row["label"] for row in json.loads(result.stdout)["predictions"]] == list(bundles.PHOTO_LABELS)
