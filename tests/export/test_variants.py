"""Unit tests of the export stage's pure parts: the variant registry, `--formats`, the smoke-run checks and the
op names pulled out of converter and runtime errors. No TensorFlow, no conversion."""

import numpy as np
import pytest

from kerasport.contract import DYNAMIC, ModelContract, OutputSpec, image_input_spec
from kerasport.errors import UsageError
from kerasport.export.messages import first_line, litert_missing_op, ort_missing_op, tflite_missing_ops
from kerasport.export.smoke import output_problem, smoke_batch
from kerasport.export.variants import VARIANTS, build_order, parse_formats
from kerasport.samples import Samples


def test_every_prerequisite_is_a_known_variant_listed_before_the_one_that_needs_it():
    order = list(VARIANTS)
    for name, variant in VARIANTS.items():
        for required in variant.requires:
            assert order.index(required) < order.index(name), (required, name)


@pytest.mark.parametrize("requested, expected", [
    (["tflm"], ["tflite-int8", "tflm"]),
    (["tflite-fp32", "onnx-int8"], ["onnx-fp32", "onnx-int8", "tflite-fp32"]),
    (["onnx-fp32"], ["onnx-fp32"]),
])
def test_build_order_adds_prerequisites_first(requested, expected):
    assert build_order(requested) == expected


def test_parse_formats_keeps_order_drops_repeats_and_refuses_unknown_names():
    assert parse_formats("tflm, onnx-fp32,tflm") == ["tflm", "onnx-fp32"]
    with pytest.raises(UsageError, match="unknown coreml"):
        parse_formats("onnx-fp32,coreml")
    with pytest.raises(UsageError, match="empty"):
        parse_formats(" , ")


def test_output_problem_checks_batch_item_shape_dynamic_dims_and_finiteness():
    spec = OutputSpec(name="boxes", dtype="float32", shape=(DYNAMIC, DYNAMIC, 4))
    assert output_problem(spec, np.zeros((7, 3, 4), np.float32), 7) is None
    assert "shape [7, 3, 5]" in output_problem(spec, np.zeros((7, 3, 5), np.float32), 7)
    assert "shape [1, 3, 4]" in output_problem(spec, np.zeros((1, 3, 4), np.float32), 7)
    assert "NaN or Inf" in output_problem(spec, np.full((7, 3, 4), np.nan, np.float32), 7)


def test_smoke_batch_repeats_the_sample_and_casts_to_the_contract_dtype():
    contract = ModelContract(inputs=(image_input_spec("picture", 2, 2),),
                             outputs=(OutputSpec(name="p", dtype="float32", shape=(DYNAMIC, 2)),))
    pixels = np.arange(3 * 2 * 2).reshape(3, 2, 2, 1).astype(np.uint8)
    batch = smoke_batch(Samples({"picture": pixels}), contract, 7)["picture"]
    assert batch.dtype == np.float32 and batch.shape == (7, 2, 2, 1)
    np.testing.assert_array_equal(batch[3:6], pixels.astype(np.float32))


def test_op_names_are_read_from_converter_and_runtime_messages():
    converter = RuntimeError("loc(...): error: 'tf.Erfinv' op is neither a custom op nor a flex op\n"
                             "loc(...): error: 'tf.Cumprod' op is neither a custom op nor a flex op\n"
                             "'tf.Erfinv' op is neither a custom op nor a flex op")
    assert tflite_missing_ops(converter) == ["tf.Erfinv", "tf.Cumprod"]
    ort = RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                       "Erfinv(1) node with name 'x'")
    assert ort_missing_op(ort) == "Erfinv"
    assert litert_missing_op(RuntimeError("Encountered unresolved custom op: FlexErfinv.")) == "FlexErfinv"
    assert ort_missing_op(ValueError("shape mismatch")) is None
    assert first_line(ValueError("\n  first\nsecond")) == "first"
    assert first_line(ValueError("")) == "ValueError"
