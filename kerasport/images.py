"""Decoding pictures exactly as the training images were: shared by training (image folders), import (image
folders as eval data), serving (`:classify`) and `kerasport predict`.

The target is an image input's `ImageSpec` from the contract: Pillow decodes, converts to the colour mode and
resizes with the recorded filter, giving float32 [height, width, channels] raw pixels. Pillow is imported lazily,
so the core stays light.
"""

from __future__ import annotations

import io

import numpy as np

from .contract import ImageSpec
from .errors import UsageError

# The reference models' input: MNIST-style 28x28 grayscale digits, light strokes on a dark background.
REFERENCE_IMAGE = ImageSpec(height=28, width=28, color_mode="grayscale", foreground="light-on-dark")


def decode_image(image, spec: ImageSpec = REFERENCE_IMAGE) -> np.ndarray:
    """A PIL image -> float32 [height, width, channels] raw pixels in 0..255, as `spec` says."""
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC,
                "lanczos": Image.LANCZOS}[spec.resample]
    converted = image.convert(spec.pil_mode)
    if converted.size != (spec.width, spec.height):
        converted = converted.resize((spec.width, spec.height), resample)
    pixels = np.asarray(converted, dtype=np.float32)
    return pixels.reshape(spec.height, spec.width, spec.channels)


def decode_image_bytes(payload: bytes, spec: ImageSpec = REFERENCE_IMAGE, origin: str = "image") -> np.ndarray:
    """Encoded PNG/JPEG bytes -> float32 [height, width, channels].

    Raises:
        UsageError: empty or undecodable bytes, naming `origin`.
    """
    from PIL import Image, UnidentifiedImageError

    if not payload:
        raise UsageError(f"{origin}: empty body; expected PNG or JPEG bytes")
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            return decode_image(image, spec)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise UsageError(f"{origin}: cannot decode as PNG/JPEG ({error})") from error
