"""`kerasport predict`, the serving parity gate, variant choice, readiness, and the micro-batcher."""

import asyncio
import json
import time

import numpy as np
import pytest
from helpers import ServerProcess
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.contract import ModelContract, OutputSpec, image_input_spec
from kerasport.errors import EXIT_OK, EXIT_USAGE, UsageError
from kerasport.manifest import load_manifest, new_manifest
from kerasport.samples import load_samples
from kerasport.serve.app import create_app
from kerasport.serve.batcher import MicroBatcher
from kerasport.serve.model import SPEED_ORDER, choose_variant, load_served_model
from kerasport.verdict import Verdict

runner = CliRunner()


def eval_sample(run):
    manifest = load_manifest(run)
    samples = load_samples(manifest.artifact("eval_sample").resolve(run), manifest.contract)
    (name,), (output,) = manifest.contract.input_names, manifest.contract.output_names
    return samples.inputs[name], samples.targets[output]


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image[..., 0].astype(np.uint8)).save(folder / f"{index:02d}.png")
    return folder


def test_predict_cli_on_png_files(verified, tmp_path):
    images, targets = eval_sample(verified)
    folder = write_pngs(tmp_path / "pngs", images[:5])
    result = runner.invoke(app, ["predict", "--run", str(verified), "--variant", "onnx-fp32", "--format", "json",
                                 str(folder)])
    assert result.exit_code == EXIT_OK, result.output
    payload = json.loads(result.stdout)
    assert payload["variant"] == "onnx-fp32" and len(payload["predictions"]) == 5
    labels = [row["label"] for row in payload["predictions"]]
    assert labels == [str(label) for label in targets[:5]]  # the tiny model is right on these
    csv_out = runner.invoke(app, ["predict", "--run", str(verified), "--format", "csv", str(folder / "00.png")])
    assert csv_out.exit_code == EXIT_OK and csv_out.stdout.splitlines()[0] == "file,label,probability"
    table = runner.invoke(app, ["predict", "--run", str(verified), str(folder)])
    assert table.exit_code == EXIT_OK and "kerasport predict" in table.output
    missing = runner.invoke(app, ["predict", "--run", str(verified), str(tmp_path / "nope.png")])
    assert missing.exit_code == EXIT_USAGE and "no such file or folder" in missing.output


def test_serve_refuses_unverified_artifacts_unless_allowed(exported):
    refused = runner.invoke(app, ["serve", "--run", str(exported), "--variant", "onnx-fp32"])
    assert refused.exit_code == EXIT_USAGE and "has no parity verdict" in refused.output
    nothing = runner.invoke(app, ["serve", "--run", str(exported)])
    assert nothing.exit_code == EXIT_USAGE and "no artifact of this bundle passed parity" in nothing.output
    process = ServerProcess(exported, "--variant", "tflite-int8", "--allow-unverified")
    try:
        assert process.ready["variant"] == "tflite-int8"
    finally:
        assert process.stop() == EXIT_OK


