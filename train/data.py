"""Training data sources, all usable offline, each converted to the model contract.

Every source yields raw pixels as float32 NHWC `[n, height, width, channels]` in 0..255 plus integer labels
(classification) or float targets (regression), and a held-out test split that training never sees. The image
size and colour mode are the options' (`--image-size HxW`, `--color grayscale|rgb`) or, left at `auto`, the
source's own: an array source (IDX, NPZ, the Keras caches) keeps its size and is RGB when it has 3 channels;
`digits` and image folders are 28x28 grayscale. Arrays are resized with the same filter the contract records for
serving (Pillow bilinear), so a picture sent to a server is decoded as the training images were. Bad data raises
`DataError` with the file and the problem before anything is written.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasport.contract import COLOR_MODES, ImageSpec, check_pixel_range
from kerasport.errors import DataError, UsageError
from kerasport.images import REFERENCE_IMAGE, decode_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Fixed so the held-out test split of sources without one (digits, image folders) never depends on --seed.
SPLIT_SEED = 20240601
TEST_FRACTION = 0.2

FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]

# ITU-R 601-2 luma, what Pillow's convert("L") computes: RGB arrays become grayscale as serving converts pictures.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Where the MNIST framing puts a digit: a 20x20 box centred in the 28x28 frame (scaled for other sizes).
DIGIT_BOX_FRACTION = 20 / 28


# The image of a source whose pictures' polarity is unknown (the converted size and colour are set by `_conform`).
UNKNOWN_FOREGROUND = dataclasses.replace(REFERENCE_IMAGE, foreground=None)


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    source: dict = field(default_factory=dict)
    # How a picture must be decoded to reach the model exactly as these training images did.
    image: ImageSpec = REFERENCE_IMAGE

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class ImageRequest:
    """The image the options ask for: `size` (height, width) or None for the source's own; `color` or "auto"."""

    size: tuple[int, int] | None = None
    color: str = "auto"

    def spec_for_pictures(self) -> ImageSpec:
        """How an image folder's pictures are decoded: the asked size and colour, else 28x28 grayscale."""
        height, width = self.size or (REFERENCE_IMAGE.height, REFERENCE_IMAGE.width)
        color = REFERENCE_IMAGE.color_mode if self.color == "auto" else self.color
        return ImageSpec(height=height, width=width, color_mode=color)


def load_training_data(config) -> tuple[object, Dataset]:
    """Load `config.data` at the asked image size and colour; return the config with both made concrete.

    The returned `TrainConfig` has `image_size` "HxW" and `color` grayscale|rgb as the data turned out (an `auto`
    resolved), so the model is built for, and config.json records, the images training saw.

    Raises:
        UsageError / DataError: an unknown source or bad data (exit 2).
    """
    dataset = load_dataset(config.data, task=config.task, limit=config.limit, image_size=config.image_shape(),
                           color=config.color)
    image = dataset.image
    resolved = dataclasses.replace(config, image_size=f"{image.height}x{image.width}", color=image.color_mode)
    return resolved, dataset


def load_dataset(spec: str, *, task: str = "classification", limit: int = 0,
                 image_size: tuple[int, int] | None = None, color: str = "auto") -> Dataset:
    """Load the dataset named by `spec` (see `kerasport train --help`) and validate it against the contract.

    Args:
        spec: digits | mnist | fashion_mnist | idx:DIR | npz:FILE | images:DIR.
        task: classification (integer labels) or regression (float targets).
        limit: keep only the first N training samples (0 = all).
        image_size: (height, width) every image is resized to; None = the source's own (28x28 for digits and
            image folders).
        color: grayscale | rgb, or auto (RGB for 3-channel arrays, else grayscale).

    Returns:
        The dataset with float32 NHWC pixels in 0..255 and `image` describing them.

    Raises:
        UsageError: an unknown source or a bad option. DataError: bad data, naming the file and the problem.
    """
    if color != "auto" and color not in COLOR_MODES:
        raise UsageError(f"--color {color!r} is not one of auto, {', '.join(COLOR_MODES)}")
    request = ImageRequest(tuple(image_size) if image_size else None, color)
    kind, _, argument = spec.partition(":")
    loaders = {"digits": _load_digits, "mnist": _load_keras_mnist, "fashion_mnist": _load_keras_fashion,
               "idx": _load_idx_dir, "npz": _load_npz, "images": _load_image_folders}
    if kind not in loaders:
        raise UsageError(f"--data {spec!r} is not a known source; expected digits, mnist, fashion_mnist, "
                         f"idx:DIR, npz:FILE or images:DIR")
    if kind in ("idx", "npz", "images") and not argument:
        raise UsageError(f"--data {spec!r} needs a path after the colon, e.g. {kind}:/data/mnist")
    if kind in ("digits", "mnist", "fashion_mnist") and argument:
        raise UsageError(f"--data {spec!r}: the built-in source {kind!r} takes no path")
    if kind == "digits":
        dataset = _load_digits(request.size)
    elif kind == "images":
        dataset = _load_image_folders(argument, request.spec_for_pictures())
    else:
        dataset = loaders[kind](argument) if argument else loaders[kind]()
    dataset.name = spec
    _validate(dataset, task)
    if limit:
        if limit < 0:
            raise UsageError(f"--limit {limit} must be >= 0 (0 = use every training sample)")
        dataset.x_train, dataset.y_train = dataset.x_train[:limit], dataset.y_train[:limit]
    _conform(dataset, request)
    if task == "classification":
        dataset.y_train = dataset.y_train.astype(np.int32)
        dataset.y_test = dataset.y_test.astype(np.int32)
    else:
        dataset.y_train = dataset.y_train.astype(np.float32)
        dataset.y_test = dataset.y_test.astype(np.float32)
    return dataset


