"""V2 and TF Serving request parsing and response shaping against a contract, without a model or a server."""

import json

import numpy as np
import pytest

from kerasport.contract import V2_DATATYPES, InputSpec, ModelContract, OutputSpec, image_input_spec
from kerasport.errors import UsageError
from kerasport.serve.errors import BadRequest
from kerasport.serve.protocol import (
    RequestedOutput,
    V2Request,
    parse_tfs_predict,
    parse_v2_infer,
    tfs_response,
    v2_response,
)
from kerasport.serve.tensors import accepted_datatypes, pictures_to_input

# One input per datatype the issue names, each [batch, 2].
TYPED = ModelContract(
    inputs=tuple(InputSpec(name, dtype, (-1, 2)) for name, dtype in (
        ("f32", "float32"), ("f16", "float16"), ("i8", "int8"), ("u8", "uint8"), ("i32", "int32"),
        ("i64", "int64"), ("flag", "bool"))),
    outputs=(OutputSpec("score", "float32", (-1, 2), "probabilities", labels=("no", "yes")),
             OutputSpec("count", "int64", (-1,), "values")))
VALUES = {"f32": [[0.5, -1.0]], "f16": [[1.5, 2.0]], "i8": [[-128, 127]], "u8": [[0, 255]], "i32": [[-7, 7]],
          "i64": [[2**40, -1]], "flag": [[True, False]]}
GRAY = ModelContract(inputs=(image_input_spec("image", 4, 4),),
                     outputs=(OutputSpec("probabilities", "float32", (-1, 3), "probabilities"),))
TABULAR = ModelContract(inputs=(InputSpec("row", "float32", (-1, 13), value_range=(-10.0, 10.0)),),
                        outputs=(OutputSpec("price", "float32", (-1, 1)),))


def v2_tensor(name: str, values, datatype: str | None = None) -> dict:
    array = np.asarray(values)
    return {"name": name, "shape": list(array.shape), "datatype": datatype or TYPED.input(name).v2_datatype,
            "data": array.ravel().tolist()}


def test_v2_every_datatype_as_json_keeps_the_contract_dtypes():
    body = {"inputs": [v2_tensor(name, values) for name, values in VALUES.items()], "id": "r1"}
    request = parse_v2_infer(body, TYPED)
    assert request.id == "r1" and [o.name for o in request.outputs] == TYPED.output_names
    for spec in TYPED.inputs:
        assert request.inputs[spec.name].dtype == np.dtype(spec.dtype), spec.name
        np.testing.assert_array_equal(request.inputs[spec.name], np.asarray(VALUES[spec.name], dtype=spec.dtype))


def test_v2_binary_extension_over_several_inputs_in_request_order():
    arrays = {name: np.asarray(values, dtype=TYPED.input(name).dtype) for name, values in VALUES.items()}
    order = list(reversed(TYPED.input_names))  # the binary part follows the order the inputs are listed in
    tensors = [{"name": name, "shape": list(arrays[name].shape), "datatype": TYPED.input(name).v2_datatype,
                "parameters": {"binary_data_size": arrays[name].nbytes}} for name in order]
    binary = b"".join(arrays[name].astype(arrays[name].dtype.newbyteorder("<")).tobytes() for name in order)
    request = parse_v2_infer({"inputs": tensors}, TYPED, binary)
    for name, array in arrays.items():
        np.testing.assert_array_equal(request.inputs[name], array)
    total = sum(array.nbytes for array in arrays.values())
    with pytest.raises(BadRequest, match=f"holds {total + 1} bytes; the inputs' binary_data_size add up to {total}"):
        parse_v2_infer({"inputs": tensors}, TYPED, binary + b"x")
    last = arrays[order[-1]].nbytes
    with pytest.raises(BadRequest, match=rf"input '{order[-1]}': the binary part of the body holds {last - 1} bytes "
                                         rf"from offset {total - last}; binary_data_size says {last}"):
        parse_v2_infer({"inputs": tensors}, TYPED, binary[:-1])


