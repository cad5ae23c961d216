"""Any image size and colour (issue 9): every source at `--image-size HxW` / `--color`, recorded in the contract,
followed by export and parity."""

import numpy as np
import pytest
from helpers import synthetic_digits, write_idx_dir, write_npz

from kerasport.errors import EXIT_OK, DataError
from kerasport.images import decode_image_bytes
from kerasport.manifest import load_manifest, verify_bundle
from kerasport.samples import load_samples
from kerasport.train.config import INPUT_NAME, TrainConfig
from kerasport.train.data import DIGIT_BOX_FRACTION, LUMA, load_dataset, load_training_data
from kerasport.verdict import Verdict

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}


def write_colour_tree(root, per_class: int = 8, size=(30, 36)):
    """One folder per colour: a coloured square at a random place on a dark RGB picture of `size` (h, w)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 30, (*size, 3)).astype(np.uint8)
            top, left = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
            pixels[top:top + 12, left:left + 12] = colour
            Image.fromarray(pixels).save(root / name / f"{index:02d}.png")
    return root


def test_image_folders_keep_rgb_when_asked(tmp_path):
    root = write_colour_tree(tmp_path / "pictures")
    data = load_dataset(f"images:{root}", image_size=(20, 24), color="rgb")
    assert data.x_train.shape[1:] == (20, 24, 3) and data.x_test.shape[1:] == (20, 24, 3)
    assert (data.image.height, data.image.width, data.image.color_mode) == (20, 24, "rgb")
    red = data.x_train[data.y_train == data.labels.index("red")]
    assert (red[..., 0].max(axis=(1, 2)) > red[..., 2].max(axis=(1, 2)) + 100).all()  # the colour survived
    gray = load_dataset(f"images:{root}")  # auto: the reference 28x28 grayscale
    assert gray.x_train.shape[1:] == (28, 28, 1) and gray.image.color_mode == "grayscale"


def test_three_channel_arrays_load_as_rgb_and_convert_on_request(tmp_path):
    x, y = synthetic_digits(60, seed=1)
    rgb = np.stack([x, x // 2, 255 - x], axis=-1)
    path = write_npz(tmp_path / "rgb.npz", x_train=rgb[:45], y_train=y[:45], x_test=rgb[45:], y_test=y[45:])
    data = load_dataset(f"npz:{path}")
    assert data.x_train.shape == (45, 28, 28, 3) and data.image.color_mode == "rgb"
    np.testing.assert_array_equal(data.x_train, rgb[:45].astype(np.float32))
    gray = load_dataset(f"npz:{path}", color="grayscale")
    np.testing.assert_allclose(gray.x_train[..., 0], rgb[:45].astype(np.float32) @ LUMA, rtol=1e-5)


def test_arrays_are_resized_and_grayscale_replicated_to_rgb(tmp_path):
    data = load_dataset(f"idx:{write_idx_dir(tmp_path / 'idx')}", image_size=(14, 21), color="rgb")
    assert data.x_train.shape == (120, 14, 21, 3) and data.x_test.shape == (30, 14, 21, 3)
    np.testing.assert_array_equal(data.x_train[..., 0], data.x_train[..., 2])
    assert data.x_train.min() >= 0 and data.x_train.max() <= 255
    native = load_dataset(f"idx:{write_idx_dir(tmp_path / 'idx')}")
    assert native.x_train.shape == (120, 28, 28, 1)


def test_other_sized_arrays_keep_their_size_by_default(tmp_path):
    x, y = synthetic_digits(40, seed=1)
    big = np.kron(x, np.ones((1, 2, 2), dtype=np.uint8))[:, :, :50]  # 56x50
    path = write_npz(tmp_path / "big.npz", x_train=big[:30], y_train=y[:30], x_test=big[30:], y_test=y[30:])
    data = load_dataset(f"npz:{path}")
    assert data.x_train.shape[1:] == (56, 50, 1) and (data.image.height, data.image.width) == (56, 50)


def test_digits_are_framed_at_the_asked_size():
    data = load_dataset("digits", image_size=(32, 40))
    box = round(DIGIT_BOX_FRACTION * 32)
    top, left = (32 - box) // 2, (40 - box) // 2
    assert data.x_train.shape[1:] == (32, 40, 1)
    ink = data.x_train[..., 0].max(axis=0) > 0
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    assert rows.min() >= top and rows.max() < top + box and columns.min() >= left and columns.max() < left + box
    assert len(data.x_test) == len(load_dataset("digits").x_test)  # the same held-out split at every size


@pytest.mark.parametrize("x_train, message", [
    (np.zeros((120, 28, 28, 4), np.uint8), r"x_train has shape \(120, 28, 28, 4\); expected images shaped"),
    (np.zeros((120, 28, 28, 3), np.uint8), r"expected the same image size and channels as x_test"),
])
def test_bad_channels_and_mismatched_splits(tmp_path, x_train, message):
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{write_npz(tmp_path / 'bad.npz', x_train=x_train)}")


def test_the_config_records_what_auto_resolved_to(tmp_path):
    config, data = load_training_data(TrainConfig(data=f"idx:{write_idx_dir(tmp_path / 'idx')}"))
    assert (config.image_size, config.color) == ("28x28", "grayscale")
    config, data = load_training_data(TrainConfig(data="digits", image_size="16x16", color="rgb", limit=50))
    assert (config.image_size, config.color) == ("16x16", "rgb") and data.x_train.shape == (50, 16, 16, 3)


def test_rgb_20x24_through_train_export_and_parity(tmp_path):
    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity
    from kerasport.train.fit import train

    root = write_colour_tree(tmp_path / "pictures")
    run = tmp_path / "run"
    train(TrainConfig(data=f"images:{root}", run=str(run), image_size="20x24", color="rgb", width=0.125,
                      epochs=1, batch_size=8))
    manifest = verify_bundle(run)
    (image,) = manifest.contract.inputs
    assert image.shape == (-1, 20, 24, 3) and (image.image.height, image.image.width) == (20, 24)
    assert image.image.color_mode == "rgb" and image.image.channels == 3
    sample = load_samples(run / "train" / "eval_sample.npz", manifest.contract)
    assert sample.inputs[INPUT_NAME].shape[1:] == (20, 24, 3)
    # a picture sent to a server is decoded to what the model takes
    picture = next((root / "red").iterdir()).read_bytes()
    assert decode_image_bytes(picture, image.image).shape == (20, 24, 3)

    export_bundle(ExportOptions(run=str(run), formats=["onnx-fp32", "tflite-fp32"], calibration_samples=10))
    result = run_parity(ParityOptions(run=str(run), sweep=False))
    assert result.exit_code == EXIT_OK, result.failures
    manifest = load_manifest(run)
    assert manifest.parity_verdict("onnx-fp32") == Verdict.PASS
    assert manifest.parity_verdict("tflite-fp32") == Verdict.PASS


def test_image_folders_mix_the_classes_so_limit_keeps_every_class(tmp_path):
    root = write_colour_tree(tmp_path / "pictures", per_class=10)
    data = load_dataset(f"images:{root}", limit=9)
    assert set(data.y_train) == {0, 1, 2}  # read class by class, the first 9 would all be "blue"
    assert list(data.y_test) != sorted(data.y_test)  # nor is the held-out split (eval_sample takes its head)
