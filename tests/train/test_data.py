"""Every data source on files the tests write, and every bad-data case with its one-line error."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import synthetic_digits, write_idx, write_idx_dir, write_npz, write_png_folders

from kerasport.errors import DataError, UsageError
from kerasport.train.data import load_dataset


def test_digits_is_builtin_and_follows_the_contract():
    data = load_dataset("digits")
    assert data.x_train.shape[1:] == (28, 28, 1) and data.x_train.dtype == np.float32
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.min() >= 0 and data.x_train.max() == 255
    assert data.labels == [str(d) for d in range(10)]
    # the held-out split is disjoint from training and does not depend on anything but the data
    assert load_dataset("digits").fingerprint() == data.fingerprint()
    assert set(np.unique(data.y_test)) == set(range(10))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_plain_and_gzipped(tmp_path, gz):
    root = write_idx_dir(tmp_path / "idx", n_train=50, n_test=20, gz=gz)
    data = load_dataset(f"idx:{root}")
    assert data.x_train.shape == (50, 28, 28, 1) and data.x_test.shape == (20, 28, 28, 1)
    expected_x, expected_y = synthetic_digits(50, seed=1)
    np.testing.assert_array_equal(data.x_train[..., 0], expected_x)
    np.testing.assert_array_equal(data.y_train, expected_y)
    assert data.y_train.dtype == np.int32  # uint8 labels are widened for Keras


def test_idx_wrong_magic_number_names_the_file(tmp_path):
    root = write_idx_dir(tmp_path / "idx")
    labels = root / "train-labels-idx1-ubyte"
    payload = bytearray(labels.read_bytes())
    payload[3] = 3  # claims 3 dimensions: an image file in the label slot
    labels.write_bytes(bytes(payload))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: wrong magic number 0x00000803"):
        load_dataset(f"idx:{root}")


def test_idx_truncated_file(tmp_path):
    root = write_idx_dir(tmp_path / "idx")
    images = root / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: header says shape .* truncated"):
        load_dataset(f"idx:{root}")


def test_idx_mismatched_counts(tmp_path):
    root = write_idx_dir(tmp_path / "idx", n_train=40)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(39, dtype=np.uint8))
    with pytest.raises(DataError, match="40 items but train labels hold 39"):
        load_dataset(f"idx:{root}")


def test_idx_missing_file(tmp_path):
    root = write_idx_dir(tmp_path / "idx")
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[.gz\]"):
        load_dataset(f"idx:{root}")


def test_idx_corrupt_gzip(tmp_path):
    root = write_idx_dir(tmp_path / "idx", gz=True)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"x" * 10)[:8])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset(f"idx:{root}")


def test_npz_keras_layout_with_int64_labels(tmp_path):
    path = write_npz(tmp_path / "d.npz", y_train=np.arange(120, dtype=np.int64) % 3)
    data = load_dataset(f"npz:{path}")
    assert data.y_train.dtype == np.int32 and data.labels == ["0", "1", "2"]
    np.testing.assert_array_equal(data.y_train, np.arange(120) % 3)
    # keras.datasets' (N, 28, 28) layout gains the channel axis, pixel values unchanged
    expected_x, _ = synthetic_digits(120, seed=1)
    assert data.x_train.shape == (120, 28, 28, 1)
    np.testing.assert_array_equal(data.x_train[..., 0], expected_x)


@pytest.mark.parametrize("overrides, message", [
    ({"x_train": np.zeros((10, 32, 32), np.uint8)}, r"x_train has shape \(10, 32, 32\); expected"),
    ({"y_test": np.zeros(5, np.uint8)}, "x_test has 30 images but y_test has 5 labels"),
    ({"x_train": np.full((120, 28, 28), np.nan, np.float32)}, "x_train: NaN or Inf in the data"),
    ({"x_train": np.full((120, 28, 28), 0.5, np.float32)}, "looks already scaled to 0..1"),
    ({"x_train": np.full((120, 28, 28), 300.0, np.float32)}, "expected raw pixels in 0..255"),
    ({"y_train": np.full(120, 1.5)}, "non-integer values"),
    ({"y_train": -np.ones(120, np.int64)}, "contains the label -1"),
])
def test_npz_bad_data(tmp_path, overrides, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{path}")


def test_npz_missing_arrays_and_missing_file(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="missing arrays y_train, x_test, y_test"):
        load_dataset(f"npz:{path}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_image_folders_grayscale_resized_and_split(tmp_path):
    root = write_png_folders(tmp_path / "pngs", per_class=10)
    data = load_dataset(f"images:{root}")
    assert data.labels == ["circle", "cross", "square"]
    assert data.x_train.shape[1:] == (28, 28, 1)
    assert len(data.x_train) + len(data.x_test) == 30
    assert set(np.unique(data.y_test)) == {0, 1, 2}  # stratified: every class is held out


def test_image_folders_empty_class_and_undecodable_file(tmp_path):
    root = write_png_folders(tmp_path / "pngs", per_class=4)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: empty class folder"):
        load_dataset(f"images:{root}")
    (root / "empty").rmdir()
    (root / "cross" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken.png: cannot decode"):
        load_dataset(f"images:{root}")


def test_regression_targets_are_float(tmp_path):
    data = load_dataset(f"npz:{write_npz(tmp_path / 'd.npz')}", task="regression")
    assert data.y_train.dtype == np.float32


def test_limit_takes_the_first_samples(tmp_path):
    data = load_dataset(f"idx:{write_idx_dir(tmp_path / 'idx')}", limit=17)
    assert len(data.x_train) == 17 and len(data.x_test) == 30


def test_unknown_source_and_missing_path():
    with pytest.raises(UsageError, match="is not a known source"):
        load_dataset("cifar")
    with pytest.raises(UsageError, match="needs a path"):
        load_dataset("idx:")


def test_keras_mnist_offline_without_cache_says_where_to_put_the_file(tmp_path):
    # a subprocess with an empty Keras home and no proxy: the real keras.datasets path must fail cleanly
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    code = ("from kerasport.train.data import load_dataset\n"
            "from kerasport.errors import DataError\n"
            "try:\n    load_dataset('mnist')\nexcept DataError as e:\n    print('DATAERROR', e)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "DATAERROR --data mnist: could not load" in result.stdout, result.stderr[-2000:]
    assert str(tmp_path / "keras" / "datasets" / "mnist.npz") in result.stdout


def test_keras_mnist_uses_the_cache_when_present(tmp_path):
    home = tmp_path / "keras"
    (home / "datasets").mkdir(parents=True)
    x_train, y_train = synthetic_digits(40, seed=1)
    x_test, y_test = synthetic_digits(10, seed=2)
    np.savez(home / "datasets" / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    env = {**os.environ, "KERAS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = "from kerasport.train.data import load_dataset\nd = load_dataset('mnist')\nprint('SHAPE', d.x_train.shape)\n"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "SHAPE (40, 28, 28, 1)" in result.stdout, result.stderr[-2000:]
