"""Decoding pictures exactly as the training images were: shared by training (image folders) and serving.

Pillow is imported lazily, so the core stays light; the preprocessing is recorded in the manifest.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import UsageError

IMAGE_SIZE = 28
PREPROCESSING = {"decoder": "Pillow", "color_mode": "L", "resize": [IMAGE_SIZE, IMAGE_SIZE],
                 "resample": "bilinear", "foreground": "light-on-dark", "scale": "none (inside the model)"}


def decode_image(image, preprocessing: dict | None = None) -> np.ndarray:
    """A PIL image -> float32 [28, 28] raw pixels in 0..255, grayscale, bilinear resize."""
    from PIL import Image

    spec = preprocessing or PREPROCESSING
    size = tuple(spec.get("resize", [IMAGE_SIZE, IMAGE_SIZE]))
    resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC,
                "lanczos": Image.LANCZOS}[spec.get("resample", "bilinear")]
    gray = image.convert(spec.get("color_mode", "L"))
    if gray.size != size:
        gray = gray.resize(size, resample)
    return np.asarray(gray, dtype=np.float32)


def decode_image_bytes(payload: bytes, preprocessing: dict | None = None, origin: str = "image") -> np.ndarray:
    """Encoded PNG/JPEG bytes -> float32 [28, 28]; a clear error for anything undecodable."""
    from PIL import Image, UnidentifiedImageError

    if not payload:
        raise UsageError(f"{origin}: empty body; expected PNG or JPEG bytes")
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            return decode_image(image, preprocessing)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UsageError(f"{origin}: cannot decode as PNG/JPEG ({error})") from error
