"""Decoding pictures exactly as the training images were: shared by training (image folders), import (image
folders as eval data), serving (`:classify`) and `kerasport predict`.

The target is an image input's `ImageSpec` from the contract: Pillow decodes, converts to the colour mode and
resizes with the recorded filter, giving float32 [height, width, channels] raw pixels. Pillow is imported lazily,
so the core stays light.

Untrusted bytes (a server's uploads) are bounded before they are decoded: Pillow's `Image.open` reads only the
header, so the picture's size is known — and a picture over `max_pixels` refused — before a single pixel is
decompressed. A large JPEG is decoded at a reduced DCT scale (`draft`), still at least `DRAFT_FACTOR` times the
target size on each side, so its decoded pixels stay few; PNG has no such reduced decode, so the pixel limit is
what bounds it.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np

from .contract import ImageSpec
from .errors import UsageError

# The reference models' input: MNIST-style 28x28 grayscale digits, light strokes on a dark background.
REFERENCE_IMAGE = ImageSpec(height=28, width=28, color_mode="grayscale", foreground="light-on-dark")

# A JPEG above this many pixels is decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that still leaves at least
# DRAFT_FACTOR source pixels per target pixel on each side; smaller JPEGs decode in full, exactly as training did.
DRAFT_ABOVE_PIXELS = 4_000_000
DRAFT_FACTOR = 8

# Everything Pillow raises for bytes that are not a well-formed picture (its plugins raise SyntaxError,
# struct.error and friends on corrupt headers, OSError on truncated data, ValueError on unsupported modes).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, KeyError,
                  ZeroDivisionError, zlib.error)


class ImageTooLarge(UsageError):
    """A picture whose pixel count is over the limit, refused before it was decoded (a server answers 413)."""

    def __init__(self, message: str, pixels: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.pixels, self.limit = pixels, limit


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


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def _bomb_pixels(error: Exception) -> int | None:
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else None


def open_image_bytes(payload: bytes, origin: str = "image", *, max_pixels: int | None = None,
                     formats: tuple[str, ...] | None = None):
    """Encoded bytes -> a lazily decoded PIL image whose size has been checked (only the header is read).

    Args:
        payload: the encoded picture.
        origin: names the picture in error messages (a file name, a form field).
        max_pixels: refuse a picture with more pixels than this (None: only Pillow's own bomb limit).
        formats: Pillow format names to accept (None: any Pillow can identify).

    Returns:
        The PIL image, not yet decoded; close it when done.

    Raises:
        ImageTooLarge: more pixels than `max_pixels`, or a decompression bomb by Pillow's own limit.
        UsageError: empty bytes, or bytes that are not a picture of an accepted format.
    """
    from PIL import Image

    if not payload:
        raise UsageError(f"{origin}: empty body; expected PNG or JPEG bytes")
    try:
        image = Image.open(io.BytesIO(payload), formats=formats)
    except Image.DecompressionBombError as error:
        pixels = _bomb_pixels(error)
        size = f"{pixels:,} pixels ({_megapixels(pixels)})" if pixels else "too many pixels"
        limit = max_pixels or Image.MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"{origin}: picture of {size} exceeds the limit of {_megapixels(limit)} ({limit:,} "
                            f"pixels), a decompression bomb; send a smaller picture", pixels, limit) from None
    except Image.UnidentifiedImageError:
        accepted = " or ".join(formats) if formats else "a picture format Pillow reads"
        raise UsageError(f"{origin}: cannot decode as PNG/JPEG (not {accepted})") from None
    except _DECODE_ERRORS as error:
        raise UsageError(f"{origin}: cannot decode as PNG/JPEG ({_one_line(error)})") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"{origin}: picture of {width}x{height} pixels ({_megapixels(width * height)}) exceeds "
                            f"the limit of {_megapixels(max_pixels)} ({max_pixels:,} pixels); send a smaller "
                            f"picture", width * height, max_pixels)
    return image


def decode_image_bytes(payload: bytes, spec: ImageSpec = REFERENCE_IMAGE, origin: str = "image", *,
                       max_pixels: int | None = None, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> float32 [height, width, channels].

    Args:
        payload: the encoded picture.
        spec: the image input's decoding recipe (size, colour mode, resampling filter).
        origin: names the picture in error messages.
        max_pixels: refuse larger pictures from their header, before decoding (None: Pillow's bomb limit only).
        formats: Pillow format names to accept (None: any Pillow can identify).

    Raises:
        ImageTooLarge: more pixels than `max_pixels`, or a decompression bomb.
        UsageError: empty, truncated or undecodable bytes, or a picture mode that cannot be converted; naming
            `origin`.
    """
    from PIL import Image

    image = open_image_bytes(payload, origin, max_pixels=max_pixels, formats=formats)
    try:
        with image:
            width, height = image.size
            if image.format == "JPEG" and width * height > DRAFT_ABOVE_PIXELS:
                image.draft(None, (spec.width * DRAFT_FACTOR, spec.height * DRAFT_FACTOR))
            image.load()
            return decode_image(image, spec)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"{origin}: refused as a decompression bomb ({_one_line(error)})") from None
    except MemoryError:
        raise ImageTooLarge(f"{origin}: picture of {image.size[0]}x{image.size[1]} pixels does not fit in memory; "
                            f"send a smaller picture") from None
    except _DECODE_ERRORS as error:
        raise UsageError(f"{origin}: cannot decode as PNG/JPEG ({_one_line(error)})") from None


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(error).__name__