def test_serve_refuses_an_altered_artifact(verified, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(verified, run)
    (run / "export" / "model_int8.tflite").write_bytes(b"tampered")
    result = runner.invoke(app, ["serve", "--run", str(run), "--variant", "tflite-int8"])
    assert result.exit_code == EXIT_USAGE and "was altered" in result.output


def test_default_variant_is_the_fastest_verified(verified):
    assert load_served_model(verified).variant == SPEED_ORDER[0]  # every variant of `verified` passed parity


def variant_manifest(**artifacts):
    contract = ModelContract(inputs=(image_input_spec("image", 8, 8),),
                             outputs=(OutputSpec("probabilities", "float32", (-1, 2), "probabilities"),))
    entries = {name: {"path": f"export/{name}", "format": name.split("-")[0], "precision": "fp32", "sha256": "0",
                      "bytes": 1, **entry} for name, entry in artifacts.items()}
    return new_manifest(model={"name": "m"}, contract=contract, artifacts=entries)


@pytest.mark.parametrize("artifacts, allow_unverified, expected", [
    # the fastest that passed parity, in SPEED_ORDER, whatever the manifest order
    ({SPEED_ORDER[-1]: {"parity": {"verdict": Verdict.PASS}}, SPEED_ORDER[1]: {"parity": {"verdict": Verdict.PASS}}},
     False,
     SPEED_ORDER[1]),
    # a failed verdict is skipped, and so is a variant export recorded as failed
    ({SPEED_ORDER[0]: {"parity": {"verdict": Verdict.FAIL}}, SPEED_ORDER[1]: {"status": "failed: no op", "parity": {
        "verdict": Verdict.PASS}}, SPEED_ORDER[2]: {"parity": {"verdict": Verdict.PASS}}}, False, SPEED_ORDER[2]),
    # unverified: the fastest servable one, never a failed export; formats not served (keras) never
    ({"keras-fp32": {"format": "keras"}, SPEED_ORDER[0]: {"status": "failed: no op"}, SPEED_ORDER[3]: {}}, True,
     SPEED_ORDER[3]),
])
def test_choose_variant_by_parity_verdict(artifacts, allow_unverified, expected):
    assert choose_variant(variant_manifest(**artifacts), None, allow_unverified) == expected


def test_choose_variant_refusals():
    manifest = variant_manifest(**{SPEED_ORDER[0]: {"status": "failed: op X missing"}, SPEED_ORDER[1]: {}})
    with pytest.raises(UsageError, match="no artifact of this bundle passed parity"):
        choose_variant(manifest, None, False)
    with pytest.raises(UsageError, match=r"export recorded it as failed: op X missing"):
        choose_variant(manifest, SPEED_ORDER[0], True)
    assert choose_variant(manifest, SPEED_ORDER[1], False) == SPEED_ORDER[1]  # the gate itself is require_verified


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

    def infer(inputs):
        time.sleep(0.01)  # a runtime call that takes a while, so requests queue up behind it
        assert len(inputs["a"]) == len(inputs["b"])  # every input concatenated along the batch axis
        return {"sum": inputs["a"].reshape(len(inputs["a"]), -1)[:, :2] * 2 + inputs["b"][:, :1],
                "b": inputs["b"]}

    def request(i: float, rows: int = 1) -> dict:
        return {"a": np.full((rows, 4, 4, 1), i), "b": np.full((rows, 3), 10 * i)}

    async def scenario():
        batcher = MicroBatcher(infer, max_batch=16, observe=lambda size, queued, seconds: sizes.append(size))
        await batcher.start()
        lone = await batcher.submit(request(1))
        crowd = await asyncio.gather(*[batcher.submit(request(i, rows=1 + i % 2)) for i in range(40)])
        await batcher.stop()
        return lone, crowd

    lone, crowd = asyncio.run(scenario())
    assert sizes[0] == 1 and lone["sum"].tolist() == [[12.0, 12.0]] and lone["b"].shape == (1, 3)
    assert max(sizes[1:]) > 1 and max(sizes) <= 16 and sum(sizes[1:]) == sum(1 + i % 2 for i in range(40))
    for i, rows in enumerate(crowd):  # each caller gets its own rows of every output
        assert rows["sum"].tolist() == [[12.0 * i] * 2] * (1 + i % 2)
        assert rows["b"].tolist() == [[10.0 * i] * 3] * (1 + i % 2)


def test_batcher_keeps_differently_shaped_requests_apart():
    calls = []

    def infer(inputs):
        time.sleep(0.01)
        calls.append(inputs["seq"].shape)
        return {"length": np.full((len(inputs["seq"]), 1), inputs["seq"].shape[1])}

    async def scenario():
        batcher = MicroBatcher(infer, max_batch=16)
        await batcher.start()
        results = await asyncio.gather(*[batcher.submit({"seq": np.zeros((1, 3 + i % 2))}) for i in range(12)])
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert [int(r["length"][0, 0]) for r in results] == [3 + i % 2 for i in range(12)]
    assert sum(shape[0] for shape in calls) == 12 and len({shape[1] for shape in calls}) == 2


def test_batcher_waits_only_with_a_delay_and_propagates_errors():
    def broken(images):
        raise RuntimeError("runtime exploded")

    async def scenario():
        batcher = MicroBatcher(broken, max_batch=4, max_delay_ms=50)
        await batcher.start()
        started = time.perf_counter()
        try:
            await batcher.submit({"image": np.zeros((1, 28, 28, 1))})
        except RuntimeError as error:
            message = str(error)
        waited = time.perf_counter() - started
        await batcher.stop()
        return message, waited

    message, waited = asyncio.run(scenario())
    assert message == "runtime exploded" and waited >= 0.04


def test_regression_bundle_serves_values(regression_trained, tmp_path):
    import io

    from helpers import copy_bundle

    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity

    run = copy_bundle(regression_trained, tmp_path)
    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32"]))
    assert run_parity(ParityOptions(run=str(run), sweep=False)).exit_code == EXIT_OK
    model = load_served_model(run)
    assert model.variant == "onnx-fp32" and model.task == "regression"
    with TestClient(create_app(model)) as client:
        body = {"inputs": [{"name": "image", "shape": [2, 784], "datatype": "FP32", "data": [0.0] * 1568}]}
        output = client.post("/v2/models/kerasport-seed/infer", json=body).json()["outputs"][0]
        assert output["name"] == "values" and output["shape"] == [2, 1]
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
        refused = client.post("/v1/models/kerasport-seed:classify", content=buffer.getvalue())
        assert refused.status_code == 404 and "needs one image input and a classification output" in refused.text