@pytest.mark.parametrize("name, values, datatype, message", [
    ("i8", [[0, 200]], "INT8", "input 'i8': values span 0..200; int8 holds -128..127"),
    ("u8", [[-1, 3]], "UINT8", "input 'u8': values span -1..3; uint8 holds 0..255"),
    ("i32", [[0.5, 1]], "INT32", "input 'i32': data holds non-integer numbers; int32 data must be integers"),
    ("i32", [[1, 2]], "FP32", "input 'i32': datatype 'FP32' is not supported; input 'i32' takes INT32"),
    ("flag", [[1, 0]], "BOOL", "input 'flag': data holds int64 values; BOOL data must be true/false"),
    ("flag", [[True, False]], "INT8", "input 'flag': datatype 'INT8' is not supported; input 'flag' takes BOOL"),
    ("f32", [[1, 2]], "BYTES", "input 'f32': datatype 'BYTES' is not supported"),
    ("f32", [[1, 2, 3]], None, "input 'f32': shape [1, 3]; input 'f32' expects [batch, 2]"),
    ("f32", [[float("nan"), 0]], None, "input 'f32': NaN or Inf in the data"),
])
def test_v2_datatype_and_value_errors_name_the_input(name, values, datatype, message):
    tensors = [v2_tensor(other, VALUES[other]) for other in TYPED.input_names if other != name]
    with pytest.raises(BadRequest) as caught:
        parse_v2_infer({"inputs": [*tensors, v2_tensor(name, values, datatype)]}, TYPED)
    assert message in str(caught.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda ts: ts[1:], "missing input 'f32'"),
    (lambda ts: [*ts, v2_tensor("f32", VALUES["f32"]) | {"name": "extra"}], "unknown input 'extra'"),
    (lambda ts: [*ts, ts[0]], "repeat"),
    (lambda ts: [{k: v for k, v in ts[0].items() if k != "datatype"}, *ts[1:]], "input 'f32' is missing 'datatype'"),
    (lambda ts: [ts[0] | {"shape": [2, 2]}, *ts[1:]], "input 'f32': data holds 2 values but shape [2, 2] needs 4"),
    (lambda ts: [ts[0] | {"shape": [2, 2], "data": [0.0] * 4}, *ts[1:]], "batch sizes"),
    (lambda ts: [ts[0] | {"data": [[1.0], [2.0, 3.0]]}, *ts[1:]], "input 'f32': data is not a (nested) list"),
    (lambda ts: [ts[0] | {"data": "1,2"}, *ts[1:]], "input 'f32': 'data' is str"),
])
def test_v2_structural_errors_name_the_input(mutate, message):
    tensors = [v2_tensor(name, values) for name, values in VALUES.items()]
    with pytest.raises(BadRequest) as caught:
        parse_v2_infer({"inputs": mutate(tensors)}, TYPED)
    assert message in str(caught.value)


def test_float_inputs_take_any_numeric_datatype_integer_inputs_only_integers():
    assert accepted_datatypes(TYPED.input("f32"))[0] == "FP32"
    assert set(accepted_datatypes(TYPED.input("f32"))) == set(V2_DATATYPES.values()) - {"BOOL"}
    assert set(accepted_datatypes(TYPED.input("i32"))) == {"INT8", "INT16", "INT32", "INT64", "UINT8"}
    assert accepted_datatypes(TYPED.input("flag")) == ("BOOL",)


def test_single_image_inputs_keep_the_legacy_layouts():
    pixels = np.arange(32, dtype=np.float32).reshape(2, 4, 4, 1)
    for shape in ([2, 4, 4, 1], [2, 4, 4], [2, 16]):
        body = {"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8",
                            "data": pixels.astype(np.uint8).ravel().tolist()}]}
        np.testing.assert_array_equal(parse_v2_infer(body, GRAY).inputs["image"], pixels)
    with pytest.raises(BadRequest, match=r"shape \[1, 5\]; input 'image' expects \[batch, 4, 4, 1\], \[batch, 4, 4\] "
                                         r"or \[batch, 16\]"):
        parse_v2_infer({"inputs": [{"name": "image", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}]}, GRAY)
    with pytest.raises(BadRequest, match="values span 300..300; input 'image' expects values in 0..255"):
        parse_v2_infer({"inputs": [{"name": "image", "shape": [1, 16], "datatype": "FP32", "data": [300] * 16}]},
                       GRAY)


def test_v2_response_json_and_binary_per_output():
    outputs = {"score": np.array([[0.25, 0.75]], np.float32), "count": np.array([3], np.int64)}
    request = V2Request(inputs={}, outputs=[RequestedOutput("count", binary=True), RequestedOutput("score")], id="7")
    body, binary = v2_response(outputs, request, TYPED, model_name="m", model_version="2")
    assert body["id"] == "7" and [o["name"] for o in body["outputs"]] == ["count", "score"]
    count, score = body["outputs"]
    assert count == {"name": "count", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}
    assert np.frombuffer(binary, "<i8").tolist() == [3]
    assert score["datatype"] == "FP32" and score["data"].tolist() == [0.25, 0.75]


