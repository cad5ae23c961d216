"""One-line failure messages: the op a converter or runtime could not handle, pulled out of its long error text."""

from __future__ import annotations

import re

# onnxruntime: "Could not find an implementation for Erfinv(1) node with name '...'".
_ORT_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(")
# TFLite converter: "'tf.Erfinv' op is neither a custom op nor a flex op".
_TFLITE_MISSING_OP = re.compile(r"'(tf\.\w+)' op is neither a custom op nor a flex op")
# LiteRT at load time: "Encountered unresolved custom op: Erfinv." / "... op: FlexMatrixDeterminant".
_LITERT_UNRESOLVED = re.compile(r"unresolved custom op: (\w+)")


# TFLite converter (MLIR): "... 'tf.TensorListReserve' op requires element_shape to be static during ...", after a
# long `loc(callsite(...))` prefix that says nothing to a user.
_TFLITE_OP_ERROR = re.compile(r"error: (?:loc\(.*?\): )?(?:error: )?'(?P<op>tf\.\w+)' op (?P<why>[^\n]+)")


def tflite_op_error(error: BaseException) -> str | None:
    """`op tf.X: <why>` from the TFLite converter's MLIR error text, if it names an op."""
    match = _TFLITE_OP_ERROR.search(str(error))
    return f"op {match['op']} {match['why'].strip()}" if match else None


def first_line(error: BaseException, limit: int = 240) -> str:
    """The first non-empty line of an exception's message (or its type name), cut to `limit` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def ort_missing_op(error: BaseException) -> str | None:
    """The operator onnxruntime says it has no kernel for, if its message names one."""
    match = _ORT_MISSING_KERNEL.search(str(error))
    return match.group(1) if match else None


def tflite_missing_ops(error: BaseException) -> list[str]:
    """The TensorFlow ops the TFLite converter could not map to built-ins, in the order it names them."""
    return list(dict.fromkeys(_TFLITE_MISSING_OP.findall(str(error))))


def litert_missing_op(error: BaseException) -> str | None:
    """The op LiteRT could not resolve when loading a model, if its message names one."""
    match = _LITERT_UNRESOLVED.search(str(error))
    return match.group(1) if match else None
