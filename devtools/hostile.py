"""Hostile requests for the fuzz tests and the soak benchmark: decompression bombs, truncated pictures, lying
binary headers, deep nesting, wrong shapes and dtypes, odd content types — each a plain (method, path, headers,
body) a real client could send. Nothing here knows the server's code; it knows only the protocols.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hostile:
    label: str
    method: str
    path: str
    body: bytes = b""
    headers: dict = field(default_factory=dict)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int, color_type: int = 0, depth: int = 8) -> bytes:
    """A PNG signature and IHDR claiming `width` x `height`, plus the start of an IDAT: what a bomb's first bytes
    look like (Pillow reads the size from them)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096))


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid grayscale PNG of `width` x `height` zeros: tiny on the wire, huge once decoded."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def picture(width: int, height: int, fmt: str = "PNG", mode: str = "L", seed: int = 0) -> bytes:
    """A real picture of noise (needs Pillow)."""
    import numpy as np
    from PIL import Image

    channels = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode, 1)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode if channels > 1 else "L")
    if mode not in ("L", "RGB", "RGBA"):
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def deep_json(depth: int, kind: str = "[") -> bytes:
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def catalogue(model: str, input_name: str, item_shape: tuple[int, ...], *, max_body_bytes: int,
              big_bomb: bytes | None = None) -> list[Hostile]:
    """A fixed set of hostile requests against one model (every one must get a 4xx, never a 5xx).

    Args:
        model: the served model's name.
        input_name: its (first) input's name.
        item_shape: that input's per-example shape.
        max_body_bytes: the server's body limit (some requests go just over it).
        big_bomb: a complete bomb PNG to include (slow to build; build once and pass it).
    """
    v2 = f"/v2/models/{model}/infer"
    predict, classify = f"/v1/models/{model}:predict", f"/v1/models/{model}:classify"
    values = 1
    for dim in item_shape:
        values *= dim
    header = json.dumps({"inputs": [{"name": input_name, "shape": [1, *item_shape], "datatype": "FP32",
                                     "parameters": {"binary_data_size": values * 4}}]}).encode()
    as_json = {"Content-Type": "application/json"}
    cases = [
        Hostile("bomb header 20000x20000", "POST", classify, png_header(20000, 20000), {"Content-Type": "image/png"}),
        Hostile("bomb header 13000x13000", "POST", classify, png_header(13000, 13000)),
        Hostile("bomb header 65535x65535 rgba", "POST", classify, png_header(65535, 65535, 6)),
        Hostile("png 0x0", "POST", classify, png_header(0, 0)),
        Hostile("png bad depth", "POST", classify, png_header(10, 10, 2, 7)),
        Hostile("truncated png", "POST", classify, picture(64, 64)[:60]),
        Hostile("truncated jpeg", "POST", classify, picture(64, 64, "JPEG")[:300]),
        Hostile("gif", "POST", classify, picture(8, 8, "GIF")),
        Hostile("random bytes as png", "POST", classify, bytes(range(256)) * 4, {"Content-Type": "image/png"}),
        Hostile("multipart without files", "POST", classify, b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n"
                b"1\r\n--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x"}),
        Hostile("multipart broken", "POST", classify, b"--x\r\nContent-Disp", {"Content-Type":
                                                                               "multipart/form-data; boundary=x"}),
        Hostile("multipart no boundary", "POST", classify, b"abc", {"Content-Type": "multipart/form-data"}),
        Hostile("top_k negative", "POST", classify + "?top_k=-3", picture(28, 28)),
        Hostile("deep array", "POST", v2, deep_json(100_000), as_json),
        Hostile("deep object", "POST", v2, deep_json(5_000, "{"), as_json),
        Hostile("deep tfs", "POST", predict, b'{"instances": ' + deep_json(50_000) + b"}", as_json),
        Hostile("malformed json", "POST", v2, b'{"inputs": [', as_json),
        Hostile("not utf-8", "POST", v2, b"\xff\xfe\x00{", as_json),
        Hostile("json scalar", "POST", v2, b"3", as_json),
        Hostile("empty body", "POST", v2, b"", as_json),
        Hostile("nan", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [1, *item_shape],
                                                           "datatype": "FP32", "data": [float("nan")] * values}]
                                               }).encode(), as_json),
        Hostile("huge shape", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [2**62, 2**62],
                                                                  "datatype": "FP32", "data": [0.0]}]}).encode()),
        Hostile("zero-and-huge shape", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [0, 10**30],
                                                                           "datatype": "FP32", "data": []}]}).encode()),
        Hostile("negative shape", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [-1, *item_shape],
                                                                      "datatype": "FP32", "data": [0.0]}]}).encode()),
        Hostile("empty batch", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [0, *item_shape],
                                                                   "datatype": "FP32", "data": []}]}).encode()),
        Hostile("wrong dtype", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [1, *item_shape],
                                                                   "datatype": "BYTES", "data": ["a"] * values}]
                                                       }).encode()),
        Hostile("strings in data", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [1, values],
                                                                       "datatype": "FP32", "data": ["x"] * values}]
                                                           }).encode()),
        Hostile("int overflow", "POST", v2, json.dumps({"inputs": [{"name": input_name, "shape": [1, values],
                                                                    "datatype": "INT8", "data": [10**30] * values}]
                                                        }).encode()),
        Hostile("binary header lies long", "POST", v2, header + b"\x00" * 10,
                {"Inference-Header-Content-Length": str(len(header) + 10**9)}),
        Hostile("binary header lies short", "POST", v2, header + b"\x00" * (values * 4),
                {"Inference-Header-Content-Length": str(len(header) - 7)}),
        Hostile("binary header negative", "POST", v2, header, {"Inference-Header-Content-Length": "-5"}),
        Hostile("binary size lies", "POST", v2, header + b"\x00" * 12,
                {"Inference-Header-Content-Length": str(len(header))}),
        Hostile("binary header unicode digits", "POST", v2, header, {"Inference-Header-Content-Length": "١٢".encode()}),
        Hostile("content-length lies", "POST", v2, b"{}", {"Content-Length": "x1"}),
        Hostile("over the body limit", "POST", v2, b" " * (max_body_bytes + 1), as_json),
        Hostile("odd content type", "POST", v2, b"<xml/>", {"Content-Type": "application/xml"}),
        Hostile("tfs both formats", "POST", predict, b'{"instances": [1], "inputs": [1]}', as_json),
        Hostile("tfs ragged", "POST", predict, b'{"instances": [[1, 2], [3]]}', as_json),
        Hostile("tfs wrong signature", "POST", predict, b'{"signature_name": "x", "instances": [1]}', as_json),
        Hostile("unknown model", "POST", "/v2/models/nope/infer", b"{}", as_json),
        Hostile("unknown version", "GET", f"/v2/models/{model}/versions/999", b""),
        Hostile("wrong method", "PUT", v2, b"{}", as_json),
        Hostile("path traversal", "GET", "/v2/models/..%2f..%2fetc%2fpasswd", b""),
        Hostile("stats of unknown model", "GET", "/v2/models/nope/stats", b""),
    ]
    if big_bomb is not None:
        cases.append(Hostile("bomb png complete", "POST", classify, big_bomb, {"Content-Type": "image/png"}))
    return cases


def random_garbage(rng: random.Random, model: str) -> Hostile:
    """Random bytes to a random endpoint, with a random content type."""
    path = rng.choice([f"/v2/models/{model}/infer", f"/v1/models/{model}:predict", f"/v1/models/{model}:classify"])
    kind = rng.choice(["application/json", "image/png", "application/octet-stream", "text/plain",
                       "multipart/form-data; boundary=zz"])
    return Hostile("random bytes", "POST", path, rng.randbytes(rng.randint(0, 4096)), {"Content-Type": kind})


def send(url: str, case: Hostile, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send one request exactly as given (http.client does not police lying headers the way httpx does)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = dict(case.headers)
        connection.putrequest(case.method, case.path, skip_accept_encoding=True)
        if not any(name.lower() == "content-length" for name in headers):
            headers["Content-Length"] = str(len(case.body))
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(case.body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