def test_v2_requested_outputs():
    tensors = [v2_tensor(name, values) for name, values in VALUES.items()]
    wanted = parse_v2_infer({"inputs": tensors, "parameters": {"binary_data_output": True},
                             "outputs": [{"name": "score", "parameters": {"binary_data": False}}, {"name": "count"}]},
                            TYPED)
    assert wanted.outputs == [RequestedOutput("score", False), RequestedOutput("count", True)]
    with pytest.raises(BadRequest, match=r"unknown output\(s\) \['logits'\]; this model's outputs are"):
        parse_v2_infer({"inputs": tensors, "outputs": [{"name": "logits"}]}, TYPED)


def test_tfs_row_and_columnar_single_input():
    rows = np.linspace(-1, 1, 26, dtype=np.float32).reshape(2, 13)
    for body, layout in (({"instances": rows.tolist()}, "row"),
                         ({"instances": [{"row": r} for r in rows.tolist()]}, "row"),
                         ({"inputs": rows.tolist()}, "columnar"), ({"inputs": {"row": rows.tolist()}}, "columnar")):
        inputs, parsed_layout = parse_tfs_predict(body, TABULAR)
        assert parsed_layout == layout
        np.testing.assert_allclose(inputs["row"], rows)
    outputs = {"price": np.array([[1.0], [2.0]], np.float32)}
    assert json.loads(json.dumps(tfs_response(outputs, TABULAR, "row")["predictions"].tolist())) == [[1.0], [2.0]]
    assert tfs_response(outputs, TABULAR, "columnar")["outputs"].tolist() == [[1.0], [2.0]]


def test_tfs_several_inputs_and_outputs():
    instances = [{name: values[0] for name, values in VALUES.items()} for _ in range(3)]
    inputs, _ = parse_tfs_predict({"instances": instances}, TYPED)
    assert {name: array.shape for name, array in inputs.items()} == {name: (3, 2) for name in TYPED.input_names}
    assert inputs["i64"].dtype == np.int64 and inputs["flag"].dtype == np.bool_
    columns, _ = parse_tfs_predict({"inputs": {name: values * 3 for name, values in VALUES.items()}}, TYPED)
    assert all(len(array) == 3 for array in columns.values())
    outputs = {"score": np.full((3, 2), 0.5, np.float32), "count": np.arange(3)}
    rows = tfs_response(outputs, TYPED, "row")["predictions"]
    assert [sorted(row) for row in rows] == [["count", "score"]] * 3 and rows[2]["count"] == 2
    assert sorted(tfs_response(outputs, TYPED, "columnar")["outputs"]) == ["count", "score"]


@pytest.mark.parametrize("contract, body, message", [
    (TYPED, {"instances": [[1, 2]]}, "each instance must be an object keyed by input name"),
    (TYPED, {"inputs": [[1, 2]]}, "'inputs' must be an object keyed by input name"),
    (TYPED, {"instances": [{"f32": [1, 2]}]}, "instance 0: missing input 'f16'"),
    (TABULAR, {"instances": [{"row": [0] * 13, "other": 1}]}, "instance 0: unknown input 'other'"),
    (TABULAR, {"instances": [[0] * 12]}, "input 'row' of 'instances': shape [1, 12]; input 'row' expects [batch, 13]"),
    (TABULAR, {"instances": [[11] + [0] * 12]}, "input 'row' of 'instances': values span 0..11"),
    (TABULAR, {"instances": [{"row": [0] * 13}, [0] * 13]}, "instance 1 is list; expected an object"),
    (TABULAR, {"instances": []}, "'instances' must be a non-empty list"),
    (TABULAR, {"instances": [[0] * 13], "inputs": [[0] * 13]}, "exactly one of 'instances'"),
    (TABULAR, {"inputs": [[0] * 13], "signature_name": "other"}, "signature_name 'other'"),
    (TABULAR, [1, 2], "the request body is list; expected a JSON object"),
])
def test_tfs_errors_name_the_input(contract, body, message):
    with pytest.raises(BadRequest) as caught:
        parse_tfs_predict(body, contract)
    assert message in str(caught.value)


@pytest.mark.parametrize("value_range, expected", [
    (None, [0.0, 255.0]), ((0.0, 255.0), [0.0, 255.0]), ((0.0, 1.0), [0.0, 1.0]), ((-1.0, 1.0), [-1.0, 1.0])])
def test_pictures_map_onto_the_image_input_range(value_range, expected):
    spec = image_input_spec("image", 1, 2, value_range=value_range)
    batch = pictures_to_input(spec, np.array([[[[0.0], [255.0]]]], np.float32), "picture")
    assert batch.ravel().tolist() == pytest.approx(expected)


def test_pictures_do_not_reach_an_input_of_another_range():
    spec = image_input_spec("image", 1, 2, value_range=(3.0, 250.0))
    with pytest.raises(UsageError, match="takes values in 3..250, which pictures .* do not map onto"):
        pictures_to_input(spec, np.zeros((1, 1, 2, 1), np.float32), "picture")