def _item_shape(x: np.ndarray) -> tuple[int, int, int] | None:
    """(height, width, channels) of an image batch shaped (n, h, w) or (n, h, w, 1|3); None for anything else."""
    if x.ndim == 3:
        return (*x.shape[1:], 1)
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return x.shape[1:]
    return None


def _validate(dataset: Dataset, task: str) -> None:
    origin = dataset.source.get("path", dataset.name)
    for split, x in (("train", dataset.x_train), ("test", dataset.x_test)):
        if _item_shape(x) is None:
            raise DataError(f"{origin}: x_{split} has shape {x.shape}; expected images shaped (n, height, width) "
                            f"or (n, height, width, 1|3) (grayscale or RGB)")
    if _item_shape(dataset.x_train) != _item_shape(dataset.x_test):
        raise DataError(f"{origin}: x_train has shape {dataset.x_train.shape}; expected the same image size and "
                        f"channels as x_test {dataset.x_test.shape}")
    for split, x, y in (("train", dataset.x_train, dataset.y_train), ("test", dataset.x_test, dataset.y_test)):
        if len(x) == 0:
            raise DataError(f"{origin}: the {split} split is empty; expected at least one image")
        if len(x) != len(y):
            raise DataError(f"{origin}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; "
                            f"expected equal counts")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{origin}: x_{split} has dtype {x.dtype}; expected numeric pixels")
        try:
            check_pixel_range(x, f"{origin}: x_{split}")
        except UsageError as error:
            raise DataError(str(error)) from None
        if y.ndim != 1 and not (task == "regression" and y.ndim == 2):
            raise DataError(f"{origin}: y_{split} has shape {y.shape}; expected (n,) labels")
        if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
            raise DataError(f"{origin}: y_{split} contains NaN or infinite values; expected finite targets")
        if task == "classification":
            integral = np.issubdtype(y.dtype, np.integer) or (
                np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y)))
            if not integral:
                raise DataError(f"{origin}: y_{split} has dtype {y.dtype} with non-integer values; "
                                f"expected integer class labels")
            if y.min() < 0:
                raise DataError(f"{origin}: y_{split} contains the label {int(y.min())}; expected labels >= 0")
    if task == "classification":
        n_classes = int(max(dataset.y_train.max(), dataset.y_test.max())) + 1
        if n_classes < 2:
            raise DataError(f"{origin}: every label is 0; expected at least two classes")
        if not dataset.labels:
            dataset.labels = [str(index) for index in range(n_classes)]
        elif len(dataset.labels) < n_classes:
            raise DataError(f"{origin}: labels go up to {n_classes - 1} but only {len(dataset.labels)} class "
                            f"names are known")


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train/test split for sources that ship no test split."""
    rng = np.random.default_rng(SPLIT_SEED)
    test_mask = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rng.shuffle(members)
        n_test = int(round(len(members) * TEST_FRACTION))
        if len(members) > 1:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_mask[members[:n_test]] = True
    return x[~test_mask], y[~test_mask], x[test_mask], y[test_mask]


# --- built-in: scikit-learn's handwritten digits, shipped inside the package -----------------------------------


def _load_digits(size: tuple[int, int] | None = None) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise UsageError("--data digits needs scikit-learn; install kerasport[train]") from error
    from PIL import Image

    digits = load_digits()
    images = digits.images.astype(np.float32) * (255.0 / 16.0)
    # MNIST's convention: the digit fills a 20x20 box centred in a 28x28 frame (the same proportion at any size).
    height, width = size or (REFERENCE_IMAGE.height, REFERENCE_IMAGE.width)
    box = max(1, int(round(DIGIT_BOX_FRACTION * min(height, width))))
    top, left = (height - box) // 2, (width - box) // 2
    resized = np.stack([np.asarray(Image.fromarray(image).resize((box, box), Image.BILINEAR)) for image in images])
    framed = np.zeros((len(images), height, width), dtype=np.float32)
    framed[:, top:top + box, left:left + box] = np.clip(resized, 0, 255)
    x_train, y_train, x_test, y_test = _split(np.round(framed), digits.target.astype(np.int64))
    return Dataset("digits", x_train, y_train, x_test, y_test, [str(d) for d in range(10)],
                   source={"kind": "digits", "package": "scikit-learn", "images": int(len(images)),
                           "conversion": f"8x8 0..16 -> x255/16, bilinear {box}x{box}, centred in {height}x{width}"})


# --- conversion to the asked size and colour --------------------------------------------------------------------


def _conform(dataset: Dataset, request: ImageRequest) -> None:
    """Bring both splits to float32 NHWC at the asked size and colour; set `dataset.image` to match."""
    height, width, channels = _item_shape(dataset.x_train)
    native = "rgb" if channels == 3 else "grayscale"
    color = native if request.color == "auto" else request.color
    size = request.size or (height, width)
    for split in ("x_train", "x_test"):
        x = getattr(dataset, split).astype(np.float32).reshape(-1, height, width, channels)
        setattr(dataset, split, _resize(_to_color(x, color), size))
    if (size, color) != ((height, width), native):
        dataset.source = {**dataset.source, "converted": f"{height}x{width} {native} -> {size[0]}x{size[1]} {color}"}
    foreground = dataset.image.foreground if color == "grayscale" else None
    dataset.image = ImageSpec(height=size[0], width=size[1], color_mode=color, foreground=foreground)


def _to_color(x: np.ndarray, color: str) -> np.ndarray:
    if color == "rgb" and x.shape[-1] == 1:
        return np.repeat(x, 3, axis=-1)
    if color == "grayscale" and x.shape[-1] == 3:
        return (x @ LUMA)[..., None]
    return x


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize every channel of every image with Pillow's bilinear filter (the contract's `resample`)."""
    from PIL import Image

    height, width = size
    if x.shape[1:3] == (height, width):
        return x
    out = np.empty((len(x), height, width, x.shape[-1]), dtype=np.float32)
    for index in range(len(x)):
        for channel in range(x.shape[-1]):
            plane = Image.fromarray(np.ascontiguousarray(x[index, :, :, channel]))
            out[index, :, :, channel] = np.asarray(plane.resize((width, height), Image.BILINEAR))
    return np.clip(out, 0, 255)


