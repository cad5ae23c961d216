"""`--formats`: a comma list of known variants, in the order given, each once; anything else is a usage error."""

import pytest

from kerasport.errors import UsageError
from kerasport.export.variants import DEFAULT_FORMATS, VARIANTS, parse_formats


def test_known_names_in_order_without_duplicates_or_blanks():
    assert parse_formats(" tflite-int8, onnx-fp32 ,tflite-int8,, ") == ["tflite-int8", "onnx-fp32"]
    assert parse_formats(",".join(DEFAULT_FORMATS)) == list(DEFAULT_FORMATS)
    assert set(DEFAULT_FORMATS) <= set(VARIANTS)


@pytest.mark.parametrize("text, unknown", [("onnx-fp32,onnx-fp64", "unknown onnx-fp64;"), ("", "unknown (empty);"),
                                           (" , ", "unknown (empty);"), ("ONNX-FP32", "unknown ONNX-FP32;")])
def test_unknown_or_empty_lists_name_the_culprit_and_the_choices(text, unknown):
    with pytest.raises(UsageError) as raised:
        parse_formats(text)
    message = str(raised.value)
    assert message.startswith(f"--formats {text!r}: {unknown}") and all(name in message for name in VARIANTS)
