"""The rules `kerasport import` decides by, as pure functions: value ranges, probabilities, labels, options."""

from __future__ import annotations

import numpy as np
import pytest

from kerasport.contract import OutputSpec
from kerasport.errors import UsageError
from kerasport.ingest.data import PIXEL_RANGE, data_range
from kerasport.ingest.importer import attach_labels, looks_like_probabilities, signature_output_kind
from kerasport.ingest.stage import parse_labels, parse_range


@pytest.mark.parametrize(("values", "kind", "expected"), [
    (np.array([0, 17, 255], dtype=np.uint8), "tensor", PIXEL_RANGE),
    (np.array([0.0, 3.0, 200.0], dtype=np.float32), "image", PIXEL_RANGE),  # integer-valued floats
    (np.array([0.0, 1.0]), "image", PIXEL_RANGE),  # an image of integers: raw pixels
    (np.array([0, 1], dtype=np.int64), "tensor", (0.0, 1.0)),  # binary features are not pixels
    (np.array([0.1, 0.7]), "image", (0.0, 1.0)),
    (np.array([-0.5, 0.25]), "tensor", (-1.0, 1.0)),
    (np.array([-3.5, 12.25]), "tensor", (-3.5, 12.25)),
    (np.array([0.0, 300.0]), "image", (0.0, 300.0)),
])
def test_data_range(values, kind, expected):
    assert data_range([values], kind) == expected


def test_data_range_spans_every_data_set():
    assert data_range([np.array([0.2]), np.array([-4.0, 2.0])], "tensor") == (-4.0, 2.0)
    assert data_range([np.zeros((0, 3))], "tensor") is None


def test_probabilities_rule_for_signature_outputs():
    softmax = np.array([[0.2, 0.8], [0.5, 0.5]])
    assert looks_like_probabilities(softmax)
    assert not looks_like_probabilities(softmax * 2)
    assert not looks_like_probabilities(np.array([[1.2, -0.2]]))  # sums to 1 but negative
    assert not looks_like_probabilities(np.array([[1.0], [1.0]]))  # one column: a value
    assert signature_output_kind("auto", softmax) == "probabilities"
    assert signature_output_kind("auto", softmax * 2) == "values"
    assert signature_output_kind("classification", softmax * 2) == "logits"
    assert signature_output_kind("regression", softmax) == "values"


def test_labels_go_to_the_classification_output_of_their_width():
    outputs = (OutputSpec("value", "float32", (-1, 3), "values"), OutputSpec("klass", "float32", (-1, 3),
                                                                               "probabilities"))
    labelled = attach_labels(outputs, ("a", "b", "c"))
    assert [spec.labels for spec in labelled] == [(), ("a", "b", "c")]
    with pytest.raises(UsageError, match="2 labels"):
        attach_labels(outputs, ("a", "b"))


def test_option_parsing(tmp_path):
    assert parse_range("0,255") == (0.0, 255.0) and parse_range(None) is None
    for bad in ("1", "1,2,3", "2,2", "nan,1", "a,b"):
        with pytest.raises(UsageError, match="--input-range"):
            parse_range(bad)
    assert parse_labels("a, b,c") == ("a", "b", "c")
    (tmp_path / "labels.txt").write_text("x\n\ny\n")
    assert parse_labels(str(tmp_path / "labels.txt")) == ("x", "y")
    for bad in ("a,,b", "a,a", str(tmp_path / "missing.txt")):
        with pytest.raises(UsageError, match="--labels"):
            parse_labels(bad)