# --- keras.datasets (uses the Keras cache; offline without a cache is a clear error) --------------------------


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _load_keras_mnist() -> Dataset:
    cached = _keras_cache_dir() / "mnist.npz"
    if cached.is_file():
        # Read the cache ourselves: offline, Keras would re-download a file whose hash it does not recognise.
        dataset = _load_npz(str(cached))
    else:
        dataset = Dataset("mnist", *_load_keras_dataset("mnist", expected=str(cached)), [])
    dataset.labels = [str(d) for d in range(10)]
    dataset.source = {"kind": "keras.datasets", "path": str(cached)}
    dataset.image = REFERENCE_IMAGE  # MNIST's polarity: light strokes on a dark background
    return dataset


def _load_keras_fashion() -> Dataset:
    cached = _keras_cache_dir() / "fashion-mnist"
    if all((cached / f"{stem}.gz").is_file() for stem, _ in IDX_FILES.values()):
        dataset = _load_idx_dir(str(cached))
    else:
        expected = f"{cached}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz"
        dataset = Dataset("fashion_mnist", *_load_keras_dataset("fashion_mnist", expected=expected), [])
    dataset.labels = list(FASHION_LABELS)
    dataset.source = {"kind": "keras.datasets", "path": str(cached)}
    dataset.image = REFERENCE_IMAGE  # MNIST's polarity: light strokes on a dark background
    return dataset


def _load_keras_dataset(name: str, expected: str) -> tuple[np.ndarray, ...]:
    import keras

    module = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:  # noqa: BLE001 - any download/cache failure means the same thing to the user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"--data {name}: could not load from the Keras cache or download ({reason}); offline, "
                        f"put the file(s) at {expected}, or use --data idx:DIR / npz:FILE") from error
    return x_train, y_train, x_test, y_test


# --- idx:DIR — the raw MNIST format -------------------------------------------------------------------------

IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_FILES = {"x_train": ("train-images-idx3-ubyte", 3), "y_train": ("train-labels-idx1-ubyte", 1),
             "x_test": ("t10k-images-idx3-ubyte", 3), "y_test": ("t10k-labels-idx1-ubyte", 1)}


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped), validating its magic number and size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            payload = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read ({error}); expected an IDX file") from error
    if len(payload) < 4:
        raise DataError(f"{path}: only {len(payload)} bytes; expected an IDX header of at least 4 bytes")
    zero, type_code, ndim = int.from_bytes(payload[:2], "big"), payload[2], payload[3]
    magic = int.from_bytes(payload[:4], "big")
    if zero != 0 or type_code not in IDX_DTYPES or ndim != expected_ndim:
        raise DataError(f"{path}: wrong magic number 0x{magic:08X}; expected 0x0000080{expected_ndim} "
                        f"(unsigned bytes, {expected_ndim} dimension{'s' if expected_ndim > 1 else ''})")
    header_size = 4 + 4 * ndim
    if len(payload) < header_size:
        raise DataError(f"{path}: truncated header ({len(payload)} bytes); expected {header_size}")
    dims = tuple(int.from_bytes(payload[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[type_code]
    expected_bytes = int(np.prod(dims)) * dtype.itemsize
    actual_bytes = len(payload) - header_size
    if actual_bytes != expected_bytes:
        raise DataError(f"{path}: header says shape {dims} ({expected_bytes} data bytes) but the file holds "
                        f"{actual_bytes}; the file is truncated or padded")
    return np.frombuffer(payload, dtype=dtype, offset=header_size).reshape(dims).astype(dtype.newbyteorder("="))


def _load_idx_dir(directory: str) -> Dataset:
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"--data idx:{directory}: {root} is not a directory; expected a folder of MNIST IDX files")
    arrays = {}
    for key, (stem, ndim) in IDX_FILES.items():
        candidates = [root / stem, root / f"{stem}.gz"]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise DataError(f"{root}: missing {stem}[.gz]; expected the four MNIST IDX files "
                            f"({', '.join(name for name, _ in IDX_FILES.values())})")
        arrays[key] = read_idx(found, ndim)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(f"{root}: {split} images hold {len(x)} items but {split} labels hold {len(y)}; "
                            f"expected equal counts")
    return Dataset(f"idx:{directory}", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   [], source={"kind": "idx", "path": str(root)}, image=UNKNOWN_FOREGROUND)


# --- npz:FILE — the Keras mnist.npz layout --------------------------------------------------------------------


def _load_npz(file: str) -> Dataset:
    path = Path(file)
    if not path.is_file():
        raise DataError(f"--data npz:{file}: {path} does not exist; expected an .npz with x_train, y_train, "
                        f"x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x_train", "y_train", "x_test", "y_test") if key not in archive.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)}; it holds "
                                f"{', '.join(archive.files) or 'nothing'}, expected x_train, y_train, x_test, y_test")
            arrays = [archive[key] for key in ("x_train", "y_train", "x_test", "y_test")]
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read as .npz ({error})") from error
    return Dataset(f"npz:{file}", *arrays, [], source={"kind": "npz", "path": str(path)}, image=UNKNOWN_FOREGROUND)


# --- images:DIR — one sub-folder per class --------------------------------------------------------------------


def _load_image_folders(directory: str, spec: ImageSpec = REFERENCE_IMAGE) -> Dataset:
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"--data images:{directory}: {root} is not a directory; expected one sub-folder of "
                        f"PNG/JPEG files per class")
    if (root / "train").is_dir() and (root / "test").is_dir():
        x_train, y_train, labels = _read_class_folders(root / "train", None, spec)
        x_test, y_test, _ = _read_class_folders(root / "test", labels, spec)
    else:
        x, y, labels = _read_class_folders(root, None, spec)
        x_train, y_train, x_test, y_test = _split(x, y)
    # Folders are read class by class; a fixed shuffle keeps `--limit N` and the first --eval-samples test images
    # from covering only the first classes.
    train_order = np.random.default_rng(SPLIT_SEED).permutation(len(y_train))
    test_order = np.random.default_rng(SPLIT_SEED + 1).permutation(len(y_test))
    return Dataset(f"images:{directory}", x_train[train_order], y_train[train_order], x_test[test_order],
                   y_test[test_order], labels, source={"kind": "images", "path": str(root)}, image=UNKNOWN_FOREGROUND)


def _read_class_folders(root: Path, labels: list[str] | None,
                        spec: ImageSpec = REFERENCE_IMAGE) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders; expected one sub-folder of PNG/JPEG files per class")
    names = [path.name for path in class_dirs]
    if labels is not None and names != labels:
        raise DataError(f"{root}: class folders {names} differ from the training split's {labels}")
    images, targets = [], []
    for index, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{class_dir}: empty class folder; expected at least one "
                            f"{'/'.join(IMAGE_EXTENSIONS)} file")
        for file in files:
            try:
                with Image.open(file) as image:
                    images.append(decode_image(image, spec))
            except (UnidentifiedImageError, OSError) as error:
                raise DataError(f"{file}: cannot decode as an image ({error})") from error
            targets.append(index)
    return np.stack(images), np.asarray(targets, dtype=np.int64), names
