"""`kerasport predict`, the serving parity gate, readiness, and the micro-batcher."""

import asyncio
import json
import time

import numpy as np
from helpers import ServerProcess
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.serve.app import create_app
from kerasport.serve.batcher import MicroBatcher
from kerasport.serve.model import load_served_model

runner = CliRunner()


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image[..., 0].astype(np.uint8)).save(folder / f"{index:02d}.png")
    return folder


def test_predict_cli_on_png_files(verified, tmp_path):
    sample = np.load(verified / "train" / "eval_sample.npz")
    folder = write_pngs(tmp_path / "pngs", sample["x"][:5])
    result = runner.invoke(app, ["predict", "--run", str(verified), "--variant", "onnx-fp32", "--format", "json",
                                 str(folder)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["variant"] == "onnx-fp32" and len(payload["predictions"]) == 5
    labels = [row["label"] for row in payload["predictions"]]
    assert labels == [str(label) for label in sample["y"][:5]]  # the tiny model is right on these
    csv_out = runner.invoke(app, ["predict", "--run", str(verified), "--format", "csv", str(folder / "00.png")])
    assert csv_out.exit_code == 0 and csv_out.stdout.splitlines()[0] == "file,label,probability"
    table = runner.invoke(app, ["predict", "--run", str(verified), str(folder)])
    assert table.exit_code == 0 and "kerasport predict" in table.output
    missing = runner.invoke(app, ["predict", "--run", str(verified), str(tmp_path / "nope.png")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output


def test_serve_refuses_unverified_artifacts_unless_allowed(exported):
    refused = runner.invoke(app, ["serve", "--run", str(exported), "--variant", "onnx-fp32"])
    assert refused.exit_code == 2 and "has no parity verdict" in refused.output
    nothing = runner.invoke(app, ["serve", "--run", str(exported)])
    assert nothing.exit_code == 2 and "no artifact of this bundle passed parity" in nothing.output
    process = ServerProcess(exported, "--variant", "tflite-int8", "--allow-unverified")
    try:
        assert process.ready["variant"] == "tflite-int8"
    finally:
        assert process.stop() == 0


def test_serve_refuses_an_altered_artifact(verified, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(verified, run)
    (run / "export" / "model_int8.tflite").write_bytes(b"tampered")
    result = runner.invoke(app, ["serve", "--run", str(run), "--variant", "tflite-int8"])
    assert result.exit_code == 2 and "was altered" in result.output


def test_default_variant_is_the_fastest_verified(verified):
    assert load_served_model(verified).variant == "tflite-int8"


def test_not_ready_is_503(verified):
    model = load_served_model(verified, variant="onnx-fp32")
    client = TestClient(create_app(model))  # no lifespan: the batcher never started, as during start-up
    body = {"inputs": [{"name": "image", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
    assert client.get("/v2/health/ready").status_code == 503
    assert client.post("/v2/models/kerasport-seed/infer", json=body).status_code == 503
    assert client.get("/v2/health/live").status_code == 200
    with TestClient(create_app(model)) as started:  # with lifespan: ready
        assert started.post("/v2/models/kerasport-seed/infer", json=body).status_code == 200


def test_batcher_coalesces_concurrent_requests_and_not_a_lone_one():
    sizes = []

    def infer(images):
        time.sleep(0.01)  # a runtime call that takes a while, so requests queue up behind it
        return images.reshape(len(images), -1)[:, :2] * 2

    async def scenario():
        batcher = MicroBatcher(infer, max_batch=16, observe=lambda size, queued, seconds: sizes.append(size))
        await batcher.start()
        lone = await batcher.submit(np.ones((1, 28, 28, 1)))
        crowd = await asyncio.gather(*[batcher.submit(np.full((1, 28, 28, 1), i)) for i in range(40)])
        await batcher.stop()
        return lone, crowd

    lone, crowd = asyncio.run(scenario())
    assert sizes[0] == 1 and lone.tolist() == [[2.0, 2.0]]
    assert max(sizes[1:]) > 1 and max(sizes) <= 16 and sum(sizes[1:]) == 40
    assert [row[0][0] for row in crowd] == [2.0 * i for i in range(40)]  # each caller gets its own rows


def test_batcher_waits_only_with_a_delay_and_propagates_errors():
    def broken(images):
        raise RuntimeError("runtime exploded")

    async def scenario():
        batcher = MicroBatcher(broken, max_batch=4, max_delay_ms=50)
        await batcher.start()
        started = time.perf_counter()
        try:
            await batcher.submit(np.zeros((1, 28, 28, 1)))
        except RuntimeError as error:
            message = str(error)
        waited = time.perf_counter() - started
        await batcher.stop()
        return message, waited

    message, waited = asyncio.run(scenario())
    assert message == "runtime exploded" and waited >= 0.04


def test_regression_bundle_serves_values(tmp_path):
    import io

    from helpers import trained_bundle

    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity

    run = trained_bundle(tmp_path, task="regression", epochs=1)
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32"]))
    assert run_parity(ParityOptions(run=str(run), sweep=False)).exit_code == 0
    model = load_served_model(run)
    assert model.variant == "onnx-fp32" and model.task == "regression"
    with TestClient(create_app(model)) as client:
        body = {"inputs": [{"name": "image", "shape": [2, 784], "datatype": "FP32", "data": [0.0] * 1568}]}
        output = client.post("/v2/models/kerasport-seed/infer", json=body).json()["outputs"][0]
        assert output["name"] == "values" and output["shape"] == [2, 1]
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
        result = client.post("/v1/models/kerasport-seed:classify", content=buffer.getvalue()).json()
        assert len(result["results"][0]["values"]) == 1
