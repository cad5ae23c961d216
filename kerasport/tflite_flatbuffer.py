"""Constant data inside a TFLite flatbuffer, read through LiteRT's generated schema."""

from __future__ import annotations

import numpy as np


def buffer_view(buffer, raw: bytes | bytearray) -> np.ndarray | None:
    """The bytes of one flatbuffer `Buffer` as a uint8 view into `raw` (writable when `raw` is a bytearray);
    None when the buffer holds no data (an activation tensor).

    Large models keep their buffers after the flatbuffer (offset and size); small ones inline.
    """
    if buffer is None:
        return None
    if buffer.Offset() > 1:
        return np.frombuffer(raw, dtype=np.uint8, count=buffer.Size(), offset=buffer.Offset())
    return buffer.DataAsNumpy() if buffer.DataLength() else None  # flatbuffers' accessor is a view into `raw`
