"""A classifier that wraps a Keras application (its softmax inside the nested model, the usual transfer-learning
shape) imports as classification: a `probabilities` output decided through the nested model and confirmed on the
eval outputs, class-index targets [N] accepted, and `kerasport serve` answers `:classify` for it.
"""

from __future__ import annotations

import io

import httpx
import keras
import numpy as np
from helpers import ServerProcess
from import_helpers import invoke

from kerasport.errors import EXIT_OK
from kerasport.manifest import load_manifest

CLASSES = 3
EXAMPLES = 12
SIDE = 32  # the smallest input MobileNetV3Small takes
APPLICATION = "MobileNetV3Small"


def wrapped_application() -> keras.Model:
    application = getattr(keras.applications, APPLICATION)(
        input_shape=(SIDE, SIDE, 3), weights=None, classes=CLASSES, minimalistic=True, alpha=0.75)
    pictures = keras.Input((SIDE, SIDE, 3), name="pictures")
    return keras.Model(pictures, application(pictures), name="wrapper")


def test_a_wrapped_application_is_a_classifier_that_takes_class_indices_and_classifies(tmp_path):
    from PIL import Image

    model = wrapped_application()
    model.save(tmp_path / "wrapped.keras")
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (EXAMPLES, SIDE, SIDE, 3)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=pictures, y=rng.integers(0, CLASSES, EXAMPLES))  # class indices, shape [N]
    run = tmp_path / "run"
    imported = invoke(["import", str(tmp_path / "wrapped.keras"), "--run", str(run),
                       "--eval-data", f"npz:{tmp_path / 'eval.npz'}", "--name", "wrapped"])
    assert imported.exit_code == EXIT_OK, imported.output
    manifest = load_manifest(run)
    (output,) = manifest.contract.outputs
    assert output.kind == "probabilities" and output.activation == "softmax"
    decided = manifest.source["output_kinds"][output.name]
    assert f"inside {model.layers[-1].name}" in decided and "confirmed on" in decided, decided
    for command in (["export", "--formats", "onnx-fp32"], ["parity", "--no-sweep"]):
        result = invoke([*command, "--run", str(run)])
        assert result.exit_code == EXIT_OK, result.output
    png = io.BytesIO()
    Image.fromarray(pictures[0].astype(np.uint8), "RGB").save(png, format="PNG")
    server = ServerProcess(run, "--variant", "onnx-fp32", "--no-access-log")
    try:
        response = httpx.post(f"{server.url}/v1/models/wrapped:classify?top_k={CLASSES}", content=png.getvalue(),
                              headers={"Content-Type": "image/png"}, timeout=60)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        expected = keras.ops.convert_to_numpy(model(pictures[:1], training=False))[0]
        assert [row["label"] for row in result["top_k"]] == [str(i) for i in np.argsort(-expected)]
    finally:
        assert server.stop() == 0
